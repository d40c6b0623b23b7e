"""MQTT publishing with aiomqtt: QoS 1 intents, live quality, retained status with a last will.

No event is lost while the broker is away: messages wait in a bounded, counted outbox and leave
in order, each removed only once the broker has acknowledged it; reconnects back off with jitter.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from model.errors import ConfigError
from stream.options import BrokerOptions


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


@dataclass
class PublisherStats:
    published: int = 0
    dropped_outbox_full: int = 0
    reconnects: int = 0
    connected: bool = False


class Publisher:
    def __init__(self, options: BrokerOptions, stream_id: str, host: str, port: int, tls: bool) -> None:
        self.options = options
        self.stream_id = stream_id
        self.host, self.port, self.tls = host, port, tls
        self.outbox: deque[tuple[str, bytes, int, bool]] = deque()
        self.stats = PublisherStats()
        self._wake = asyncio.Event()
        self._closing = False
        self._connected_once = asyncio.Event()

    def topic(self, leaf: str) -> str:
        return f"dfmq/{self.stream_id}/{leaf}"

    def send(self, topic: str, payload: dict[str, Any] | str, qos: int = 1, retain: bool = False) -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        if len(self.outbox) >= self.options.outbox_max:
            # Live quality is cheap to lose; intents are not, so quality goes first.
            for i, item in enumerate(self.outbox):
                if item[0].endswith("/quality"):
                    del self.outbox[i]
                    break
            else:
                self.outbox.popleft()
            self.stats.dropped_outbox_full += 1
        self.outbox.append((topic, data, qos, retain))
        self._wake.set()

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._connected_once.wait(), timeout_s)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()

    def _client(self) -> Any:
        import aiomqtt

        tls_params = None
        if self.tls:
            tls_params = aiomqtt.TLSParameters(ca_certs=self.options.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.options.client_id or f"dfmq-{self.stream_id}",
            username=self.options.username,
            password=self.options.password,
            tls_params=tls_params,
            will=aiomqtt.Will(self.topic("status"), b"offline", qos=1, retain=True),
            clean_session=True,
        )

    async def run(self) -> None:
        import aiomqtt

        delay = self.options.backoff_min_s
        while True:
            try:
                async with self._client() as client:
                    self.stats.connected = True
                    self._connected_once.set()
                    delay = self.options.backoff_min_s
                    await client.publish(self.topic("status"), b"online", qos=1, retain=True)
                    while True:
                        while self.outbox:
                            topic, data, qos, retain = self.outbox[0]
                            await client.publish(topic, data, qos=qos, retain=retain)
                            self.outbox.popleft()
                            self.stats.published += 1
                        if self._closing:
                            await client.publish(self.topic("status"), b"offline", qos=1, retain=True)
                            return
                        self._wake.clear()
                        await self._wake.wait()
            except aiomqtt.MqttError:
                self.stats.connected = False
                if self._closing and not self.outbox:
                    return
                self.stats.reconnects += 1
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(self.options.backoff_max_s, delay * 2)
