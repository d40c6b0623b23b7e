"""`dfmq capture` + `dfmq worker` against a real Mosquitto: MQTT 5 shared subscriptions, re-sends,
once-only in-order publishing. Workers run in this process on models loaded once (a worker's
process start costs tens of seconds here), except in the one test that kills a real `dfmq worker`."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from engines.batcher import BatcherOptions, MicroBatcher
from model.errors import ConfigError
from stream.cli import main
from stream.distributed import CaptureStats, MqttLink, Worker, WorkerModels, load_worker_models, run_capture
from stream.options import BrokerOptions, PipelineOptions, ScaleOutOptions, SegmenterOptions
from stream.render import render_scene, write_clip
from stream.run import RunRequest
from stream.workitems import WorkFormatError, WorkItem, WorkResult, from_pcm16, to_pcm16
from tests.conftest import Mosquitto, require_binary, wait_until

T = TypeVar("T")
ACL = Path(__file__).resolve().parent.parent / "docs" / "scaleout" / "mosquitto.acl"
PASSWORDS = {"capture": "capture-pw", "worker": "worker-pw", "viewer": "viewer-pw", "monitor": "monitor-pw"}
SENTENCES = (
    "thank you so much for the help",
    "hello there, good morning",
    "i am sorry about the mess",
    "see you tomorrow, bye",
    "please turn off the lights",
    "play some music please",
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sentences with pauses and a talking face, clean throughout."""
    require_binary("espeak-ng", "espeak-ng")
    audio, frames, _, _ = render_scene(SENTENCES, snr_db=40.0, dark_gain=1.0, fps=10, seed=1, noise_from_share=0.0)
    path = tmp_path_factory.mktemp("media") / "scene.mp4"
    write_clip(path, audio, frames, 10)
    return path


@pytest.fixture(scope="module")
def models() -> WorkerModels:
    return load_worker_models(RunRequest(ckpt="default", engine="onnxruntime"))


class Subscriber:
    """paho-mqtt on a thread, on the event topics and the internal results (or on `topics`)."""

    def __init__(
        self, port: int, topics: tuple[str, ...] = ("dfmq/#", "dfmq-internal/result/#"), user: str = ""
    ) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dfmq-test-dist-sub-{user}")
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        if user:
            self.client.username_pw_set(user, PASSWORDS[user])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 5, "the test subscriber connected")

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.messages if t.endswith("/intent")]

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.messages if t.startswith("dfmq-internal/result/")]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _login(port: int, user: str) -> BrokerOptions:
    if not user:
        return BrokerOptions(url=f"mqtt://127.0.0.1:{port}")
    return BrokerOptions(url=f"mqtt://127.0.0.1:{port}", username=user, password=PASSWORDS[user])


def _acl_broker(folder: Path) -> Mosquitto:
    """Mosquitto with logins and the README's example ACL, docs/scaleout/mosquitto.acl."""
    passwd = require_binary("mosquitto_passwd", "mosquitto")
    passwords = folder / "passwords"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run([passwd, *(["-c"] if i == 0 else []), "-b", str(passwords), user, password], check=True)
    config = f"allow_anonymous false\npassword_file {passwords}\nacl_file {ACL}"
    return Mosquitto(folder, config=config).start()


def _capture(
    clip: Path, port: int, scale: ScaleOutOptions, stream_id: str = "lobby", user: str = "", transcripts: bool = True
) -> Awaitable[CaptureStats]:
    return run_capture(
        RunRequest(input=str(clip), pace="fast"),
        _login(port, user),
        PipelineOptions(stream_id=stream_id, publish_transcripts=transcripts),
        SegmenterOptions(),
        scale,
    )


