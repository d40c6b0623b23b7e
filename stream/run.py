"""`dfmq run`: sources -> pipeline -> MQTT, with the embedded broker when no URL is given.

One stream (`--input`, `--audio/--video`) or several (`--streams FILE.yaml`, stream/streams.py):
each stream has its own sources, pipeline stages and sinks (its own MQTT connection, status and
last will); the intent model, its engine and micro-batcher, Whisper and the worker thread are
loaded once and shared. A stream that fails ends with its error while the others go on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engines.batcher import BatcherOptions, MicroBatcher
from engines.select import choose_engine, int8_gate, load_engine
from model.adapt import load_adaptation
from model.checkpoint import checkpoint_intent_set, load_checkpoint, read_checkpoint_config, resolve_ckpt
from model.dfmq import DFMQMC
from model.errors import ConfigError, DfmqError
from model.features import FaceTracker
from model.intents import IntentSet
from model.semantic import IntentAnchors, SentenceEncoder, build_anchors, require_semantic_space
from stream.asr import load_whisper
from stream.broker import EmbeddedBroker
from stream.endpointing import SPECULATIVE_BLOCK_MS, Provisional
from stream.media import MediaError
from stream.messages import RunStarted
from stream.options import (
    AsrOptions,
    BrokerOptions,
    DecisionOptions,
    HomeAssistantOptions,
    MetricsOptions,
    PipelineOptions,
    SegmenterOptions,
)
from stream.pipeline import Pipeline, PipelineStats
from stream.publisher import Publisher, parse_broker_url
from stream.record import RecordSink
from stream.sinks import HermesSink, MqttSink, Sink
from stream.sources import CameraSource, FileSource, Lockstep, MicSource, Source, SourceOptions, StreamClock
from stream.stages import (
    AsrBatcher,
    Deciding,
    LiveQuality,
    MediaBuffer,
    QualityTicker,
    Scoring,
    Segmenting,
    Transcribing,
    check_live_compatible,
)
from stream.streams import StreamSpec
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
    sentence_encoder: Path | None = None  # embeds `intents` and transcripts (model.semantic.SentenceEncoder)
    adapted: Path | None = None  # `dfmq adapt`'s folder for `intents` (model.adapt)
    homeassistant: HomeAssistantOptions = field(default_factory=HomeAssistantOptions)
    metrics: MetricsOptions = field(default_factory=MetricsOptions)


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
    lockstep = Lockstep() if options.pace == "fast" else None  # two files read fast keep together
    if audio != "none":
        if audio == "default" or audio.isdigit() or not _looks_like_media(audio):
            sources.append(MicSource(audio, options, clock))
            files = False
        else:
            sources.append(FileSource(audio, options, video=False, lockstep=lockstep))
    if video != "none":
        if video.isdigit() or video.startswith("/dev/video"):
            sources.append(CameraSource(video, options, clock))
            files = False
        else:
            sources.append(FileSource(video, options, audio=False, lockstep=lockstep))
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
    """One stream (`--input` or `--audio/--video`): its stats, or its error raised."""
    spec = StreamSpec(pipe_opts.stream_id, req.input, req.audio, req.video)
    outcome = (await run_streams(req, [spec], broker, pipe_opts, seg_opts, on_ready))[0]
    if outcome.error is not None:
        raise outcome.error
    return outcome.stats


async def run_streams(
    req: RunRequest,
    specs: Sequence[StreamSpec],
    broker: BrokerOptions,
    pipe_opts: PipelineOptions,
    seg_opts: SegmenterOptions,
    on_ready: Any = None,
) -> list[StreamOutcome]:
    """Every stream of the list, to its end; one stream's failure does not stop the others."""
    with _quiet_thread_pools():
        return await _run_streams(req, specs, broker, pipe_opts, seg_opts, on_ready)


@dataclass
class StreamOutcome:
    stream_id: str
    stats: PipelineStats
    error: DfmqError | None = None  # what ended this stream early, if anything did


