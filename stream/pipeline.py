"""The live pipeline, wired in one place.

    sources (threads) ─► CaptureInbox ─► Segmenting ─► Transcribing ─► Scoring ─► Deciding ─► sinks
    QualityTicker, a few times per second ─────────────────────────────────────────────────► sinks
    video frames ───────────────────────────────────────────────────────────────────────────► sinks

Stages run as tasks of one `asyncio.TaskGroup`, joined by bounded queues: when one fails, the
others are cancelled and the run ends with its error. A file source waits when the queues are full
(nothing is lost); a live device never waits: its items, then its utterances, are dropped
oldest-first and counted in `PipelineStats`. Every queue ends with the END marker, which is
always delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stream.messages import AudioChunk, SinkMessage, Utterance, VideoFrame
from stream.options import PipelineOptions
from stream.sinks import Sink
from stream.sources import Source
from stream.stages import Deciding, QualityTicker, Scoring, Segmenting, Transcribing

log = logging.getLogger("dfmq.pipeline")
END = None  # the end-of-input marker on every queue
In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class PipelineStats:
    utterances: int = 0
    events: int = 0
    dropped_items: int = 0  # live capture items dropped because the loop fell behind
    dropped_utterances: int = 0  # utterances dropped because ASR fell behind real time
    quality_messages: int = 0
    latency_ms: list[float] = field(default_factory=list)


class CaptureInbox:
    """Where source threads hand their items to the loop.

    Files wait for a free slot (a semaphore on the source thread: one loop wake-up per item; a
    coroutine and a future per item cost more CPU than the VAD). Live devices never wait: when the
    loop falls behind, the oldest item goes and is counted. The input ends when every source has
    sent its end marker, or at once on `finish` (Ctrl-C on live devices)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_items: int, blocking: bool, sources: int, stats: PipelineStats
    ) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[AudioChunk | VideoFrame | None] = asyncio.Queue(max_items)
        self.free_slots = threading.Semaphore(max_items) if blocking else None
        self.stats = stats
        self.ends_left = sources
        self.ended = False
        self.closed = threading.Event()
        self._lock = threading.Lock()

    def put(self, item: AudioChunk | VideoFrame | None) -> None:
        """Called from a source thread or device callback; never raises into it."""
        if item is END:
            with self._lock:
                self.ends_left -= 1
                if self.ends_left > 0:
                    return
        if self.free_slots is not None:
            while not self.free_slots.acquire(timeout=0.2):
                if self.closed.is_set():
                    return
        if self.closed.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under a late device callback
            self.loop.call_soon_threadsafe(self._enqueue, item)

    def finish(self) -> None:
        """End the input (called on the loop), whatever the sources still send; behind the items
        already handed over, so those are still segmented."""
        self.loop.call_soon(self._enqueue, END)

    def _enqueue(self, item: AudioChunk | VideoFrame | None) -> None:
        if self.ended:
            return
        if self.queue.full():
            # Only a live queue can be full here (a file took a slot first). The oldest item makes
            # room, counted, and the end marker always gets in.
            self.queue.get_nowait()
            self.stats.dropped_items += 1
        self.ended = item is END
        self.queue.put_nowait(item)

    async def get(self) -> AudioChunk | VideoFrame | None:
        item = await self.queue.get()
        if self.free_slots is not None:
            self.free_slots.release()
        return item

    def close(self) -> None:
        self.closed.set()


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The error a failed stage raised (the others were cancelled because of it)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class CaptureFront:
    """The front both the in-process pipeline and a capture node (stream/distributed.py) have:
    sources into the inbox, segmentation into a bounded utterance queue, the running quality, the
    sinks. What comes after the utterance queue is the subclass's."""

    behind = "ASR"  # what is behind real time when a live source's utterances are dropped

    def __init__(
        self,
        sources: Sequence[Source],
        live: bool,
        segmenting: Segmenting,
        ticker: QualityTicker,
        sinks: Sequence[Sink],
        options: PipelineOptions,
        stats: PipelineStats,
    ) -> None:
        self.sources = list(sources)
        self.live = live
        self.segmenting = segmenting
        self.ticker = ticker
        self.sinks = list(sinks)
        self.options = options
        self.stats = stats
        self.inbox: CaptureInbox | None = None
        self.finished = asyncio.Event()
        self._sources_stopped = False

    def emit(self, message: SinkMessage) -> None:
        for sink in self.sinks:
            sink.handle(message)

    def stop(self) -> None:
        """Ctrl-C: stop capturing; what is in flight is still decided and published."""
        log.info("stopping: flushing what is in flight")
        self._stop_sources()
        if self.live and self.inbox is not None:
            self.inbox.finish()

    def _open_inbox(self) -> tuple[CaptureInbox, asyncio.Queue[Utterance | None]]:
        loop = asyncio.get_running_loop()
        self.inbox = CaptureInbox(loop, self.options.max_pending_items, not self.live, len(self.sources), self.stats)
        return self.inbox, asyncio.Queue(self.options.max_pending_utterances)

    async def _run_stages(self, inbox: CaptureInbox, *stages: Coroutine[Any, Any, None]) -> None:
        """The stages and the running quality as tasks of one TaskGroup, then the sources: when one
        stage raises, the others are cancelled and its error ends the run; sources stop in any case."""
        try:
            async with asyncio.TaskGroup() as group:
                for stage in stages:
                    group.create_task(stage)
                group.create_task(self._tick())
                for source in self.sources:
                    source.start(inbox.put)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        finally:
            inbox.close()
            self._stop_sources()

    def _stop_sources(self) -> None:
        if self._sources_stopped:
            return
        self._sources_stopped = True
        for source in self.sources:
            source.stop()

    async def _segment(self, inbox: CaptureInbox, utterances: asyncio.Queue[Utterance | None]) -> None:
        while (item := await inbox.get()) is not END:
            if isinstance(item, VideoFrame):
                self.emit(item)
            for utterance in self.segmenting.process(item):
                await self._queue_utterance(utterances, utterance)
        for utterance in self.segmenting.flush():
            await self._queue_utterance(utterances, utterance)
        await utterances.put(END)

    async def _queue_utterance(self, utterances: asyncio.Queue[Utterance | None], utterance: Utterance) -> None:
        self.stats.utterances += 1
        if not self.live:
            await utterances.put(utterance)
            return
        if utterances.full():
            # Behind real time: the oldest waiting utterance goes, and is counted.
            utterances.get_nowait()
            self.stats.dropped_utterances += 1
            log.warning(
                "%s behind real time: dropped an utterance (%d so far)", self.behind, self.stats.dropped_utterances
            )
        utterances.put_nowait(utterance)

    async def _tick(self) -> None:
        """A quality report every quality_interval_s, and one as the last event is out: a file
        decided faster than one interval still says how its channels ended."""
        finished = False
        while not finished:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), self.options.quality_interval_s)
                finished = True
            report = await self.ticker.process()
            if report is not None:
                self.emit(report)
                self.stats.quality_messages += 1


