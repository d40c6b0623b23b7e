"""Scale-out over the broker: `dfmq capture` on the capture machines, `dfmq worker` wherever there is CPU or GPU.

    capture node: sources ─► CaptureInbox ─► Segmenting (VAD, media buffer) ─► Scoring (features, quality)
        ─► work item, QoS 1 ─► dfmq-internal/work/<stream_id>
    worker (any of a group, MQTT 5 shared subscription $share/<group>/dfmq-internal/work/+):
        Transcribing (Whisper) ─► Deciding (engine) ─► result, QoS 1 ─► dfmq-internal/result/<stream_id>
    capture node: results in utterance order ─► its sinks (dfmq/<stream_id>/intent, ...)

The broker is the whole cluster: a worker that joins the group takes a share of the items, one that
leaves takes none. The capture node is the one writer of its stream: it publishes each utterance
once, in order, holding a later result until the earlier ones are in or given up. An item without a
result after `work_timeout_s` (a worker died with it, or the broker lost it) is sent again; answers
to an utterance already published are dropped. After `max_attempts` sends the utterance is published
as `recognized: false` with reason `worker_timeout`: subscribers still see every utterance once and
the stream goes on, which an error ending the run would not give them.

Workers acknowledge on receipt (aiomqtt does not expose manual acknowledgement, and with clean
sessions a broker drops a dead worker's unacknowledged items anyway): the capture node's re-send is
what covers a worker dying mid-item.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import secrets
import signal
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from model.config import DFMQConfig
from model.errors import ConfigError
from model.features import ClipFeatures, FaceTracker
from stream.asr import NOTHING
from stream.messages import IntentEvent, ScoredWindow, Transcript, Utterance
from stream.options import (
    AsrOptions,
    BrokerOptions,
    DecisionOptions,
    PipelineOptions,
    ScaleOutOptions,
    SegmenterOptions,
)
from stream.pipeline import END, CaptureFront, PipelineStats
from stream.publisher import BrokerConnectError, BrokerTimeoutError, Failure, describe_failure, parse_broker_url
from stream.sinks import Sink
from stream.sources import Source
from stream.stages import AsrBatcher, Deciding, QualityTicker, Scoring, Segmenting, Transcribing
from stream.workitems import (
    WorkFormatError,
    WorkItem,
    WorkResult,
    from_pcm16,
    result_topic,
    shared_work_subscription,
    to_pcm16,
    work_topic,
)

if TYPE_CHECKING:
    from stream.run import RunRequest

log = logging.getLogger("dfmq.distributed")


def external_broker(url: str, flag: str = "--broker") -> tuple[str, int, bool]:
    """(host, port, tls) of the broker a capture node and its workers share."""
    if url == "embedded":
        raise ConfigError(
            flag,
            "mqtt://HOST[:PORT] or mqtts://HOST[:PORT] of an MQTT 5 broker (Mosquitto 2, EMQX): workers share "
            "items through MQTT 5 shared subscriptions, which the embedded broker does not speak",
            url,
        )
    return parse_broker_url(url)


def features_id(config: DFMQConfig) -> str:
    """Names the feature options a checkpoint was trained on: a worker decides only on items whose
    features were computed the way its own checkpoint expects."""
    text = json.dumps(config.feature_options, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---- one MQTT 5 connection ---------------------------------------------------------------------
class MqttLink:
    """An MQTT 5 connection that subscribes to `subscriptions`, hands each message to `on_message`
    (on the loop) and publishes; after the first connection it reconnects, backing off as the
    Publisher does, until `close`. A publish while the broker is away returns False at once: the
    capture node's deadline sends the item again, and a worker's lost result is re-sent work."""

    def __init__(
        self,
        options: BrokerOptions,
        host: str,
        port: int,
        tls: bool,
        identifier: str,
        subscriptions: Sequence[str],
        on_message: Callable[[Any], None],
    ) -> None:
        self.options = options
        self.host, self.port, self.tls = host, port, tls
        self.identifier = identifier
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.client: Any = None  # set while connected and subscribed
        self.reconnects = 0
        self._first: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._paho_error: str | None = None
        self._last_failure: Failure | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Connect and subscribe within connect_timeout_s, or raise BrokerConnectError."""
        self._first = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._loop(), name=f"dfmq-link-{self.identifier}")
        timeout_s = self.options.connect_timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(self._first), timeout_s)
        except TimeoutError:
            await self.close()
            reason = self._last_failure.reason if self._last_failure else f"no answer within {timeout_s:g} s"
            raise BrokerConnectError(
                self.host, self.port, f"{reason} (retried for {timeout_s:g} s)", "timeout"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.client = None

    async def publish(self, topic: str, payload: bytes, expiry_s: float | None = None) -> bool:
        """QoS 1; True once the broker acknowledged it. `expiry_s`: the broker drops the message if
        no subscriber has taken it by then (MQTT 5 message expiry)."""
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = self.client
        if client is None:
            return False
        properties = None
        if expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        try:
            await client.publish(topic, payload, qos=1, properties=properties, timeout=self.options.connect_timeout_s)
        except aiomqtt.MqttError as exc:
            log.warning("could not publish on %s (broker at %s): %s", topic, self.address, exc)
            return False
        return True

    def _client(self) -> Any:
        import aiomqtt

        tls_params = None
        if self.tls:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=self.options.ca_file,
                certfile=self.options.cert_file,
                keyfile=self.options.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        link = self

        class Keep(logging.Handler):
            """paho's warnings say why a connection closed: kept as the reason of the next failure."""

            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno >= logging.WARNING:
                    link._paho_error = record.getMessage()

        logger = logging.Logger("dfmq.distributed.mqtt", logging.WARNING)
        logger.addHandler(Keep())
        self._paho_error = None
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.identifier,
            username=self.options.username,
            password=self.options.password,
            tls_params=tls_params,
            protocol=aiomqtt.ProtocolVersion.V5,
            logger=logger,
        )

    async def _subscribe(self, client: Any) -> None:
        for topic in self.subscriptions:
            granted = await client.subscribe(topic, qos=1)
            if any(getattr(code, "value", code) >= 0x80 for code in granted):
                raise BrokerConnectError(
                    self.host,
                    self.port,
                    f"the broker refused the subscription {topic} (an ACL? see README, Scale-out over the broker)",
                    "auth",
                )

    async def _loop(self) -> None:
        import aiomqtt

        delay = self.options.backoff_min_s
        while True:
            try:
                async with self._client() as client:
                    await self._subscribe(client)
                    self.client = client
                    if self._first is not None and not self._first.done():
                        self._first.set_result(None)
                        log.info("connected to the MQTT broker at %s as %s", self.address, self.identifier)
                    else:
                        self.reconnects += 1
                        log.warning("broker at %s reachable again", self.address)
                    delay = self.options.backoff_min_s
                    async for message in client.messages:
                        self.on_message(message)
            except BrokerConnectError as exc:
                self.client = None
                if self._first is not None and not self._first.done():
                    self._first.set_exception(exc)
                    return
                log.error("%s", exc)
            except (aiomqtt.MqttError, OSError) as exc:
                self.client = None
                failure = describe_failure(exc, self.tls, self._paho_error)
                if self._first is not None and not self._first.done():
                    if failure.answered:
                        self._first.set_exception(
                            BrokerConnectError(self.host, self.port, failure.reason, failure.kind)
                        )
                        return
                    self._last_failure = failure
                else:
                    log.warning("broker at %s unreachable: %s; reconnecting", self.address, failure.reason)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(self.options.backoff_max_s, delay * 2)