@dataclass
class _Stream:
    """What one stream owns: its sources, its sinks (own MQTT connection: own status and last will)."""

    spec: StreamSpec
    sources: list[Source]
    live: bool
    sinks: list[Sink]  # the started ones
    options: PipelineOptions
    stats: PipelineStats = field(default_factory=PipelineStats)
    closed: bool = False


@dataclass
class _Shared:
    """What every stream of a run shares: the intent model, its engine and micro-batcher, Whisper
    (lru-cached in stream.asr) and the worker threads that run ASR and features
    (`pipeline.worker_threads`)."""

    model: DFMQMC
    tokenizer: Any
    features: Any
    anchors: IntentAnchors | None
    engine_name: str
    batcher: MicroBatcher
    executor: ThreadPoolExecutor
    whisper: AsrBatcher


def _sinks(
    publisher: Publisher, options: PipelineOptions, req: RunRequest, stats: PipelineStats, metrics: Any
) -> list[Sink]:
    """Every output of a stream; a new output is one line here. `metrics`: the run's
    MetricsServer, shared by its streams, or None."""
    sinks: list[Sink] = [MqttSink(publisher)]
    if options.hermes:
        sinks.append(HermesSink(publisher))
    if req.homeassistant.enabled:
        from stream.homeassistant import HomeAssistantSink

        sinks.append(HomeAssistantSink(publisher, options, req.homeassistant, _intent_names(req)))
    if metrics is not None:
        from stream.metrics import MetricsSink

        sinks.append(MetricsSink(metrics, publisher, stats))
    if options.record is not None:
        sinks.append(RecordSink(options, publisher))
    if options.show:
        from stream.show import ViewerSink

        sinks.append(ViewerSink())
    return sinks


async def _run_streams(
    req: RunRequest,
    specs: Sequence[StreamSpec],
    broker: BrokerOptions,
    pipe_opts: PipelineOptions,
    seg_opts: SegmenterOptions,
    on_ready: Any,
) -> list[StreamOutcome]:
    if pipe_opts.show and len(specs) > 1:
        raise ConfigError("--show", "one stream (the viewer shows one picture)", f"{len(specs)} streams")
    if req.pace == "fast" and (pipe_opts.partials or seg_opts.endpointing == "speculative"):
        # Provisional work waits for an idle pipeline, which a file read faster than real time never leaves.
        log.warning(
            "--pace fast: partial intents and speculative endpoints are seldom taken when the file is read "
            "faster than real time; use --pace realtime to see them"
        )
    # Cheap checks first: every stream's media opens (a missing track or a bad file fails here),
    # the broker answers and accepts each stream, then the model and Whisper load.
    streams: list[_Stream] = []
    for spec in specs:
        blocks = {"chunk_ms": SPECULATIVE_BLOCK_MS} if seg_opts.endpointing == "speculative" else {}
        try:
            sources, files = _sources(
                replace(req, input=spec.input, audio=spec.audio, video=spec.video),
                SourceOptions(pace=req.pace, **blocks),
            )
        except MediaError as exc:
            if spec.file is None:  # --input/--audio/--video: the error names the flag's value already
                raise
            raise spec.located(exc.source, exc) from exc
        streams.append(_Stream(spec, sources, not files, [], _stream_options(pipe_opts, spec.id, len(specs))))
    embedded = None
    if broker.url == "embedded":
        embedded = EmbeddedBroker(port=req.embedded_port)
        await embedded.start()
        host, port, tls = "127.0.0.1", req.embedded_port, False
    else:
        host, port, tls = parse_broker_url(broker.url)
    failing = False
    executor = ThreadPoolExecutor(max_workers=pipe_opts.worker_threads, thread_name_prefix="dfmq-work")
    asr_executor = ThreadPoolExecutor(max_workers=req.asr.parallel_calls, thread_name_prefix="dfmq-asr")
    metrics = None
    try:
        if req.metrics.port is not None:
            from stream.metrics import MetricsServer

            metrics = MetricsServer(req.metrics)  # one endpoint for every stream of the run
            metrics.start()
        for stream in streams:
            # A client id the user fixed would be shared by the streams' connections: one per stream.
            unique = broker.client_id is not None and len(streams) > 1
            options = replace(broker, client_id=f"{broker.client_id}-{stream.spec.id}") if unique else broker
            publisher = Publisher(options, stream.spec.id, host, port, tls)
            for sink in _sinks(publisher, stream.options, req, stream.stats, metrics):
                await sink.start()
                stream.sinks.append(sink)
        shared = _load_shared(req, executor, asr_executor)
        pipelines = [_build_pipeline(req, stream, seg_opts, shared) for stream in streams]
        for pipeline in pipelines:
            pipeline.emit(_run_started(req, pipeline, seg_opts))
        loop = asyncio.get_running_loop()

        def stop_all() -> None:
            for pipeline in pipelines:
                pipeline.stop()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, stop_all)
            loop.add_signal_handler(signal.SIGTERM, stop_all)
        if on_ready is not None:
            await on_ready(host, port)
        async with shared.batcher, asyncio.TaskGroup() as group:
            tasks = [group.create_task(_run_stream(stream, pipeline)) for stream, pipeline in zip(streams, pipelines)]
        outcomes = [task.result() for task in tasks]
    except BaseException:
        failing = True
        raise
    finally:
        executor.shutdown(wait=False)
        asr_executor.shutdown(wait=False)
        await _close_sinks([sink for s in streams if not s.closed for sink in s.sinks], raise_failure=not failing)
        if metrics is not None:
            metrics.stop()
        if embedded is not None:
            await embedded.stop()
    return outcomes


