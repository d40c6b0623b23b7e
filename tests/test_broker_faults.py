"""Broker faults, each produced for real: a Mosquitto configured here (passwords, TLS with
certificates made by openssl on the fly), a stopped broker, a silent port, the embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from model.errors import ConfigError
from stream.broker import BrokerBindError, EmbeddedBroker, free_port
from stream.cli import main as cli_main
from stream.options import BrokerOptions
from stream.publisher import (
    BrokerConnectError,
    BrokerTimeoutError,
    Publisher,
    StreamIdInUseError,
    UndeliveredError,
)
from tests.conftest import Mosquitto, require_binary, until, wait_until

pytestmark = pytest.mark.broker
HOST = "127.0.0.1"
FAST = {"backoff_min_s": 0.05, "backoff_max_s": 0.2}  # reconnect often: the tests wait on it


# ---- helpers -------------------------------------------------------------------------------------
@contextlib.contextmanager
def mosquitto(folder: Path, config: str = "allow_anonymous true") -> Iterator[Mosquitto]:
    broker = Mosquitto(folder, config).start()
    try:
        yield broker
    finally:
        broker.stop()


def retained(port: int, topic: str) -> bytes | None:
    """The retained message on `topic` (None when there is none), read by a paho subscriber."""
    import paho.mqtt.client as mqtt

    got: list[bytes] = []
    subscribed: list[bool] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.on_subscribe = lambda *a: subscribed.append(True)
    client.connect(HOST, port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        wait_until(lambda: bool(subscribed), 5.0, "SUBACK")
        # a retained message follows its SUBACK at once; a round trip to ourselves bounds the wait
        client.subscribe(f"probe/{id(client)}", qos=1)
        client.publish(f"probe/{id(client)}", b"x", qos=1)
        wait_until(lambda: b"x" in got, 5.0, "probe")
    finally:
        client.disconnect()  # first: the network thread then ends at once
        client.loop_stop()
    return next((m for m in got if m != b"x"), None)


def options(**kw: Any) -> BrokerOptions:
    return BrokerOptions(**{"connect_timeout_s": 5.0, **FAST, **kw})


async def start_error(publisher: Publisher) -> tuple[BaseException, float]:
    """The error start() raised and the seconds it took."""
    started = time.monotonic()
    try:
        await publisher.start()
    except Exception as exc:
        return exc, time.monotonic() - started
    await publisher.close()
    raise AssertionError("start() succeeded")


def intent(utterance_id: int) -> dict[str, Any]:
    return {"utterance_id": utterance_id, "speech_end_wall": round(time.time(), 3), "latency_ms": {"asr": 1.0}}


# ---- TLS material --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tls:
    ca: Path
    wrong_ca: Path
    server: tuple[Path, Path]  # cert, key for localhost / 127.0.0.1
    elsewhere: tuple[Path, Path]  # cert, key for elsewhere.example only
    client: tuple[Path, Path]


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (folder / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(extensions + "\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", str(abs(hash(name)) % 10**9),
        "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    require_binary("openssl", "openssl")
    folder = tmp_path_factory.mktemp("tls")
    ca = _ca(folder, "dfmq-test-ca")
    wrong_ca, _ = _ca(folder, "another-ca")
    return Tls(
        ca=ca[0],
        wrong_ca=wrong_ca,
        server=_leaf(folder, "localhost", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        elsewhere=_leaf(folder, "elsewhere.example", ca, "subjectAltName=DNS:elsewhere.example"),
        client=_leaf(folder, "dfmq-client", ca, "extendedKeyUsage=clientAuth"),
    )


def tls_config(tls: Tls, cert: tuple[Path, Path], extra: str = "") -> str:
    return f"allow_anonymous true\ncafile {tls.ca}\ncertfile {cert[0]}\nkeyfile {cert[1]}\n{extra}"


# ---- connection errors, named ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def password_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    folder = tmp_path_factory.mktemp("passwd")
    passwd = folder / "passwd"
    exe = require_binary("mosquitto_passwd", "mosquitto")
    subprocess.run([exe, "-c", "-b", str(passwd), "dfmq", "s3cret"], check=True, capture_output=True)
    passwd.chmod(0o600)
    with mosquitto(folder, f"allow_anonymous false\npassword_file {passwd}") as broker:
        yield broker


@pytest.mark.parametrize("username,password", [("dfmq", "wrong"), (None, None), ("nobody", "s3cret")])
def test_refused_credentials_are_named(password_broker: Mosquitto, username: str | None, password: str | None) -> None:
    port = password_broker.port
    publisher = Publisher(options(username=username, password=password), "cam0", HOST, port, False)
    exc, took_s = asyncio.run(start_error(publisher))
    assert isinstance(exc, BrokerConnectError) and exc.kind == "auth"
    assert str(exc).startswith(f"broker at {HOST}:{port}: not authorised")  # Mosquitto answers CONNACK 5
    assert took_s < 2.0


def test_right_credentials_connect(password_broker: Mosquitto) -> None:
    async def body() -> None:
        publisher = Publisher(options(username="dfmq", password="s3cret"), "cam0", HOST, password_broker.port, False)
        await publisher.start()
        assert publisher.stats.connected
        await publisher.close()

    asyncio.run(body())


def test_tls_with_the_wrong_ca_names_the_verification_error(tls: Tls, tmp_path: Path) -> None:
    with mosquitto(tmp_path, tls_config(tls, tls.server)) as broker:
        wrong = Publisher(options(ca_file=str(tls.wrong_ca)), "cam0", HOST, broker.port, True)
        exc, took_s = asyncio.run(start_error(wrong))
        assert isinstance(exc, BrokerConnectError) and exc.kind == "tls"
        # Mosquitto sends its CA along with its certificate: OpenSSL names that chain's self-signed root
        assert re.fullmatch(
            rf"broker at {HOST}:{broker.port}: TLS verification failed \(certificate verify failed: "
            r"(self-signed certificate in certificate chain|unable to get local issuer certificate)\)",
            str(exc),
        ), str(exc)
        assert took_s < 2.0

        async def right() -> None:  # the same broker with the right CA: the material is sound
            publisher = Publisher(options(ca_file=str(tls.ca)), "cam0", HOST, broker.port, True)
            await publisher.start()
            await publisher.close()

        asyncio.run(right())


def test_tls_host_name_mismatch_is_named(tls: Tls, tmp_path: Path) -> None:
    with mosquitto(tmp_path, tls_config(tls, tls.elsewhere)) as broker:
        for host, said in ((HOST, "IP address mismatch"), ("localhost", "Hostname mismatch")):
            publisher = Publisher(options(ca_file=str(tls.ca)), "cam0", host, broker.port, True)
            exc, took_s = asyncio.run(start_error(publisher))
            assert isinstance(exc, BrokerConnectError) and exc.kind == "hostname"
            assert str(exc).startswith(f"broker at {host}:{broker.port}: TLS host name mismatch ({said}")
            assert took_s < 2.0


def test_client_certificate(tls: Tls, tmp_path: Path) -> None:
    with mosquitto(tmp_path, tls_config(tls, tls.server, "require_certificate true")) as broker:

        async def body() -> None:
            cert, key = tls.client
            publisher = Publisher(
                options(ca_file=str(tls.ca), cert_file=str(cert), key_file=str(key)), "cam0", HOST, broker.port, True
            )
            await publisher.start()
            assert publisher.stats.connected
            await publisher.close()
            exc, took_s = await start_error(Publisher(options(ca_file=str(tls.ca)), "cam0", HOST, broker.port, True))
            assert isinstance(exc, BrokerConnectError) and exc.kind == "tls"
            assert str(exc).startswith(f"broker at {HOST}:{broker.port}: the broker requires a client certificate")
            assert took_s < 2.0

        asyncio.run(body())


def test_tls_and_plain_ports_mixed_up(tls: Tls, tmp_path: Path) -> None:
    with mosquitto(tmp_path / "tls", tls_config(tls, tls.server)) as tls_broker, mosquitto(tmp_path / "plain") as plain:

        async def body() -> None:
            for port, secure, said in (
                (tls_broker.port, False, "the broker closed the connection before CONNACK (a TLS port? use mqtts://)"),
                (plain.port, True, "the broker closed the connection in the TLS handshake (a plain MQTT port?)"),
            ):
                exc, took_s = await start_error(
                    Publisher(options(ca_file=str(tls.ca) if secure else None), "cam0", HOST, port, secure)
                )
                assert str(exc) == f"broker at {HOST}:{port}: {said}"
                assert took_s < 2.0

        asyncio.run(body())


def test_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ca_file"):
        BrokerOptions(url="mqtts://localhost", ca_file=str(tmp_path / "nope.pem"))


def test_a_tls_file_on_a_plain_connection_is_a_config_error(tls: Tls) -> None:
    with pytest.raises(ConfigError, match=r"ca_file.*mqtts://"):
        Publisher(BrokerOptions(ca_file=str(tls.ca)), "cam0", HOST, 1883, False)


def test_nothing_listening_is_refused_at_once() -> None:
    port = free_port()
    exc, took_s = asyncio.run(start_error(Publisher(options(), "cam0", HOST, port, False)))
    assert isinstance(exc, BrokerConnectError) and exc.kind == "refused"
    assert str(exc) == f"broker at {HOST}:{port}: connection refused (nothing listening on that port)"
    assert took_s < 1.0


def test_a_silent_port_times_out_as_nothing_answering() -> None:
    """A port that takes the TCP connection and never says a word (no CONNACK)."""
    with socket.socket() as server:
        server.bind((HOST, 0))
        server.listen(4)
        port = server.getsockname()[1]
        publisher = Publisher(options(connect_timeout_s=1.0), "cam0", HOST, port, False)
        exc, took_s = asyncio.run(start_error(publisher))
    assert isinstance(exc, BrokerTimeoutError)
    assert str(exc) == f"no MQTT broker answering at {HOST}:{port} within 1 s"
    assert 0.9 < took_s < 2.5


# ---- one run per stream id ---------------------------------------------------------------------------
def test_a_second_run_with_the_same_stream_id_is_refused_and_the_first_is_left_alone(tmp_path: Path) -> None:
    with mosquitto(tmp_path) as broker:

        async def body() -> None:
            first = Publisher(options(), "cam0", HOST, broker.port, False)
            await first.start()
            second = Publisher(options(), "cam0", HOST, broker.port, False)
            exc, took_s = await start_error(second)
            assert isinstance(exc, StreamIdInUseError) and exc.stream_id == "cam0"
            assert str(exc).startswith(f"stream id 'cam0' is in use: dfmq/cam0/status on the broker at {HOST}:")
            assert took_s < 2.0
            assert first.client_id != second.client_id
            status = await asyncio.to_thread(retained, broker.port, "dfmq/cam0/status")
            assert status == b"online"  # no will of the second run, no takeover
            assert first.stats.connected and first.stats.reconnects == 0
            published = first.stats.published
            first.send(first.topic("probe"), "still here", retain=True)
            await until(lambda: first.stats.published > published, 5.0, "the first run publishing")
            other = Publisher(options(), "cam1", HOST, broker.port, False)  # another stream id: fine
            await other.start()
            await other.close()
            await first.close()
            third = Publisher(options(), "cam0", HOST, broker.port, False)  # free again
            await third.start()
            await third.close()

        asyncio.run(body())
        assert retained(broker.port, "dfmq/cam0/status") == b"offline"
        assert retained(broker.port, "dfmq/cam0/probe") == b"still here"


# ---- the broker goes away ------------------------------------------------------------------------------
def test_a_broker_gone_for_good_fails_close_with_the_undelivered_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dfmq.publisher")
    broker = Mosquitto(tmp_path).start()
    try:

        async def body() -> tuple[UndeliveredError, float, Publisher]:
            publisher = Publisher(
                options(drain_timeout_s=1.0, outage_warning_interval_s=0.3), "cam0", HOST, broker.port, False
            )
            await publisher.start()
            broker.stop()
            await until(lambda: not publisher.stats.connected, 5.0, "the publisher to see the broker gone")
            for i in range(3):
                publisher.send(publisher.topic("intent"), intent(i), qos=1, handover_stamp=True)
            for _ in range(5):
                publisher.send(publisher.topic("quality"), {"audio": 1.0}, qos=0)
            started = time.monotonic()
            with pytest.raises(UndeliveredError) as raised:
                await publisher.close()
            return raised.value, time.monotonic() - started, publisher

        error, took_s, publisher = asyncio.run(body())
    finally:
        broker.stop()
    assert error.count == 3 and publisher.stats.undelivered == 3
    assert publisher.stats.dropped_quality == 5  # counted, and not what fails the run
    assert re.fullmatch(
        rf"3 intent events not delivered: broker at {HOST}:{broker.port} unreachable since \d\d:\d\d:\d\d "
        r"\(waited 1 s\)",
        str(error),
    ), str(error)
    assert 0.9 < took_s < 2.0  # drain_timeout_s and a small margin
    ours = [r for r in caplog.records if r.name.startswith("dfmq.")]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert warnings[0].startswith(f"broker at {HOST}:{broker.port} unreachable: connection lost;")
    repeated = r"still unreachable after .*; 3 intent events queued \(9 messages in all\)"  # 9: `offline` too
    assert any(re.search(repeated, w) for w in warnings), warnings
    assert not any(r.exc_info for r in ours)  # never a traceback


def test_time_waited_in_the_outbox_shows_in_the_event(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dfmq.publisher")
    broker = Mosquitto(tmp_path).start()
    try:

        async def body() -> tuple[float, Publisher]:
            publisher = Publisher(options(), "cam0", HOST, broker.port, False)
            await publisher.start()
            broker.stop()
            await until(lambda: not publisher.stats.connected, 5.0, "the publisher to see the broker gone")
            sent = time.monotonic()
            # retained, so that the test's subscriber can read it after the broker is back
            publisher.send(publisher.topic("intent"), intent(7), qos=1, retain=True, handover_stamp=True)
            failures = publisher.stats.connect_failures
            await until(lambda: publisher.stats.connect_failures > failures, 5.0, "a failed reconnect")
            await asyncio.to_thread(broker.start)
            outage_s = time.monotonic() - sent
            await until(lambda: publisher.stats.reconnects == 1, 5.0, "the reconnect")
            await until(lambda: not publisher.outbox, 5.0, "the outbox to drain")
            await publisher.close()
            return outage_s, publisher

        outage_s, publisher = asyncio.run(body())
        event = json.loads(retained(broker.port, "dfmq/cam0/intent") or b"{}")
    finally:
        broker.stop()
    latency = event["latency_ms"]
    assert latency["asr"] == 1.0  # stages measured before are kept
    assert latency["queued"] >= outage_s * 1000
    assert event["published_wall"] > event["speech_end_wall"]
    assert latency["total"] == pytest.approx((event["published_wall"] - event["speech_end_wall"]) * 1000, abs=1.5)
    assert latency["total"] >= latency["queued"] - 1.5
    assert publisher.stats.undelivered == 0 and publisher.stats.reconnects == 1
    assert any("reachable again after" in r.getMessage() for r in caplog.records)


# ---- the embedded broker -------------------------------------------------------------------------------
def test_embedded_broker_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]

        async def body() -> BrokerBindError:
            with pytest.raises(BrokerBindError) as raised:
                await EmbeddedBroker(HOST, port).start()
            return raised.value

        error = asyncio.run(body())
        assert cli_main(["broker", "--port", str(port)]) == 2
    assert str(error) == (
        f"embedded MQTT broker cannot listen on {HOST}:{port}: "
        "address already in use (another broker running there? pick another port)"
    )
    err = capsys.readouterr().err
    assert err == f"dfmq broker: error: {error}\n"


def test_embedded_broker_with_a_password_refuses_a_wrong_one() -> None:
    async def body() -> None:
        broker = EmbeddedBroker(HOST, free_port(), username="dfmq", password="s3cret")
        await broker.start()
        try:
            for username, password in (("dfmq", "wrong"), (None, None)):
                refused = Publisher(options(username=username, password=password), "cam0", HOST, broker.port, False)
                exc, took_s = await start_error(refused)
                assert isinstance(exc, BrokerConnectError) and exc.kind == "auth", exc
                assert took_s < 2.0
            accepted = Publisher(options(username="dfmq", password="s3cret"), "cam0", HOST, broker.port, False)
            await accepted.start()
            await accepted.close()
        finally:
            await broker.stop()

    asyncio.run(body())


def test_embedded_broker_credentials_and_anonymous_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert EmbeddedBroker("127.0.0.1").anonymous  # what `dfmq run` starts: anonymous on loopback
    assert EmbeddedBroker("0.0.0.0", allow_anonymous=True).anonymous
    with pytest.raises(ConfigError, match="loopback"):
        EmbeddedBroker("0.0.0.0")
    with pytest.raises(ConfigError, match="--username and --password"):
        EmbeddedBroker(username="dfmq")
    assert cli_main(["broker", "--host", "0.0.0.0"]) == 2
    assert cli_main(["broker", "--password", "x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "--allow-anonymous" in err[0] and "--username and --password" in err[1]


@pytest.mark.parametrize("topic", ["hermes/intent/Rent#1", "dfmq/+/intent", ""])
def test_a_topic_no_broker_accepts_is_refused_where_it_is_sent(topic: str) -> None:
    publisher = Publisher(BrokerOptions(), "cam0", HOST, 1, False)
    with pytest.raises(ValueError, match="not a topic to publish to"):
        publisher.send(topic, {"intent": "x"})
    assert not publisher.outbox
