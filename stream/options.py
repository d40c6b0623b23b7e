"""Typed options of `dfmq run`: dataclasses filled once from `configs/live.yaml`, checked at the boundary.

Every field declares its rule once (`_option(default, rule)`); `check_fields`, called from each
`__post_init__`, applies them, so values from the YAML file and the command-line overrides applied
later with `dataclasses.replace` are checked alike, before anything heavy loads. Rules that relate
two fields of a section are the few lines after `check_fields` in that section's `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import yaml

from model.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", "an existing YAML file", str(path))
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _refuse_repeated_keys(node, path)
        data = (yaml.SafeLoader(text).construct_document(node) if node is not None else None) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError("--config", f"a UTF-8 text file (byte {exc.start} is not UTF-8)", str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError("--config", f"valid YAML ({where}{problem})", str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError("--config", "a mapping of sections at the top level", type(data).__name__, str(path))
    return data


def _refuse_repeated_keys(node: yaml.Node | None, path: Path) -> None:
    """A key given twice in one mapping: YAML keeps the last silently, the first edit is then lost."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    expected = f"each key once in its section (first on line {seen[key.value]})"
                    raise ConfigError(key.value, expected, f"again on line {key.start_mark.line + 1}", str(path))
                seen[key.value] = key.start_mark.line + 1
            _refuse_repeated_keys(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_repeated_keys(item, path)


def from_mapping(cls: type[T], data: dict[str, Any] | None, source: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and values of the wrong type.

    Fields with a rule (`_option`) are checked by the class itself; an error it raises gets `source`."""
    if data is not None and not isinstance(data, dict):
        section = source.rsplit("[", 1)[-1].rstrip("]") if source.endswith("]") else "section"
        raise ConfigError(section, "a mapping of options (key: value lines under it)", data, source)
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
            elif "rule" in fields[key].metadata:
                continue  # the rule names the accepted range, not only the type
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(key, f"a {kind.__name__}", value, source)
    try:
        return cls(**data)
    except ConfigError as exc:
        raise exc.sourced(source) from None


# --- rules: what an option accepts, in words (for the error) and as a test --------------------------


@dataclass(frozen=True)
class Rule:
    expected: str  # shown as "option 'KEY' expected <expected>, got VALUE"
    accepts: Callable[[Any], bool]
    secret: bool = False  # the error gives the type of a bad value, not the value (passwords)


def _option(default: Any, rule: Rule) -> Any:
    """A dataclass field with its rule; `check_fields` applies it."""
    return field(default=default, metadata={"rule": rule})


def check_fields(options: Any) -> None:
    """Raise ConfigError for the first field of dataclass `options` its rule rejects."""
    for f in dataclasses.fields(options):
        rule: Rule = f.metadata["rule"]  # every option declares one
        value = getattr(options, f.name)
        if not rule.accepts(value):
            raise ConfigError(f.name, rule.expected, f"<a {type(value).__name__}, not shown>" if rule.secret else value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(minimum: int = 1, note: str = "") -> Rule:
    return Rule(
        f"a whole number >= {minimum}{note}",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
    )


def _number(
    unit: str,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    note: str = "",
) -> Rule:
    """A finite int or float (never a bool) in [low, high], either end open when asked; high=None: no top."""
    if high is None:
        expected = f"{unit}, finite and {'>' if low_open else '>='} {low:g}{note}"
    else:
        expected = f"{unit} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}{note}"

    def accepts(v: Any) -> bool:
        if not _is_number(v) or not math.isfinite(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    return Rule(expected, accepts)


def _one_of(values: Collection[str], expected: str | None = None) -> Rule:
    return Rule(expected or f"one of {', '.join(values)}", lambda v: isinstance(v, str) and v in values)


def _flag() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool))


def _text(*, optional: bool, empty: bool = False) -> Rule:
    kind = "a string" if empty else "a non-empty string"
    return Rule(
        f"{kind} or null" if optional else kind,
        lambda v: (optional and v is None) or (isinstance(v, str) and (empty or v != "")),
    )


def _existing_file() -> Rule:
    return Rule("an existing file or null", lambda v: v is None or (isinstance(v, str) and Path(v).is_file()))


def _asr_model_ok(value: Any) -> bool:
    return isinstance(value, str) and (value in ("tiny.en", "base") or (Path(value) / "model.bin").is_file())


def _broker_url_ok(value: Any) -> bool:
    if value == "embedded":
        return True
    if not isinstance(value, str):
        return False
    parsed = urlparse(value)
    try:
        port = parsed.port
    except ValueError:  # not a number, or outside 0..65535
        return False
    return parsed.scheme in ("mqtt", "mqtts") and bool(parsed.hostname) and port != 0


def _record_path_ok(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str) or value == "":
        return False
    path = Path(value)
    return path.parent.is_dir() and not path.is_dir()


# It becomes a level of the MQTT topics dfmq/<stream_id>/...: no '/', no wildcards '+' '#', not empty.
STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

ASR_DEVICES = ("cpu", "cuda")
# faster-whisper passes compute_type to CTranslate2, which accepts these (and converts the weights).
COMPUTE_TYPES = (
    "default",
    "auto",
    "int8",
    "int8_float16",
    "int8_float32",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)
# faster_whisper.tokenizer._LANGUAGE_CODES (faster-whisper 1.2), written out so that checking an
# option does not import faster-whisper and CTranslate2.
_WHISPER_LANGUAGE_LIST = (
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht "
    "hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl "
    "ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh yue"
)
WHISPER_LANGUAGES = tuple(_WHISPER_LANGUAGE_LIST.split())


@dataclass(frozen=True)
class AsrOptions:
    # 'tiny.en' (bundled), 'base' (the asr-base extra: stream/asr.py) or a CTranslate2 model folder
    model: str = _option(
        "tiny.en",
        Rule("'tiny.en' (bundled), 'base' (asr-base extra) or a CTranslate2 folder with model.bin", _asr_model_ok),
    )
    device: str = _option("cpu", _one_of(ASR_DEVICES))
    compute_type: str = _option("int8", _one_of(COMPUTE_TYPES))
    beam_size: int = _option(1, _count(1))
    language: str = _option(
        "en", _one_of(WHISPER_LANGUAGES, f"a Whisper language code (en, de, fr, ...: {len(WHISPER_LANGUAGES)} in all)")
    )
    # One thread: tiny.en's matrices are too small to share, and a second OpenMP thread only adds
    # CPU at every barrier (tools/latency_bench.py: lower ASR latency and CPU with 1 than with 2).
    cpu_threads: int = _option(1, _count(0, " (0: CTranslate2's default)"))  # 0: 4, or fewer cores
    # 30.0: stock Whisper (every call padded to 30 s)
    encoder_min_window_s: float = _option(10.0, _number("seconds", 1, 30, note=" (30 = stock Whisper)"))
    # Utterances of different streams waiting together are transcribed in one batched call, at most
    # this many (1: one call each). 0.67x the CPU at 4 (tools/asr_batch_bench.py); one stream's
    # utterances go one at a time whatever this is.
    batch_max: int = _option(4, _count(1))
    # Whisper calls that may run at once (CTranslate2 workers, each on its own thread): with one, ASR
    # used at most one core however many streams waited (tools/scale_bench.py --asr-parallel 1,2).
    # One stream's utterances still go one at a time.
    parallel_calls: int = _option(2, _count(1))
    # faster-whisper's temperature fallback: where greedy decoding looks unreliable, decode again
    # sampling at rising temperatures. Off: the same samples always give the same transcript, alone or
    # in a batched call (which never falls back), and noise cannot cost several decodes.
    temperature_fallback: bool = _option(False, _flag())

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class SegmenterOptions:
    threshold: float = _option(0.5, _number("a probability", 0, 1, low_open=True, high_open=True))
    min_silence_ms: float = _option(400.0, _number("milliseconds", 0))  # a pause this long ends an utterance
    min_speech_ms: float = _option(250.0, _number("milliseconds", 0))  # shorter bursts are dropped
    speech_pad_ms: float = _option(150.0, _number("milliseconds", 0))  # kept on both sides of the speech
    max_utterance_s: float = _option(12.0, _number("seconds", 0, low_open=True))  # longer speech is split here
    # A forced split cuts at the quietest 32 ms window this far before max_utterance_s (0: at it; at
    # most half of max_utterance_s, so that lowering that alone never makes pieces tiny).
    split_search_s: float = _option(2.5, _number("seconds", 0))
    # speculative: at a pause of speculative_pause_ms the utterance so far is transcribed and decided,
    # and published at once when its transcript reads as a finished sentence (stream/endpointing.py);
    # otherwise, and with silence, an utterance ends after min_silence_ms of silence.
    endpointing: str = _option("silence", _one_of(("speculative", "silence")))
    speculative_pause_ms: float = _option(128.0, _number("milliseconds", 32))
    # ... and only when the voice fell at the pause: the pitch of its last voiced 80 ms below this
    # share of the utterance's median pitch (a sentence-final fall; a speaker pausing mid-sentence
    # holds the pitch up). 0 turns the check off (the transcript alone decides).
    final_pitch_ratio: float = _option(0.84, _number("a ratio", 0, 1))
    # silence: Whisper hears the utterance once its pause reaches speech_pad_ms (the samples the
    # hang-over will end it with) and the hang-over's end takes that transcript instead of calling
    # Whisper then; speech that resumes in the pause wastes the call. Ends no utterance early.
    asr_in_pause: bool = _option(True, _flag())

    def __post_init__(self) -> None:
        check_fields(self)
        if self.endpointing == "speculative" and self.speculative_pause_ms > self.min_silence_ms:
            raise ConfigError(
                "speculative_pause_ms",
                f"milliseconds, at most min_silence_ms ({self.min_silence_ms:g})",
                self.speculative_pause_ms,
            )
        if self.max_utterance_s <= self.min_speech_ms / 1000:
            raise ConfigError(
                "max_utterance_s",
                f"seconds, longer than min_speech_ms ({self.min_speech_ms:g} ms)",
                self.max_utterance_s,
            )


@dataclass
class PipelineOptions:
    stream_id: str = _option(
        "cam0",
        Rule(
            "1 to 64 characters of A-Z a-z 0-9 _ . - (it is a level of the MQTT topics)",
            lambda v: isinstance(v, str) and STREAM_ID.fullmatch(v) is not None,
        ),
    )
    top_k: int = _option(3, _count(1))
    publish_transcripts: bool = _option(True, _flag())
    hermes: bool = _option(False, _flag())
    # Every tick scores the last quality_window_s (face tracking included, on the worker thread that
    # ASR needs too) and publishes one MQTT message per stream. Below 50 ms (20 messages a second)
    # that floods the broker and every subscriber and takes CPU from ASR, while the quality of a
    # 2 s window cannot change meaningfully faster than that; 0 would be a busy loop.
    quality_interval_s: float = _option(0.5, _number("seconds", 0.05))
    quality_window_s: float = _option(2.0, _number("seconds", 0, low_open=True))
    video_buffer_s: float = _option(30.0, _number("seconds", 0, low_open=True))
    # asyncio.Queue(0) would be unbounded, and 0 capture slots would block the file sources for good.
    max_pending_utterances: int = _option(8, _count(1))
    max_pending_items: int = _option(2000, _count(1))
    # Threads for features, shared by the streams of a run (read from the run's options); Whisper has
    # its own (`asr.parallel_calls`). With two, one stream's features do not wait behind another's.
    worker_threads: int = _option(2, _count(1))
    reference_momentum: float = _option(0.2, _number("a fraction", 0, 1, low_open=True))  # model.quality
    show: bool = _option(False, _flag())
    # The session record (stream/record.py): a JSON Lines file; None: none is kept.
    record: str | None = _option(None, Rule("null or a file path in an existing folder (JSON Lines)", _record_path_ok))
    # One file's size; then it rotates, and at most record_keep_files older parts are kept beside it.
    record_max_mb: float = _option(50.0, _number("megabytes", 0, low_open=True))
    record_keep_files: int = _option(4, _count(0))
    # Provisional intents on dfmq/<stream_id>/partial while a person is still speaking, one per
    # partial_interval_s of speech; skipped while Whisper is busy (stream/endpointing.py).
    partials: bool = _option(False, _flag())
    partial_interval_s: float = _option(1.0, _number("seconds", 0.25))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.video_buffer_s < self.quality_window_s:
            raise ConfigError(
                "video_buffer_s", f"seconds, at least quality_window_s ({self.quality_window_s:g})", self.video_buffer_s
            )


@dataclass
class BrokerOptions:
    url: str = _option("embedded", Rule("'embedded', mqtt://HOST[:PORT] or mqtts://HOST[:PORT]", _broker_url_ok))
    username: str | None = _option(None, _text(optional=True, empty=True))
    password: str | None = _option(None, dataclasses.replace(_text(optional=True, empty=True), secret=True))
    ca_file: str | None = _option(None, _existing_file())  # CA certificate(s) for mqtts://
    cert_file: str | None = _option(None, _existing_file())  # client certificate (may hold the key too)
    key_file: str | None = _option(None, _existing_file())  # its private key, if not in cert_file
    client_id: str | None = _option(None, _text(optional=True))  # None: dfmq-<stream_id>
    outbox_max: int = _option(10_000, _count(1))
    # A backoff of 0 would reconnect in a tight loop (the delay doubles from 0 and stays 0).
    backoff_min_s: float = _option(0.2, _number("seconds", 0.01))
    backoff_max_s: float = _option(5.0, _number("seconds", 0.01))
    connect_timeout_s: float = _option(10.0, _number("seconds", 0, low_open=True))  # then a clear error
    # After the input ends, how long `dfmq run` waits for the broker to take the queued events.
    drain_timeout_s: float = _option(30.0, _number("seconds", 0))
    # While the broker is away, a warning with the queued count is logged this often.
    outage_warning_interval_s: float = _option(10.0, _number("seconds", 0, low_open=True))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.backoff_min_s > self.backoff_max_s:
            raise ConfigError(
                "backoff_min_s", f"seconds, at most backoff_max_s ({self.backoff_max_s:g})", self.backoff_min_s
            )
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError("key_file", "null unless cert_file (its client certificate) is given", self.key_file)


@dataclass
class DecisionOptions:
    """When an utterance is published as `recognized: false` (calibration: README, tools/trust_bench.py)."""

    # Whisper's own silence rule: no-speech probability at least this and mean log-probability
    # under -1.0 (faster-whisper's no_speech_threshold).
    no_speech_prob_min: float = _option(0.6, _number("a probability", 0, 1))
    # The recogniser's confidence in its transcript (model.quality.recogniser_confidence) under this:
    # `unreliable_transcript`.
    min_transcript_confidence: float = _option(0.25, _number("a probability", 0, 1))
    # The published confidence (calibrated intent probability x transcript confidence) under this:
    # `low_confidence`.
    min_confidence: float = _option(0.2, _number("a probability", 0, 1))

    def __post_init__(self) -> None:
        check_fields(self)


# One or more MQTT topic levels (HA's discovery_prefix): no wildcards, no empty level.
DISCOVERY_PREFIX = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


@dataclass
class HomeAssistantOptions:
    """Home Assistant MQTT discovery (stream/homeassistant.py)."""

    enabled: bool = _option(False, _flag())
    prefix: str = _option(
        "homeassistant",
        Rule(
            "topic levels of A-Z a-z 0-9 _ . - separated by '/' (Home Assistant's discovery prefix)",
            lambda v: isinstance(v, str) and DISCOVERY_PREFIX.fullmatch(v) is not None,
        ),
    )
    # True: the run's entities are removed from Home Assistant when it ends, instead of being kept
    # (shown unavailable through the status topic) until the next run.
    remove_at_close: bool = _option(False, _flag())

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class MetricsOptions:
    """The Prometheus endpoint (stream/metrics.py)."""

    # None: no endpoint. 0 is refused: an ephemeral port nobody could be told to scrape.
    port: int | None = _option(
        None,
        Rule(
            "a port number in 1..65535, or null (off)",
            lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535),
        ),
    )
    host: str = _option("127.0.0.1", _text(optional=False))  # loopback unless asked: metrics name the streams

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ScaleOutOptions:
    """`dfmq capture` and `dfmq worker`: utterances sent through the broker to shared workers."""

    # The worker group of the MQTT 5 shared subscription $share/<group>/...: one group shares the work.
    group: str = _option(
        "dfmq",
        Rule(
            "1 to 64 characters of A-Z a-z 0-9 _ . - (a level of the shared subscription)",
            lambda v: isinstance(v, str) and STREAM_ID.fullmatch(v) is not None,
        ),
    )
    # An utterance with no result this long after it was sent goes out again (and expires on the
    # broker, which then no longer hands the stale copy to a worker).
    work_timeout_s: float = _option(15.0, _number("seconds", 1, 3600))
    # Sends of one utterance before the capture node publishes it as recognized false, worker_timeout.
    max_attempts: int = _option(3, _count(1))
    # Utterances sent and not yet answered; a file waits for a free one, a live source drops the oldest.
    max_in_flight: int = _option(8, _count(1))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class LiveOptions:
    """Everything `dfmq run` tunes besides its inputs, one section of `configs/live.yaml` each."""

    asr: AsrOptions = field(default_factory=AsrOptions)
    segmenter: SegmenterOptions = field(default_factory=SegmenterOptions)
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    broker: BrokerOptions = field(default_factory=BrokerOptions)
    decision: DecisionOptions = field(default_factory=DecisionOptions)
    homeassistant: HomeAssistantOptions = field(default_factory=HomeAssistantOptions)
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    scaleout: ScaleOutOptions = field(default_factory=ScaleOutOptions)


LIVE_SECTIONS: dict[str, type[Any]] = {
    "asr": AsrOptions,
    "segmenter": SegmenterOptions,
    "pipeline": PipelineOptions,
    "broker": BrokerOptions,
    "decision": DecisionOptions,
    "homeassistant": HomeAssistantOptions,
    "metrics": MetricsOptions,
    "scaleout": ScaleOutOptions,
}


def load_live_options(path: Path | None) -> LiveOptions:
    """The options of a YAML file (its sections: `LIVE_SECTIONS`); defaults without one."""
    if path is None:
        return LiveOptions()
    raw = load_yaml(path)
    for section in raw:
        if section not in LIVE_SECTIONS:
            raise ConfigError("section", f"one of {list(LIVE_SECTIONS)}", section, str(path))
    return LiveOptions(
        **{name: from_mapping(cls, raw.get(name), f"{path} [{name}]") for name, cls in LIVE_SECTIONS.items()}
    )
