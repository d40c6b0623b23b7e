"""Typed options of `dfmq run`: dataclasses filled once from `configs/live.yaml`, checked at the boundary."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from model.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", "an existing YAML file", str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("--config", f"valid YAML ({exc})", str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError("--config", "a mapping of sections at the top level", type(data).__name__, str(path))
    return data


def from_mapping(cls: type[T], data: dict[str, Any] | None, source: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and values of the wrong type."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(key, f"one of {sorted(fields)}", key, source)
        default = fields[key].default
        if default is not dataclasses.MISSING and default is not None:
            kind = type(default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                data[key] = float(value)
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(key, f"a {kind.__name__}", value, source)
    return cls(**data)


@dataclass(frozen=True)
class AsrOptions:
    model: str = "tiny.en"  # 'tiny.en' = the bundled CTranslate2 folder, or a model folder path
    device: str = "cpu"
    compute_type: str = "int8"
    beam_size: int = 1
    language: str = "en"
    # One thread: tiny.en's matrices are too small to share, and a second OpenMP thread only adds
    # CPU at every barrier (tools/latency_bench.py: lower ASR latency and CPU with 1 than with 2).
    cpu_threads: int = 1  # 0: CTranslate2's default (4, or fewer cores)
    encoder_min_window_s: float = 10.0  # 30.0: stock Whisper (every call padded to 30 s)

    def __post_init__(self) -> None:
        if self.cpu_threads < 0:
            raise ConfigError("cpu_threads", "0 (CTranslate2's default) or a positive thread count", self.cpu_threads)
        if not 1.0 <= self.encoder_min_window_s <= 30.0:
            raise ConfigError(
                "encoder_min_window_s", "seconds in [1, 30] (30 = stock Whisper)", self.encoder_min_window_s
            )


@dataclass
class SegmenterOptions:
    threshold: float = 0.5
    min_silence_ms: float = 400.0  # a pause this long ends an utterance
    min_speech_ms: float = 250.0  # shorter bursts are dropped
    speech_pad_ms: float = 150.0  # kept on both sides of the speech
    max_utterance_s: float = 12.0  # longer speech is split here

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError("threshold", "a probability in (0, 1)", self.threshold)
        if self.max_utterance_s <= self.min_speech_ms / 1000:
            raise ConfigError("max_utterance_s", "longer than min_speech_ms", self.max_utterance_s)


@dataclass
class PipelineOptions:
    stream_id: str = "cam0"
    top_k: int = 3
    publish_transcripts: bool = True
    hermes: bool = False
    quality_interval_s: float = 0.5
    quality_window_s: float = 2.0
    video_buffer_s: float = 30.0
    max_pending_utterances: int = 8
    max_pending_items: int = 2000
    reference_momentum: float = 0.2
    show: bool = False


@dataclass
class BrokerOptions:
    url: str = "embedded"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    client_id: str | None = None
    outbox_max: int = 10_000
    backoff_min_s: float = 0.2
    backoff_max_s: float = 5.0
    connect_timeout_s: float = 10.0  # `dfmq run` gives up with a clear error after this


LIVE_SECTIONS = ("asr", "segmenter", "pipeline", "broker")


@dataclass
class LiveOptions:
    """Everything `dfmq run` tunes besides its inputs, one section of `configs/live.yaml` each."""

    asr: AsrOptions = field(default_factory=AsrOptions)
    segmenter: SegmenterOptions = field(default_factory=SegmenterOptions)
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    broker: BrokerOptions = field(default_factory=BrokerOptions)


def load_live_options(path: Path | None) -> LiveOptions:
    """The options of a YAML file (sections asr, segmenter, pipeline, broker); defaults without one."""
    if path is None:
        return LiveOptions()
    raw = load_yaml(path)
    for section in raw:
        if section not in LIVE_SECTIONS:
            raise ConfigError("section", f"one of {list(LIVE_SECTIONS)}", section, str(path))
    return LiveOptions(
        asr=from_mapping(AsrOptions, raw.get("asr"), f"{path} [asr]"),
        segmenter=from_mapping(SegmenterOptions, raw.get("segmenter"), f"{path} [segmenter]"),
        pipeline=from_mapping(PipelineOptions, raw.get("pipeline"), f"{path} [pipeline]"),
        broker=from_mapping(BrokerOptions, raw.get("broker"), f"{path} [broker]"),
    )
