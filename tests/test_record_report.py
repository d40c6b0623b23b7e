"""Hermes (complete), the session record and its report: real `dfmq run --hermes --record` against a
real Mosquitto, a real subscriber, real rendered media; `dfmq report` on what was recorded."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.intents import topic_name
from stream.cli import main
from stream.messages import IntentEvent, QualityReport, RunStarted
from stream.options import BrokerOptions, PipelineOptions
from stream.publisher import Publisher, UndeliveredError
from stream.record import RecordError, RecordSink, part_path
from stream.render import FaceStyle, render_face, speak, write_clip
from stream.report import read_session
from stream.run import _close_sinks
from stream.sinks import MqttSink
from tests.conftest import Mosquitto, require_binary, until, wait_until
from tests.test_pipeline import Subscriber

# The keys rhasspy-hermes (rhasspyhermes/asr.py, nlu.py, intent.py; v0.6) gives each message in its
# camelCase JSON: what `Message.payload()` writes, every field present.
TEXT_CAPTURED_KEYS = {"text", "likelihood", "seconds", "siteId", "sessionId", "wakewordId", "asrTokens", "lang"}
NLU_INTENT_KEYS = {
    "input",
    "intent",
    "siteId",
    "id",
    "slots",
    "sessionId",
    "customData",
    "asrTokens",
    "asrConfidence",
    "rawInput",
    "wakewordId",
    "lang",
}
INTENT_KEYS = {"intentName", "confidenceScore"}
NOT_RECOGNIZED_KEYS = {"input", "siteId", "id", "customData", "sessionId"}
RECORD_KINDS = {"header", "run", "intent", "quality", "status"}
# A sentence the shipped model recognises (tests/test_pipeline.py), one it calls out of scope, then noise.
SENTENCES = ("thank you so much for the help", "my grandmother was born in spring")


@dataclass
class Recorded:
    record: Path
    messages: list[tuple[str, bytes, bool]]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _ in self.messages if t.endswith("/intent")]

    def hermes(self) -> list[tuple[str, dict[str, Any]]]:
        return [(t, json.loads(p)) for t, p, _ in self.messages if t.startswith("hermes/")]

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sentences and a burst of white noise, with a talking face throughout."""
    require_binary("espeak-ng", "espeak-ng")
    pause = np.zeros(12000, np.float32)
    noise = np.random.default_rng(0).normal(0, 0.1, 16000 * 2).astype(np.float32)
    audio = np.concatenate([pause, *(np.concatenate([speak(s), pause]) for s in SENTENCES), noise, pause])
    fps = 15
    frames = []
    for i in range(int(len(audio) / 16000 * fps)):
        loud = float(np.abs(audio[int(i / fps * 16000) : int((i + 1) / fps * 16000)]).mean())
        frames.append(render_face(i / fps, min(1.0, 8 * loud), FaceStyle(smile=0.3)))
    path = tmp_path_factory.mktemp("media") / "session.mp4"
    write_clip(path, audio, frames, fps)
    return path


def _record_run(clip: Path, folder: Path, pace: str, *flags: str) -> Recorded:
    """`dfmq run --hermes --record` on a real Mosquitto, with a subscriber on every topic."""
    broker = Mosquitto(folder / "broker", persistent=True)
    broker.start()
    sub = Subscriber(broker.port)
    record = folder / "session.jsonl"
    try:
        argv = ["run", "--input", str(clip), "--pace", pace, "--engine", "onnxruntime", "--stream-id", "lab"]
        argv += ["--broker", f"mqtt://127.0.0.1:{broker.port}", "--hermes", "--record", str(record), *flags]
        assert main(argv) == 0
        # The record is complete when the run returns (close() waits for its writer).
        count = record.read_text().count('"kind":"intent"')
        per_event = 1 if "--no-transcripts" in flags else 2
        wait_until(lambda: len(sub.events()) >= count, 10, f"{count} intent events")
        wait_until(lambda: sum(t.startswith("hermes/") for t, _, _ in sub.messages) >= per_event * count, 10, "hermes")
    finally:
        sub.stop()
        broker.stop()
    return Recorded(record, list(sub.messages))


