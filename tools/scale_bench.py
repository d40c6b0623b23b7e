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

`--split` adds the capture/worker split on this one machine (stream/distributed.py): `dfmq capture`
replaying one clip at real-time pace, two `dfmq worker` processes sharing the work through the
broker, worker A killed (SIGKILL) as it takes an utterance once the subscriber has two events:
latency, events exactly once and in order, re-sends, who served what.
Needs mosquitto and espeak-ng (Debian packages of those names).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchkit import (
    DEFAULT_ENDPOINTING,
    ENDPOINTING_MODES,
    cpu_seconds,
    mosquitto,
    received_events,
    segmenter_options,
    write_report,
)

from stream.options import AsrOptions, BrokerOptions, PipelineOptions
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


def run_count(
    clips: list[Path], port: int, args: argparse.Namespace, worker_threads: int, asr_parallel: int, endpointing: str
) -> dict[str, Any]:
    specs = [StreamSpec(f"s{i}", input=str(clip)) for i, clip in enumerate(clips)]
    asr = AsrOptions(model=args.asr_model, parallel_calls=asr_parallel)
    req = RunRequest(ckpt=args.ckpt, pace="realtime", engine=args.engine, asr=asr)
    marks: dict[str, float] = {}

    async def on_ready(host: str, p: int) -> None:
        marks["cpu"], marks["wall"] = cpu_seconds(), time.time()

    with received_events(port, "dfmq/+/intent", f"dfmq-scale-sub-{len(clips)}") as received:
        outcomes = asyncio.run(
            run_streams(
                req,
                specs,
                BrokerOptions(url=f"mqtt://127.0.0.1:{port}"),
                PipelineOptions(worker_threads=worker_threads),
                segmenter_options(endpointing),
                on_ready=on_ready,
            )
        )
        cpu_s, wall_s = cpu_seconds() - marks["cpu"], time.time() - marks["wall"]
        time.sleep(0.5)
    events = [e for _, e in received]
    latency = np.array([(wall - float(e["speech_end_wall"])) * 1000 for wall, e in received])
    asr_s = sum(float(e["latency_ms"]["asr"]) for e in events) / 1000
    utterances = sum(o.stats.utterances for o in outcomes)
    dropped = sum(o.stats.dropped_utterances for o in outcomes)
    dropped_items = sum(o.stats.dropped_items for o in outcomes)
    p95 = float(np.percentile(latency, 95)) if len(latency) else float("nan")
    return {
        "streams": len(clips),
        "worker_threads": worker_threads,
        "asr_parallel_calls": asr_parallel,
        "endpointing": endpointing,
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
        "stage_ms_p95": {
            stage: round(float(np.percentile([e["latency_ms"][stage] for e in events], 95)), 1)
            for stage in ("vad", "asr", "features", "worker_wait", "engine", "batch_wait")
        },
        "cpu_s": round(cpu_s, 2),
        "cpu_share_of_one_core": round(cpu_s / wall_s, 3),
        "cpu_share_of_machine": round(cpu_s / wall_s / (os.cpu_count() or 1), 3),
        "asr_s": round(asr_s, 2),
        "non_asr_cpu_share_of_one_core_per_stream": round((cpu_s - asr_s) / wall_s / len(clips), 4),
        "holds": bool(p95 <= HOLD_P95_MS and dropped == 0 and dropped_items == 0 and len(events) == utterances),
    }


def stop_workers(workers: dict[str, subprocess.Popen[str]]) -> None:
    for worker in workers.values():
        if worker.poll() is None:
            worker.send_signal(signal.SIGINT)
    for worker in workers.values():
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()


