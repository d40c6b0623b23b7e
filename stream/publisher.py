"""MQTT publishing with aiomqtt: QoS 1 intents, live quality, retained status with a last will.

`start()` connects once (or raises an error that names what went wrong: refused, not authorised,
TLS, host name, or nothing answering), refusing a stream id another live run publishes on. After
that the connection lives in a background task: messages wait in a bounded, counted outbox and
leave in order, each removed only once the broker has acknowledged it; while the broker is away
reconnects back off with jitter and a warning says how much is queued. `close()` drains the outbox
for at most `drain_timeout_s` and raises `UndeliveredError` when intent events could not go out.

Not thread-safe: `send` is called on the event loop that runs the publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import random
import secrets
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from model.errors import ConfigError, DfmqError
from stream.options import BrokerOptions

log = logging.getLogger("dfmq.publisher")

STATUS_CHECK_S = 0.5  # how long to wait for a retained status after SUBACK (it comes right after it)
STATUS_ONLY_DRAIN_S = 2.0  # close(): most time spent getting `offline` out when nothing else waits
CANCEL_GRACE_S = 1.0  # close(): how long the cancelled connection task may take to let go


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """`mqtt://host[:1883]` or `mqtts://host[:8883]` -> (host, port, tls)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise ConfigError("--broker", "'embedded', mqtt://HOST[:PORT] or mqtts://HOST[:PORT]", url)
    tls = parsed.scheme == "mqtts"
    try:
        port = parsed.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError("--broker", "a port number in 1..65535", url) from exc
    return parsed.hostname, port, tls


# ---- errors ------------------------------------------------------------------------------------
class BrokerError(DfmqError):
    """The MQTT broker at host:port could not be used as asked."""

    def __init__(self, host: str, port: int, message: str) -> None:
        self.host, self.port = host, port
        super().__init__(message)


class BrokerConnectError(BrokerError):
    """The first connection failed; `kind` says how: refused, auth, tls, hostname, dns,
    unreachable, protocol, closed, timeout."""

    def __init__(self, host: str, port: int, reason: str, kind: str = "other", message: str | None = None) -> None:
        self.reason, self.kind = reason, kind
        super().__init__(host, port, message or f"broker at {host}:{port}: {reason}")


