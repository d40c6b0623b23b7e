"""Every option of `dfmq run` is range-checked when loaded, through the real command line, before anything loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from model.errors import ConfigError
from stream.cli import main
from stream.options import LIVE_SECTIONS, BrokerOptions, PipelineOptions, SegmenterOptions, load_live_options

NAN, INF = float("nan"), float("inf")

# At least one bad value for every field of every section; a new field without an entry fails the test.
BAD: dict[str, dict[str, list[Any]]] = {
    "asr": {
        "model": ["no/such/model", 5],
        "device": ["gpu", "CUDA"],
        "compute_type": ["int4", "fp16"],
        "beam_size": [0, -1, True, 1.5],
        "language": ["english", "EN"],
        "cpu_threads": [-1, False, 2.0],
        "encoder_min_window_s": [0.5, 45, NAN],
        "batch_max": [0, -2, True, 2.5],
        "parallel_calls": [0, -1, True, 1.5],
        "temperature_fallback": ["yes", 1],
    },
    "segmenter": {
        "threshold": [0, 1, 1.5, NAN, True],
        "min_silence_ms": [-5, NAN, INF, "400"],
        "min_speech_ms": [-1, INF],
        "speech_pad_ms": [-0.1, NAN],
        "max_utterance_s": [0, -3, INF],
        "split_search_s": [-1, INF],
        "endpointing": ["vad", "", 1],
        "speculative_pause_ms": [0, 31, NAN],
        "final_pitch_ratio": [-0.1, 1.5, NAN],
        "asr_in_pause": ["yes", 1],
    },
    "pipeline": {
        "stream_id": ["a/b", "+", "#", "", "x" * 65, "cam 0", 7],
        "top_k": [0, True],
        "publish_transcripts": ["yes", 1],
        "hermes": [0],
        "quality_interval_s": [0, 0.01, -1, NAN],
        "quality_window_s": [0, INF],
        "video_buffer_s": [0, -1],
        "max_pending_utterances": [0],
        "worker_threads": [0, -1, 1.5, True],
        "max_pending_items": [0, -5],
        "reference_momentum": [0, 1.5, -0.2, NAN],
        "show": ["no"],
        "record": ["no/such/folder/session.jsonl", "", 5, "."],
        "record_max_mb": [0, -1, NAN, True],
        "record_keep_files": [-1, 1.5, False],
        "partials": ["yes", 1],
        "partial_interval_s": [0, 0.1, INF],
    },
    "broker": {
        "url": ["http://host:1883", "mqtt://", "mqtt://host:99999", "localhost"],
        "username": [5, ["a"]],
        "password": [1234],
        "ca_file": ["no/such/ca.pem"],
        "cert_file": ["no/such/client.pem"],
        "key_file": ["no/such/client.key"],
        "client_id": ["", 42],
        "outbox_max": [0, -1, 10.5],
        "backoff_min_s": [0, -0.2, NAN],
        "backoff_max_s": [0, INF],
        "connect_timeout_s": [-1, 0, NAN],
        "drain_timeout_s": [-1, INF],
        "outage_warning_interval_s": [0, -10],
    },
    "decision": {
        "no_speech_prob_min": [-0.1, 1.5, NAN],
        "min_transcript_confidence": [2, NAN, "high"],
        "min_confidence": [-1, INF, True],
    },
    "homeassistant": {
        "enabled": ["yes", 1],
        "prefix": ["", "a/+", "#", "home/", "/home", "a//b", "home assistant", 5],
        "remove_at_close": ["no", 0],
    },
    "metrics": {
        "port": [0, 65536, -1, True, 9100.0, "9100"],
        "host": ["", 127],
    },
    "scaleout": {
        "group": ["a/b", "+", "", 3],
        "work_timeout_s": [0, 0.5, INF, NAN],
        "max_attempts": [0, 1.5],
        "max_in_flight": [0, True],
    },
}

CASES = [
    pytest.param(section, f, value, id=f"{section}.{f.name}={value!r}")
    for section, cls in LIVE_SECTIONS.items()
    for f in dataclasses.fields(cls)
    for value in BAD[section].get(f.name, [None])
]


@pytest.fixture
def no_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dfmq run` must fail on its options before the pipeline (media, broker, model, Whisper) starts."""

    async def must_not_start(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the pipeline started although an option was out of range")

    monkeypatch.setattr("stream.run.run_pipeline", must_not_start)


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code or 0)