def run_split(clip: Path, port: int, args: argparse.Namespace) -> dict[str, Any]:
    import sys
    import threading

    url = f"mqtt://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "stream.cli"]
    workers: dict[str, subprocess.Popen[str]] = {}
    logs: dict[str, list[str]] = {}
    for name in ("A", "B"):
        command = [*cli, "worker", "--broker", url, "--engine", args.engine, "--worker-id", name, "--ckpt", args.ckpt]
        workers[name] = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        logs[name] = []
        threading.Thread(target=lambda n=name: logs[n].extend(workers[n].stderr or []), daemon=True).start()
    killed_at_event = None
    with contextlib.ExitStack() as stack:
        received = stack.enter_context(received_events(port, "dfmq/split/intent", "dfmq-scale-split-sub"))
        stack.callback(stop_workers, workers)
        deadline = time.time() + 300
        while not all(any("serving group" in line for line in logs[n]) for n in workers):
            if time.time() > deadline or any(w.poll() is not None for w in workers.values()):
                raise SystemExit(f"scale_bench: workers did not start: {logs}")
            time.sleep(0.1)
        command = [*cli, "capture", "--broker", url, "--input", str(clip), "--pace", "realtime", "--stream-id", "split"]
        capture = subprocess.Popen([*command, "--work-timeout-s", "4"], stdout=subprocess.PIPE, text=True)
        busy_before = 0
        while capture.poll() is None:
            busy = sum("working on it" in line for line in logs["A"])
            if killed_at_event is None and len(received) >= 2 and busy > busy_before:
                # A has just taken an utterance: killed with it in hand, the capture node must re-send it.
                workers["A"].send_signal(signal.SIGKILL)
                killed_at_event = len(received)
            busy_before = busy
            time.sleep(0.005)
        out = capture.stdout.read() if capture.stdout else ""
        time.sleep(0.5)
    events = [e for _, e in received]
    ids = [int(e["utterance_id"]) for e in events]
    latency = np.array([(wall - float(e["speech_end_wall"])) * 1000 for wall, e in received])
    return {
        "capture_exit": capture.returncode,
        "capture_summary": out.strip().splitlines()[-1] if out.strip() else "",
        "events_received": len(events),
        "exactly_once_in_order": ids == list(range(len(ids))),
        "worker_a_killed_after_event": killed_at_event,
        "worker_a_exit": workers["A"].returncode,
        "not_recognized_worker_timeout": sum(e.get("reason") == "worker_timeout" for e in events),
        "speech_end_to_subscriber_ms": {
            "p50": round(float(np.percentile(latency, 50)), 1) if len(latency) else None,
            "p95": round(float(np.percentile(latency, 95)), 1) if len(latency) else None,
            "max": round(float(latency.max()), 1) if len(latency) else None,
        },
        "dispatch_ms_p50": round(float(np.median([e["latency_ms"].get("dispatch", 0.0) for e in events])), 1)
        if events
        else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="default", help="checkpoint (default: the starter model)")
    parser.add_argument("--engine", default="auto", help="engine backend")
    parser.add_argument("--asr-model", default="tiny.en", help="asr.model")
    parser.add_argument("--counts", default="1,2,4,8", help="stream counts to run, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="times each clip says the 9 scene sentences")
    parser.add_argument("--worker-threads", default="2", help="pipeline.worker_threads values, comma-separated")
    parser.add_argument("--asr-parallel", default="2", help="asr.parallel_calls values, comma-separated")
    parser.add_argument(
        "--endpointing",
        default=DEFAULT_ENDPOINTING,
        help=f"endpointing settings ({', '.join(ENDPOINTING_MODES)}), comma-separated",
    )
    parser.add_argument(
        "--trials", type=int, default=1, help="runs of every setting (8 streams: p95 varied by 0.2 s between runs)"
    )
    parser.add_argument("--split", action="store_true", help="also the capture/worker split, one worker killed")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")] if args.counts else []
    endpointing_values = args.endpointing.split(",")
    for value in endpointing_values:
        segmenter_options(value)  # a bad value fails before any clip is rendered
    began = time.time()
    with tempfile.TemporaryDirectory() as tmp, mosquitto() as port:
        clips, durations = render_clips(Path(tmp), max([*counts, 1]), args.repeat)
        rows = []
        threads_values = [int(t) for t in args.worker_threads.split(",")]
        parallel_values = [int(a) for a in args.asr_parallel.split(",")]
        settings = itertools.product(range(args.trials), counts, threads_values, parallel_values, endpointing_values)
        for trial, count, threads, parallel, endpointing in settings:
            row = {"trial": trial, **run_count(clips[:count], port, args, threads, parallel, endpointing)}
            rows.append(row)
            lat = row["speech_end_to_subscriber_ms"]
            print(
                f"{count} streams, {threads} worker threads, {parallel} Whisper calls at once, {endpointing} "
                "endpointing: "
                f"p50 {lat['p50']} ms, p95 {lat['p95']} ms; "
                f"events {row['events_received']}/{row['utterances']}; dropped {row['dropped_utterances']} "
                f"utterances, {row['dropped_items']} items; "
                f"CPU {row['cpu_share_of_one_core']:.2f} of one core (ASR {row['asr_s']} s of {row['cpu_s']} s); "
                f"holds: {row['holds']}",
                flush=True,
            )
        split = run_split(clips[0], port, args) if args.split else None
        if split is not None:
            lat = split["speech_end_to_subscriber_ms"]
            print(
                f"split: {split['events_received']} events, exactly once in order: {split['exactly_once_in_order']}; "
                f"worker A killed after event {split['worker_a_killed_after_event']}; p50 {lat['p50']} ms, "
                f"p95 {lat['p95']} ms; {split['capture_summary']}",
                flush=True,
            )
    defaults = (PipelineOptions().worker_threads, AsrOptions().parallel_calls, DEFAULT_ENDPOINTING)
    default_rows = [r for r in rows if (r["worker_threads"], r["asr_parallel_calls"], r["endpointing"]) == defaults]
    verdicts = {c: [r["holds"] for r in default_rows if r["streams"] == c] for c in counts}
    held = [c for c, holds in verdicts.items() if holds and all(holds)]  # in every trial
    report = {
        "command": "tools/scale_bench.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "ckpt": args.ckpt,
        "asr_model": args.asr_model,
        "clip_s": durations,
        "runs": rows,
        "split": split,
        "most_streams_held_at_default_threads": max(held) if held else 0,
        "runtime_s": round(time.time() - began, 1),
    }
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