# ---- the capture node --------------------------------------------------------------------------
UNSENT_POLL_S = 0.25  # how often a capture node looks whether the broker is back for its unsent items


@dataclass
class CaptureStats(PipelineStats):
    resent: int = 0  # sends after the first, when a deadline passed or a worker answered with an error
    given_up: int = 0  # utterances published as recognized false after max_attempts sends
    duplicates: int = 0  # answers to utterances already published (a re-sent one answered twice): dropped
    served_by: dict[str, int] = field(default_factory=dict)  # results published, per worker id


@dataclass(eq=False)
class _Pending:
    item: WorkItem
    vad_ms: float  # speech end to the utterance taken for features, on the capture clock
    sent_mono: dict[int, float] = field(default_factory=dict)  # per attempt
    deadline_mono: float = 0.0
    event: IntentEvent | None = None
    unsent: bool = False  # the broker did not take the last send: sent again once it is connected
    worker_error: str | None = None  # what a worker answered instead of a decision, on the last attempt


class CaptureNode(CaptureFront):
    """One stream's capture half: segments and scores locally, has workers decide, publishes the
    results through its sinks in utterance order, each once."""

    behind = "workers"
    stats: CaptureStats

    def __init__(
        self,
        sources: Sequence[Source],
        live: bool,
        segmenting: Segmenting,
        scoring: Scoring,
        ticker: QualityTicker,
        sinks: Sequence[Sink],
        options: PipelineOptions,
        scale: ScaleOutOptions,
        features_id: str,
    ) -> None:
        super().__init__(sources, live, segmenting, ticker, sinks, options, CaptureStats())
        self.scoring = scoring
        self.scale = scale
        self.features_id = features_id
        self.intents_id: str | None = None  # the intent set of the stream's first answer, and who sent it
        self.intents_worker = ""
        self.run_id = secrets.token_hex(6)
        self.link: MqttLink | None = None
        self.pending: dict[int, _Pending] = {}  # sent and not yet published, in utterance order
        self._changed = asyncio.Event()  # a result came in, or an utterance was sent
        self._slots = asyncio.Semaphore(scale.max_in_flight)
        self._input_done = False

    async def run(self, link: MqttLink) -> CaptureStats:
        self.link = link
        inbox, utterances = self._open_inbox()
        await self._run_stages(
            inbox, self._segment(inbox, utterances), self._dispatch(utterances), self._watch_deadlines()
        )
        return self.stats

    async def _dispatch(self, utterances: asyncio.Queue[Utterance | None]) -> None:
        while (utterance := await utterances.get()) is not END:
            await self._slots.acquire()
            taken = time.time()
            # Scoring reads only the utterance of its transcript: the transcript is the worker's to make.
            scored = await self.scoring.process(Transcript(utterance, "", NOTHING, taken, 0.0, 0.0))
            feats = scored.features
            item = WorkItem(
                run_id=self.run_id,
                stream_id=self.options.stream_id,
                utterance_id=utterance.utterance_id,
                attempt=0,
                timeout_s=self.scale.work_timeout_s,
                start_s=utterance.start_s,
                end_s=utterance.end_s,
                speech_end_wall_s=utterance.speech_end_wall,
                samples_pcm16=to_pcm16(utterance.samples),
                audio_features=feats.audio,
                video_features=feats.video,
                quality_audio=scored.quality_audio,
                quality_video=scored.quality_video,
                features_ms=scored.features_ms,
                features_id=self.features_id,
                top_k=self.options.top_k,
                publish_transcripts=self.options.publish_transcripts,
                forced_split=utterance.forced_split,
            )
            pending = _Pending(item, vad_ms=max(0.0, (taken - utterance.speech_end_wall) * 1000))
            self.pending[utterance.utterance_id] = pending
            await self._send(pending)
        self._input_done = True
        self._changed.set()

    async def _send(self, pending: _Pending) -> None:
        assert self.link is not None
        item = pending.item
        item.attempt += 1
        now = time.monotonic()
        pending.sent_mono[item.attempt] = now
        pending.deadline_mono = now + self.scale.work_timeout_s
        self._changed.set()
        sent = await self.link.publish(work_topic(item.stream_id), item.encode(), self.scale.work_timeout_s)
        pending.unsent = not sent
        if not sent:
            log.warning(
                "utterance %d not sent (attempt %d): sent again once the broker is back",
                item.utterance_id,
                item.attempt,
            )

    async def _watch_deadlines(self) -> None:
        """Sends again what has no result by its deadline, gives up after max_attempts, and ends
        the run once the input has ended and every utterance is published."""
        while not (self._input_done and not self.pending):
            now = time.monotonic()
            connected = self.link is not None and self.link.client is not None
            for pending in list(self.pending.values()):
                if pending.event is not None:
                    continue
                item = pending.item
                if pending.unsent and connected and item.attempt < self.scale.max_attempts:
                    # Not the workers' fault: no need to wait out the deadline (a broker outage).
                    log.info("utterance %d: the broker is back, sending it now", item.utterance_id)
                    await self._send(pending)
                    continue
                if pending.deadline_mono > now:
                    continue
                if item.attempt < self.scale.max_attempts:
                    self.stats.resent += 1
                    why = (
                        f"no result within {self.scale.work_timeout_s:g} s"
                        if pending.worker_error is None
                        else "a worker could not decide it"
                    )
                    log.warning(
                        "utterance %d: %s (attempt %d of %d); sending it again",
                        item.utterance_id,
                        why,
                        item.attempt,
                        self.scale.max_attempts,
                    )
                    pending.worker_error = None
                    await self._send(pending)
                else:
                    log.error(
                        "utterance %d: no result after %d sends; published as worker_timeout",
                        item.utterance_id,
                        item.attempt,
                    )
                    self._give_up(pending, "worker_timeout")
            waiting = [p.deadline_mono for p in self.pending.values() if p.event is None]
            self._changed.clear()
            wait_s = min(waiting) - time.monotonic() if waiting else 1.0
            if any(p.unsent and p.event is None for p in self.pending.values()):
                wait_s = min(wait_s, UNSENT_POLL_S)  # the link does not say when it is back: look again soon
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.01, wait_s))
        self.finished.set()

    # ---- results ---------------------------------------------------------------------------------
    def on_result(self, message: Any) -> None:
        """A message on the result topic (called on the loop by the link)."""
        try:
            result = WorkResult.decode(bytes(message.payload))
        except WorkFormatError as exc:
            log.warning("%s on %s: ignored", exc, message.topic)
            return
        if result.run_id != self.run_id:
            log.debug("a result of another run of stream %s: ignored", result.stream_id)
            return
        pending = self.pending.get(result.utterance_id)
        if pending is None or pending.event is not None:
            self.stats.duplicates += 1
            return
        if result.error is not None or result.event is None:
            self._on_error(pending, result)
            return
        if result.intents_id is not None:
            # Workers of one group deciding over different intent sets would publish a stream whose
            # events change meaning from one utterance to the next: the first set to answer is the stream's.
            if self.intents_id is None:
                self.intents_id, self.intents_worker = result.intents_id, result.worker_id
            elif result.intents_id != self.intents_id:
                error = (
                    f"its intent set ({result.intents_id}) is not the one this stream's first answer came with "
                    f"({self.intents_id}, from worker {self.intents_worker}): one worker group per intent set"
                )
                self._on_error(pending, replace(result, event=None, error=error))
                return
        try:
            event = self._event(pending, result)
        except TypeError as exc:  # fields of another event schema: a worker of another version
            log.error("worker %s sent a result this capture node cannot read (%s): ignored", result.worker_id, exc)
            return
        self.stats.served_by[result.worker_id] = self.stats.served_by.get(result.worker_id, 0) + 1
        self._resolve(pending, event)

    def _on_error(self, pending: _Pending, result: WorkResult) -> None:
        item = pending.item
        log.error(
            "worker %s could not decide utterance %d (attempt %d): %s",
            result.worker_id,
            item.utterance_id,
            result.attempt,
            result.error,
        )
        if result.attempt != item.attempt:
            return  # a later attempt is on its way already
        if item.attempt < self.scale.max_attempts:
            pending.worker_error = result.error
            pending.deadline_mono = 0.0  # the watcher sends it again now, maybe to another worker
            self._changed.set()
        else:
            self._give_up(pending, "worker_error")

    def _event(self, pending: _Pending, result: WorkResult) -> IntentEvent:
        item = pending.item
        fields = dict(result.event or {})
        sent = pending.sent_mono.get(result.attempt, pending.sent_mono[item.attempt])
        round_trip_ms = (time.monotonic() - sent) * 1000
        latency = {
            "vad": pending.vad_ms,
            "features": item.features_ms,
            # broker, both ways, and waiting for a worker: all the split adds (capture clock only)
            "dispatch": max(0.0, round_trip_ms - result.worker_ms),
            "asr": result.asr_ms,
            "asr_in_pause": 0.0,  # a capture node has no Whisper to hear the pause with
            # the worker's own queueing: its time on the item outside Whisper, the engine and the batch
            "worker_wait": max(0.0, result.worker_ms - result.asr_ms - result.engine_ms - result.batch_wait_ms),
            "engine": result.engine_ms,
            "batch_wait": result.batch_wait_ms,
            "total": (time.time() - item.speech_end_wall_s) * 1000,
        }
        fields["latency_ms"] = {k: round(v, 1) for k, v in latency.items()}
        if not item.publish_transcripts:
            fields["text"] = None
        return IntentEvent(**fields)

    def _give_up(self, pending: _Pending, reason: str) -> None:
        """No worker decided: the utterance is still published, once, in its place, with what the
        capture node knows of it (times, audio and video quality) and no decision."""
        self.stats.given_up += 1
        item = pending.item
        now = time.time()
        event = IntentEvent(
            stream_id=item.stream_id,
            utterance_id=item.utterance_id,
            start=round(item.start_s, 3),
            end=round(item.end_s, 3),
            speech_end_wall=round(item.speech_end_wall_s, 3),
            published_wall=round(now, 3),
            text=None,
            recognized=False,
            reason=reason,
            intent=None,
            confidence=0.0,
            transcript_confidence=0.0,
            scope=None,
            top_k=[],
            quality={"text": 0.0, "audio": round(item.quality_audio, 3), "video": round(item.quality_video, 3)},
            weights={},
            engine="none",
            latency_ms={
                "vad": round(pending.vad_ms, 1),
                "features": round(item.features_ms, 1),
                "total": round((now - item.speech_end_wall_s) * 1000, 1),
            },
        )
        self._resolve(pending, event)

    def _resolve(self, pending: _Pending, event: IntentEvent) -> None:
        pending.event = event
        self._slots.release()
        while self.pending:
            first = next(iter(self.pending.values()))
            if first.event is None:
                break
            del self.pending[first.item.utterance_id]
            self.emit(first.event)
            self.stats.events += 1
            self.stats.latency_ms.append(first.event.latency_ms["total"])
        self._changed.set()