@pytest.mark.usefixtures("no_pipeline")
@pytest.mark.parametrize(("section", "f", "value"), CASES)
def test_every_option_rejects_a_bad_value_by_name_value_and_range(
    section: str, f: dataclasses.Field[Any], value: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if f.name not in BAD[section]:
        pytest.fail(f"BAD has no bad value for {section}.{f.name}: add one")
    config = tmp_path / "x.yaml"
    config.write_text(yaml.safe_dump({section: {f.name: value}}))
    assert _run(["run", "--config", str(config), "--input", "nonexistent.mp4"]) == 2
    err = capsys.readouterr().err.strip()
    # a whole number in a float option arrives as a float
    shown = float(value) if type(value) is int and isinstance(f.default, float) else value
    if f.name == "password":  # never printed
        assert str(value) not in err
        shown = f"<a {type(value).__name__}, not shown>"
    expected = f.metadata["rule"].expected
    assert err == f"dfmq run: error: {config} [{section}]: option '{f.name}' expected {expected}, got {shown!r}"
    assert "\n" not in err


@pytest.mark.usefixtures("no_pipeline")
@pytest.mark.parametrize(
    ("yaml_text", "line"),
    [
        (
            "segmenter:\n  min_silence_ms: -5\n",
            "[segmenter]: option 'min_silence_ms' expected milliseconds, finite and >= 0, got -5.0",
        ),
        (
            "segmenter:\n  min_silence_ms: .nan\n",
            "[segmenter]: option 'min_silence_ms' expected milliseconds, finite and >= 0, got nan",
        ),
        ("pipeline:\n  top_k: 0\n", "[pipeline]: option 'top_k' expected a whole number >= 1, got 0"),
        ("asr:\n  beam_size: 0\n", "[asr]: option 'beam_size' expected a whole number >= 1, got 0"),
        (
            "pipeline:\n  quality_interval_s: 0\n",
            "[pipeline]: option 'quality_interval_s' expected seconds, finite and >= 0.05, got 0.0",
        ),
        (
            "broker:\n  connect_timeout_s: -1\n",
            "[broker]: option 'connect_timeout_s' expected seconds, finite and > 0, got -1.0",
        ),
        ("broker:\n  outbox_max: 0\n", "[broker]: option 'outbox_max' expected a whole number >= 1, got 0"),
        (
            "pipeline:\n  reference_momentum: 1.5\n",
            "[pipeline]: option 'reference_momentum' expected a fraction in (0, 1], got 1.5",
        ),
        # relations between two options of a section
        (
            "broker:\n  backoff_min_s: 6\n",
            "[broker]: option 'backoff_min_s' expected seconds, at most backoff_max_s (5), got 6.0",
        ),
        (
            "broker:\n  backoff_max_s: 0.1\n",
            "[broker]: option 'backoff_min_s' expected seconds, at most backoff_max_s (0.1), got 0.2",
        ),
        (
            "segmenter:\n  max_utterance_s: 0.2\n",
            "[segmenter]: option 'max_utterance_s' expected seconds, longer than min_speech_ms (250 ms), got 0.2",
        ),
        (
            "segmenter:\n  endpointing: speculative\n  min_silence_ms: 100\n",
            "[segmenter]: option 'speculative_pause_ms' expected milliseconds, at most min_silence_ms (100), got 128.0",
        ),
        (
            "pipeline:\n  video_buffer_s: 1\n",
            "[pipeline]: option 'video_buffer_s' expected seconds, at least quality_window_s (2), got 1.0",
        ),
        ("pipeline:\n  top_k: true\n", "[pipeline]: option 'top_k' expected a whole number >= 1, got True"),
    ],
)
def test_known_bad_configs_exit_2_with_one_clear_line(
    yaml_text: str, line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "x.yaml"
    config.write_text(yaml_text)
    assert _run(["run", "--config", str(config), "--input", "nonexistent.mp4"]) == 2
    assert capsys.readouterr().err == f"dfmq run: error: {config} {line}\n"


@pytest.mark.usefixtures("no_pipeline")
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-silence-ms", "nan"], "option '--min-silence-ms' expected milliseconds, finite and >= 0, got nan"),
        (["--max-utterance-s", "-1"], "option '--max-utterance-s' expected seconds, finite and > 0, got -1.0"),
        (["--asr-threads", "-1"], "option '--asr-threads' expected a whole number >= 0"),
        (["--asr-compute-type", "int4"], "option '--asr-compute-type' expected one of default, auto, int8,"),
        (["--asr-min-window-s", "inf"], "option '--asr-min-window-s' expected seconds in [1, 30]"),
        (["--stream-id", "a/b"], "option '--stream-id' expected 1 to 64 characters of A-Z a-z 0-9 _ . -"),
        (["--broker", "http://host"], "option '--broker' expected 'embedded', mqtt://HOST[:PORT]"),
        (["--ca-file", "no/such/ca.pem"], "option '--ca-file' expected an existing file or null, got 'no/such/ca.pem'"),
        (["--metrics-port", "0"], "option '--metrics-port' expected a port number in 1..65535, or null (off), got 0"),
        (["--metrics-host", "::1"], "option '--metrics-host' expected --metrics-port (or metrics.port in the config)"),
        (
            ["--homeassistant", "ha/+"],
            "option '--homeassistant' expected topic levels of A-Z a-z 0-9 _ . - separated by '/'",
        ),
    ],
)
def test_command_line_overrides_are_checked_too(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["run", "--input", "nonexistent.mp4", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfmq run: error: option '") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("stream_id", ["cam0", "a", "x" * 64, "Cam_0.front-1", "..."])
def test_stream_id_accepts_one_topic_level(stream_id: str) -> None:
    assert PipelineOptions(stream_id=stream_id).stream_id == stream_id


@pytest.mark.parametrize("stream_id", ["", "a/b", "+", "#", "cam/#", "x" * 65, "cam 0", "cäm", "$SYS", "a\nb"])
def test_stream_id_rejects_what_is_not_one_topic_level(stream_id: str) -> None:
    with pytest.raises(ConfigError, match="stream_id") as caught:
        PipelineOptions(stream_id=stream_id)
    assert caught.value.key == "stream_id" and caught.value.got == stream_id
    with pytest.raises(ConfigError, match="stream_id"):
        dataclasses.replace(PipelineOptions(), stream_id=stream_id)


def test_tls_files_must_exist_and_a_key_needs_its_certificate(tmp_path: Path) -> None:
    missing = str(tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match=r"option 'ca_file' expected an existing file or null, got '.*ca\.pem'"):
        BrokerOptions(url="mqtts://broker.example", ca_file=missing)
    config = tmp_path / "live.yaml"
    config.write_text(f"broker:\n  url: mqtts://broker.example\n  ca_file: {missing}\n")
    with pytest.raises(ConfigError) as caught:
        load_live_options(config)
    assert (caught.value.key, caught.value.got, caught.value.source) == ("ca_file", missing, f"{config} [broker]")

    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-----BEGIN-----\n")
    files = {
        k: str(tmp_path / n)
        for k, n in [("ca_file", "ca.pem"), ("cert_file", "client.pem"), ("key_file", "client.key")]
    }
    assert BrokerOptions(url="mqtts://broker.example:8883", **files).key_file == files["key_file"]
    with pytest.raises(ConfigError, match="option 'key_file' expected null unless cert_file"):
        BrokerOptions(key_file=files["key_file"])


def test_defaults_and_the_new_broker_options() -> None:
    broker = BrokerOptions()
    assert (broker.drain_timeout_s, broker.outage_warning_interval_s) == (30.0, 10.0)
    assert (broker.cert_file, broker.key_file, broker.client_id) == (None, None, None)
    assert SegmenterOptions(min_silence_ms=0).min_silence_ms == 0  # 0 is in range: >= 0
    with pytest.raises(ConfigError, match="drain_timeout_s"):
        BrokerOptions(drain_timeout_s=-1.0)


def test_whisper_language_codes_match_faster_whisper() -> None:
    tokenizer = pytest.importorskip("faster_whisper.tokenizer")
    from stream.options import WHISPER_LANGUAGES

    assert tuple(WHISPER_LANGUAGES) == tuple(tokenizer._LANGUAGE_CODES)
