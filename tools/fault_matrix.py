"""Every fault case of `dfmq run` / `dfmq broker` against the real commands, with a verdict each.

Each case starts the real command line (`python -m stream.cli`, what the `dfmq` entry point runs)
as a bounded subprocess, against a real Mosquitto started here (TLS material made with openssl,
a password file with mosquitto_passwd) and watched by a real MQTT subscriber; clips are rendered
with espeak-ng. For each case it records the exit code, the last line of stderr, the seconds
taken and, for runs that publish, the intent events received; the verdict is the conjunction of
the case's explicit checks, each listed in the report. All traffic stays on 127.0.0.1 (one case
has `dfmq broker --host 0.0.0.0` listen for a moment; it is only ever reached on 127.0.0.1).

    .venv/bin/python tools/fault_matrix.py --json docs/results/fault_matrix.json [--slow]

Writes the JSON and a markdown table beside it (same name, .md). The cases that replay a clip at
real time (half a minute each when the product behaves, up to the time limit of a few minutes
when it hangs) are marked slow and run only with --slow; the rest take about a minute and a half.
`--only TEXT` runs the cases whose name or group contains TEXT; `--keep` keeps every command's
stdout/stderr. Exit status: 0 when every case that ran passed, 1 otherwise (the report is
written either way).

Needs mosquitto and mosquitto_passwd (Debian package mosquitto), openssl, ffmpeg and espeak-ng.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
DFMQ = [sys.executable, "-m", "stream.cli"]  # what the `dfmq` console script runs
HOST = "127.0.0.1"
USER, PASSWORD = "fm-user", "fm-secret"
DRAIN_TIMEOUT_S = 3.0
STRAY_SLACK_S = 6.0  # transcribing the last utterance and exiting, after the input ends
FEW_S = 5.0  # "within a few seconds" of the command's own start-up (imports)
LOAD_FREE_SLACK_S = 3.0  # "before anything loads": within this of the start-up baseline
RUN_LIMIT_S = 120.0  # bound of any one `dfmq run`
# What `dfmq run` writes on stderr while it loads the model (transformers' progress bar), picks
# the engine and runs Whisper: a run that failed "before anything loads" shows none of them.
LOAD_MARKERS = ("Loading weights", "dfmq.engines: engine", "faster_whisper")
SHORT_SENTENCES = ("thank you so much for the help", "hello there, good morning", "see you tomorrow, bye")
LONG_SENTENCES = (
    "thank you so much for the help",
    "hello there, good morning",
    "i am so sorry about the mess",
    "could you open the window please",
    "that is a wonderful idea",
    "see you tomorrow, bye",
)


class HarnessError(Exception):
    """The harness itself could not set a case up (a missing binary, a broker that did not start)."""


# ---------------------------------------------------------------- processes


@dataclass
class Observed:
    exit_code: int | None = None  # None: still running at the time limit (then killed)
    last_line: str = ""  # last non-empty line of stderr
    seconds: float = 0.0
    events: int | None = None  # intent events a subscriber received, for runs that publish
    detail: dict[str, Any] = field(default_factory=dict)


class Proc:
    """One command line in the background, its output in files (no pipe to fill), bounded."""

    def __init__(self, args: list[str], folder: Path, name: str) -> None:
        self.args = args
        self.out_path = folder / f"{name}.stdout"
        self.err_path = folder / f"{name}.stderr"
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        self.started = time.monotonic()
        self.started_wall = time.time()
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.ended: float | None = None
        self.timed_out = False

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is not None and self.ended is None:
            self.ended = time.monotonic()
        return code

    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def wait(self, limit_s: float) -> int | None:
        """Exit code, or None after killing it at `limit_s` seconds from its start."""
        remaining = max(0.0, limit_s - (time.monotonic() - self.started))
        try:
            self.popen.wait(remaining)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.ended = time.monotonic()
            self.kill()
            return None
        self.poll()
        return self.popen.returncode

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def last_line(self) -> str:
        lines = [line.strip() for line in self.stderr().splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def observed(self, events: int | None = None) -> Observed:
        code = None if self.timed_out else self.popen.returncode
        obs = Observed(code, self.last_line(), round(self.elapsed(), 2), events)
        if self.timed_out:
            obs.detail["killed_at_limit"] = True
        summary = run_summary(self.stdout())
        if summary is not None:
            obs.detail["summary_events"] = summary
        return obs


def run_summary(stdout: str) -> int | None:
    """N of `dfmq run`'s closing line 'dfmq run: N intent events from M utterances'."""
    found = re.search(r"dfmq run: (\d+) intent events? from (\d+) utterances", stdout)
    return int(found[1]) if found else None


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} not found: apt-get install {package}")
    return path


