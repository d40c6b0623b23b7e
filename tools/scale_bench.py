"""How many streams one `dfmq run` holds in real time: 1 / 2 / 4 / 8 streams in one process.

Each stream replays its own clip (the scene sentences in a different order, another voice mix and
noise seed, a drawn talking face) at real-time pace into a real Mosquitto; a real subscriber
receives every intent event. Per stream count, side by side in one run: speech end -> subscriber
latency (p50, p95), process CPU (share of one core and of the machine), ASR CPU (the worker
thread's own ASR time, from the events' stage timings), the wait for that thread, what each
stream costs besides ASR, and drops (utterances and capture items, counted by the pipeline;
events missing at the subscriber).

    .venv/bin/python tools/scale_bench.py --json docs/results/scale_cpu_2core.json

A stream count "holds" when p95 <= 1 s, nothing is dropped and every utterance gives an event.
Needs mosquitto and espeak-ng (Debian packages of those names).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchkit import cpu_seconds, mosquitto, write_report

from stream.options import AsrOptions, BrokerOptions, PipelineOptions, SegmenterOptions
from stream.render import render_scene, write_clip
from stream.run import RunRequest, run_streams
from stream.streams import StreamSpec
from stream.synth_sentences import SCENE_SENTENCES

HOLD_P95_MS = 1000.0


def render_clips(folder: Path, count: int, repeat: int) -> tuple[list[Path], list[float]]:
    clips, durations = [], []
    for i in range(count):
        sentences = list(SCENE_SENTENCES) * repeat
        random.Random(i).shuffle(sentences)
        audio, frames, _, _ = render_scene(tuple(sentences), snr_db=60.0, dark_gain=1.0, fps=15, seed=i)
        path = folder / f"stream{i}.mp4"
        write_clip(path, audio, frames, 15)
        clips.append(path)
        durations.append(round(len(audio) / 16000, 1))
    return clips, durations


def run_count(clips: list[Path], port: int, args: argparse.Namespace) -> dict[str, Any]:
    import paho.mqtt.client as mqtt

    received: list[tuple[float, dict[str, Any]]] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dfmq-scale-sub-{len(clips)}")
    sub.on_message = lambda c, u, m: received.append((time.time(), json.loads(m.payload)))
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("dfmq/+/intent", qos=1)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    specs = [StreamSpec(f"s{i}", input=str(clip)) for i, clip in enumerate(clips)]
    req = RunRequest(ckpt=args.ckpt, pace="realtime", engine=args.engine, asr=AsrOptions(model=args.asr_model))
    marks: dict[str, float] = {}

    async def on_ready(host: str, p: int) -> None:
        marks["cpu"], marks["wall"] = cpu_seconds(), time.time()

    try:
        outcomes = asyncio.run(
            run_streams(
                req,
                specs,
                BrokerOptions(url=f"mqtt://127.0.0.1:{port}"),
                PipelineOptions(),
                SegmenterOptions(),
                on_ready=on_ready,
            )
        )
        cpu_s, wall_s = cpu_seconds() - marks["cpu"], time.time() - marks["wall"]
        time.sleep(0.5)
    finally:
        sub.loop_stop()
        sub.disconnect()
    events = [e for _, e in received]
    latency = np.array([(wall - float(e["speech_end_wall"])) * 1000 for wall, e in received])
    asr_s = sum(float(e["latency_ms"]["asr"]) for e in events) / 1000
    utterances = sum(o.stats.utterances for o in outcomes)
    dropped = sum(o.stats.dropped_utterances for o in outcomes)
    dropped_items = sum(o.stats.dropped_items for o in outcomes)
    p95 = float(np.percentile(latency, 95)) if len(latency) else float("nan")
    return {
        "streams": len(clips),
        "wall_s": round(wall_s, 1),
        "utterances": utterances,
        "events_received": len(events),
        "errors": [str(o.error) for o in outcomes if o.error is not None],
        "dropped_utterances": dropped,
        "dropped_items": dropped_items,
        "speech_end_to_subscriber_ms": {
            "p50": round(float(np.percentile(latency, 50)), 1) if len(latency) else None,
            "p95": round(p95, 1),
            "max": round(float(latency.max()), 1) if len(latency) else None,
        },
        "stage_ms_p50": {
            stage: round(float(np.median([e["latency_ms"][stage] for e in events])), 1)
            for stage in ("vad", "asr", "features", "worker_wait", "engine", "batch_wait")
        },
        "worker_wait_ms_p95": round(float(np.percentile([e["latency_ms"]["worker_wait"] for e in events], 95)), 1),
        "cpu_s": round(cpu_s, 2),
        "cpu_share_of_one_core": round(cpu_s / wall_s, 3),
        "cpu_share_of_machine": round(cpu_s / wall_s / (os.cpu_count() or 1), 3),
        "asr_s": round(asr_s, 2),
        "non_asr_cpu_share_of_one_core_per_stream": round((cpu_s - asr_s) / wall_s / len(clips), 4),
        "holds": bool(p95 <= HOLD_P95_MS and dropped == 0 and dropped_items == 0 and len(events) == utterances),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="default", help="checkpoint (default: the starter model)")
    parser.add_argument("--engine", default="auto", help="engine backend")
    parser.add_argument("--asr-model", default="tiny.en", help="asr.model")
    parser.add_argument("--counts", default="1,2,4,8", help="stream counts to run, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="times each clip says the 9 scene sentences")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    began = time.time()
    with tempfile.TemporaryDirectory() as tmp, mosquitto() as port:
        clips, durations = render_clips(Path(tmp), max(counts), args.repeat)
        rows = []
        for count in counts:
            row = run_count(clips[:count], port, args)
            rows.append(row)
            lat = row["speech_end_to_subscriber_ms"]
            print(
                f"{count} streams: p50 {lat['p50']} ms, p95 {lat['p95']} ms; events {row['events_received']}/"
                f"{row['utterances']}; dropped {row['dropped_utterances']} utterances, {row['dropped_items']} items; "
                f"CPU {row['cpu_share_of_one_core']:.2f} of one core (ASR {row['asr_s']} s of {row['cpu_s']} s); "
                f"holds: {row['holds']}",
                flush=True,
            )
    held = [r["streams"] for r in rows if r["holds"]]
    report = {
        "command": "tools/scale_bench.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "ckpt": args.ckpt,
        "asr_model": args.asr_model,
        "clip_s": durations,
        "runs": rows,
        "most_streams_held": max(held) if held else 0,
        "runtime_s": round(time.time() - began, 1),
    }
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