async def run_capture(
    req: RunRequest, broker: BrokerOptions, pipe: PipelineOptions, seg: SegmenterOptions, scale: ScaleOutOptions
) -> CaptureStats:
    """`dfmq capture`: the request's ckpt, input, audio, video and pace are used."""
    from stream.run import _quiet_thread_pools

    with _quiet_thread_pools():
        return await _run_capture(req, broker, pipe, seg, scale)


async def _run_capture(
    req: RunRequest, broker: BrokerOptions, pipe: PipelineOptions, seg: SegmenterOptions, scale: ScaleOutOptions
) -> CaptureStats:
    from model.checkpoint import read_checkpoint_config, resolve_ckpt
    from stream.publisher import Publisher
    from stream.run import _close_sinks, _sinks, _sources
    from stream.sources import SourceOptions
    from stream.stages import LiveQuality, MediaBuffer, check_live_compatible
    from stream.vad import Segmenter

    host, port, tls = external_broker(broker.url)
    sources, files = _sources(req, SourceOptions(pace=req.pace))
    # The checkpoint's config is all the capture side needs: how to compute features and the
    # quality references; its weights stay with the workers.
    config, _ = read_checkpoint_config(resolve_ckpt(req.ckpt))
    feature_options = check_live_compatible(config)
    buffer = MediaBuffer(pipe)
    quality = LiveQuality(config, feature_options, pipe.reference_momentum)
    tracker = FaceTracker(feature_options)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfmq-capture")
    # No metrics endpoint on a capture node (yet): its sinks are those of a plain run's stream.
    sinks = _sinks(Publisher(broker, pipe.stream_id, host, port, tls), pipe, req, PipelineStats(), None)
    node = CaptureNode(
        sources=sources,
        live=not files,
        segmenting=Segmenting(Segmenter(seg), buffer),
        scoring=Scoring(quality, tracker, executor),
        ticker=QualityTicker(buffer, quality, tracker, pipe),
        sinks=sinks,
        options=pipe,
        scale=scale,
        features_id=features_id(config),
    )
    identifier = f"{broker.client_id}-work" if broker.client_id else f"dfmq-capture-{pipe.stream_id}-{os.getpid()}"
    link = MqttLink(broker, host, port, tls, identifier, [result_topic(pipe.stream_id)], node.on_result)
    started: list[Sink] = []
    failing = False
    try:
        # The event publisher first: it refuses a stream id another run is live on, and this
        # node's results topic is that stream's.
        for sink in sinks:
            await sink.start()
            started.append(sink)
        await link.start()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, node.stop)
            loop.add_signal_handler(signal.SIGTERM, node.stop)
        began = time.monotonic()
        stats = await node.run(link)
        log.info("capture done in %.1f s: %s", time.monotonic() - began, stats)
    except BaseException:
        failing = True
        raise
    finally:
        executor.shutdown(wait=False)
        await link.close()
        await _close_sinks(started, raise_failure=not failing)
    for source in sources:
        if source.error is not None:
            raise source.error
    return stats