def quiet(args: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise HarnessError(f"{' '.join(args[:3])} failed: {result.stderr.strip()[-500:]}")


def port_open(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def wait_until(predicate: Callable[[], bool], limit_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


# ---------------------------------------------------------------- broker and subscriber


class Mosquitto:
    """A Mosquitto on local ports with the given listener lines; stop and start again at will."""

    def __init__(self, folder: Path, name: str, body: str, ports: list[int], persistence: bool = False) -> None:
        self.exe = tool("mosquitto", "mosquitto")
        self.folder = folder / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ports = ports
        lines = [f"user {getpass.getuser()}", body.strip()]  # no privilege drop: it reads our temp files
        if persistence:
            lines += ["persistence true", f"persistence_location {self.folder}/"]
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = self.folder / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.ports[0]

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        if not wait_until(lambda: all(port_open(p) for p in self.ports), 10.0):
            self.stop()
            raise HarnessError(f"mosquitto did not listen on {self.ports}: {self.log.read_text()[-800:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: it writes its persistence file and closes
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@dataclass
class Message:
    t: float  # time.monotonic() at arrival
    topic: str
    payload: bytes
    retain: bool
    dup: bool


class Subscriber:
    """paho-mqtt on dfmq/#, QoS 1; `persistent` keeps its session across a broker restart."""

    def __init__(
        self, port: int, persistent: bool = False, username: str | None = None, password: str | None = None
    ) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[Message] = []
        self.connected = False
        client_id = f"fm-sub-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
        if username is not None:
            self.client.username_pw_set(username, password)

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            client.subscribe("dfmq/#", qos=1)
            self.connected = True

        def on_disconnect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            self.connected = False

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            self.messages.append(Message(time.monotonic(), msg.topic, msg.payload, bool(msg.retain), bool(msg.dup)))

        self.client.on_connect = on_connect
        self.client.on_disconnect = on_disconnect
        self.client.on_message = on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect(HOST, port, keepalive=10)
        self.client.loop_start()
        if not wait_until(lambda: self.connected, 5.0):
            self.stop()
            raise HarnessError(f"the subscriber could not connect to {HOST}:{port}")
        time.sleep(0.2)  # the SUBACK

    def intents(self, stream_id: str) -> list[tuple[Message, dict[str, Any]]]:
        topic = f"dfmq/{stream_id}/intent"
        return [(m, json.loads(m.payload)) for m in list(self.messages) if m.topic == topic]

    def statuses(self, stream_id: str) -> list[Message]:
        topic = f"dfmq/{stream_id}/status"
        return [m for m in list(self.messages) if m.topic == topic]

    def stop(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


def retained_status(port: int, stream_id: str) -> str | None:
    """The retained dfmq/<id>/status as a fresh client sees it (None: nothing retained)."""
    sub = Subscriber(port)
    try:
        wait_until(lambda: bool(sub.statuses(stream_id)), 2.0)
        found = sub.statuses(stream_id)
        return found[-1].payload.decode() if found else None
    finally:
        sub.stop()


# ---------------------------------------------------------------- material


@dataclass
class Material:
    folder: Path
    scene: Path  # 3 sentences, 16 kHz audio
    scene_s: float
    long: Path  # 6 sentences, for the cases replayed at real time
    long_s: float
    scene_44k: Path
    scene_44k_rate: int
    video_only: Path
    audio_only: Path
    empty: Path
    random_bytes: Path
    truncated: Path  # index at the end, cut in half
    truncated_faststart: Path  # index first, cut in half: FFmpeg opens it
    absent: Path
    ca: Path
    other_ca: Path
    missing_ca: Path
    tls_right: Path  # server certificate for IP:127.0.0.1
    tls_wrong_host: Path  # server certificate for DNS:dfmq-broker.invalid only
    password_file: Path


def make_material(folder: Path) -> Material:
    import av

    from stream.render import render_scene, write_clip

    def clip(name: str, sentences: tuple[str, ...]) -> tuple[Path, float]:
        audio, frames, _, _ = render_scene(sentences, snr_db=60.0, dark_gain=1.0, fps=15, seed=0)
        path = folder / name
        write_clip(path, audio, frames, 15)
        return path, len(audio) / 16000

    ffmpeg = [tool("ffmpeg", "ffmpeg"), "-loglevel", "error", "-y", "-i"]

    def remux(out: Path, *options: str) -> Path:
        quiet([*ffmpeg, str(scene), *options, str(out)])
        return out

    scene, scene_s = clip("scene.mp4", SHORT_SENTENCES)
    long, long_s = clip("long.mp4", LONG_SENTENCES)
    scene_44k = remux(folder / "scene_44k.mp4", "-c:v", "copy", "-c:a", "aac", "-ar", "44100")
    with av.open(str(scene_44k)) as container:
        rate = int(container.streams.audio[0].rate)
    video_only = remux(folder / "video_only.mp4", "-an", "-c:v", "copy")
    audio_only = remux(folder / "audio_only.m4a", "-vn", "-c:a", "copy")
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    random_bytes = folder / "random.mp4"
    random_bytes.write_bytes(np.random.default_rng(7).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    whole = scene.read_bytes()
    truncated = folder / "truncated.mp4"  # PyAV writes the index at the end: the cut loses it
    truncated.write_bytes(whole[: len(whole) // 2])
    data = remux(folder / "faststart.mp4", "-c", "copy", "-movflags", "+faststart").read_bytes()
    truncated_faststart = folder / "truncated_faststart.mp4"
    truncated_faststart.write_bytes(data[: len(data) // 2])

    tls = folder / "tls"
    tls.mkdir()
    openssl = tool("openssl", "openssl")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    for name in ("ca", "other_ca"):
        ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
        subject = ["-subj", f"/CN=dfmq fault matrix {name}"]
        quiet(
            [openssl, "req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", *subject, *ca_ext], cwd=tls
        )
    for name, san in (("server", "IP:127.0.0.1"), ("wrong_host", "DNS:dfmq-broker.invalid")):
        (tls / f"{name}.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
        )
        quiet(
            [openssl, "req", *ec[:-2], "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"], cwd=tls
        )
        signing = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext"]
        quiet([openssl, "x509", "-req", "-in", f"{name}.csr", *signing, "-out", f"{name}.pem"], cwd=tls)
    password_file = folder / "passwords"
    quiet([tool("mosquitto_passwd", "mosquitto"), "-b", "-c", str(password_file), USER, PASSWORD])
    return Material(
        folder=folder,
        scene=scene,
        scene_s=scene_s,
        long=long,
        long_s=long_s,
        scene_44k=scene_44k,
        scene_44k_rate=rate,
        video_only=video_only,
        audio_only=audio_only,
        empty=empty,
        random_bytes=random_bytes,
        truncated=truncated,
        truncated_faststart=truncated_faststart,
        absent=folder / "no_such_clip.mp4",
        ca=tls / "ca.pem",
        other_ca=tls / "other_ca.pem",
        missing_ca=folder / "no_such_dir" / "ca.pem",
        tls_right=tls / "server.pem",
        tls_wrong_host=tls / "wrong_host.pem",
        password_file=password_file,
    )


# ---------------------------------------------------------------- cases


@dataclass
class Context:
    mat: Material
    work: Path
    plain: Mosquitto  # anonymous, shared by the cases that only need a broker
    sub: Subscriber  # on `plain`, for the whole session
    secure: Mosquitto  # passwords; ports: plain+password, TLS, TLS with the wrong host name
    secure_ports: dict[str, int]
    baseline_s: float  # `dfmq run` failing on its first check: the command's own start-up


Checks = list[tuple[str, bool]]
CaseFn = Callable[[Context], tuple[Observed, Checks]]


@dataclass
class Case:
    name: str
    group: str
    expected: str
    fn: CaseFn
    slow: bool = False


CASES: list[Case] = []


def case(name: str, group: str, expected: str, slow: bool = False) -> Callable[[CaseFn], CaseFn]:
    def register(fn: CaseFn) -> CaseFn:
        CASES.append(Case(name, group, expected, fn, slow))
        return fn

    return register


def run_args(ctx: Context, *extra: str, clip: Path | None = None, port: int | None = None) -> list[str]:
    args = [*DFMQ, "run", "--ckpt", "default"]
    if clip is not None:
        args += ["--input", str(clip)]
    if port is not None:
        args += ["--broker", f"mqtt://{HOST}:{port}"]
    return args + list(extra)


def one_run(ctx: Context, name: str, args: list[str], limit_s: float = RUN_LIMIT_S) -> Proc:
    proc = Proc(args, ctx.work, name)
    proc.wait(limit_s)
    return proc


def before_loading_check(ctx: Context, proc: Proc, obs: Observed) -> tuple[str, bool]:
    seen = [marker for marker in LOAD_MARKERS if marker in proc.stderr()]
    obs.detail["loading_output_seen"] = seen
    return (
        f"before anything loads (no model, engine or Whisper output on stderr; within {LOAD_FREE_SLACK_S:g} s "
        "of the start-up baseline)",
        not seen and obs.seconds <= ctx.baseline_s + LOAD_FREE_SLACK_S,
    )


def common_error_checks(proc: Proc, obs: Observed) -> Checks:
    return [
        ("exit code 2", obs.exit_code == 2),
        ("no traceback on stderr", "Traceback" not in proc.stderr()),
    ]


def events_of(ctx: Context, stream_id: str) -> list[dict[str, Any]]:
    return [event for _, event in ctx.sub.intents(stream_id)]


def exactly_once_checks(ids: list[int], expected_count: int | None, what: str) -> tuple[Checks, dict[str, Any]]:
    counts = collections.Counter(ids)
    dupes = sorted(i for i, n in counts.items() if n > 1)
    detail = {"utterance_ids": sorted(ids), "duplicated_ids": dupes}
    checks = [
        (f"{what}: at least one event", len(ids) >= 1),
        (f"{what}: no event twice", not dupes),
        (
            f"{what}: every event the run reported arrived (ids 0..N-1, N from its summary line)",
            expected_count is not None and sorted(counts) == list(range(expected_count)),
        ),
    ]
    return checks, detail


# --- control: the harness itself


@case("good clip, plain broker", "control", "exit 0; every event arrives once; status ends 'offline'")
def control_plain(ctx: Context) -> tuple[Observed, Checks]:
    sid = "fm-control"
    proc = one_run(
        ctx, "control", run_args(ctx, "--pace", "fast", "--stream-id", sid, clip=ctx.mat.scene, port=ctx.plain.port)
    )
    time.sleep(0.5)
    events = events_of(ctx, sid)
    obs = proc.observed(len(events))
    checks = [("exit code 0", obs.exit_code == 0)]
    more, detail = exactly_once_checks([e["utterance_id"] for e in events], obs.detail.get("summary_events"), "events")
    statuses = [m.payload.decode() for m in ctx.sub.statuses(sid)]
    obs.detail.update(detail, statuses=statuses)
    return obs, checks + more + [("status ends 'offline'", bool(statuses) and statuses[-1] == "offline")]


@case("good clip, TLS + password, right CA", "control", "exit 0 with events (the TLS set-up of the cases below works)")
def control_tls(ctx: Context) -> tuple[Observed, Checks]:
    sid = "fm-control-tls"
    sub = Subscriber(ctx.secure_ports["password"], username=USER, password=PASSWORD)
    try:
        args = run_args(ctx, "--pace", "fast", "--stream-id", sid, clip=ctx.mat.scene)
        args += ["--broker", f"mqtts://{HOST}:{ctx.secure_ports['tls']}", "--ca-file", str(ctx.mat.ca)]
        args += ["--username", USER, "--password", PASSWORD]
        proc = one_run(ctx, "control_tls", args)
        time.sleep(0.5)
        events = [e for _, e in sub.intents(sid)]
    finally:
        sub.stop()
    obs = proc.observed(len(events))
    return obs, [("exit code 0", obs.exit_code == 0), ("events received", len(events) >= 1)]


# --- the broker going away


def first_event_or_exit(sub: Subscriber, proc: Proc, sid: str, limit_s: float = 90.0) -> bool:
    return wait_until(lambda: bool(sub.intents(sid)) or proc.poll() is not None, limit_s, 0.05) and bool(
        sub.intents(sid)
    )


@case(
    "broker gone for good mid-run",
    "broker",
    f"after the input ends, waits at most broker.drain_timeout_s ({DRAIN_TIMEOUT_S:g} s, --config) then exit 2 "
    "with one line 'N intent events not delivered: broker at HOST:PORT unreachable since ...'; no traceback",
    slow=True,
)
def broker_gone(ctx: Context) -> tuple[Observed, Checks]:
    sid = "fm-gone"
    port = free_port()
    broker = Mosquitto(ctx.work, "gone", f"listener {port} {HOST}\nallow_anonymous true", [port])
    broker.start()
    config = ctx.work / "drain.yaml"
    config.write_text(f"broker:\n  drain_timeout_s: {DRAIN_TIMEOUT_S}\n")
    sub = Subscriber(broker.port)
    proc = Proc(
        run_args(
            ctx, "--pace", "realtime", "--stream-id", sid, "--config", str(config), clip=ctx.mat.long, port=broker.port
        ),
        ctx.work,
        "gone",
    )
    try:
        online = wait_until(
            lambda: any(m.payload == b"online" for m in sub.statuses(sid)) or proc.poll() is not None, 60.0
        )
        online_at = next((m.t for m in sub.statuses(sid) if m.payload == b"online"), None)
        had_event = first_event_or_exit(sub, proc, sid)
        delivered = len(sub.intents(sid))
        first = sub.intents(sid)[0][1] if had_event else None
        killed_at = proc.elapsed()
        broker.stop()
        sub.stop()
        proc.wait(RUN_LIMIT_S + ctx.mat.long_s)
    finally:
        proc.kill()
        sub.stop()
        broker.stop()
    obs = proc.observed(delivered)
    line = obs.last_line
    found = re.search(r"(\d+) intent events? (?:were )?not delivered", line)
    # Replayed at real time, the input ends the clip's length after its stream time 0, which the
    # first event dates: its wall time at the end of speech less the stream time of that end.
    input_end = None
    if first is not None:
        input_end = float(first["speech_end_wall"]) - float(first["end"]) + ctx.mat.long_s - proc.started_wall
    after_end = round(obs.seconds - input_end, 2) if input_end is not None and obs.exit_code is not None else None
    obs.detail.update(
        online=online and online_at is not None,
        first_event_before_kill=had_event,
        broker_stopped_at_s=round(killed_at, 2),
        input_end_s=round(input_end, 2) if input_end is not None else None,
        exit_after_input_end_s=after_end,
    )
    checks = common_error_checks(proc, obs)
    checks += [
        ("the run was online and published before the broker went", online_at is not None and had_event),
        (
            "line says 'N intent events not delivered' with N >= 1",
            bool(found) and found is not None and int(found[1]) >= 1,
        ),
        (f"line names the broker {HOST}:{broker.port}", f"{HOST}:{broker.port}" in line),
        ("line says 'unreachable since'", "unreachable since" in line),
        (
            f"exits within drain_timeout_s + {STRAY_SLACK_S:g} s of the input's end",
            after_end is not None and after_end <= DRAIN_TIMEOUT_S + STRAY_SLACK_S,
        ),
    ]
    return obs, checks


@case(
    "broker restart mid-run (2 s, persistence)",
    "broker",
    "exit 0; every event arrives exactly once (a persistent QoS 1 subscriber)",
    slow=True,
)
def broker_restart(ctx: Context) -> tuple[Observed, Checks]:
    sid = "fm-restart"
    port = free_port()
    broker = Mosquitto(ctx.work, "restart", f"listener {port} {HOST}\nallow_anonymous true", [port], persistence=True)
    broker.start()
    sub = Subscriber(port, persistent=True)
    proc = Proc(
        run_args(ctx, "--pace", "realtime", "--stream-id", sid, clip=ctx.mat.long, port=port), ctx.work, "restart"
    )
    try:
        had_event = first_event_or_exit(sub, proc, sid)
        stopped_at = proc.elapsed()
        broker.stop()
        time.sleep(2.0)
        broker.start()
        restarted_at = proc.elapsed()
        proc.wait(RUN_LIMIT_S + ctx.mat.long_s)
        summary = run_summary(proc.stdout())
        wait_until(lambda: summary is not None and len(sub.intents(sid)) >= summary, 15.0, 0.1)
        time.sleep(1.0)  # a late duplicate would arrive now
        received = sub.intents(sid)
    finally:
        proc.kill()
        sub.stop()
        broker.stop()
    obs = proc.observed(len(received))
    ids = [e["utterance_id"] for _, e in received]
    more, detail = exactly_once_checks(ids, obs.detail.get("summary_events"), "events")
    obs.detail.update(
        detail,
        broker_stopped_at_s=round(stopped_at, 2),
        broker_back_at_s=round(restarted_at, 2),
        redelivered_by_broker=sum(m.dup for m, _ in received),
        events_after_restart=sum(m.t - proc.started > restarted_at for m, _ in received),
    )
    checks = [
        ("exit code 0", obs.exit_code == 0),
        ("the run published before the broker stopped", had_event),
        ("no traceback on stderr", "Traceback" not in proc.stderr()),
    ]
    return obs, checks + more + [("events arrived after the restart", obs.detail["events_after_restart"] >= 1)]


# --- credentials and TLS


def secure_case(ctx: Context, name: str, listener: str, *extra: str) -> tuple[Proc, Observed, Checks]:
    scheme = "mqtt" if listener == "password" else "mqtts"
    args = run_args(ctx, "--pace", "fast", "--stream-id", f"fm-{name}", clip=ctx.mat.scene)
    args += ["--broker", f"{scheme}://{HOST}:{ctx.secure_ports[listener]}", *extra]
    proc = one_run(ctx, name, args, 60.0)
    obs = proc.observed()
    checks = common_error_checks(proc, obs)
    checks.append((f"within a few seconds ({FEW_S:g} s after start-up)", obs.seconds <= ctx.baseline_s + FEW_S))
    return proc, obs, checks


AUTH_WORDS = r"not authori[sz]ed|bad user ?name or password"


@case("wrong password", "credentials", "exit 2 within seconds; line says 'bad username or password' / 'not authorised'")
def wrong_password(ctx: Context) -> tuple[Observed, Checks]:
    _, obs, checks = secure_case(ctx, "wrong-password", "password", "--username", USER, "--password", "wrong")
    return obs, [*checks, ("line names the refusal", bool(re.search(AUTH_WORDS, obs.last_line, re.I)))]


@case("missing credentials", "credentials", "exit 2 within seconds; line says 'not authorised' (no user name given)")
def missing_credentials(ctx: Context) -> tuple[Observed, Checks]:
    _, obs, checks = secure_case(ctx, "no-credentials", "password")
    return obs, [*checks, ("line names the refusal", bool(re.search(AUTH_WORDS, obs.last_line, re.I)))]


@case("wrong CA", "tls", "exit 2 within seconds; line says 'TLS verification failed (<reason>)'")
def wrong_ca(ctx: Context) -> tuple[Observed, Checks]:
    creds = ("--username", USER, "--password", PASSWORD)
    _, obs, checks = secure_case(ctx, "wrong-ca", "tls", "--ca-file", str(ctx.mat.other_ca), *creds)
    said = re.search(r"verif\w* failed", obs.last_line, re.I)
    reason = re.search(r"issuer|self[- ]signed|unknown ca|certificate", obs.last_line, re.I)
    return obs, [
        *checks,
        ("line says the TLS verification failed", bool(said)),
        ("line gives the reason", bool(reason)),
    ]


@case("missing CA file", "tls", "exit 2 within seconds; line names the missing file's path")
def missing_ca(ctx: Context) -> tuple[Observed, Checks]:
    creds = ("--username", USER, "--password", PASSWORD)
    _, obs, checks = secure_case(ctx, "missing-ca", "tls", "--ca-file", str(ctx.mat.missing_ca), *creds)
    return obs, [*checks, ("line names the path", str(ctx.mat.missing_ca) in obs.last_line)]


@case("hostname mismatch", "tls", "exit 2 within seconds; line says 'hostname mismatch' (certificate for another name)")
def hostname_mismatch(ctx: Context) -> tuple[Observed, Checks]:
    creds = ("--username", USER, "--password", PASSWORD)
    _, obs, checks = secure_case(ctx, "wrong-host", "wrong_host", "--ca-file", str(ctx.mat.ca), *creds)
    said = re.search(
        r"host ?name mismatch|hostname .*(doesn't|does not) match|IP address mismatch", obs.last_line, re.I
    )
    return obs, [*checks, ("line names the host name mismatch", bool(said))]


# --- stream ids


def stream_id_case(ctx: Context, stream_id: str, label: str) -> tuple[Observed, Checks]:
    proc = one_run(
        ctx,
        f"sid-{label}",
        run_args(ctx, "--pace", "fast", "--stream-id", stream_id, clip=ctx.mat.scene, port=ctx.plain.port),
        60.0,
    )
    obs = proc.observed()
    line = obs.last_line
    named = (
        (repr(stream_id) in line or f'"{stream_id}"' in line) if stream_id else bool(re.search(r"''|\"\"|empty", line))
    )
    checks = common_error_checks(proc, obs)
    checks += [
        ("line names the stream id option", bool(re.search(r"stream[-_ ]id", line, re.I))),
        ("line quotes the value given" if stream_id else "line says it is empty", named),
        before_loading_check(ctx, proc, obs),
    ]
    return obs, checks


for _sid, _label in (("a+b", "plus"), ("cam#", "hash"), ("a/b", "slash"), ("", "empty")):

    def _sid_case(ctx: Context, sid: str = _sid, label: str = _label) -> tuple[Observed, Checks]:
        return stream_id_case(ctx, sid, label)

    case(
        f"stream id {_sid!r}",
        "stream id",
        "exit 2 naming the stream id (quoted) before anything loads",
    )(_sid_case)


@case(
    "stream id already online",
    "stream id",
    "the second run: exit 2 naming the id and the broker; the first run: status stays 'online', all its events "
    "arrive once, exit 0",
    slow=True,
)
def duplicate_stream_id(ctx: Context) -> tuple[Observed, Checks]:
    sid = "fm-dup"
    first = Proc(
        run_args(ctx, "--pace", "realtime", "--stream-id", sid, clip=ctx.mat.long, port=ctx.plain.port),
        ctx.work,
        "dup-first",
    )
    try:
        had_event = first_event_or_exit(ctx.sub, first, sid)
        online_from = next((m.t for m in ctx.sub.statuses(sid) if m.payload == b"online"), None)
        second = one_run(
            ctx,
            "dup-second",
            run_args(ctx, "--pace", "fast", "--stream-id", sid, clip=ctx.mat.scene, port=ctx.plain.port),
            90.0,
        )
        second_began, second_ended = second.started, second.started + second.elapsed()
        time.sleep(1.0)
        first_alive_after = first.poll() is None
        retained_after = retained_status(ctx.plain.port, sid)
        first.wait(RUN_LIMIT_S + ctx.mat.long_s)
        time.sleep(0.5)
    finally:
        first.kill()
    obs = second.observed()
    line = obs.last_line
    first_obs = first.observed()
    # While the second run lived and 2 s after, short of the first run's own closing 'offline'.
    window_end = min(second_ended + 2.0, first.started + first.elapsed() - 1.0)
    statuses = [m for m in ctx.sub.statuses(sid) if second_began <= m.t <= window_end]
    offline_during = [round(m.t - first.started, 2) for m in statuses if m.payload != b"online"]
    ids = [e["utterance_id"] for e in events_of(ctx, sid)]
    more, detail = exactly_once_checks(ids, first_obs.detail.get("summary_events"), "first run's events")
    obs.events = len(ids)
    obs.detail.update(
        detail,
        first_run={"exit_code": first_obs.exit_code, "last_line": first_obs.last_line, "seconds": first_obs.seconds},
        first_run_alive_when_second_ended=first_alive_after,
        first_run_status_not_online_at_s=offline_during,
        retained_status_after_second=retained_after,
    )
    checks = common_error_checks(second, obs)
    checks += [
        ("the first run was online with an event before the second started", had_event and online_from is not None),
        (f"line names the id {sid!r}", sid in line),
        (f"line names the broker {HOST}:{ctx.plain.port}", f"{HOST}:{ctx.plain.port}" in line),
        (
            "first run: status stayed 'online' while the second ran (and 2 s after)",
            online_from is not None and first_alive_after and not offline_during,
        ),
        ("first run: the retained status after the second run is 'online'", retained_after == "online"),
        ("first run: exit code 0", first_obs.exit_code == 0),
    ]
    return obs, checks + more


# --- options


OPTION_CASES = (
    ("pipeline", "top_k", "0", r"\b0\b"),
    ("asr", "beam_size", "0", r"\b0\b"),
    ("segmenter", "min_silence_ms", ".nan", r"nan"),
    ("segmenter", "min_silence_ms", "-5", r"-5\b"),
    ("pipeline", "quality_interval_s", "0", r"\b0(\.0)?\b"),
    ("broker", "connect_timeout_s", "-1", r"-1\b"),
)
# The allowed range, beside the value: a bound (a number, an interval) or words for one.
RANGE_WORDS = r"\d|positive|negative|finite|non-?zero|greater|at least|between"


def option_case(ctx: Context, section: str, key: str, value: str, value_re: str, n: int) -> tuple[Observed, Checks]:
    config = ctx.work / f"bad_option_{n}.yaml"
    config.write_text(f"{section}:\n  {key}: {value}\n")
    args = run_args(
        ctx,
        "--pace",
        "fast",
        "--stream-id",
        f"fm-opt-{n}",
        "--config",
        str(config),
        clip=ctx.mat.scene,
        port=ctx.plain.port,
    )
    proc = one_run(ctx, f"opt-{n}", args)
    obs = proc.observed(len(events_of(ctx, f"fm-opt-{n}")))
    line = obs.last_line
    after_key = line.split(key, 1)[1] if key in line else ""
    checks = common_error_checks(proc, obs)
    checks += [
        (f"line names the key '{key}'", key in line),
        (f"line gives the value {value}", bool(re.search(value_re, after_key, re.I))),
        ("line gives the allowed range", bool(re.search(RANGE_WORDS, re.sub(value_re, "", after_key), re.I))),
    ]
    return obs, checks


for _n, (_section, _key, _value, _value_re) in enumerate(OPTION_CASES):

    def _option_case(
        ctx: Context,
        section: str = _section,
        key: str = _key,
        value: str = _value,
        value_re: str = _value_re,
        n: int = _n,
    ) -> tuple[Observed, Checks]:
        return option_case(ctx, section, key, value, value_re, n)

    case(
        f"{_section}.{_key}: {_value}",
        "options",
        "exit 2 with one line naming the key, the value and the allowed range",
    )(_option_case)


@case("--min-silence-ms nan (flag)", "options", "exit 2 with one line naming the option, the value and the range")
def option_flag_nan(ctx: Context) -> tuple[Observed, Checks]:
    args = run_args(
        ctx,
        "--pace",
        "fast",
        "--stream-id",
        "fm-opt-flag",
        "--min-silence-ms",
        "nan",
        clip=ctx.mat.scene,
        port=ctx.plain.port,
    )
    proc = one_run(ctx, "opt-flag", args)
    obs = proc.observed(len(events_of(ctx, "fm-opt-flag")))
    line = obs.last_line
    checks = common_error_checks(proc, obs)
    checks += [
        ("line names min_silence_ms / --min-silence-ms", bool(re.search(r"min[-_]silence[-_]ms", line))),
        ("line gives the value nan", "nan" in line.lower()),
        ("line gives the allowed range", bool(re.search(RANGE_WORDS, re.sub(r"nan", "", line, flags=re.I), re.I))),
    ]
    return obs, checks


# --- media


def media_case(ctx: Context, name: str, flags: list[str], needles: list[str], sid: str) -> tuple[Observed, Checks]:
    args = run_args(ctx, "--pace", "fast", "--stream-id", sid, *flags, port=ctx.plain.port)
    proc = one_run(ctx, name, args)
    obs = proc.observed(len(events_of(ctx, sid)))
    line = obs.last_line
    checks = common_error_checks(proc, obs)
    checks += [(f"line says {needle!r}", bool(re.search(needle, line, re.I))) for needle in needles]
    checks.append(before_loading_check(ctx, proc, obs))
    return obs, checks


MEDIA_CASES: tuple[tuple[str, str, Callable[[Material], list[str]], list[str]], ...] = (
    ("empty file", "empty", lambda m: ["--input", str(m.empty)], ["empty\\.mp4", "empty"]),
    ("random bytes", "random", lambda m: ["--input", str(m.random_bytes)], ["random\\.mp4", "not a (readable )?media"]),
    (
        "truncated mp4 (index at the end)",
        "trunc",
        lambda m: ["--input", str(m.truncated)],
        ["truncated\\.mp4", "truncat"],
    ),
    (
        "truncated mp4 (index first, +faststart)",
        "trunc-fs",
        lambda m: ["--input", str(m.truncated_faststart)],
        ["truncated_faststart\\.mp4", "truncat"],
    ),
    (
        "no audio track (--input)",
        "noaudio",
        lambda m: ["--input", str(m.video_only)],
        ["video_only\\.mp4", "no audio track"],
    ),
    (
        "no audio track (--audio FILE)",
        "noaudio-a",
        lambda m: ["--audio", str(m.video_only), "--video", "none"],
        ["video_only\\.mp4", "no audio track"],
    ),
    (
        "no video track (--video FILE)",
        "novideo-v",
        lambda m: ["--audio", str(m.scene), "--video", str(m.audio_only)],
        ["audio_only\\.m4a", "no video track"],
    ),
    ("nonexistent path", "absent", lambda m: ["--input", str(m.absent)], ["no_such_clip\\.mp4", "no such file"]),
)

for _name, _label, _flags, _needles in MEDIA_CASES:

    def _media_case(
        ctx: Context,
        name: str = _label,
        flags: Callable[[Material], list[str]] = _flags,
        needles: list[str] = _needles,
    ) -> tuple[Observed, Checks]:
        return media_case(ctx, f"media-{name}", flags(ctx.mat), needles, f"fm-media-{name}")

    case(_name, "media", "exit 2 before anything loads; one line naming the file and its problem")(_media_case)


@case("44.1 kHz audio", "media", "resampled, not rejected: exit 0 with events, as the 16 kHz clip")
def media_44k(ctx: Context) -> tuple[Observed, Checks]:
    sid = "fm-media-44k"
    proc = one_run(
        ctx,
        "media-44k",
        run_args(ctx, "--pace", "fast", "--stream-id", sid, clip=ctx.mat.scene_44k, port=ctx.plain.port),
    )
    time.sleep(0.5)
    events = events_of(ctx, sid)
    obs = proc.observed(len(events))
    obs.detail["audio_rate_hz"] = ctx.mat.scene_44k_rate
    texts = " ".join(str(e.get("text", "")) for e in events).lower()
    obs.detail["texts"] = [e.get("text") for e in events]
    return obs, [
        ("the clip's audio is 44.1 kHz", ctx.mat.scene_44k_rate == 44100),
        ("exit code 0", obs.exit_code == 0),
        (f"one event per sentence ({len(SHORT_SENTENCES)})", len(events) == len(SHORT_SENTENCES)),
        ("the words were heard ('thank', 'morning')", "thank" in texts and "morning" in texts),
    ]


# --- the embedded broker


@case("embedded broker port in use", "embedded broker", "exit 2 with one line naming the port")
def embedded_port_taken(ctx: Context) -> tuple[Observed, Checks]:
    port = free_port()
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind((HOST, port))
        holder.listen(1)
        args = run_args(
            ctx,
            "--pace",
            "fast",
            "--stream-id",
            "fm-embedded",
            "--broker",
            "embedded",
            "--embedded-port",
            str(port),
            clip=ctx.mat.scene,
        )
        proc = one_run(ctx, "embedded-taken", args, 90.0)
    finally:
        holder.close()
    obs = proc.observed()
    checks = common_error_checks(proc, obs)
    checks += [
        (f"line names the port {port}", bool(re.search(rf"\b{port}\b", obs.last_line))),
        ("line says it is taken", bool(re.search(r"in use|already|taken|bind", obs.last_line, re.I))),
    ]
    return obs, checks


def mqtt_accepts(port: int) -> bool:
    """An MQTT client connects (CONNACK accepted) on 127.0.0.1:port."""
    try:
        Subscriber(port).stop()
    except (HarnessError, OSError):
        return False
    return True


def broker_proc(ctx: Context, name: str, *extra: str) -> tuple[Proc, int]:
    port = free_port()
    return Proc([*DFMQ, "broker", "--host", "0.0.0.0", "--port", str(port), *extra], ctx.work, name), port


@case(
    "dfmq broker --host 0.0.0.0, no credentials",
    "embedded broker",
    "refuses: exit 2, the line names --allow-anonymous",
)
def broker_open_refused(ctx: Context) -> tuple[Observed, Checks]:
    proc, _ = broker_proc(ctx, "broker-open")
    proc.wait(15.0)
    obs = proc.observed()
    if obs.exit_code is None:
        obs.detail["was_serving"] = "killed after 15 s: it served anonymous clients on every interface"
    checks = common_error_checks(proc, obs)
    return obs, [*checks, ("line names --allow-anonymous", "--allow-anonymous" in obs.last_line)]


@case(
    "dfmq broker --host 0.0.0.0 --allow-anonymous",
    "embedded broker",
    "serves, and prints a warning about anonymous access on every interface; stops on Ctrl-C",
)
def broker_open_allowed(ctx: Context) -> tuple[Observed, Checks]:
    proc, port = broker_proc(ctx, "broker-anon", "--allow-anonymous")
    try:
        serving = wait_until(lambda: proc.poll() is not None or mqtt_accepts(port), 20.0, 0.2) and proc.poll() is None
        proc.signal(signal.SIGINT)
        stopped = proc.wait(proc.elapsed() + 10.0) is not None
    finally:
        proc.kill()
    obs = proc.observed()
    output = proc.stdout() + proc.stderr()
    warning = next((line for line in output.splitlines() if re.search(r"warn", line, re.I)), "")
    obs.detail.update(serving=serving, warning_line=warning)
    return obs, [
        ("it serves (an MQTT client connects on 127.0.0.1)", serving),
        ("a warning mentions anonymous access", bool(re.search(r"anonymous", warning, re.I))),
        ("stops on Ctrl-C (SIGINT) within 10 s", stopped),
        ("no traceback", "Traceback" not in proc.stderr()),
    ]


# --- a crash


@case("SIGKILL mid-stream", "crash", "the retained status becomes 'offline' through the last will")
def sigkill(ctx: Context) -> tuple[Observed, Checks]:
    sid = "fm-killed"
    proc = Proc(
        run_args(ctx, "--pace", "realtime", "--stream-id", sid, clip=ctx.mat.long, port=ctx.plain.port),
        ctx.work,
        "sigkill",
    )
    try:
        had_event = first_event_or_exit(ctx.sub, proc, sid)
        was_online = any(m.payload == b"online" for m in ctx.sub.statuses(sid))
        killed_at = time.monotonic()
        proc.signal(signal.SIGKILL)
        proc.wait(proc.elapsed() + 10.0)
        went_offline = wait_until(
            lambda: any(m.payload == b"offline" and m.t >= killed_at for m in ctx.sub.statuses(sid)), 10.0
        )
        offline_after = next(
            (round(m.t - killed_at, 2) for m in ctx.sub.statuses(sid) if m.payload == b"offline" and m.t >= killed_at),
            None,
        )
        retained = retained_status(ctx.plain.port, sid)
    finally:
        proc.kill()
    obs = proc.observed(len(events_of(ctx, sid)))
    obs.detail.update(offline_after_kill_s=offline_after, retained_status=retained)
    return obs, [
        ("the run was online and published before the kill", was_online and had_event),
        ("'offline' published within 10 s of the kill", went_offline),
        ("the retained status is 'offline'", retained == "offline"),
    ]


# ---------------------------------------------------------------- running and reporting


def baseline_startup(work: Path, scene: Path) -> float:
    """Seconds `dfmq run` takes to fail on its very first check (a missing --config): imports only."""
    times = []
    for i in range(2):
        proc = Proc([*DFMQ, "run", "--config", str(work / "absent.yaml"), "--input", str(scene)], work, f"baseline{i}")
        proc.wait(60.0)
        times.append(proc.elapsed())
    return round(min(times), 2)


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
        return result.stdout if result.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD").strip()
    # Porcelain lines are "XY path": the status columns are part of the line, so no strip() first.
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    return {"head": head or None, "uncommitted_files": changed}


@contextlib.contextmanager
def brokers(work: Path, mat: Material) -> Iterator[tuple[Mosquitto, Mosquitto, dict[str, int]]]:
    port = free_port()
    plain = Mosquitto(work, "plain", f"listener {port} {HOST}\nallow_anonymous true", [port])
    ports = {"password": free_port(), "tls": free_port(), "wrong_host": free_port()}
    tls_lines = []
    for name, cert in (("tls", mat.tls_right), ("wrong_host", mat.tls_wrong_host)):
        tls_lines += [
            f"listener {ports[name]} {HOST}",
            f"cafile {mat.ca}",
            f"certfile {cert}",
            f"keyfile {cert.with_suffix('.key')}",
        ]
    body = "\n".join(
        [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {mat.password_file}",
            f"listener {ports['password']} {HOST}",
            *tls_lines,
        ]
    )
    secure = Mosquitto(work, "secure", body, list(ports.values()))
    plain.start()
    try:
        secure.start()
        try:
            yield plain, secure, ports
        finally:
            secure.stop()
    finally:
        plain.stop()


def short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def observed_text(obs: dict[str, Any]) -> str:
    code = "killed at time limit" if obs["exit_code"] is None else f"exit {obs['exit_code']}"
    parts = [code, f"{obs['seconds']:.1f} s"]
    if obs["events"] is not None:
        parts.append(f"{obs['events']} events")
    return ", ".join(parts) + (f"; `{obs['last_line']}`" if obs["last_line"] else "")


def write_markdown(report: dict[str, Any], path: Path) -> None:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = [
        f"# dfmq fault matrix\n\n`{report['command']}` at {report['git']['head'] or '(no git)'}"
        f"{' (with uncommitted changes)' if report['git']['uncommitted_files'] else ''}, "
        f"{report['finished']}; {report['runtime_s']:.0f} s; "
        f"{report['summary']['pass']} pass, {report['summary']['FAIL']} FAIL"
        + (
            f", {len(report['summary']['skipped_slow'])} slow cases not run"
            if report["summary"]["skipped_slow"]
            else ""
        )
        + f". Start-up baseline (`dfmq run` failing on a missing --config): {report['baseline_startup_s']} s.\n",
        "| case | expected | observed | verdict | failed checks |",
        "|---|---|---|---|---|",
    ]
    for c in report["cases"]:
        failed = "; ".join(check["check"] for check in c["checks"] if not check["ok"])
        rows.append(
            f"| {cell(c['group'] + ': ' + c['case'])}{' (slow)' if c['slow'] else ''} | {cell(c['expected'])} | "
            f"{cell(observed_text(c['observed']))} | **{c['verdict']}** | {cell(failed)} |"
        )
    path.write_text("\n".join(rows) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="report to write (the .md table goes beside it)")
    parser.add_argument("--slow", action="store_true", help="also run the cases replayed at real time")
    parser.add_argument("--only", help="run only the cases whose name or group contains this text")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs of every command)")
    args = parser.parse_args()
    for name, package in (
        ("mosquitto", "mosquitto"),
        ("mosquitto_passwd", "mosquitto"),
        ("openssl", "openssl"),
        ("ffmpeg", "ffmpeg"),
        ("espeak-ng", "espeak-ng"),
    ):
        tool(name, package)
    began = time.monotonic()
    git_at_start = git_state()
    command = " ".join(["tools/fault_matrix.py", "--json", str(args.json)] + (["--slow"] if args.slow else []))
    selected = [c for c in CASES if not args.only or args.only in c.name or args.only in c.group]
    to_run = [c for c in selected if args.slow or not c.slow]
    skipped = [c.name for c in selected if c.slow and not args.slow]
    work = Path(tempfile.mkdtemp(prefix="dfmq-fault-matrix-"))
    results: list[dict[str, Any]] = []
    try:
        print(f"making clips, certificates and passwords in {work} ...", flush=True)
        mat = make_material(work)
        baseline = baseline_startup(work, mat.scene)
        print(f"start-up baseline (dfmq run failing on its first check): {baseline} s", flush=True)
        with brokers(work, mat) as (plain, secure, ports):
            sub = Subscriber(plain.port)
            ctx = Context(mat, work, plain, sub, secure, ports, baseline)
            try:
                for i, c in enumerate(to_run, 1):
                    print(f"[{i:2d}/{len(to_run)}] {c.group}: {c.name} ... ", end="", flush=True)
                    try:
                        obs, checks = c.fn(ctx)
                    except Exception as exc:  # the harness's own failure: reported, and the next case runs
                        obs = Observed(last_line=f"harness error: {type(exc).__name__}: {exc}")
                        checks = [("the harness ran the case", False)]
                    verdict = "pass" if checks and all(ok for _, ok in checks) else "FAIL"
                    print(f"{verdict}  ({short(observed_text(asdict(obs)), 150)})", flush=True)
                    results.append(
                        {
                            "case": c.name,
                            "group": c.group,
                            "slow": c.slow,
                            "expected": c.expected,
                            "observed": asdict(obs),
                            "checks": [{"check": text, "ok": ok} for text, ok in checks],
                            "verdict": verdict,
                        }
                    )
            finally:
                sub.stop()
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "tool": "tools/fault_matrix.py",
        "command": command,
        "git": git_at_start,
        "git_at_end": git_state(),  # others may commit while it runs
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "runtime_s": round(time.monotonic() - began, 1),
        "slow_included": args.slow,
        "baseline_startup_s": baseline,
        "limits": {
            "drain_timeout_s": DRAIN_TIMEOUT_S,
            "few_seconds_after_startup_s": FEW_S,
            "before_anything_loads_slack_s": LOAD_FREE_SLACK_S,
            "run_limit_s": RUN_LIMIT_S,
        },
        "summary": {
            "pass": sum(r["verdict"] == "pass" for r in results),
            "FAIL": sum(r["verdict"] == "FAIL" for r in results),
            "skipped_slow": skipped,
        },
        "cases": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.json.with_suffix(".md"))
    width = max(len(r["case"]) for r in results) if results else 10
    print(f"\n{'case':<{width}}  verdict  observed")
    for r in results:
        print(f"{r['case']:<{width}}  {r['verdict']:<7}  {short(observed_text(r['observed']), 140)}")
    print(
        f"\n{report['summary']['pass']} pass, {report['summary']['FAIL']} FAIL in {report['runtime_s']:.0f} s"
        + (f"; slow cases not run (--slow): {', '.join(skipped)}" if skipped else "")
    )
    print(f"report: {args.json} and {args.json.with_suffix('.md')}")
    return 0 if results and report["summary"]["FAIL"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