def _stream_options(options: PipelineOptions, stream_id: str, streams: int) -> PipelineOptions:
    """A stream's pipeline options: its id; with several streams, its own record file
    (`FILE.jsonl` -> `FILE.<stream_id>.jsonl`: one writer per file, one stream per report)."""
    options = replace(options, stream_id=stream_id)
    if options.record is not None and streams > 1:
        path = Path(options.record)
        options = replace(options, record=str(path.with_name(f"{path.stem}.{stream_id}{path.suffix}")))
    return options


async def _run_stream(stream: _Stream, pipeline: Pipeline) -> StreamOutcome:
    """One stream to its end, then its sinks closed (its status goes offline); its own failure,
    whether a stage's, a source's or its sinks', is its outcome and not the run's."""
    began = time.monotonic()
    error: DfmqError | None = None
    try:
        await pipeline.run()
    except DfmqError as exc:
        error = exc
    for source in stream.sources:
        if error is None and isinstance(source.error, DfmqError):
            error = source.error
        elif error is None and source.error is not None:
            raise source.error
    stream.closed = True
    try:
        await _close_sinks(stream.sinks, raise_failure=error is None)
    except DfmqError as exc:
        error = exc
    log.info("stream %s done in %.1f s: %s", stream.spec.id, time.monotonic() - began, pipeline.stats)
    if error is not None:
        log.error("stream %s ended with an error: %s", stream.spec.id, error)
    return StreamOutcome(stream.spec.id, pipeline.stats, error)


def _load_shared(req: RunRequest, executor: ThreadPoolExecutor, asr_executor: ThreadPoolExecutor) -> _Shared:
    ckpt_dir = resolve_ckpt(req.ckpt)
    model, tokenizer = load_checkpoint(ckpt_dir)
    features = check_live_compatible(model.config)
    anchors = _intent_anchors(model, tokenizer, ckpt_dir, req)
    choice = choose_engine(req.engine, req.device, int8_gate(model))
    engine = load_engine(model, choice, tokenizer=tokenizer)
    log.info("engine %s (%s)", engine.name, choice.reason)
    load_whisper(req.asr)  # load before the clock starts, not on the first utterance
    batcher = MicroBatcher(engine, BatcherOptions(max_batch=8, max_delay_ms=2.0))
    whisper = AsrBatcher(req.asr, asr_executor)
    return _Shared(model, tokenizer, features, anchors, engine.name, batcher, executor, whisper)