class Pipeline(CaptureFront):
    def __init__(
        self,
        sources: Sequence[Source],
        live: bool,
        segmenting: Segmenting,
        transcribing: Transcribing,
        scoring: Scoring,
        deciding: Deciding,
        ticker: QualityTicker,
        sinks: Sequence[Sink],
        options: PipelineOptions,
        stats: PipelineStats | None = None,  # given: counted where others (the metrics) read them too
    ) -> None:
        super().__init__(
            sources, live, segmenting, ticker, sinks, options, stats if stats is not None else PipelineStats()
        )
        self.transcribing = transcribing
        self.scoring = scoring
        self.deciding = deciding
        # More stages run beside the main line, each to the end of the run (stream/endpointing.py).
        self.side_stages: list[Callable[[], Coroutine[Any, Any, None]]] = []

    async def run(self) -> PipelineStats:
        inbox, utterances = self._open_inbox()
        # One window in hand per stage: the utterance queue in front is where waiting happens.
        transcripts: asyncio.Queue[Any] = asyncio.Queue(1)
        scored: asyncio.Queue[Any] = asyncio.Queue(1)
        await self._run_stages(
            inbox,
            self._segment(inbox, utterances),
            self._relay(self.transcribing.process, utterances, transcripts),
            self._relay(self.scoring.process, transcripts, scored),
            self._decide(scored),
            *(stage() for stage in self.side_stages),
        )
        return self.stats

    @staticmethod
    async def _relay(
        process: Callable[[In], Awaitable[Out]], inbox: asyncio.Queue[In | None], outbox: asyncio.Queue[Out | None]
    ) -> None:
        while (item := await inbox.get()) is not END:
            await outbox.put(await process(item))
        await outbox.put(END)

    async def _decide(self, scored: asyncio.Queue[Any]) -> None:
        while (window := await scored.get()) is not END:
            event = await self.deciding.process(window)
            self.emit(event)
            self.stats.events += 1
            self.stats.latency_ms.append(event.latency_ms["total"])
        self.finished.set()
