"""`dfmq run`: sources -> pipeline -> MQTT, with the embedded broker when no URL is given."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engines.batcher import BatcherOptions, MicroBatcher
from engines.select import choose_engine, load_engine
from model.checkpoint import load_checkpoint, resolve_ckpt
from model.errors import ConfigError
from stream.asr import load_whisper
from stream.broker import EmbeddedBroker
from stream.options import AsrOptions, BrokerOptions, PipelineOptions, SegmenterOptions
from stream.pipeline import Pipeline, PipelineStats, check_live_compatible
from stream.publisher import Publisher, parse_broker_url
from stream.sources import CameraSource, FileSource, MicSource, Source, SourceOptions, StreamClock
from stream.vad import Segmenter

log = logging.getLogger("dfmq.run")


@dataclass
class RunRequest:
    ckpt: str = "default"
    input: str | None = None
    audio: str | None = None
    video: str | None = None
    pace: str = "realtime"
    engine: str = "auto"
    device: str | None = None
    asr: AsrOptions = field(default_factory=AsrOptions)
    embedded_port: int = 1883


def _sources(req: RunRequest, options: SourceOptions) -> tuple[list[Source], bool]:
    """The sources to start and whether they are files (which may wait) or live devices."""
    if req.input is not None:
        if req.audio or req.video:
            raise ConfigError("--input", "either --input or --audio/--video, not both", req.input)
        return [FileSource(req.input, options)], True
    audio, video = req.audio or "none", req.video or "none"
    if audio == "none" and video == "none":
        raise ConfigError("--audio/--video", "at least one source (or --input FILE)", "none")
    sources: list[Source] = []
    files = True
    clock = StreamClock()
    if audio != "none":
        if audio == "default" or audio.isdigit() or not _looks_like_media(audio):
            sources.append(MicSource(audio, options, clock))
            files = False
        else:
            sources.append(FileSource(audio, options, video=False))
    if video != "none":
        if video.isdigit() or video.startswith("/dev/video"):
            sources.append(CameraSource(video, options, clock))
            files = False
        else:
            sources.append(FileSource(video, options, audio=False))
    return sources, files


def _looks_like_media(location: str) -> bool:
    return "://" in location or "." in location.rsplit("/", 1)[-1]


@contextlib.contextmanager
def _quiet_thread_pools() -> Iterator[None]:
    """Thread pools that busy-wait between the small jobs of a live stream, one thread each.

    numpy's OpenBLAS pool spins after every small matrix product (the mel filterbank, a few per
    second): one BLAS thread cut the pipeline's CPU time by more than half. OpenCV's pool does the
    same around each face detection (tools/latency_bench.py measures both)."""
    import cv2
    from threadpoolctl import threadpool_limits

    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        cv2.setNumThreads(cv2_threads)


async def run_pipeline(
    req: RunRequest, broker: BrokerOptions, pipe_opts: PipelineOptions, seg_opts: SegmenterOptions, on_ready: Any = None
) -> PipelineStats:
    with _quiet_thread_pools():
        return await _run_pipeline(req, broker, pipe_opts, seg_opts, on_ready)


async def _run_pipeline(
    req: RunRequest, broker: BrokerOptions, pipe_opts: PipelineOptions, seg_opts: SegmenterOptions, on_ready: Any = None
) -> PipelineStats:
    model, tokenizer = load_checkpoint(resolve_ckpt(req.ckpt))
    check_live_compatible(model.config)
    choice = choose_engine(req.engine, req.device)
    engine = load_engine(model, choice)
    log.info("engine %s (%s)", engine.name, choice.reason)
    asr = req.asr
    load_whisper(asr)  # load before the clock starts, not on the first utterance
    source_options = SourceOptions(pace=req.pace)
    sources, files = _sources(req, source_options)

    embedded = None
    if broker.url == "embedded":
        embedded = EmbeddedBroker(port=req.embedded_port)
        await embedded.start()
        host, port, tls = "127.0.0.1", req.embedded_port, False
    else:
        host, port, tls = parse_broker_url(broker.url)
    publisher = Publisher(broker, pipe_opts.stream_id, host, port, tls)
    publisher_task = asyncio.create_task(publisher.run())
    try:
        try:
            await publisher.wait_connected(broker.connect_timeout_s)
        except TimeoutError:
            raise ConfigError("--broker", f"an MQTT broker answering at {host}:{port}", broker.url) from None
        batcher = MicroBatcher(engine, BatcherOptions(max_batch=8, max_delay_ms=2.0))
        pipeline = Pipeline(
            model.config, tokenizer, batcher, publisher, pipe_opts, Segmenter(seg_opts), asr, engine.name
        )
        loop = asyncio.get_running_loop()
        ends = {"count": 0}
        sink = pipeline.sink_for(loop, blocking=files)

        def source_sink(item: Any) -> None:
            # Several sources: the pipeline ends when the last one does.
            if item is None:
                ends["count"] += 1
                if ends["count"] < len(sources):
                    return
            sink(item)

        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        if on_ready is not None:
            await on_ready(host, port)
        for source in sources:
            source.start(source_sink)

        async def stop_sources() -> None:
            await stop.wait()
            log.info("stopping: flushing what is in flight")
            for source in sources:
                source.stop()
            if not files:
                sink(None)

        stopper = asyncio.create_task(stop_sources())
        started = time.monotonic()
        stats = await pipeline.run()
        stopper.cancel()
        log.info("pipeline done in %.1f s: %s", time.monotonic() - started, stats)
        await publisher.close()
        await asyncio.wait_for(publisher_task, 30.0)
        for source in sources:
            if source.error is not None:
                raise source.error
        return stats
    finally:
        if not publisher_task.done():
            publisher_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher_task
        if embedded is not None:
            await embedded.stop()
