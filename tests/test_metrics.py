"""Prometheus metrics: scraped over real HTTP while a real `dfmq run` replays a clip in real time."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model.errors import ConfigError
from stream.broker import free_port
from stream.cli import main
from stream.metrics import MetricsServer
from stream.options import MetricsOptions
from tests.conftest import Mosquitto, require_binary

pytestmark = pytest.mark.broker

COUNTERS = (
    "dfmq_utterances",
    "dfmq_events_recognized",
    "dfmq_events_not_recognized",
    "dfmq_dropped_items",
    "dfmq_dropped_utterances",
    "dfmq_mqtt_reconnects",
    "dfmq_outbox_dropped",
    "dfmq_compute_seconds",
    "dfmq_speech_seconds",
)
GAUGES = ("dfmq_quality", "dfmq_fusion_weight", "dfmq_outbox_messages", "dfmq_compute_realtime_ratio")
HISTOGRAMS = ("dfmq_stage_latency_seconds", "dfmq_latency_seconds")


def scrape(port: int, host: str = "127.0.0.1") -> str | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples(text).items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture(scope="module")
def two_sentences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 10 s: a sentence the shipped model recognizes (Thank), an off-topic one (out of scope),
    and 4 s of silence, in which a real-time replay goes on after its last event (time to scrape it)."""
    require_binary("espeak-ng", "espeak-ng")
    from stream.render import speak, write_clip

    pause = np.zeros(16000, np.float32)
    first, second = speak("thank you so much for the help"), speak("my grandmother was born in spring")
    audio = np.concatenate([pause, first, pause, second, np.tile(pause, 4)])
    path = tmp_path_factory.mktemp("metrics") / "two_sentences.mp4"
    write_clip(path, audio, [], 15)
    return path


def test_scraped_during_a_real_time_run(two_sentences: Path, tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    port = free_port()
    command = [sys.executable, "-m", "stream.cli", "run", "--input", str(two_sentences), "--pace", "realtime"]
    command += ["--broker", f"mqtt://127.0.0.1:{broker.port}", "--engine", "onnxruntime", "--stream-id", "m1"]
    command += ["--metrics-port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scrapes: list[str] = []
    decided = 0.0
    try:
        deadline = time.monotonic() + 120
        # Scrape while it runs, until both utterances are decided.
        while decided < 2 and proc.poll() is None and time.monotonic() < deadline:
            text = scrape(port)
            if text is not None:
                scrapes.append(text)
                decided = value(text, "dfmq_events_recognized_total") + value(text, "dfmq_events_not_recognized_total")
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()
    assert proc.returncode == 0, err[-2000:]
    assert decided == 2, f"the scrapes during the run saw {decided} events"
    assert scrape(port) is None  # the endpoint ends with the run
    (tmp_path / "scrape.txt").write_text(scrapes[-1])
    first, last = scrapes[0], scrapes[-1]
    assert value(first, "dfmq_utterances_total", stream_id="m1") == 0  # served before the first utterance
    names = {n for n, _ in samples(last)}
    for name in COUNTERS:
        assert f"{name}_total" in names, name
    for name in GAUGES:
        assert name in names, name
    for name in HISTOGRAMS:
        assert {f"{name}_bucket", f"{name}_sum", f"{name}_count"} <= names, name
    assert all(dict(labels).get("stream_id") == "m1" for n, labels in samples(last) if n.startswith("dfmq_"))
    assert value(last, "dfmq_events_recognized_total", intent="Thank") == 1
    assert value(last, "dfmq_events_not_recognized_total", reason="out_of_scope") == 1
    assert value(last, "dfmq_utterances_total") == 2
    assert value(last, "dfmq_dropped_utterances_total") == value(last, "dfmq_mqtt_reconnects_total") == 0
    for stage in ("vad", "features", "engine", "batch_wait"):
        assert value(last, "dfmq_stage_latency_seconds_count", stage=stage) == 2, stage
    whisper_count = sum(value(last, "dfmq_stage_latency_seconds_count", stage=s) for s in ("asr", "asr_in_pause"))
    assert 2 <= whisper_count <= 4  # each utterance heard in its pause, after it, or partly both
    assert value(last, "dfmq_latency_seconds_count") == 2
    # base units: seconds, not milliseconds (two utterances of a tiny model take well under a minute)
    assert 0 < value(last, "dfmq_latency_seconds_sum") < 60
    whisper_s = sum(value(last, "dfmq_stage_latency_seconds_sum", stage=s) for s in ("asr", "asr_in_pause"))
    assert 0 < whisper_s < value(last, "dfmq_latency_seconds_sum")
    for channel in ("audio", "video", "text"):
        assert 0 <= value(last, "dfmq_quality", channel=channel) <= 1
    weights = value(last, "dfmq_fusion_weight", channel="audio") + value(last, "dfmq_fusion_weight", channel="video")
    assert 0 < weights <= 2
    ratio = value(last, "dfmq_compute_realtime_ratio")
    spoken = value(last, "dfmq_speech_seconds_total")
    assert 2 < spoken < 8  # the two sentences, with the VAD's padding
    assert ratio == pytest.approx(value(last, "dfmq_compute_seconds_total") / spoken)
    assert "dfmq run: 2 intent events from 2 utterances" in out


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = str(sock.getsockname()[0])
    return None if address.startswith("127.") else address


def test_own_registries_side_by_side_and_loopback_by_default() -> None:
    """Two servers in one process (the default global registry would refuse the second set of
    names); the endpoint answers on loopback and not on the machine's other address."""
    first, second = MetricsServer(MetricsOptions(port=free_port())), MetricsServer(MetricsOptions(port=free_port()))
    first.start()
    second.start()
    try:
        assert "dfmq_outbox_messages" in (scrape(first.port) or "")
        assert "dfmq_outbox_messages" in (scrape(second.port) or "")
        other = _non_loopback_address()
        if other is not None:
            assert scrape(first.port, other) is None
    finally:
        first.stop()
        second.stop()
    assert scrape(first.port) is None


def test_a_port_in_use_exits_2_with_one_line(
    two_sentences: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Mosquitto(tmp_path).start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            argv = ["run", "--input", str(two_sentences), "--broker", f"mqtt://127.0.0.1:{broker.port}"]
            assert main([*argv, "--metrics-port", str(port)]) == 2
        finally:
            broker.stop()
    err = capsys.readouterr().err
    assert err.startswith("dfmq run: error: option '--metrics-port' expected a port free to bind on 127.0.0.1")
    assert err.endswith(f"got {port}\n") and err.count("\n") == 1


@pytest.mark.parametrize("host", ["notahost.invalid", "192.0.2.1"])  # no such name; an address not of this machine
def test_a_host_that_cannot_be_bound_is_named_not_the_port(host: str) -> None:
    port = free_port()
    with pytest.raises(
        ConfigError, match=rf"option '--metrics-host' expected a name or address of this machine .*'{host}'"
    ):
        MetricsServer(MetricsOptions(port=port, host=host)).start()
