"""Prometheus metrics of `dfmq run --metrics-port PORT`: http://HOST:PORT/metrics.

Names start with `dfmq_`, are in base units (seconds) and carry the label `stream_id`:

- counters `dfmq_utterances_total`, `dfmq_dropped_items_total`, `dfmq_dropped_utterances_total`,
  `dfmq_mqtt_reconnects_total`, `dfmq_outbox_dropped_total` (read from the pipeline's and the
  publisher's own counts when scraped), and `dfmq_events_recognized_total{intent}`,
  `dfmq_events_not_recognized_total{reason}`, `dfmq_compute_seconds_total`,
  `dfmq_speech_seconds_total` (from the intent events);
- histograms `dfmq_stage_latency_seconds{stage}` (vad: speech end to the start of transcription,
  which is where an utterance waits when the pipeline is behind; asr, asr_in_pause: Whisper's time
  spent in the utterance's pause, off its path; features, engine, batch_wait)
  and `dfmq_latency_seconds` (speech end to the decision);
- gauges `dfmq_quality{channel}` (audio and video: the running quality; text: the last utterance's),
  `dfmq_fusion_weight{channel}` (w_audio, w_video of the last utterance), `dfmq_outbox_messages`
  and `dfmq_compute_realtime_ratio`.

The compute / real-time ratio is the work spent on the last RATIO_UTTERANCES utterances (ASR,
features and the model, in seconds) over the seconds of speech they hold. Above 1 the pipeline
needs longer to process speech than it takes to say it: a speaker who keeps talking gets ahead of
it, utterances wait (the vad stage latency grows) and a live device drops the oldest
(`dfmq_dropped_utterances_total`). `rate(dfmq_compute_seconds_total[5m]) /
rate(dfmq_speech_seconds_total[5m])` is the same ratio over any window.

The registry is the server's own (not prometheus_client's global one), and the per-stream state is
keyed by stream id, so one server could serve several streams of a process.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from model.errors import ConfigError
from stream.messages import IntentEvent, QualityReport, SinkMessage
from stream.options import MetricsOptions
from stream.pipeline import PipelineStats
from stream.publisher import Publisher

log = logging.getLogger("dfmq.metrics")

RATIO_UTTERANCES = 20
# From a few milliseconds (the model on a GPU) to tens of seconds (a long utterance queued behind ASR).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGES = ("vad", "asr", "asr_in_pause", "features", "engine", "batch_wait")
COMPUTE_STAGES = ("asr", "asr_in_pause", "features", "engine")


@dataclass
class _Stream:
    stats: PipelineStats
    publisher: Publisher
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=RATIO_UTTERANCES))


class _RunCounts(Collector):
    """Counts the pipeline and the publisher keep anyway, read when scraped (no hook in their code)."""

    def __init__(self, streams: dict[str, _Stream]) -> None:
        self.streams = streams

    def collect(self) -> Iterator[Any]:
        counters = {
            "dfmq_utterances": ("Utterances cut by the VAD (dropped ones included).", lambda s: s.stats.utterances),
            "dfmq_dropped_items": (
                "Live capture items dropped because the pipeline fell behind.",
                lambda s: s.stats.dropped_items,
            ),
            "dfmq_dropped_utterances": (
                "Utterances dropped because ASR fell behind a live source.",
                lambda s: s.stats.dropped_utterances,
            ),
            "dfmq_mqtt_reconnects": (
                "Times the MQTT connection came back after it was lost.",
                lambda s: s.publisher.stats.reconnects,
            ),
            "dfmq_outbox_dropped": (
                "MQTT messages dropped because the outbox was full.",
                lambda s: s.publisher.stats.dropped_outbox_full,
            ),
        }
        for name, (doc, read) in counters.items():
            family = CounterMetricFamily(name, doc, labels=["stream_id"])
            for stream_id, stream in list(self.streams.items()):
                family.add_metric([stream_id], read(stream))
            yield family
        outbox = GaugeMetricFamily("dfmq_outbox_messages", "MQTT messages waiting in the outbox.", labels=["stream_id"])
        for stream_id, stream in list(self.streams.items()):
            outbox.add_metric([stream_id], len(stream.publisher.outbox))
        yield outbox


class MetricsServer:
    """A registry of its own and the HTTP endpoint that serves it."""

    def __init__(self, options: MetricsOptions) -> None:
        if options.port is None:
            raise ValueError("MetricsServer needs a port")
        self.options = options
        self.port: int = options.port
        self.registry = CollectorRegistry()
        self.streams: dict[str, _Stream] = {}
        labels = ["stream_id"]
        r = self.registry
        self.recognized = Counter(
            "dfmq_events_recognized", "Intent events with an intent.", [*labels, "intent"], registry=r
        )
        self.not_recognized = Counter(
            "dfmq_events_not_recognized", "Intent events without one, by reason.", [*labels, "reason"], registry=r
        )
        self.compute = Counter(
            "dfmq_compute_seconds", "Seconds of ASR, features and model work on utterances.", labels, registry=r
        )
        self.speech = Counter("dfmq_speech_seconds", "Seconds of audio in the utterances decided.", labels, registry=r)
        self.stage_latency = Histogram(
            "dfmq_stage_latency_seconds",
            "Seconds each stage took per utterance (vad: from speech end until transcription began).",
            [*labels, "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.latency = Histogram(
            "dfmq_latency_seconds",
            "Seconds from the end of speech to the intent decision.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.quality = Gauge("dfmq_quality", "Quality score in [0, 1] per channel.", [*labels, "channel"], registry=r)
        self.weight = Gauge(
            "dfmq_fusion_weight", "Fusion weight of the last utterance per channel.", [*labels, "channel"], registry=r
        )
        self.ratio = Gauge(
            "dfmq_compute_realtime_ratio",
            f"Work seconds per second of speech over the last {RATIO_UTTERANCES} utterances; above 1 the stream "
            "falls behind a speaker who keeps talking.",
            labels,
            registry=r,
        )
        self.registry.register(_RunCounts(self.streams))
        self._server: Any = None

    def start(self) -> None:
        try:
            self._server, _ = start_http_server(self.port, addr=self.options.host, registry=self.registry)
        except OSError as exc:
            if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:  # the host, not the port
                raise ConfigError(
                    "--metrics-host", f"a name or address of this machine ({exc.strerror})", self.options.host
                ) from None
            raise ConfigError(
                "--metrics-port", f"a port free to bind on {self.options.host} ({exc.strerror})", self.port
            ) from None
        log.info("Prometheus metrics on http://%s:%d/metrics", self.options.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def add_stream(self, stream_id: str, stats: PipelineStats, publisher: Publisher) -> None:
        self.streams[stream_id] = _Stream(stats, publisher)

    def observe_event(self, event: IntentEvent) -> None:
        sid = event.stream_id
        if event.intent is not None:
            self.recognized.labels(sid, event.intent).inc()
        else:
            self.not_recognized.labels(sid, event.reason or "unknown").inc()
        latency = event.latency_ms
        for stage in STAGES:
            # Whisper's time is in one of the two, or split between them: a 0 is not a stage that ran.
            skipped = stage in ("asr", "asr_in_pause") and not latency.get(stage)
            if stage in latency and not skipped:
                self.stage_latency.labels(sid, stage).observe(latency[stage] / 1000)
        self.latency.labels(sid).observe(latency["total"] / 1000)
        self.quality.labels(sid, "text").set(event.quality["text"])
        for channel in ("audio", "video"):
            self.weight.labels(sid, channel).set(event.weights[channel])
        work_s = sum(latency.get(stage, 0.0) for stage in COMPUTE_STAGES) / 1000
        speech_s = max(0.0, event.end - event.start)
        self.compute.labels(sid).inc(work_s)
        self.speech.labels(sid).inc(speech_s)
        stream = self.streams.get(sid)
        if stream is not None:
            stream.recent.append((work_s, speech_s))
            spoken = sum(s for _, s in stream.recent)
            if spoken > 0:
                self.ratio.labels(sid).set(sum(w for w, _ in stream.recent) / spoken)

    def observe_quality(self, report: QualityReport) -> None:
        self.quality.labels(report.stream_id, "audio").set(report.audio)
        self.quality.labels(report.stream_id, "video").set(report.video)


class MetricsSink:
    """One stream's metrics, on the run's server (which the run starts and stops: the streams of a
    `--streams` run share one endpoint, each under its `stream_id` label)."""

    name = "metrics"

    def __init__(self, server: MetricsServer, publisher: Publisher, stats: PipelineStats) -> None:
        self.server = server
        self.server.add_stream(publisher.stream_id, stats, publisher)

    async def start(self) -> None:
        return None

    def handle(self, message: SinkMessage) -> None:
        if isinstance(message, IntentEvent):
            self.server.observe_event(message)
        elif isinstance(message, QualityReport):
            self.server.observe_quality(message)

    async def close(self) -> None:
        return None
