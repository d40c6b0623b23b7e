"""The embedded MQTT broker (amqtt): the default when no broker URL is given, and `dfmq broker`.

Anonymous on loopback (what `dfmq run` starts); with a username and password, amqtt's password
file plugin checks them against an Argon2 hash (the plain password never touches the disk).
Listening beyond loopback without credentials must be asked for (`allow_anonymous=True`).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import random
import socket
import tempfile
from pathlib import Path
from typing import Any

from model.errors import ConfigError, DfmqError

EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOW_PORTS_FROM = 10000


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range where it can be read. A client that
    retries connecting to a port in that range before anything listens there can be given the same
    port as its own and connect to itself (TCP self-connect), holding the port the broker then cannot
    bind (seen once in CI: "address already in use")."""
    ephemeral_from = int(EPHEMERAL_PORTS.read_text().split()[0]) if EPHEMERAL_PORTS.is_file() else 0
    low_range = range(LOW_PORTS_FROM, ephemeral_from)
    candidates = random.sample(low_range, 50) if len(low_range) > 50 else []
    for port in [*candidates, 0]:
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free loopback port")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class BrokerBindError(DfmqError):
    """The embedded broker cannot listen on host:port (in use, not allowed, not an address here)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host, self.port, self.reason = host, port, reason
        super().__init__(f"embedded MQTT broker cannot listen on {host}:{port}: {reason}")


_BIND_REASONS = {
    errno.EADDRINUSE: "address already in use (another broker running there? pick another port)",
    errno.EACCES: "permission denied (ports below 1024 need privileges; pick another port)",
    errno.EADDRNOTAVAIL: "no such address on this machine",
}


class EmbeddedBroker:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        username: str | None = None,
        password: str | None = None,
        allow_anonymous: bool = False,
    ) -> None:
        """Anonymous on loopback by default; elsewhere anonymous needs allow_anonymous=True.
        username and password: both or neither."""
        if (username is None) != (password is None):
            given = "--username" if username is not None else "--password"
            raise ConfigError(given, "--username and --password together (or neither)", "only " + given)
        if username is not None and allow_anonymous:
            raise ConfigError("--allow-anonymous", "either --allow-anonymous or --username/--password", "both")
        if username is not None and (not username or ":" in username):
            raise ConfigError("--username", "a non-empty name without ':'", username)
        if username is None and not allow_anonymous and not is_loopback(host):
            raise ConfigError(
                "--host",
                "a loopback address unless --username/--password or --allow-anonymous are given "
                "(anyone who can reach it could publish and subscribe)",
                host,
            )
        if not 0 < port < 65536:
            raise ConfigError("--port", "a port number in 1..65535", port)
        self.host, self.port = host, port
        self.username, self._password = username, password
        self._broker: Any = None

    @property
    def anonymous(self) -> bool:
        return self.username is None

    def _config(self, password_file: Path | None) -> dict[str, Any]:
        plugins: dict[str, dict[str, Any]]
        if password_file is not None:
            plugins = {"amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(password_file)}}
        else:
            plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": plugins,
        }

    async def start(self) -> None:
        """Listen; raises BrokerBindError when host:port cannot be had."""
        from amqtt.broker import Broker
        from amqtt.errors import BrokerError

        # amqtt logs every connection at INFO, and a failed start with a traceback at ERROR: the
        # pipeline's own log is what users read, and a failed start is raised as one line below.
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)
        logging.getLogger("transitions").setLevel(logging.WARNING)
        with tempfile.TemporaryDirectory(prefix="dfmq-broker-") as folder:
            password_file = None
            if self.username is not None:
                from pwdlib.hashers.argon2 import Argon2Hasher

                # amqtt reads the file when the broker is made; the folder goes right after.
                password_file = Path(folder) / "passwd"
                password_file.write_text(f"{self.username}:{Argon2Hasher().hash(self._password or '')}\n")
                password_file.chmod(0o600)
            broker = Broker(self._config(password_file))
        try:
            await broker.start()
        except BrokerError as exc:
            cause = next((e for e in _chain(exc) if isinstance(e, OSError)), None)
            if cause is None:
                raise
            reason = _BIND_REASONS.get(cause.errno or 0, cause.strerror or str(cause))
            raise BrokerBindError(self.host, self.port, reason) from None
        finally:
            logging.getLogger("amqtt").setLevel(logging.ERROR)
        self._broker = broker

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    item: BaseException | None = exc
    while item is not None and item not in out:
        out.append(item)
        item = item.__cause__ or item.__context__
    return out