class BrokerTimeoutError(BrokerConnectError):
    """Nothing answered (no refusal, no CONNACK) within connect_timeout_s."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(
            host,
            port,
            f"no answer within {timeout_s:g} s",
            "timeout",
            f"no MQTT broker answering at {host}:{port} within {timeout_s:g} s",
        )


class StreamIdInUseError(BrokerError):
    """The retained status of the stream id says `online`: another run publishes there."""

    def __init__(self, stream_id: str, host: str, port: int) -> None:
        self.stream_id = stream_id
        topic = f"dfmq/{stream_id}/status"
        super().__init__(
            host,
            port,
            f"stream id '{stream_id}' is in use: {topic} on the broker at {host}:{port} says 'online' "
            f"(another dfmq run publishes there); give this run another stream id or stop the other one "
            f"(a status left by a run that is gone can be cleared: "
            f"mosquitto_pub -h {host} -p {port} -r -t {topic} -m offline)",
        )


class UndeliveredError(BrokerError):
    """close(): intent events were still unacknowledged when drain_timeout_s ran out."""

    def __init__(
        self,
        count: int,
        host: str,
        port: int,
        waited_s: float,
        unreachable_since: float | None,
        dropped_full: int = 0,
    ) -> None:
        self.count, self.waited_s = count, waited_s
        self.unreachable_since, self.dropped_full = unreachable_since, dropped_full
        reasons = []
        if count > dropped_full:
            if unreachable_since is not None:
                since = time.strftime("%H:%M:%S", time.localtime(unreachable_since))
                reasons.append(f"broker at {host}:{port} unreachable since {since} (waited {waited_s:g} s)")
            else:
                reasons.append(f"broker at {host}:{port} did not acknowledge them within {waited_s:g} s")
        if dropped_full:
            reasons.append(f"{dropped_full} dropped from the full outbox while the broker at {host}:{port} was away")
        what = f"{count} intent event{'s' if count != 1 else ''} not delivered"
        super().__init__(host, port, f"{what}: {'; '.join(reasons)}")


# ---- what went wrong on a connection -----------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    reason: str  # one line, for people
    kind: str  # refused, auth, tls, hostname, dns, unreachable, protocol, closed, timeout, lost, other
    answered: bool  # something answered with a definite no: retrying the first connection will not help


_HOSTNAME_CODES = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_CONNACK_REASONS = {
    # v3.1.1 CONNACK return codes, and the MQTT v5 reason codes paho maps them to
    1: ("protocol", "the broker refused the protocol version (CONNACK 1)"),
    132: ("protocol", "the broker refused the protocol version (CONNACK 1 / 0x84)"),
    2: ("protocol", "the broker rejected the client id (CONNACK 2)"),
    133: ("protocol", "the broker rejected the client id (CONNACK 2 / 0x85)"),
    3: ("protocol", "the broker says it is unavailable (CONNACK 3)"),
    136: ("protocol", "the broker says it is unavailable (CONNACK 3 / 0x88)"),
    4: ("auth", "bad username or password (CONNACK 4)"),
    134: ("auth", "bad username or password (CONNACK 4 / 0x86)"),
    5: ("auth", "not authorised: wrong or missing username/password (CONNACK 5)"),
    135: ("auth", "not authorised: wrong or missing username/password (CONNACK 5 / 0x87)"),
    138: ("auth", "the broker has banned this client (CONNACK 0x8A)"),
    140: ("auth", "the broker refused the authentication method (CONNACK 0x8C)"),
}


CLOSED_BEFORE_CONNACK = "connection closed before CONNACK"


def _closed_before_connack(tls: bool, paho_error: str | None) -> Failure:
    detail = (paho_error or "").rsplit("] ", 1)[-1].split(" (_ssl.c")[0]
    if "alert certificate required" in detail or "alert handshake failure" in detail:
        return Failure(f"the broker requires a client certificate (TLS: {detail})", "tls", True)
    if "alert" in detail:
        return Failure(f"the broker refused the TLS connection ({detail})", "tls", True)
    if not tls:
        return Failure("the broker closed the connection before CONNACK (a TLS port? use mqtts://)", "closed", True)
    return Failure(f"the broker closed the connection before CONNACK ({detail or 'no reason given'})", "closed", True)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from or during (aiomqtt raises `MqttError(str(e)) from None`)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
    return seen


def describe_failure(exc: BaseException, tls: bool = False, paho_error: str | None = None) -> Failure:
    """Name a connection failure for what it is, from the exception aiomqtt raised and the last
    error paho logged (the only place that says why a connection closed before CONNACK)."""
    from aiomqtt.exceptions import MqttCodeError, MqttConnectError

    chain = _chain(exc)
    if CLOSED_BEFORE_CONNACK in str(exc):
        return _closed_before_connack(tls, paho_error)
    for item in chain:
        if isinstance(item, MqttConnectError):
            code = getattr(item.rc, "value", item.rc)
            if isinstance(code, int) and code in _CONNACK_REASONS:
                kind, reason = _CONNACK_REASONS[code]
                return Failure(reason, kind, True)
            return Failure(f"the broker refused the connection ({item})", "protocol", True)
    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError):
            message = item.verify_message or item.reason or str(item)
            if item.verify_code in _HOSTNAME_CODES:
                return Failure(f"TLS host name mismatch ({message})", "hostname", True)
            return Failure(f"TLS verification failed (certificate verify failed: {message})", "tls", True)
        if isinstance(item, ssl.SSLError) and not isinstance(item, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            detail = (item.reason or str(item)).lower().replace("_", " ")
            hint = "; is this a TLS port?" if item.reason == "WRONG_VERSION_NUMBER" else ""
            return Failure(f"TLS handshake failed ({detail}{hint})", "tls", True)
        if isinstance(item, ConnectionRefusedError):
            return Failure("connection refused (nothing listening on that port)", "refused", True)
        if isinstance(item, socket.gaierror):
            return Failure(f"host name not found ({item.strerror})", "dns", True)
        if isinstance(item, TimeoutError):
            return Failure("no answer (timed out)", "timeout", False)
        if isinstance(item, OSError) and item.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return Failure(f"{os.strerror(item.errno).lower()}", "unreachable", True)
        if isinstance(item, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionResetError | BrokenPipeError):
            if tls:
                return Failure(
                    "the broker closed the connection in the TLS handshake (a plain MQTT port?)", "closed", True
                )
            return Failure("the broker closed the connection", "closed", True)
    text = str(exc)
    if "timed out" in text.lower():
        return Failure("no answer (timed out)", "timeout", False)
    if isinstance(exc, MqttCodeError) or "disconnect" in text.lower():
        return Failure("connection lost", "lost", False)
    return Failure(text or type(exc).__name__, "other", False)


def _fail_fast_before_connack(client: Any) -> None:
    """aiomqtt waits its whole timeout for a CONNACK even when the broker has closed the connection
    (a plain client on a TLS port, a TLS client without the certificate the broker requires).
    Fail the wait when paho reports the close. Uses aiomqtt internals (`_client`, `_connected`),
    checked here: without them the wait just runs to its timeout, as before."""
    import aiomqtt

    paho = getattr(client, "_client", None)
    if paho is None or not isinstance(getattr(client, "_connected", None), asyncio.Future):
        return
    loop = asyncio.get_running_loop()
    inner = paho.on_disconnect

    def fail(future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_exception(aiomqtt.MqttError(CLOSED_BEFORE_CONNACK))
            future.exception()  # retrieved: __aenter__ may have stopped waiting already

    def on_disconnect(*args: Any, **kwargs: Any) -> None:
        inner(*args, **kwargs)
        future = client._connected
        if isinstance(future, asyncio.Future) and not future.done():
            loop.call_soon_threadsafe(fail, future)

    paho.on_disconnect = on_disconnect


# ---- the publisher -----------------------------------------------------------------------------
@dataclass
class PublisherStats:
    published: int = 0  # messages the broker acknowledged (QoS 1) or took (QoS 0)
    dropped_outbox_full: int = 0  # messages of any kind dropped because the outbox was full
    dropped_quality: int = 0  # QoS 0 messages never sent (outbox full, or still queued at close)
    reconnects: int = 0  # times the connection came back after it was lost
    connect_failures: int = 0  # connection attempts that failed after the first connection
    connected: bool = False
    undelivered: int = 0  # intent events never acknowledged (set by close)
    undelivered_other: int = 0  # other QoS 1 messages (e.g. hermes) never acknowledged (set by close)


@dataclass(eq=False)
class _Message:
    topic: str
    payload: dict[str, Any] | str | bytes
    qos: int
    retain: bool
    intent: bool  # handover_stamp: an intent event, stamped when handed to the client
    status: bool = False
    queued_mono: float = field(default_factory=time.monotonic)

    @property
    def important(self) -> bool:
        """Worth waiting for at close: QoS 1 and not our own status."""
        return self.qos >= 1 and not self.status


class Publisher:
    """One MQTT connection for one stream id. API: `start`, `topic`, `send`, `close`, `stats`."""

    def __init__(self, options: BrokerOptions, stream_id: str, host: str, port: int, tls: bool) -> None:
        self.options = options
        self.stream_id = stream_id
        self.host, self.port, self.tls = host, port, tls
        if not tls:
            for key in ("ca_file", "cert_file", "key_file"):
                if getattr(options, key) is not None:
                    raise ConfigError(key, "an mqtts:// broker (a TLS file given for a plain connection)", options.url)
        # Unique per process: a second run with the same stream id must not take over the first's session.
        self.client_id = options.client_id or f"dfmq-{stream_id}-{os.getpid()}-{secrets.token_hex(3)}"
        self._probe_id = (
            self.client_id if options.client_id is None else f"{options.client_id}-probe-{secrets.token_hex(3)}"
        )
        self.outbox: deque[_Message] = deque()
        self.stats = PublisherStats()
        self._wake = asyncio.Event()  # something was queued, or close() was called
        self._progress = asyncio.Event()  # the outbox shrank or the connection changed (close() waits on it)
        self._outage = asyncio.Event()  # set while the broker is away (after the first connection)
        self._first: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._checked = False  # the stream id was found free
        self._in_flight: _Message | None = None
        self._lost_intents = 0  # intent events dropped when the outbox was full
        self._lost_other = 0
        self._last_failure: Failure | None = None
        self._paho_error: str | None = None  # the last error paho logged on the current connection
        self._outage_since: float | None = None  # wall time
        self._outage_mono = 0.0
        self._outage_attempts = 0
        self._last_warning = 0.0
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def topic(self, leaf: str) -> str:
        return f"dfmq/{self.stream_id}/{leaf}"

    def subscribe(self, topic: str, on_message: Callable[[bytes], None]) -> None:
        """Hand the payload of every message on `topic` (one exact topic) to `on_message`, on the loop.

        For a sink that listens to one topic beside what it publishes (Home Assistant's birth
        message): it rides on this connection instead of a client of its own, so it shares the
        broker options, the reconnects and their backoff. Call before `start()`; the subscription
        is made again on every connection (clean sessions), so retained messages come again each time."""
        if self._task is not None:
            raise RuntimeError("Publisher.subscribe() after start()")
        self._subscriptions[topic] = on_message

    async def publish_retained(self, messages: list[tuple[str, bytes]]) -> None:
        """Connect on a client of its own (no will, no status: nothing says the stream is live),
        publish each (topic, payload) retained at QoS 1, and disconnect; for changes made while no
        run is live (`dfmq run --homeassistant-remove`). Raises BrokerConnectError or
        BrokerTimeoutError like `start()`."""
        import aiomqtt

        async def publish() -> None:
            async with self._client(will=False, identifier=self._probe_id) as client:
                for topic, payload in messages:
                    await client.publish(topic, payload, qos=1, retain=True)

        timeout_s = self.options.connect_timeout_s
        try:
            await asyncio.wait_for(publish(), timeout_s)
        except TimeoutError:
            raise BrokerTimeoutError(self.host, self.port, timeout_s) from None
        except (aiomqtt.MqttError, OSError) as exc:
            failure = describe_failure(exc, self.tls, self._paho_error)
            raise BrokerConnectError(self.host, self.port, failure.reason, failure.kind) from None

    # ---- queueing ------------------------------------------------------------------------------
    def send(
        self,
        topic: str,
        payload: dict[str, Any] | str | bytes,
        qos: int = 1,
        retain: bool = False,
        handover_stamp: bool = False,
    ) -> None:
        """Queue one message. `handover_stamp`: an intent event (a dict with `speech_end_wall` and
        `latency_ms`); `published_wall`, `latency_ms.queued` and `latency_ms.total` are set when it
        is handed to the client, so time spent waiting for the broker shows in the event."""
        if handover_stamp and not isinstance(payload, dict):
            raise TypeError("handover_stamp needs a dict payload")
        if not topic or "#" in topic or "+" in topic:
            # Refused here, in the stage that sent it: in the client's drain task it would end that task.
            raise ValueError(f"not a topic to publish to: {topic!r}")
        if len(self.outbox) >= self.options.outbox_max and not self._drop_one():
            self._count_dropped(_Message(topic, payload, qos, retain, handover_stamp))
            return
        self.outbox.append(_Message(topic, payload, qos, retain, handover_stamp))
        self._wake.set()

    def _drop_one(self) -> bool:
        """Make room: the oldest QoS 0 message (live quality is cheap to lose), else the oldest one.
        The message being published now is never dropped."""
        first = 1 if self.outbox and self.outbox[0] is self._in_flight else 0
        if first >= len(self.outbox):
            return False
        victim = next((i for i in range(first, len(self.outbox)) if self.outbox[i].qos == 0), first)
        message = self.outbox[victim]
        del self.outbox[victim]
        self._count_dropped(message)
        return True

    def _count_dropped(self, message: _Message) -> None:
        self.stats.dropped_outbox_full += 1
        if message.qos == 0:
            self.stats.dropped_quality += 1
        elif message.intent:
            self._lost_intents += 1
        elif not message.status:
            self._lost_other += 1

    def _encode(self, message: _Message) -> bytes:
        payload = message.payload
        if isinstance(payload, bytes):
            return payload
        if isinstance(payload, str):
            return payload.encode()
        if message.intent:
            now = time.time()
            payload = dict(payload)
            latency = dict(payload.get("latency_ms") or {})
            latency["queued"] = round((time.monotonic() - message.queued_mono) * 1000, 1)
            if payload.get("speech_end_wall") is not None:
                latency["total"] = round((now - float(payload["speech_end_wall"])) * 1000, 1)
            payload["published_wall"] = round(now, 3)
            payload["latency_ms"] = latency
        return json.dumps(payload).encode()

    def _count_queued(self) -> tuple[int, int]:
        """(intent events, all messages) in the outbox."""
        return sum(m.intent for m in self.outbox), len(self.outbox)

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (waiting at most connect_timeout_s), check the stream id is free, publish the
        retained `online`; the connection then lives in a background task until `close()`.

        Raises BrokerConnectError (BrokerTimeoutError when nothing answered) or StreamIdInUseError."""
        if self._task is not None:
            raise RuntimeError("Publisher.start() called twice")
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._task = asyncio.create_task(self._connection_loop(), name=f"dfmq-publisher-{self.stream_id}")
        self._task.add_done_callback(lambda _: self._progress.set())
        timeout_s = self.options.connect_timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(self._first), timeout_s)
        except TimeoutError:
            await self._stop_task()
            failure = self._last_failure
            if failure is None or failure.kind == "timeout":
                raise BrokerTimeoutError(self.host, self.port, timeout_s) from None
            raise BrokerConnectError(
                self.host, self.port, f"{failure.reason} (retried for {timeout_s:g} s)", failure.kind
            ) from None
        except BaseException:
            await self._stop_task()
            raise
        self._reporter = asyncio.create_task(self._report_outages(), name=f"dfmq-outages-{self.stream_id}")

    async def close(self) -> None:
        """Publish the retained `offline`, wait up to drain_timeout_s for the outbox to empty, then
        disconnect. Raises UndeliveredError when intent events are left (quality messages left are
        only counted, in stats.dropped_quality). Does nothing when start() did not succeed."""
        if self._closed or self._task is None or self._first is None or not self._first.done():
            return
        if self._first.cancelled() or self._first.exception() is not None:
            return
        self._closed = self._closing = True
        if not self._task.done():
            self.outbox.append(_Message(self.topic("status"), b"offline", 1, True, False, status=True))
            self._wake.set()
        drain_s = self.options.drain_timeout_s
        started = time.monotonic()
        intents, _ = self._count_queued()
        if intents and not self.stats.connected:
            log.warning(
                "broker at %s unreachable: waiting up to %g s to deliver %d queued intent events",
                self.address,
                drain_s,
                intents,
            )
        while not self._task.done():
            waited = time.monotonic() - started
            if not self.stats.connected and not any(m.important for m in self.outbox):
                # Only our `offline` (and quality) is left: try briefly, then the will or nothing.
                left = min(drain_s, STATUS_ONLY_DRAIN_S) - waited
            else:
                left = drain_s - waited
            if left <= 0:
                break
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)
        await self._stop_task()
        self.stats.connected = False
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter
        waited_s = time.monotonic() - started
        left_intents = sum(m.intent for m in self.outbox)
        self.stats.dropped_quality += sum(m.qos == 0 for m in self.outbox)
        self.stats.undelivered = left_intents + self._lost_intents
        self.stats.undelivered_other = sum(m.important and not m.intent for m in self.outbox) + self._lost_other
        if self.stats.undelivered_other:
            log.warning("%d other QoS 1 messages (hermes) not delivered", self.stats.undelivered_other)
        if self.stats.undelivered:
            raise UndeliveredError(
                self.stats.undelivered,
                self.host,
                self.port,
                round(min(waited_s, drain_s), 1),
                self._outage_since,
                self._lost_intents,
            )

    async def _stop_task(self) -> None:
        """Cancel the connection task and give it CANCEL_GRACE_S to let go; never hangs."""
        task = self._task
        if task is None or task.done():
            return
        for _ in range(2):
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE_S)
            if done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
                return
        log.warning("the MQTT connection task did not stop; leaving it")

    # ---- the connection --------------------------------------------------------------------------
    def _client(self, will: bool, identifier: str | None = None) -> Any:
        import aiomqtt

        tls_params = None
        if self.tls:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=self.options.ca_file,
                certfile=self.options.cert_file,
                keyfile=self.options.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self._paho_error = None
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=identifier or self.client_id,
            username=self.options.username,
            password=self.options.password,
            tls_params=tls_params,
            will=aiomqtt.Will(self.topic("status"), b"offline", qos=1, retain=True) if will else None,
            clean_session=True,
            logger=self._paho_logger(),
        )
        _fail_fast_before_connack(client)
        return client

    def _paho_logger(self) -> logging.Logger:
        """A logger of its own for paho and aiomqtt: their errors ("failed to receive on socket:
        ...") are kept as the reason of the next failure, not printed; all goes to
        dfmq.publisher.mqtt at DEBUG."""
        publisher = self
        forward = logging.getLogger("dfmq.publisher.mqtt")

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                text = record.getMessage()
                if record.levelno >= logging.WARNING:
                    publisher._paho_error = text
                forward.debug("%s", text)

        logger = logging.Logger(
            "dfmq.publisher.mqtt", logging.DEBUG if forward.isEnabledFor(logging.DEBUG) else logging.WARNING
        )
        logger.addHandler(Keep())
        return logger

    async def _check_stream_id(self, client: Any) -> None:
        """Refuse a stream id whose retained status is `online`: another run is live there.

        A connection of its own, without a will: a run refused here (or killed while it looks)
        cannot make the broker publish `offline` over the live run's status, and its client id is
        its own even when options.client_id is fixed (no takeover of a live run's session). The
        probe closes right after, so it does not unsubscribe."""
        granted = await client.subscribe(self.topic("status"), qos=1)
        if any(getattr(code, "value", code) >= 0x80 for code in granted):
            log.warning(
                "the broker at %s refused to let us read %s: stream id not checked", self.address, self.topic("status")
            )
            return
        # Retained messages come right after SUBACK: the first one, or nothing, within a moment.
        with contextlib.suppress(TimeoutError):
            message = await asyncio.wait_for(anext(aiter(client.messages)), STATUS_CHECK_S)
            if bytes(message.payload or b"").strip() == b"online":
                raise StreamIdInUseError(self.stream_id, self.host, self.port)

    async def _connection_loop(self) -> None:
        import aiomqtt

        delay = self.options.backoff_min_s
        while True:
            try:
                if not self._checked:
                    async with self._client(will=False, identifier=self._probe_id) as probe:
                        await self._check_stream_id(probe)
                    self._checked = True
                async with self._client(will=True) as client:
                    try:
                        await client.publish(self.topic("status"), b"online", qos=1, retain=True)
                        for topic in self._subscriptions:
                            await client.subscribe(topic, qos=1)
                        self._on_connected()
                        delay = self.options.backoff_min_s
                        if await self._serve(client):
                            return
                    except asyncio.CancelledError:
                        # Stopped from outside (close() gave up, or the run is torn down): leave no
                        # stale `online` behind; a clean DISCONNECT discards the will.
                        with contextlib.suppress(Exception, asyncio.CancelledError):
                            await asyncio.wait_for(
                                client.publish(self.topic("status"), b"offline", qos=1, retain=True), 0.5
                            )
                        raise
            except StreamIdInUseError as exc:
                if self._first is not None and not self._first.done():
                    self._first.set_exception(exc)
                return
            except (aiomqtt.MqttError, OSError) as exc:
                failure = describe_failure(exc, self.tls, self._paho_error)
                if self._first is not None and not self._first.done():
                    if failure.answered:
                        self._first.set_exception(
                            BrokerConnectError(self.host, self.port, failure.reason, failure.kind)
                        )
                        return
                    self._last_failure = failure
                else:
                    self._on_failure(failure)
            if self._closing:
                delay = min(delay, 1.0)  # close() is waiting: try more often
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(self.options.backoff_max_s, delay * 2)

    async def _serve(self, client: Any) -> bool:
        """Publish the outbox until close() drained it (True) or the connection fails (raises)."""
        watcher = asyncio.create_task(self._watch(client))
        drainer = asyncio.create_task(self._drain(client))
        try:
            done, _ = await asyncio.wait({watcher, drainer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watcher, drainer):
                task.cancel()
            await asyncio.gather(watcher, drainer, return_exceptions=True)
        if drainer in done:
            return drainer.result()
        watcher.result()  # raises MqttError: the connection went away
        return False

    async def _watch(self, client: Any) -> None:
        """Hands messages to their subscriber; returns (raising MqttError) as soon as the connection
        is lost, even while idle."""
        async for message in client.messages:
            on_message = self._subscriptions.get(str(message.topic))
            if on_message is not None:
                payload = message.payload
                on_message(bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload or "").encode())

    async def _drain(self, client: Any) -> bool:
        while True:
            while self.outbox:
                message = self.outbox[0]
                self._in_flight = message
                try:
                    await client.publish(message.topic, self._encode(message), qos=message.qos, retain=message.retain)
                finally:
                    self._in_flight = None
                if self.outbox and self.outbox[0] is message:
                    self.outbox.popleft()
                self.stats.published += 1
                self._progress.set()
            if self._closing:
                return True
            self._wake.clear()
            await self._wake.wait()

    # ---- outages ---------------------------------------------------------------------------------
    def _on_connected(self) -> None:
        self.stats.connected = True
        self._progress.set()
        if self._first is not None and not self._first.done():
            self._first.set_result(None)
            log.info("connected to the MQTT broker at %s as %s", self.address, self.client_id)
            return
        if self._outage_since is not None:
            intents, total = self._count_queued()
            self.stats.reconnects += 1
            log.warning(
                "broker at %s reachable again after %.1f s; delivering %d queued intent events (%d messages in all)",
                self.address,
                time.monotonic() - self._outage_mono,
                intents,
                total,
            )
        self._outage_since = None
        self._outage_attempts = 0
        self._outage.clear()

    def _on_failure(self, failure: Failure) -> None:
        self.stats.connected = False
        self._progress.set()
        self._last_failure = failure
        self._outage_attempts += 1
        self.stats.connect_failures += 1
        if self._outage_since is None:
            self._outage_since = time.time()
            self._outage_mono = time.monotonic()
            self._warn_outage()
            self._outage.set()

    def _warn_outage(self) -> None:
        self._last_warning = time.monotonic()
        intents, total = self._count_queued()
        reason = self._last_failure.reason if self._last_failure else "unknown"
        if self._outage_attempts <= 1:
            log.warning(
                "broker at %s unreachable: %s; %d intent events queued (%d messages in all)",
                self.address,
                reason,
                intents,
                total,
            )
        else:
            log.warning(
                "broker at %s still unreachable after %.0f s (%d attempts, last: %s); "
                "%d intent events queued (%d messages in all)",
                self.address,
                time.monotonic() - self._outage_mono,
                self._outage_attempts,
                reason,
                intents,
                total,
            )

    async def _report_outages(self) -> None:
        interval = self.options.outage_warning_interval_s
        while True:
            await self._outage.wait()
            await asyncio.sleep(max(0.0, self._last_warning + interval - time.monotonic()))
            if self._outage.is_set() and time.monotonic() >= self._last_warning + interval - 1e-3:
                self._warn_outage()
