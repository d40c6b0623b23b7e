"""Memory over a long input: the demo clip repeated to an hour, through the whole pipeline.

The clip is remuxed N times into one file (packets copied, timestamps shifted; nothing
re-encoded), replayed `--pace fast` (as fast as the pipeline goes: an hour of input takes
minutes) or `--pace realtime` (the hour) into a real Mosquitto with a real subscriber counting
events. The process's resident memory is sampled every second against the stream time of the
last event; the figures are the RSS after the first tenth of the input, in the last second of
the run, the peak, and the slope over the rest.

    .venv/bin/python tools/memory_soak.py --minutes 60 --json docs/results/memory_soak_cpu_2core.json

Needs mosquitto (Debian package of that name).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from benchkit import mosquitto, write_report

from stream.options import BrokerOptions, PipelineOptions, SegmenterOptions
from stream.run import RunRequest, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def repeat_clip(clip: Path, times: int, out: Path) -> float:
    """`clip` played `times` times in a row, as one file; returns its length in seconds."""
    import av

    # One period for every track: from its first decoding time stamp (AAC starts before zero) to
    # its last packet's end, the longest of the tracks, so time stamps keep rising across joins.
    period_s = 0.0
    with av.open(str(clip)) as source:
        first: dict[int, float] = {}
        for packet in source.demux():
            if packet.dts is None:
                continue
            start_s = float(packet.dts * packet.time_base)
            first.setdefault(packet.stream.index, start_s)
            end_s = float((packet.dts + (packet.duration or 0)) * packet.time_base)
            period_s = max(period_s, end_s - first[packet.stream.index])
    with av.open(str(out), "w") as sink, av.open(str(clip)) as template:
        streams = {s.index: sink.add_stream_from_template(s) for s in template.streams if s.type in ("audio", "video")}
        for k in range(times):
            with av.open(str(clip)) as source:
                for packet in source.demux():
                    if packet.dts is None or packet.stream.index not in streams:
                        continue
                    shift = round(k * period_s / packet.time_base)
                    packet.pts = None if packet.pts is None else packet.pts + shift
                    packet.dts += shift
                    packet.stream = streams[packet.stream.index]
                    sink.mux(packet)
    return period_s * times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=ROOT / "data/demo/demo.mp4", help="the clip to repeat")
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the input (default 60)")
    parser.add_argument(
        "--pace",
        default="fast",
        choices=["fast", "realtime"],
        help="replay speed (default fast; realtime takes the hour)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here (and a plot beside it, .png)")
    args = parser.parse_args()
    import paho.mqtt.client as mqtt

    process = psutil.Process()
    samples: list[tuple[float, float, float]] = []  # (wall s, stream s of the last event, RSS MiB)
    last_end = {"s": 0.0, "events": 0}
    with tempfile.TemporaryDirectory() as tmp, mosquitto() as port:
        clip_s = probe_seconds(args.clip)
        times = max(1, round(args.minutes * 60 / clip_s))
        long_clip = Path(tmp) / "long.mp4"
        input_s = repeat_clip(args.clip, times, long_clip)
        print(f"input: {args.clip.name} x {times} = {input_s / 60:.1f} min")
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dfmq-soak-sub")

        def on_message(client: object, userdata: object, message: object) -> None:
            event = json.loads(message.payload)  # type: ignore[attr-defined]
            last_end["s"], last_end["events"] = float(event["end"]), last_end["events"] + 1

        sub.on_message = on_message
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe("dfmq/soak/intent", qos=1)
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        done = threading.Event()

        def sample() -> None:
            started = time.time()
            while not done.wait(1.0):
                samples.append((time.time() - started, last_end["s"], process.memory_info().rss / 2**20))

        sampler = threading.Thread(target=sample, daemon=True)
        try:
            req = RunRequest(input=str(long_clip), pace=args.pace)
            started = time.time()
            sampler.start()
            stats = asyncio.run(
                run_pipeline(
                    req,
                    BrokerOptions(url=f"mqtt://127.0.0.1:{port}"),
                    PipelineOptions(stream_id="soak"),
                    SegmenterOptions(),
                )
            )
            wall_s = time.time() - started
        finally:
            done.set()  # samples end with the pipeline, before the teardown frees its memory
            sub.loop_stop()

    stream_s = np.array([s[1] for s in samples])
    rss = np.array([s[2] for s in samples])
    settled = stream_s >= 0.1 * input_s
    slope = float(np.polyfit(stream_s[settled] / 3600, rss[settled], 1)[0]) if settled.sum() > 2 else float("nan")
    report = {
        "input_min": round(input_s / 60, 1),
        "pace": args.pace,
        "wall_s": round(wall_s, 1),
        "utterances": stats.utterances,
        "events_published": stats.events,
        "events_received": last_end["events"],
        "dropped_utterances": stats.dropped_utterances,
        "rss_mib_after_first_tenth": round(float(rss[settled][0]), 1) if settled.any() else None,
        "rss_mib_last_second_of_run": round(float(rss[-1]), 1),
        "rss_mib_peak": round(float(rss.max()), 1),
        "rss_slope_mib_per_hour_after_first_tenth": round(slope, 1),
    }
    write_report(report, args.json)
    if args.json:
        plot(stream_s, rss, args.json.with_suffix(".png"))
    return 0


def probe_seconds(clip: Path) -> float:
    import av

    with av.open(str(clip)) as container:
        return float(container.duration or 0) / av.time_base


def plot(stream_s: np.ndarray, rss: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(stream_s / 60, rss, lw=1.2)
    ax.set_xlabel("input processed (minutes of stream time)")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_ylim(0, max(1.0, float(rss.max())) * 1.15)
    ax.set_title("dfmq run over a long input: resident memory")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