@pytest.fixture(scope="module")
def recorded(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    # In real time, as a session is: quality is published every 0.5 s of wall time, and a fast
    # replay of a short clip ends before the first tick.
    return _record_run(clip, tmp_path_factory.mktemp("run"), "realtime")


@pytest.mark.broker
def test_hermes_publishes_text_captured_then_the_intent_with_rhasspy_hermes_keys(recorded: Recorded) -> None:
    events = recorded.events()
    hermes = recorded.hermes()
    assert len(hermes) == 2 * len(events) and any(e["recognized"] for e in events)
    assert any(not e["recognized"] for e in events), "the clip should give one not-recognized event too"
    for event, (captured, nlu) in zip(events, zip(hermes[::2], hermes[1::2])):
        session = f"lab-{event['utterance_id']}"
        topic, message = captured
        assert topic == "hermes/asr/textCaptured"
        assert set(message) == TEXT_CAPTURED_KEYS
        assert message["text"] == event["text"] and message["siteId"] == "lab" and message["sessionId"] == session
        assert message["likelihood"] == event["transcript_confidence"]
        whisper_ms = event["latency_ms"]["asr"] + event["latency_ms"]["asr_in_pause"]  # in the pause or after it
        assert message["seconds"] == pytest.approx(whisper_ms / 1000, abs=1e-4)
        assert 0 < message["seconds"] < 10
        topic, message = nlu
        assert message["sessionId"] == session and message["siteId"] == "lab" and message["input"] == event["text"]
        if event["recognized"]:
            assert set(message) == NLU_INTENT_KEYS and set(message["intent"]) == INTENT_KEYS
            assert topic == f"hermes/intent/{message['intent']['intentName']}"
            assert message["intent"]["intentName"] == topic_name(str(event["intent"]))
            assert message["intent"]["confidenceScore"] == event["confidence"]
            assert message["asrConfidence"] == event["transcript_confidence"]
            assert message["slots"] == [] and message["rawInput"] == event["text"]
        else:
            assert topic == "hermes/nlu/intentNotRecognized"
            assert set(message) == NOT_RECOGNIZED_KEYS
            assert json.loads(message["customData"]) == {"reason": event["reason"], "confidence": event["confidence"]}


def _no_media(value: Any, where: str = "") -> None:
    """No sample, pixel or frame: no long arrays, no long strings, no media-named keys."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert key not in {"samples", "audio_samples", "image", "frame", "frames", "pixels", "pcm"}, where + key
            _no_media(item, f"{where}{key}.")
    elif isinstance(value, list):
        assert len(value) <= 32, where
        for item in value:
            _no_media(item, where)
    elif isinstance(value, str):
        assert len(value) < 500, where


@pytest.mark.broker
def test_the_record_holds_every_event_quality_message_and_status_and_no_media(recorded: Recorded) -> None:
    lines = recorded.lines()
    assert {line["kind"] for line in lines} == RECORD_KINDS
    assert all(line["stream_id"] == "lab" for line in lines)
    header, run = lines[0], next(line for line in lines if line["kind"] == "run")
    assert header["kind"] == "header" and header["schema"] == "dfmq.record/1"
    # One name for wall-clock time on every kind of line that carries one.
    assert all("wall" in line and "wall_s" not in line for line in lines if line["kind"] != "intent")
    assert run["checkpoint"].endswith("starter") and "Thank" in run["intents"] and run["reject_below"] is not None
    assert run["options"]["pipeline"]["record"] == str(recorded.record)
    assert run["options"]["decision"]["min_confidence"] == 0.2 and "broker" not in run["options"]  # no password
    intents = [line for line in lines if line["kind"] == "intent"]
    events = recorded.events()
    assert [e["utterance_id"] for e in intents] == [e["utterance_id"] for e in events]
    for kept, sent in zip(intents, events):
        for key in ("text", "intent", "reason", "confidence", "quality", "weights", "top_k", "start", "end"):
            assert kept[key] == sent[key], key
    quality = [line for line in lines if line["kind"] == "quality"]
    sent_quality = [json.loads(p) for t, p, _ in recorded.messages if t.endswith("/quality")]
    assert quality and len(quality) == len(sent_quality)
    assert [q["time"] for q in quality] == [q["time"] for q in sent_quality]
    assert all(0 <= q["audio"] <= 1 and 0 <= q["video"] <= 1 and q["camera"] for q in quality)
    statuses = [line["status"] for line in lines if line["kind"] == "status"]
    assert statuses[0] == "online" and statuses[-1] == "offline"
    for line in lines:
        _no_media(line)
    assert recorded.record.stat().st_size < 50_000


@pytest.mark.broker
def test_no_transcripts_means_no_text_captured_and_no_transcript_in_the_record(
    clip: Path, tmp_path: Path, recorded: Recorded
) -> None:
    quiet = _record_run(clip, tmp_path, "fast", "--no-transcripts")
    events = quiet.events()
    assert events and all("text" not in e for e in events)
    hermes = quiet.hermes()
    assert [t for t, _ in hermes if t.startswith("hermes/asr/")] == []
    assert len(hermes) == len(events) and all(m["input"] == "" for _, m in hermes)
    assert all(m.get("rawInput", "") == "" for _, m in hermes)
    transcripts = [str(e["text"]) for e in recorded.events() if e["text"]]
    assert transcripts
    text = quiet.record.read_text()
    assert all("text" not in line for line in quiet.lines())
    for transcript in transcripts:
        assert transcript not in text
    assert sum(line["kind"] == "intent" for line in quiet.lines()) == len(events)


def _event(utterance_id: int) -> IntentEvent:
    return IntentEvent(
        stream_id="rot",
        utterance_id=utterance_id,
        start=float(utterance_id),
        end=utterance_id + 0.8,
        speech_end_wall=1000.0 + utterance_id,
        published_wall=1000.5 + utterance_id,
        text=f"sentence number {utterance_id}",
        recognized=True,
        reason=None,
        intent="Thank",
        confidence=0.8,
        transcript_confidence=0.9,
        scope=0.95,
        top_k=[{"intent": "Thank", "confidence": 0.8}],
        quality={"text": 0.8, "audio": 0.7, "video": 0.9},
        weights={"audio": 0.5, "video": 0.4},
        engine="onnxruntime-cpu",
        latency_ms={"asr": 200.0, "total": 600.0},
    )


def test_the_record_rotates_within_its_size_bound_and_the_parts_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "rot.jsonl"
    options = PipelineOptions(stream_id="rot", record=str(path), record_max_mb=0.004, record_keep_files=2)
    sink = RecordSink(options)
    max_bytes = int(0.004 * 2**20)

    async def session() -> None:
        await sink.start()
        sink.handle(RunStarted("rot", 1000.0, "ckpt", "onnxruntime-cpu", ["Thank"], 0.8, {}))
        for i in range(60):
            for k in range(5):
                t = i + k / 5
                sink.handle(QualityReport("rot", t, 1000.0 + t, 0.7, 0.9, True, True))
            sink.handle(_event(i))
        await sink.close()

    asyncio.run(session())
    assert sink.rotations >= 4 and sink.dropped == 0
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["rot.jsonl", "rot.jsonl.1", "rot.jsonl.2"]
    for index in range(3):
        part = part_path(path, index)
        assert part.stat().st_size <= max_bytes
        first, second = (json.loads(line) for line in part.read_text().splitlines()[:2])
        assert first["kind"] == "header" and second["kind"] == "run"  # every part reads alone
    read = read_session(path)
    ids = [e["utterance_id"] for e in read.intents]
    assert ids == list(range(ids[0], 60)) and ids[0] > 0  # the newest kept, in order; the oldest gone
    times = [q["time"] for q in read.quality]
    assert times == sorted(times)
    assert read.run is not None and read.run["intents"] == ["Thank"]


def _record(path: Path, events: range, max_mb: float = 0.004, keep: int = 4) -> RecordSink:
    """A session of `events` (five quality lines each) written by the real RecordSink."""
    sink = RecordSink(PipelineOptions(stream_id="rot", record=str(path), record_max_mb=max_mb, record_keep_files=keep))

    async def session() -> None:
        await sink.start()
        sink.handle(RunStarted("rot", 1000.0, "ckpt", "onnxruntime-cpu", ["Thank"], 0.8, {}))
        for i in events:
            for k in range(5):
                sink.handle(QualityReport("rot", i + k / 5, 1000.0 + i + k / 5, 0.7, 0.9, True, True))
            sink.handle(_event(i))
        await sink.close()

    asyncio.run(session())
    return sink


def test_a_record_file_used_again_holds_the_new_session_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "same.jsonl"
    _record(path, range(0, 40))
    assert part_path(path, 2).exists()  # the first session rotated
    _record(path, range(100, 103))
    assert [p.name for p in tmp_path.iterdir()] == ["same.jsonl"]  # the earlier session's parts went with it
    assert "replacing an earlier session's record" in caplog.text
    read = read_session(path)
    assert [e["utterance_id"] for e in read.intents] == [100, 101, 102] and read.warnings == []


def test_the_report_says_which_parts_it_could_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gap.jsonl"
    _record(path, range(0, 60), keep=3)
    whole = read_session(path)
    assert whole.warnings == [
        f"the record begins at part {whole.header['part']}: parts 1-{whole.header['part'] - 1} "
        "were rotated away (record_keep_files)"
    ]
    part_path(path, 2).unlink()  # a middle part deleted by hand
    stranger = tmp_path / "stranger.jsonl"
    _record(stranger, range(200, 230))
    part_path(stranger, 1).replace(part_path(path, 4))  # another session's part beside them
    with path.open("a") as newest:
        newest.write('{"kind": "quality", "stream_id": "rot", "ti')  # cut off by a crash
    gap = read_session(path)
    assert len(gap.intents) < len(whole.intents) and all(e["utterance_id"] < 60 for e in gap.intents)
    assert any(f"{part_path(path, 4)} belongs to another session" in w for w in gap.warnings)
    assert any(w.startswith("part(s) ") and "are missing" in w for w in gap.warnings)
    assert any("the last line is cut off" in w for w in gap.warnings)
    assert main(["report", str(path), "--out", str(tmp_path / "gap.png")]) == 0
    err = capsys.readouterr().err
    assert err.count("dfmq report: warning:") == len(gap.warnings) == 4


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.cells: list[str] = []
        self.images: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_cell = tag == "td"
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells.append(data)


@pytest.mark.broker
def test_the_report_of_a_recorded_session_is_a_picture_and_a_page(
    recorded: Recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import base64

    from matplotlib.image import imread

    png, page = tmp_path / "session.png", tmp_path / "session.html"
    assert main(["report", str(recorded.record), "--out", str(png)]) == 0
    assert main(["report", str(recorded.record), "--out", str(page)]) == 0
    assert str(png) in capsys.readouterr().out
    pixels = imread(png)[..., :3]
    assert pixels.shape[0] > 600 and pixels.shape[1] > 800
    assert pixels.std() > 0.08
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50

    parsed = _Page()
    parsed.feed(page.read_text())
    parsed.close()
    assert "script" not in parsed.tags and "link" not in parsed.tags  # nothing fetched
    assert len(parsed.images) == 1 and parsed.images[0].startswith("data:image/png;base64,")
    assert base64.b64decode(parsed.images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    events = recorded.events()
    for event in events:
        assert (event["intent"] if event["recognized"] else "not recognized") in parsed.cells
        assert event["text"] in parsed.cells
    assert "out of scope" in " ".join(parsed.cells) or "unreliable transcript" in " ".join(parsed.cells)


@pytest.mark.parametrize(
    ("content", "out", "expected"),
    [
        (None, "r.png", "no such session record"),
        ("this is not json\n", "r.png", "not JSON Lines"),
        ('{"kind": "intent"}\n', "r.html", "not a session record"),
        ("[1, 2]\n", "r.png", "not a session record line"),
        ('{"kind": "header", "schema": "dfmq.record/1", "stream_id": "a"}\n', "r.pdf", "--out"),
        ('{"kind": "header", "schema": "dfmq.record/1", "stream_id": "a"}\n', "nowhere/r.png", "--out"),
    ],
)
def test_report_on_bad_input_exits_2_with_one_line(
    content: str | None, out: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "session.jsonl"
    if content is not None:
        record.write_text(content)
    assert main(["report", str(record), "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dfmq report: error:") and expected in err and "\n" not in err
    assert not (tmp_path / out).exists()


def test_a_streams_run_record_names_its_per_stream_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dfmq run --streams --record s.jsonl` writes s.<stream_id>.jsonl: asked for s.jsonl, say so."""
    for stream_id in ("lobby", "desk"):
        (tmp_path / f"s.{stream_id}.jsonl").write_text("")
    assert main(["report", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such session record" in err and "s.desk.jsonl, s.lobby.jsonl" in err and "\n" not in err


def test_an_empty_session_still_draws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = tmp_path / "session.jsonl"
    record.write_text('{"kind": "header", "schema": "dfmq.record/1", "stream_id": "a", "wall": 1000.0}\n')
    assert main(["report", str(record), "--out", str(tmp_path / "r.html")]) == 0
    assert "0 utterances" in capsys.readouterr().out


def test_demo_writes_a_record_and_its_report_and_says_where(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--clip", str(clip), "--pace", "fast", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    for name in ("session.jsonl", "session.html", "session.png"):
        assert (out / name).is_file() and str(out / name) in said
    assert read_session(out / "session.jsonl").intents


@pytest.mark.broker
def test_broker_outages_and_lost_devices_are_status_lines(tmp_path: Path) -> None:
    """A real Mosquitto stopped and started under a running publisher; a camera that stops and
    comes back in the quality reports."""
    broker = Mosquitto(tmp_path / "broker").start()
    path = tmp_path / "session.jsonl"
    try:

        async def body() -> None:
            fast = BrokerOptions(url=f"mqtt://127.0.0.1:{broker.port}", backoff_min_s=0.05, backoff_max_s=0.2)
            publisher = Publisher(fast, "st", "127.0.0.1", broker.port, False)
            await publisher.start()
            sink = RecordSink(PipelineOptions(stream_id="st", record=str(path)), publisher)
            await sink.start()
            sink.handle(QualityReport("st", 1.0, time.time(), 0.7, 0.9, True, True))
            broker.stop()
            await until(lambda: not publisher.stats.connected, 5.0, "the publisher to see the broker gone")
            sink.handle(QualityReport("st", 2.0, time.time(), 0.7, 0.0, False, True))
            await asyncio.to_thread(broker.start)
            await until(lambda: publisher.stats.connected, 5.0, "the reconnect")
            sink.handle(QualityReport("st", 3.0, time.time(), 0.7, 0.9, True, True))
            await sink.close()
            await publisher.close()

        asyncio.run(body())
    finally:
        broker.stop()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    statuses = [(line["status"], line.get("time")) for line in lines if line["kind"] == "status"]
    assert statuses == [
        ("online", None),
        ("camera_lost", 2.0),
        ("broker_unreachable", None),
        ("camera_found", 3.0),
        ("broker_connected", None),
        ("offline", None),
    ]


@pytest.mark.broker
def test_the_records_last_line_counts_the_events_the_broker_never_took(tmp_path: Path) -> None:
    """The broker goes away for good with two intent events queued: the run fails naming them, and
    the record (closed after the MQTT sink) says so too, as does its report."""
    broker = Mosquitto(tmp_path / "broker").start()
    path = tmp_path / "session.jsonl"
    try:

        async def body() -> None:
            options = BrokerOptions(url=f"mqtt://127.0.0.1:{broker.port}", backoff_min_s=0.05, drain_timeout_s=0.5)
            publisher = Publisher(options, "st", "127.0.0.1", broker.port, False)
            await publisher.start()
            record = RecordSink(PipelineOptions(stream_id="st", record=str(path)), publisher)
            await record.start()
            broker.stop()
            await until(lambda: not publisher.stats.connected, 5.0, "the publisher to see the broker gone")
            for i in range(2):
                stamp = {"utterance_id": i, "speech_end_wall": time.time(), "latency_ms": {}}
                publisher.send(publisher.topic("intent"), stamp, handover_stamp=True)
            with pytest.raises(UndeliveredError, match="2 intent events not delivered"):
                await _close_sinks([MqttSink(publisher), record], raise_failure=True)

        asyncio.run(body())
    finally:
        broker.stop()
    last = json.loads(path.read_text().splitlines()[-1])
    assert (last["status"], last["events_undelivered"], last["lines_dropped"]) == ("offline", 2, 0)
    html_path = tmp_path / "session.html"
    assert main(["report", str(path), "--out", str(html_path)]) == 0
    assert "events undelivered 2" in html_path.read_text()


def test_a_record_that_cannot_be_written_fails_the_close_naming_the_file(tmp_path: Path) -> None:
    """/dev/full (every Linux has it): opening works, every write fails with ENOSPC, as a full disk does."""
    sink = RecordSink(PipelineOptions(stream_id="full", record="/dev/full"))

    async def session() -> None:
        await sink.start()
        for i in range(5):
            sink.handle(QualityReport("full", float(i), 1000.0 + i, 0.7, 0.9, True, True))
        await sink.close()

    with pytest.raises(RecordError, match=r"session record /dev/full: writing failed \(.*No space left on device"):
        asyncio.run(session())


def test_a_record_of_several_streams_is_drawn_one_stream_at_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "two.jsonl"
    lines = [{"kind": "header", "schema": "dfmq.record/1", "stream_id": "a", "wall": 1000.0}]
    for stream in ("a", "b"):
        lines.append({"kind": "quality", "stream_id": stream, "time": 1.0, "wall": 1001.0, "audio": 0.5, "video": 0.5})
    record.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["report", str(record), "--out", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "dfmq report: error: option '--stream-id' expected one of the record's streams (a, b), got 'none given'"
    )
    assert main(["report", str(record), "--out", str(tmp_path / "r.png"), "--stream-id", "b"]) == 0
    assert "stream 'b'" in capsys.readouterr().out