# ---- the worker --------------------------------------------------------------------------------
@dataclass
class WorkerModels:
    """What a worker loads once and serves every item with: the checkpoint, its intent set, the
    engine, and Whisper's options (the Whisper model itself is cached by stream.asr)."""

    config: DFMQConfig
    tokenizer: Any
    anchors: Any  # model.semantic.IntentAnchors, or None for a checkpoint without the semantic space
    engine: Any  # engines.base.Engine
    engine_name: str
    asr: AsrOptions
    decision: DecisionOptions
    intents_id: str | None = None  # digest of the intent set decided over (IntentSet.digest)


def load_worker_models(req: RunRequest) -> WorkerModels:
    """The request's ckpt, engine, device, asr, decision and intents are used."""
    from engines.select import choose_engine, int8_gate, load_engine
    from model.checkpoint import checkpoint_intent_set, load_checkpoint, resolve_ckpt
    from stream.asr import load_whisper
    from stream.run import _intent_anchors
    from stream.stages import check_live_compatible

    ckpt_dir = resolve_ckpt(req.ckpt)
    model, tokenizer = load_checkpoint(ckpt_dir)
    check_live_compatible(model.config)  # refused here, as `dfmq run` does, not item after item
    anchors = _intent_anchors(model, tokenizer, ckpt_dir, req)
    choice = choose_engine(req.engine, req.device, int8_gate(model))  # as `dfmq run` picks
    engine = load_engine(model, choice, tokenizer=tokenizer)
    log.info("engine %s (%s)", engine.name, choice.reason)
    load_whisper(req.asr)
    intent_set = req.intents if req.intents is not None else checkpoint_intent_set(ckpt_dir, model.config.labels)
    return WorkerModels(
        model.config, tokenizer, anchors, engine, engine.name, req.asr, req.decision, intent_set.digest()
    )