async def _with_workers(
    models: WorkerModels,
    port: int,
    scale: ScaleOutOptions,
    run: Callable[[list[Worker], list[asyncio.Task[Any]]], Awaitable[T]],
    names: str = "AB",
    user: str = "",
) -> T:
    """Workers (A and B) serving the group while `run` runs; stopped after it."""
    broker = _login(port, user)
    stop = asyncio.Event()
    executors = [ThreadPoolExecutor(1) for _ in names]
    async with MicroBatcher(models.engine, BatcherOptions(max_batch=8, max_delay_ms=2.0)) as batcher:
        workers = [Worker(name, models, ex, batcher) for name, ex in zip(names, executors)]
        tasks = [asyncio.create_task(w.serve(broker, scale, stop)) for w in workers]
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in workers)), 10)
        try:
            return await run(workers, tasks)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for ex in executors:
                ex.shutdown()


def _check_once_in_order(events: list[dict[str, Any]], stats: CaptureStats) -> None:
    assert [e["utterance_id"] for e in events] == list(range(len(SENTENCES))), events
    assert stats.events == stats.utterances == len(SENTENCES)


@pytest.mark.broker
def test_two_workers_share_the_work_and_every_utterance_is_published_once_in_order(
    clip: Path, models: WorkerModels, tmp_path: Path
) -> None:
    """Under the README's example ACL, each side with its own login."""
    broker = _acl_broker(tmp_path)
    sub = Subscriber(broker.port, user="monitor")
    viewer = Subscriber(broker.port, topics=("#",), user="viewer")
    scale = ScaleOutOptions(work_timeout_s=30.0)

    def capture(workers: list[Worker], tasks: list[asyncio.Task[Any]]) -> Awaitable[CaptureStats]:
        return _capture(clip, broker.port, scale, user="capture")

    try:
        stats = asyncio.run(_with_workers(models, broker.port, scale, capture, user="worker"))
        wait_until(lambda: len(sub.events()) >= len(SENTENCES), 5, "every intent event")
        wait_until(lambda: len(viewer.events()) >= len(SENTENCES), 5, "every intent event, for the viewer")
    finally:
        sub.stop()
        viewer.stop()
        broker.stop()
    events = sub.events()
    _check_once_in_order(events, stats)
    assert stats.resent == stats.given_up == stats.duplicates == 0
    assert "thank" in str(events[0]["text"]).lower() and events[0]["intent"] == "Thank"
    assert events[1]["intent"] == "Greet"
    assert events[0]["quality"]["video"] > 0.5  # the face was scored on the capture side and travelled
    # The keys of `dfmq run`'s events, and the split's own.
    assert set(events[0]["latency_ms"]) >= {
        *("vad", "features", "dispatch", "asr", "asr_in_pause", "worker_wait", "engine", "batch_wait", "total")
    }
    # The shared subscription spread the work: both workers served some, and the counts agree.
    served = [r["worker_id"] for r in sub.results()]
    assert sorted(served) == sorted(w for w, n in stats.served_by.items() for _ in range(n))
    assert set(served) == {"A", "B"}, served
    for result in sub.results():
        assert result["asr_ms"] > 0 and result["engine_ms"] > 0 and result["worker_ms"] >= result["asr_ms"]
    # Event topics carry events, quality and status only: the audio stayed on dfmq-internal/work,
    # which a viewer subscribed to everything never receives.
    assert {t.rsplit("/", 1)[1] for t, _ in sub.messages if t.startswith("dfmq/")} == {"intent", "quality", "status"}
    assert viewer.events() == events and all(t.startswith("dfmq/lobby/") for t, _ in viewer.messages)