def _build_pipeline(req: RunRequest, stream: _Stream, seg_opts: SegmenterOptions, shared: _Shared) -> Pipeline:
    options = stream.options
    buffer = MediaBuffer(options)
    quality = LiveQuality(shared.model.config, shared.features, options.reference_momentum)
    tracker = FaceTracker(shared.features)
    segmenter = Segmenter(
        seg_opts,
        partial_interval_s=options.partial_interval_s if options.partials else None,
        speculate=seg_opts.endpointing == "speculative" or seg_opts.asr_in_pause,
    )
    pipeline = Pipeline(
        sources=stream.sources,
        live=stream.live,
        segmenting=Segmenting(segmenter, buffer),
        transcribing=Transcribing(shared.whisper),
        scoring=Scoring(quality, tracker, shared.executor),
        deciding=Deciding(
            shared.model.config,
            shared.tokenizer,
            shared.batcher,
            options,
            req.decision,
            shared.engine_name,
            shared.anchors,
        ),
        ticker=QualityTicker(buffer, quality, tracker, options),
        sinks=stream.sinks,
        options=options,
        stats=stream.stats,
    )
    if segmenter.speculate or segmenter.partial_interval_s is not None:
        provisional = Provisional(
            segmenter,
            pipeline.transcribing,
            pipeline.scoring,
            pipeline.deciding,
            pipeline.emit,
            pipeline.stats,
            pipeline.finished,
        )
        pipeline.segmenting.on_snapshot = provisional.offer
        pipeline.transcribing.heard_before = provisional.heard_before
        pipeline.side_stages.append(provisional.run)
    return pipeline


def _intent_names(req: RunRequest) -> tuple[str, ...]:
    """The names the run's events can carry, read before the model loads (what `_intent_anchors`
    will score: the run's intent set with a semantic space, else the checkpoint's trained labels)."""
    ckpt_dir = resolve_ckpt(req.ckpt)
    config, _ = read_checkpoint_config(ckpt_dir)
    if not config.semantic_space:
        return tuple(config.labels)
    return (req.intents if req.intents is not None else checkpoint_intent_set(ckpt_dir, config.labels)).names


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


def _intent_anchors(model: DFMQMC, tokenizer: Any, ckpt_dir: Path, req: RunRequest) -> IntentAnchors | None:
    if not model.config.semantic_space:
        if req.intents is not None or req.sentence_encoder is not None or req.adapted is not None:
            require_semantic_space(model)  # raises: a new intent set needs the semantic space
        log.warning("checkpoint %s has no semantic space: its trained labels only, nothing out of scope", ckpt_dir)
        return None
    intent_set = req.intents if req.intents is not None else checkpoint_intent_set(ckpt_dir, model.config.labels)
    encoder = None
    if req.sentence_encoder is not None:
        encoder = SentenceEncoder(req.sentence_encoder, req.device or "cpu")
    adaptation = None if req.adapted is None else load_adaptation(req.adapted, model, intent_set, req.device or "cpu")
    anchors = build_anchors(model, tokenizer, intent_set, encoder=encoder, adaptation=adaptation)
    kind = "trained head + descriptions" if anchors.trained else "descriptions and examples (no training)"
    if encoder is not None:
        kind += f", embedded by {req.sentence_encoder}"
    if adaptation is not None:
        kind += f", classified with the adaptation in {req.adapted}"
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
    """Close every sink, the MQTT one after those that may still hand it messages, and the record
    after it, so that the record's last line can count the events the broker never took; the first
    failure is raised once all are closed, unless the run is already failing with its own."""
    error: BaseException | None = None
    records = [sink for sink in sinks if isinstance(sink, RecordSink)]
    for sink in [sink for sink in reversed(sinks) if not isinstance(sink, RecordSink)] + records:
        try:
            await sink.close()
        except DfmqError as exc:
            log.error("%s", exc)
            error = error or exc
    if error is not None and raise_failure:
        raise error
