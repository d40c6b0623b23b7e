"""`dfmq demo`: the committed sample clip through the whole pipeline on the embedded broker, with
a subscriber inside the demo printing each event as one readable line and a summary at the end.
The session is recorded (`dfmq run --record`) and drawn (`dfmq report`) into a folder it names."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from model.paths import demo_file
from stream.broker import free_port
from stream.options import BrokerOptions, PipelineOptions, SegmenterOptions
from stream.report import draw, read_session, render_html
from stream.run import RunRequest, run_pipeline

DEMO_CLIP = demo_file("demo.mp4")


def bar(value: float, width: int = 8) -> str:
    filled = round(max(0.0, min(1.0, value)) * width)
    return "█" * filled + "·" * (width - filled)


# Short column labels for `recognized: false` events and their reasons.
NOT_RECOGNIZED = {
    "no_speech": "(no speech)",
    "unreliable_transcript": "(unreliable)",
    "out_of_scope": "(off-topic)",
    "low_confidence": "(unsure)",
}


def event_line(event: dict[str, Any]) -> str:
    q, w = event["quality"], event["weights"]
    text = event.get("text") or ""
    text = text if len(text) <= 46 else text[:43] + "..."
    decision = event["intent"] if event["recognized"] else NOT_RECOGNIZED.get(event["reason"], event["reason"])
    return (
        f"{event['start']:5.1f}-{event['end']:5.1f}s  {decision:<12} {event['confidence']:.2f}  "
        f"q t{bar(q['text'], 4)} a{bar(q['audio'])} v{bar(q['video'])}  "
        f'w a{bar(w["audio"])} v{bar(w["video"])}  {event["latency_ms"]["total"]:5.0f} ms  "{text}"'
    )


async def _demo(clip: Path, pace: str, ckpt: str, record: Path) -> list[dict[str, Any]]:
    import aiomqtt

    events: list[dict[str, Any]] = []
    listener: dict[str, asyncio.Task[None]] = {}

    async def listen(host: str, port: int) -> None:
        async with aiomqtt.Client(host, port, identifier="dfmq-demo-viewer") as client:
            await client.subscribe("dfmq/demo/#", qos=1)
            ready.set()
            async for message in client.messages:
                topic = str(message.topic)
                if topic.endswith("/intent"):
                    event = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    events.append(event)
                    print(event_line(event), flush=True)
                elif topic.endswith("/status"):
                    print(f"[status] {bytes(message.payload).decode()}", flush=True)  # type: ignore[arg-type]

    ready = asyncio.Event()

    async def on_ready(host: str, port: int) -> None:
        listener["task"] = asyncio.create_task(listen(host, port))
        await asyncio.wait_for(ready.wait(), 10)
        print(
            "  time        intent       conf  quality (text audio video)       fusion weights     latency  transcript"
        )

    req = RunRequest(ckpt=ckpt, input=str(clip), pace=pace, embedded_port=free_port())
    await run_pipeline(
        req,
        BrokerOptions(url="embedded"),
        PipelineOptions(stream_id="demo", record=str(record)),
        SegmenterOptions(),
        on_ready=on_ready,
    )
    task = listener.get("task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return events


def default_out() -> Path:
    return Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")


def run_demo(clip: Path = DEMO_CLIP, pace: str = "realtime", ckpt: str = "default", out: Path | None = None) -> int:
    """`out`: the folder for the record and report (made if missing; `dfmq demo` checks it first)."""
    out = (out or default_out()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    record = out / "session.jsonl"
    if clip.resolve() == DEMO_CLIP.resolve():
        print(
            f"[demo] {clip.name}: spoken sentences with a face; after a third the room gets loud, "
            "after two thirds the camera goes dark too"
        )
    else:
        print(f"[demo] {clip}")
    events = asyncio.run(_demo(clip, pace, ckpt, record))
    if not events:
        print("[demo] no events arrived")
        return 1
    latencies = sorted(e["latency_ms"]["total"] for e in events)
    print(f"[demo] {len(events)} intent events; latency p50 {latencies[len(events) // 2]:.0f} ms")
    session = read_session(record)
    png = draw(session)
    (out / "session.png").write_bytes(png)
    (out / "session.html").write_text(render_html(session, png), encoding="utf-8")
    print(f"[demo] session record: {record}")
    print(f"[demo] its report: {out / 'session.html'} and {out / 'session.png'} (`dfmq report {record} --out FILE`)")
    phases_path = clip.with_suffix(".json")
    if not phases_path.is_file():
        return 0
    phases = json.loads(phases_path.read_text())
    noise_s, dark_s = phases["noise_from_s"], phases["dark_from_s"]
    groups = {
        "clean": [e for e in events if e["end"] <= noise_s],
        "noisy room": [e for e in events if e["start"] >= noise_s and e["end"] <= dark_s],
        "noisy room, dark camera": [e for e in events if e["start"] >= dark_s],
    }
    for name, group in groups.items():
        if group:

            def mean(path: tuple[str, str], group: list[dict[str, Any]] = group) -> float:
                return sum(e[path[0]][path[1]] for e in group) / len(group)

            recognized = sum(e["recognized"] for e in group)
            print(
                f"[demo] {name:<24} recognized {recognized}/{len(group)} | quality text "
                f"{mean(('quality', 'text')):.2f} audio {mean(('quality', 'audio')):.2f} video "
                f"{mean(('quality', 'video')):.2f} | weights audio {mean(('weights', 'audio')):.2f} "
                f"video {mean(('weights', 'video')):.2f}"
            )
    return 0