@dataclass
class WorkerStats:
    served: int = 0  # results published
    errors: int = 0  # items answered with an error (another checkpoint's features, a bad stream id)
    stale: int = 0  # items skipped: older than their timeout, so already sent again
    unsent: int = 0  # results the broker did not take (the capture node sends the item again)


class Worker:
    """Decides work items: Whisper on the utterance, then the engine on the transcript and the
    capture node's features. One item at a time (its ASR executor is one thread anyway)."""

    def __init__(self, worker_id: str, models: WorkerModels, executor: ThreadPoolExecutor, batcher: Any) -> None:
        """`batcher`: an engines.batcher.MicroBatcher on models.engine, entered while serving."""
        self.worker_id = worker_id
        self.models = models
        self.batcher = batcher
        self.ready = asyncio.Event()  # subscribed: items sent from now on reach the group
        self.transcribing = Transcribing(AsrBatcher(models.asr, executor))
        self.features_id = features_id(models.config)
        self.stats = WorkerStats()

    async def process(self, item: WorkItem, received_mono: float) -> WorkResult:
        if item.features_id != self.features_id:
            return self._error(
                item,
                received_mono,
                f"features {item.features_id} from the capture node's checkpoint, this worker's checkpoint "
                f"expects {self.features_id} (one worker group per checkpoint)",
            )
        try:
            options = PipelineOptions(
                stream_id=item.stream_id, top_k=item.top_k, publish_transcripts=item.publish_transcripts
            )
        except ConfigError as exc:
            return self._error(item, received_mono, str(exc))
        utterance = Utterance(
            item.utterance_id,
            item.start_s,
            item.end_s,
            from_pcm16(item.samples_pcm16),
            item.speech_end_wall_s,
            item.forced_split,
        )
        transcript = await self.transcribing.process(utterance)
        scored = ScoredWindow(
            transcript,
            ClipFeatures(item.audio_features, item.video_features, None, None),
            item.quality_audio,
            item.quality_video,
            item.features_ms,
            0.0,  # measured on the capture node, where nothing else shares its thread
        )
        m = self.models
        deciding = Deciding(m.config, m.tokenizer, self.batcher, options, m.decision, m.engine_name, m.anchors)
        event = await deciding.process(scored)
        fields = asdict(event)
        del fields["latency_ms"]  # the worker's clock: the capture node times the event on its own
        return WorkResult(
            run_id=item.run_id,
            stream_id=item.stream_id,
            utterance_id=item.utterance_id,
            attempt=item.attempt,
            worker_id=self.worker_id,
            event=fields,
            asr_ms=round(transcript.asr_ms, 1),
            engine_ms=round(event.latency_ms["engine"], 1),
            batch_wait_ms=round(event.latency_ms["batch_wait"], 1),
            worker_ms=round((time.monotonic() - received_mono) * 1000, 1),
            intents_id=m.intents_id,
        )

    def _error(self, item: WorkItem, received_mono: float, error: str) -> WorkResult:
        log.error("stream %s utterance %d: %s", item.stream_id, item.utterance_id, error)
        return WorkResult(
            run_id=item.run_id,
            stream_id=item.stream_id,
            utterance_id=item.utterance_id,
            attempt=item.attempt,
            worker_id=self.worker_id,
            event=None,
            error=error,
            worker_ms=round((time.monotonic() - received_mono) * 1000, 1),
        )

    async def serve(self, broker: BrokerOptions, scale: ScaleOutOptions, stop: asyncio.Event) -> WorkerStats:
        """Take items from the group's shared subscription until `stop` is set; the item in hand is
        finished first. Items received and not begun are dropped: their capture nodes send them again."""
        host, port, tls = external_broker(broker.url)
        inbox: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
        identifier = f"{broker.client_id}-{self.worker_id}" if broker.client_id else f"dfmq-worker-{self.worker_id}"
        link = MqttLink(
            broker,
            host,
            port,
            tls,
            identifier,
            [shared_work_subscription(scale.group)],
            lambda message: inbox.put_nowait((bytes(message.payload), time.monotonic())),
        )
        await link.start()
        self.ready.set()
        log.info("worker %s serving group %s", self.worker_id, scale.group)
        try:
            while not stop.is_set():
                next_item = asyncio.ensure_future(inbox.get())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({next_item, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not next_item.done():
                    next_item.cancel()
                    break
                await self._serve_one(link, *next_item.result())
        finally:
            await link.close()
        log.info("worker %s done: %s (%d items left unserved)", self.worker_id, self.stats, inbox.qsize())
        return self.stats

    async def _serve_one(self, link: MqttLink, payload: bytes, received_mono: float) -> None:
        try:
            item = WorkItem.decode(payload)
        except WorkFormatError as exc:
            self.stats.errors += 1
            log.error("%s: dropped", exc)
            return
        where = f"stream {item.stream_id} utterance {item.utterance_id} (attempt {item.attempt})"
        if time.monotonic() - received_mono > item.timeout_s:
            self.stats.stale += 1
            log.info("%s: stale, skipped", where)
            return
        log.info("%s: working on it", where)
        result = await self.process(item, received_mono)
        if result.error is not None:
            self.stats.errors += 1
        if await link.publish(result_topic(item.stream_id), result.encode()):
            self.stats.served += result.error is None
        else:
            self.stats.unsent += 1


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def _reachable(host: str, port: int, timeout_s: float) -> None:
    """Something listens at the broker's address: told in a second, not after the models load
    (a login or TLS problem still shows when the worker connects)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        raise BrokerTimeoutError(host, port, timeout_s) from None
    except OSError as exc:
        failure = describe_failure(exc, False, None)
        raise BrokerConnectError(host, port, failure.reason, failure.kind) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def run_worker(req: RunRequest, broker: BrokerOptions, scale: ScaleOutOptions, worker_id: str) -> WorkerStats:
    """`dfmq worker` until SIGINT or SIGTERM."""
    from engines.batcher import BatcherOptions, MicroBatcher
    from stream.run import _quiet_thread_pools

    host, port, _ = external_broker(broker.url)
    await _reachable(host, port, broker.connect_timeout_s)
    with _quiet_thread_pools():
        # Models first, then the subscription: a worker takes items only once it can decide them.
        models = load_worker_models(req)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfmq-worker")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            async with MicroBatcher(models.engine, BatcherOptions(max_batch=8, max_delay_ms=2.0)) as batcher:
                return await Worker(worker_id, models, executor, batcher).serve(broker, scale, stop)
        finally:
            executor.shutdown(wait=False)