@pytest.mark.broker
def test_a_worker_dying_with_an_item_loses_nothing_and_duplicate_results_publish_nothing_twice(
    clip: Path, models: WorkerModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faults injected: worker A's task is cancelled as soon as it has an item (it dies with it,
    never answering), and every result is delivered twice (QoS 1 is at least once)."""
    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port)
    scale = ScaleOutOptions(work_timeout_s=4.0, max_in_flight=2)
    publish = MqttLink.publish

    async def twice(self: MqttLink, topic: str, payload: bytes, expiry_s: float | None = None) -> bool:
        first = await publish(self, topic, payload, expiry_s)
        if topic.startswith("dfmq-internal/result/"):
            await publish(self, topic, payload, expiry_s)
        return first

    monkeypatch.setattr(MqttLink, "publish", twice)
    died_with: list[int] = []

    async def run(workers: list[Worker], tasks: list[asyncio.Task[Any]]) -> CaptureStats:
        async def die(item: WorkItem, received_mono: float) -> WorkResult:
            died_with.append(item.utterance_id)
            tasks[0].cancel()
            await asyncio.Event().wait()  # cancelled with the task
            raise AssertionError("unreachable")

        monkeypatch.setattr(workers[0], "process", die)
        return await _capture(clip, broker.port, scale, transcripts=False)

    try:
        stats = asyncio.run(_with_workers(models, broker.port, scale, run))
        wait_until(lambda: len(sub.events()) >= len(SENTENCES), 5, "every intent event")
        time.sleep(0.3)  # a late duplicate would show up here
    finally:
        sub.stop()
        broker.stop()
    assert died_with, "worker A never received an item"
    _check_once_in_order(sub.events(), stats)
    assert all(e["reason"] != "worker_timeout" for e in sub.events())
    assert stats.resent >= 1 and stats.given_up == 0
    # Every second copy was dropped; the last one's may arrive after the capture node is done.
    assert stats.duplicates >= len(SENTENCES) - 1
    assert stats.served_by == {"B": len(SENTENCES)}
    # --no-transcripts: neither the events nor the results on the broker carry one
    assert all("text" not in e for e in sub.events())
    assert all(r["event"]["text"] is None for r in sub.results())


@pytest.mark.broker
def test_an_item_the_broker_did_not_take_is_sent_again_when_it_is_back_not_at_its_deadline(
    clip: Path, models: WorkerModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first work item's publish fails (injected: what a broker outage does to it); it goes
    again once the link is connected, well before its 30 s deadline."""
    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port)
    scale = ScaleOutOptions(work_timeout_s=30.0)
    publish = MqttLink.publish
    sends: list[float] = []

    async def first_lost(self: MqttLink, topic: str, payload: bytes, expiry_s: float | None = None) -> bool:
        if topic.startswith("dfmq-internal/work/"):
            sends.append(time.monotonic())
            if len(sends) == 1:
                return False
        return await publish(self, topic, payload, expiry_s)

    monkeypatch.setattr(MqttLink, "publish", first_lost)
    try:
        stats = asyncio.run(_with_workers(models, broker.port, scale, lambda w, t: _capture(clip, broker.port, scale)))
        wait_until(lambda: len(sub.events()) >= len(SENTENCES), 5, "every intent event")
    finally:
        sub.stop()
        broker.stop()
    _check_once_in_order(sub.events(), stats)
    assert stats.given_up == 0 and len(sends) == len(SENTENCES) + 1
    assert sends[1] - sends[0] < scale.work_timeout_s / 2  # sent again on the next look, not at the deadline


