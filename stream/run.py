"""`dfmq run`: sources -> pipeline -> MQTT, with the embedded broker when no URL is given."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.batcher import BatcherOptions, MicroBatcher
from engines.select import choose_engine, load_engine
from model.checkpoint import checkpoint_intent_set, load_checkpoint, resolve_ckpt
from model.dfmq import DFMQMC
from model.errors import ConfigError, DfmqError
from model.features import FaceTracker
from model.intents import IntentSet
from model.semantic import IntentAnchors, build_anchors, require_semantic_space
from stream.asr import load_whisper
from stream.broker import EmbeddedBroker
from stream.messages import RunStarted
from stream.options import AsrOptions, BrokerOptions, DecisionOptions, PipelineOptions, SegmenterOptions
from stream.pipeline import Pipeline, PipelineStats
from stream.publisher import Publisher, parse_broker_url
from stream.record import RecordSink
from stream.sinks import HermesSink, MqttSink, Sink
from stream.sources import CameraSource, FileSource, MicSource, Source, SourceOptions, StreamClock
from stream.stages import (
    Deciding,
    LiveQuality,
    MediaBuffer,
    QualityTicker,
    Scoring,
    Segmenting,
    Transcribing,
    check_live_compatible,
)
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
    decision: DecisionOptions = field(default_factory=DecisionOptions)
    embedded_port: int = 1883
    intents: IntentSet | None = None  # None: the checkpoint's own (trained) intent set


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


def _sinks(publisher: Publisher, options: PipelineOptions) -> list[Sink]:
    """Every output of the run; a new output is one line here."""
    sinks: list[Sink] = [MqttSink(publisher)]
    if options.hermes:
        sinks.append(HermesSink(publisher))
    if options.record is not None:
        sinks.append(RecordSink(options, publisher))
    if options.show:
        from stream.show import ViewerSink

        sinks.append(ViewerSink())
    return sinks


async def _run_pipeline(
    req: RunRequest, broker: BrokerOptions, pipe_opts: PipelineOptions, seg_opts: SegmenterOptions, on_ready: Any = None
) -> PipelineStats:
    # Cheap checks first: the media opens (a missing track or a bad file fails here), the broker
    # answers and accepts us, then the model and Whisper load.
    sources, files = _sources(req, SourceOptions(pace=req.pace))
    embedded = None
    if broker.url == "embedded":
        embedded = EmbeddedBroker(port=req.embedded_port)
        await embedded.start()
        host, port, tls = "127.0.0.1", req.embedded_port, False
    else:
        host, port, tls = parse_broker_url(broker.url)
    sinks = _sinks(Publisher(broker, pipe_opts.stream_id, host, port, tls), pipe_opts)
    started: list[Sink] = []
    failing = False
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfmq-work")
    try:
        for sink in sinks:
            await sink.start()
            started.append(sink)
        pipeline = _build_pipeline(req, sources, not files, sinks, pipe_opts, seg_opts, executor)
        pipeline.emit(_run_started(req, pipeline, seg_opts))
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, pipeline.stop)
            loop.add_signal_handler(signal.SIGTERM, pipeline.stop)
        if on_ready is not None:
            await on_ready(host, port)
        began = time.monotonic()
        async with pipeline.deciding.batcher:
            stats = await pipeline.run()
        log.info("pipeline done in %.1f s: %s", time.monotonic() - began, stats)
    except BaseException:
        failing = True
        raise
    finally:
        executor.shutdown(wait=False)
        await _close_sinks(started, raise_failure=not failing)
        if embedded is not None:
            await embedded.stop()
    for source in sources:
        if source.error is not None:
            raise source.error
    return stats


def _build_pipeline(
    req: RunRequest,
    sources: list[Source],
    live: bool,
    sinks: list[Sink],
    pipe_opts: PipelineOptions,
    seg_opts: SegmenterOptions,
    executor: ThreadPoolExecutor,
) -> Pipeline:
    ckpt_dir = resolve_ckpt(req.ckpt)
    model, tokenizer = load_checkpoint(ckpt_dir)
    features = check_live_compatible(model.config)
    anchors = _intent_anchors(model, tokenizer, ckpt_dir, req.intents)
    choice = choose_engine(req.engine, req.device)
    engine = load_engine(model, choice)
    log.info("engine %s (%s)", engine.name, choice.reason)
    load_whisper(req.asr)  # load before the clock starts, not on the first utterance
    buffer = MediaBuffer(pipe_opts)
    quality = LiveQuality(model.config, features, pipe_opts.reference_momentum)
    tracker = FaceTracker(features)
    batcher = MicroBatcher(engine, BatcherOptions(max_batch=8, max_delay_ms=2.0))
    return Pipeline(
        sources=sources,
        live=live,
        segmenting=Segmenting(Segmenter(seg_opts), buffer),
        transcribing=Transcribing(req.asr, executor),
        scoring=Scoring(quality, tracker, executor),
        deciding=Deciding(model.config, tokenizer, batcher, pipe_opts, req.decision, engine.name, anchors),
        ticker=QualityTicker(buffer, quality, tracker, pipe_opts),
        sinks=sinks,
        options=pipe_opts,
    )


def _run_started(req: RunRequest, pipeline: Pipeline, seg_opts: SegmenterOptions) -> RunStarted:
    deciding = pipeline.deciding
    anchors = deciding.anchors
    return RunStarted(
        stream_id=pipeline.options.stream_id,
        wall_s=round(time.time(), 3),
        checkpoint=str(resolve_ckpt(req.ckpt)),
        engine=deciding.engine_name,
        intents=list(anchors.names if anchors is not None else deciding.config.labels),
        reject_below=None if anchors is None else round(float(anchors.reject_below), 4),
        options={
            "asr": dataclasses.asdict(req.asr),
            "segmenter": dataclasses.asdict(seg_opts),
            "pipeline": dataclasses.asdict(pipeline.options),
            "decision": dataclasses.asdict(req.decision),
        },
    )


def _intent_anchors(model: DFMQMC, tokenizer: Any, ckpt_dir: Path, intents: IntentSet | None) -> IntentAnchors | None:
    if not model.config.semantic_space:
        if intents is not None:
            require_semantic_space(model)  # raises: a new intent set needs the semantic space
        log.warning("checkpoint %s has no semantic space: its trained labels only, nothing out of scope", ckpt_dir)
        return None
    intent_set = intents if intents is not None else checkpoint_intent_set(ckpt_dir, model.config.labels)
    anchors = build_anchors(model, tokenizer, intent_set)
    kind = "trained head + descriptions" if anchors.trained else "descriptions and examples (no training)"
    log.info(
        "intent set %s: %d intents, %s; out of scope below scope %.2f (from %s)",
        intent_set.source,
        len(intent_set),
        kind,
        anchors.reject_below,
        anchors.reject_below_source,
    )
    return anchors


async def _close_sinks(sinks: list[Sink], raise_failure: bool) -> None:
    """Close every sink, the MQTT one last (the others may still hand it messages); the first
    failure is raised once all are closed, unless the run is already failing with its own."""
    error: BaseException | None = None
    for sink in reversed(sinks):
        try:
            await sink.close()
        except DfmqError as exc:
            log.error("%s", exc)
            error = error or exc
    if error is not None and raise_failure:
        raise error
