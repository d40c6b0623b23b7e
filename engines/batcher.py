"""Micro-batching across streams: one engine serves many cameras.

Like Triton's dynamic batcher: windows from any stream queue up; a batch closes when it holds
`max_batch` windows or when the oldest has waited `max_delay_ms`; the engine runs it in an
executor (off the event loop) and each caller gets back its own row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from engines.base import Engine, EngineOutput, WindowBatch, pad_and_stack
from model.errors import ConfigError


@dataclass
class BatcherOptions:
    max_batch: int = 8
    max_delay_ms: float = 10.0
    max_pending: int = 256  # windows waiting; beyond it `infer` waits (backpressure, never growth)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError("max_batch", "an integer >= 1", self.max_batch)
        if self.max_delay_ms < 0:
            raise ConfigError("max_delay_ms", "a delay >= 0 ms", self.max_delay_ms)
        if self.max_pending < self.max_batch:
            raise ConfigError("max_pending", f"at least max_batch ({self.max_batch})", self.max_pending)


@dataclass
class BatchResult:
    stream_id: str
    output: EngineOutput  # this window's row
    batch_size: int  # how many windows shared the engine call
    wait_ms: float  # queued until the batch closed
    infer_ms: float  # the engine call


@dataclass
class _Request:
    stream_id: str
    window: WindowBatch
    enqueued_s: float
    future: asyncio.Future[BatchResult]


@dataclass
class BatcherStats:
    batches: int = 0
    windows: int = 0
    full_batches: int = 0  # closed by max_batch rather than by the deadline


class MicroBatcher:
    def __init__(self, engine: Engine, options: BatcherOptions | None = None, executor: Executor | None = None) -> None:
        self.engine = engine
        self.options = options or BatcherOptions()
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfmq-engine")
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=self.options.max_pending)
        self._task: asyncio.Task[None] | None = None
        self.stats = BatcherStats()

    async def __aenter__(self) -> MicroBatcher:
        self._task = asyncio.create_task(self._run(), name="dfmq-batcher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.future.done():
                request.future.cancel()

    async def infer(self, stream_id: str, window: WindowBatch) -> BatchResult:
        if window.size != 1:
            raise ConfigError("window", "one window (batch of 1) per call", window.size)
        if self._task is None:
            raise RuntimeError("use `async with MicroBatcher(...)` before calling infer")
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(stream_id, window, time.monotonic(), future))
        return await future

    async def _collect(self) -> list[_Request]:
        first = await self._queue.get()
        batch = [first]
        deadline = first.enqueued_s + self.options.max_delay_ms / 1000.0
        while len(batch) < self.options.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # Past the deadline, still take what is already waiting: it costs nothing extra.
                while len(batch) < self.options.max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            closed_s = time.monotonic()
            stacked = pad_and_stack([r.window for r in batch])
            started = time.monotonic()
            try:
                output = await loop.run_in_executor(self._executor, self.engine.infer, stacked)
            except Exception as exc:  # handed to every caller, whose policy decides
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            infer_ms = (time.monotonic() - started) * 1000.0
            self.stats.batches += 1
            self.stats.windows += len(batch)
            self.stats.full_batches += len(batch) == self.options.max_batch
            for i, request in enumerate(batch):
                if not request.future.done():
                    request.future.set_result(
                        BatchResult(
                            request.stream_id,
                            output.row(i),
                            len(batch),
                            (closed_s - request.enqueued_s) * 1000.0,
                            infer_ms,
                        )
                    )