@pytest.mark.broker
def test_workers_of_two_intent_sets_never_mix_in_one_stream(
    clip: Path, models: WorkerModels, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Worker B decides over another intent set (injected: its models' set id): the stream keeps the
    set of its first answer; the other worker's answers are refused and the utterance is sent again."""
    import dataclasses

    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port)
    scale = ScaleOutOptions(work_timeout_s=4.0, max_in_flight=1)

    async def run(workers: list[Worker], tasks: list[asyncio.Task[Any]]) -> CaptureStats:
        workers[1].models = dataclasses.replace(models, intents_id="another-set")
        return await _capture(clip, broker.port, scale)

    try:
        with caplog.at_level(logging.ERROR, logger="dfmq.distributed"):
            stats = asyncio.run(_with_workers(models, broker.port, scale, run))
        wait_until(lambda: len(sub.events()) >= len(SENTENCES), 5, "every intent event")
    finally:
        sub.stop()
        broker.stop()
    _check_once_in_order(sub.events(), stats)
    assert len(stats.served_by) == 1, stats.served_by  # one worker, one intent set, decided them all
    assert "one worker group per intent set" in caplog.text
    assert {r["intents_id"] for r in sub.results() if r["event"] is not None} == {models.intents_id, "another-set"}


@pytest.mark.broker
def test_without_workers_each_utterance_is_published_once_as_worker_timeout(clip: Path, tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port)
    scale = ScaleOutOptions(work_timeout_s=1.0, max_attempts=2)
    began = time.monotonic()
    try:
        stats = asyncio.run(_capture(clip, broker.port, scale, stream_id="alone"))
        wait_until(lambda: len(sub.events()) >= len(SENTENCES), 5, "every intent event")
    finally:
        sub.stop()
        broker.stop()
    events = sub.events()
    _check_once_in_order(events, stats)
    assert stats.given_up == stats.resent == len(SENTENCES)
    for event in events:
        assert event["recognized"] is False and event["reason"] == "worker_timeout" and event["intent"] is None
        assert event["top_k"] == [] and event["engine"] == "none" and event["quality"]["video"] > 0.5
    assert time.monotonic() - began < 30  # two sends of 1 s each, all in flight together


@pytest.mark.broker
def test_dfmq_capture_without_workers_says_so_at_the_end(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Mosquitto(tmp_path).start()
    try:
        argv = ["capture", "--input", str(clip), "--pace", "fast", "--broker", f"mqtt://127.0.0.1:{broker.port}"]
        assert main([*argv, "--work-timeout-s", "1", "--max-attempts", "1", "--stream-id", "alone"]) == 0
    finally:
        broker.stop()
    out, err = capsys.readouterr()
    assert f"gave up on {len(SENTENCES)}" in out and "served by: none" in out
    assert "dfmq capture: warning: no worker decided any utterance" in err


def test_a_work_item_round_trips_with_its_arrays_and_bad_payloads_are_named() -> None:
    rng = np.random.default_rng(0)
    samples = rng.uniform(-1, 1, 16000).astype(np.float32)
    item = WorkItem(
        run_id="r",
        stream_id="lobby",
        utterance_id=3,
        attempt=2,
        timeout_s=15.0,
        start_s=1.0,
        end_s=2.0,
        speech_end_wall_s=1.5e9,
        samples_pcm16=to_pcm16(samples),
        audio_features=rng.normal(size=(98, 64)).astype(np.float32),
        video_features=None,
        quality_audio=0.7,
        quality_video=0.0,
        features_ms=12.0,
        features_id="abc",
        top_k=3,
        publish_transcripts=False,
    )
    payload = item.encode()
    back = WorkItem.decode(payload)
    assert back.video_features is None and back.publish_transcripts is False and back.attempt == 2
    assert np.array_equal(back.samples_pcm16, item.samples_pcm16)
    assert back.audio_features is not None and np.array_equal(back.audio_features, item.audio_features)
    assert np.abs(from_pcm16(back.samples_pcm16) - samples).max() < 1 / 32767
    assert len(payload) < 2 * 16000 + 98 * 64 * 4 + 1000  # 16-bit audio, float32 features, a small header
    for bad, match in ((b"\x00", "shorter"), (payload[:-10], "needs"), (b"\x00\x00\x00\x02{}", "schema")):
        with pytest.raises(WorkFormatError, match=match):
            WorkItem.decode(bad)
    with pytest.raises(WorkFormatError, match="schema"):
        WorkResult.decode(b'{"schema": "dfmq.result/0"}')


def test_capture_and_worker_refuse_the_embedded_broker_and_a_bad_group(capsys: pytest.CaptureFixture[str]) -> None:
    from stream.cli import main

    assert main(["capture", "--broker", "embedded", "--input", "x.mp4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--broker" in err and "MQTT 5" in err
    assert main(["worker", "--broker", "mqtt://127.0.0.1:1883", "--group", "a/b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'--group'" in err
    with pytest.raises(ConfigError, match="work_timeout_s"):
        ScaleOutOptions(work_timeout_s=0.0)


def test_a_worker_picks_its_engine_as_dfmq_run_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--engine auto` on a worker weighs the int8 export as `dfmq run` does (it was not offered it)."""
    import engines.select

    choose = engines.select.choose_engine
    gates: list[object] = []

    def recording(preference: str = "auto", device: str | None = None, int8_gate: Any = None) -> Any:
        gates.append(int8_gate)
        return choose(preference, device, int8_gate)

    monkeypatch.setattr(engines.select, "choose_engine", recording)
    chosen = load_worker_models(RunRequest(ckpt="default", engine="auto"))
    assert gates and gates[0] is not None
    assert chosen.engine_name in ("onnxruntime-int8-cpu", "onnxruntime-cpu", "torch-cpu")


def test_a_worker_says_the_broker_is_not_there_before_it_loads_its_models(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import stream.distributed
    from stream.broker import free_port
    from stream.cli import main

    def never(req: RunRequest) -> WorkerModels:
        raise AssertionError("models loaded before the broker was found")

    monkeypatch.setattr(stream.distributed, "load_worker_models", never)
    assert main(["worker", "--broker", f"mqtt://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "connection refused" in err[0], err


@pytest.mark.broker
def test_a_killed_worker_process_loses_nothing(clip: Path, models: WorkerModels, tmp_path: Path) -> None:
    """The real command lines: `dfmq capture` with a `dfmq worker` process, A, killed (SIGKILL) as
    soon as it starts on an item, and worker B (here, on the loaded models)."""
    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port)
    url = f"mqtt://127.0.0.1:{broker.port}"
    cli = [sys.executable, "-m", "stream.cli"]
    command = [*cli, "worker", "--broker", url, "--engine", "onnxruntime", "--worker-id", "A"]
    worker_a = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log_a: list[str] = []
    threading.Thread(target=lambda: log_a.extend(worker_a.stderr or []), daemon=True).start()

    def kill_a_on_its_first_item() -> None:
        while worker_a.poll() is None:
            if any("working on it" in line for line in log_a):
                worker_a.send_signal(signal.SIGKILL)
                return
            time.sleep(0.005)

    async def capture(workers: list[Worker], tasks: list[asyncio.Task[Any]]) -> tuple[int, str, str]:
        command = [*cli, "capture", "--broker", url, "--input", str(clip), "--pace", "fast", "--stream-id", "hall"]
        command += ["--work-timeout-s", "4", "--max-in-flight", "2"]
        proc = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode or 0, out.decode(), err.decode()

    try:
        wait_until(lambda: any("serving group" in line for line in log_a), 120, "worker A up")
        threading.Thread(target=kill_a_on_its_first_item, daemon=True).start()
        code, out, err = asyncio.run(_with_workers(models, broker.port, ScaleOutOptions(), capture, names="B"))
        wait_until(lambda: len(sub.events()) >= len(SENTENCES), 5, "every intent event")
    finally:
        if worker_a.poll() is None:
            worker_a.kill()
        worker_a.wait(10)
        sub.stop()
        broker.stop()
    assert code == 0, err[-2000:]
    assert worker_a.returncode == -signal.SIGKILL
    assert [e["utterance_id"] for e in sub.events()] == list(range(len(SENTENCES)))
    assert all(e["reason"] != "worker_timeout" for e in sub.events())
    assert {r["worker_id"] for r in sub.results()} == {"B"}
    assert "re-sent 0," not in out and f"served by: B {len(SENTENCES)}" in out, out
