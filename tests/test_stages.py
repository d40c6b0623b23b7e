"""The pipeline's wiring: a failing stage ends the run with its error, sources are stopped, and the
end marker always gets through a full live queue."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from model.errors import DfmqError
from stream.messages import AudioChunk, IntentEvent, SinkMessage
from stream.options import PipelineOptions
from stream.pipeline import END, CaptureInbox, Pipeline, PipelineStats


def chunk(i: int) -> AudioChunk:
    return AudioChunk(np.zeros(1600, np.float32), i * 0.1)


def test_end_marker_gets_through_a_full_live_queue_and_drops_are_counted() -> None:
    async def scenario() -> tuple[list[Any], int]:
        stats = PipelineStats()
        inbox = CaptureInbox(asyncio.get_running_loop(), max_items=3, blocking=False, sources=1, stats=stats)
        for i in range(6):
            inbox.put(chunk(i))
        inbox.put(END)
        await asyncio.sleep(0)  # the device thread's hand-offs run on the loop
        items = [await inbox.get() for _ in range(3)]
        return items, stats.dropped_items

    items, dropped = asyncio.run(scenario())
    assert items[-1] is END
    assert [c.start_s for c in items[:-1]] == pytest.approx([0.4, 0.5])  # the newest kept
    assert dropped == 4


def test_the_input_ends_with_the_last_source_and_finish_ends_it_at_once() -> None:
    async def scenario() -> list[Any]:
        inbox = CaptureInbox(asyncio.get_running_loop(), 10, blocking=True, sources=2, stats=PipelineStats())
        inbox.put(chunk(0))
        inbox.put(END)  # the first of two sources ends: not the end yet
        inbox.put(chunk(1))
        inbox.finish()  # Ctrl-C
        inbox.put(END)  # late: ignored
        await asyncio.sleep(0)
        return [await inbox.get() for _ in range(3)]

    items = asyncio.run(scenario())
    assert [type(i).__name__ for i in items] == ["AudioChunk", "AudioChunk", "NoneType"]


@dataclass
class FakeSource:
    """A source handing over a fixed list of chunks, then its end marker; records its stop."""

    chunks: int
    stopped: bool = False
    error: DfmqError | None = None

    def start(self, sink: Any) -> None:
        for i in range(self.chunks):
            sink(chunk(i))
        sink(END)

    def stop(self) -> None:
        self.stopped = True


class BrokenTranscriber:
    async def process(self, utterance: Any) -> Any:
        raise DfmqError("the recogniser failed")


@dataclass
class Segments:
    """Every chunk is an utterance (the VAD is not under test here)."""

    def process(self, item: Any) -> list[Any]:
        return [item]

    def flush(self) -> list[Any]:
        return []


@dataclass
class RecordingSink:
    name: str = "record"
    messages: list[SinkMessage] = field(default_factory=list)

    async def start(self) -> None:
        return None

    def handle(self, message: SinkMessage) -> None:
        self.messages.append(message)

    async def close(self) -> None:
        return None


class NeverReached:
    async def process(self, item: Any) -> Any:
        raise AssertionError("nothing gets past the broken stage")


class IdleTicker:
    async def process(self) -> None:
        return None


def test_a_failing_stage_ends_the_run_with_its_error_and_stops_the_sources() -> None:
    source = FakeSource(chunks=5)
    sink = RecordingSink()
    pipeline = Pipeline(
        sources=[source],
        live=False,
        segmenting=Segments(),  # type: ignore[arg-type]
        transcribing=BrokenTranscriber(),  # type: ignore[arg-type]
        scoring=NeverReached(),  # type: ignore[arg-type]
        deciding=NeverReached(),  # type: ignore[arg-type]
        ticker=IdleTicker(),  # type: ignore[arg-type]
        sinks=[sink],
        options=PipelineOptions(quality_interval_s=0.05),
    )

    async def scenario() -> None:
        await asyncio.wait_for(pipeline.run(), 10)  # no hang: the other stages are cancelled

    with pytest.raises(DfmqError, match="the recogniser failed"):
        asyncio.run(scenario())
    assert source.stopped
    assert not any(isinstance(m, IntentEvent) for m in sink.messages)


def test_an_utterance_keeps_its_frames_after_the_buffer_moved_on() -> None:
    """A file replayed fast cuts utterances long before they are scored; their frames must not
    depend on what the (bounded) frame buffer still holds by then."""
    from stream.messages import Utterance, VideoFrame
    from stream.stages import MediaBuffer, Segmenting

    class CutAtOneSecond:
        def __init__(self) -> None:
            self.cut = False

        def process(self, item: AudioChunk) -> list[Utterance]:
            if item.end_s >= 1.0 and not self.cut:
                self.cut = True
                return [Utterance(0, 0.2, 0.8, item.samples, 0.0)]
            return []

        def flush(self) -> list[Utterance]:
            return []

    buffer = MediaBuffer(PipelineOptions(video_buffer_s=2.0))
    segmenting = Segmenting(CutAtOneSecond(), buffer)  # type: ignore[arg-type]
    image = np.zeros((4, 4, 3), np.uint8)
    cut: list[Utterance] = []
    for step in range(100):  # 10 s of frames and audio, 10 per second
        segmenting.process(VideoFrame(image, step * 0.1))
        cut += segmenting.process(chunk(step))
    assert len(cut) == 1
    assert [round(f.pts_s, 1) for f in cut[0].frames] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert buffer.frames[0].pts_s > 7.0  # the buffer itself moved on
