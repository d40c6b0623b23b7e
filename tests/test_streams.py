"""Several streams in one `dfmq run` (`--streams FILE.yaml`): the file's checks, and a real run of
three streams into a real Mosquitto, one of them a network stream that breaks off mid-way."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from model.errors import DataError
from stream.cli import main
from stream.streams import StreamSpec, load_streams
from tests.conftest import Mosquitto, wait_until
from tests.test_pipeline import SENTENCES, Subscriber, _faststart_copy, degraded_clip, live_ckpt, serve_folder

__all__ = ["degraded_clip", "live_ckpt"]  # module fixtures shared with test_pipeline


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streams.yaml"
    path.write_text(text)
    return path


def test_the_streams_file_as_users_write_it(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "streams:\n  - id: lobby\n    input: /data/lobby.mp4\n  - id: desk\n    audio: default\n    video: 0\n",
    )
    assert load_streams(path) == [
        StreamSpec("lobby", input="/data/lobby.mp4"),
        StreamSpec("desk", audio="default", video="0"),  # a camera index, taken as written
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"streams\.yaml:1: file is empty"),
        ("- id: a\n", r"streams\.yaml:1: top level: not a mapping"),
        ("stream:\n  - id: a\n", r"streams\.yaml:1: stream: unknown key \(did you mean 'streams'\?\)"),
        ("streams: lobby\n", r"streams\.yaml:1: streams: not a list of streams"),
        ("streams:\n  - input: a.mp4\n", r"streams\.yaml:2: streams\[0\]\.id: missing"),
        ("streams:\n  - id: a/b\n    input: a.mp4\n", r"streams\.yaml:2: streams\[0\]\.id: not a usable topic level"),
        (
            "streams:\n  - id: a\n    input: a.mp4\n    camera: 0\n",
            r"streams\.yaml:4: streams\[0\]\.camera: unknown key",
        ),
        ("streams:\n  - id: a\n    input: a.mp4\n    audio: default\n", r":2: streams\[0\]: both input and audio"),
        ("streams:\n  - id: a\n", r"streams\.yaml:2: streams\[0\]: no source"),
        ("streams:\n  - id: a\n    audio: none\n    video: none\n", r"streams\.yaml:2: streams\[0\]: no source"),
        ("streams:\n  - id: a\n    input: [a, b]\n", r"streams\.yaml:3: streams\[0\]\.input: not a source"),
        (
            "streams:\n  - id: a\n    input: a.mp4\n  - id: a\n    input: b.mp4\n",
            r"streams\.yaml:4: streams\[1\]\.id: id already used on line 2",
        ),
    ],
)
def test_a_bad_streams_file_names_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_streams(_write(tmp_path, text))


def test_streams_exclude_the_single_stream_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "streams:\n  - id: a\n    input: a.mp4\n")
    assert main(["run", "--streams", str(path), "--input", "b.mp4"]) == 2
    assert (
        "option '--input' expected nothing with --streams: its file names every source and stream id, got 'b.mp4'"
        in (capsys.readouterr().err)
    )
    assert main(["run", "--streams", str(tmp_path / "missing.yaml")]) == 2
    assert "streams file is missing" in capsys.readouterr().err


def test_a_stream_whose_file_is_missing_is_named_by_the_streams_file_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    present = tmp_path / "present.mp3"
    present.write_bytes((Path(__file__).parent / "data" / "hotwords.mp3").read_bytes())
    path = _write(tmp_path, f"streams:\n  - id: a\n    input: {present}\n  - id: b\n    audio: {tmp_path}/gone.wav\n")
    assert main(["run", "--streams", str(path), "--broker", "embedded"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    gone = f"cannot read media '{tmp_path}/gone.wav': no such file"
    assert err == [f"dfmq run: error: {path}:4: streams[1].audio: {gone}"]


@pytest.mark.broker
def test_three_streams_in_one_process_each_its_own_events_and_a_broken_one_leaves_the_others_running(
    live_ckpt: Path, degraded_clip: tuple[Path, float], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip, _ = degraded_clip
    streamable = _faststart_copy(clip, tmp_path / "streamable.mp4")
    (tmp_path / "index_at_end.mp4").write_bytes(clip.read_bytes())  # breaks off mid-stream (serve_folder)
    base, server = serve_folder(tmp_path)
    streams = _write(
        tmp_path,
        f"streams:\n  - id: lobby\n    input: {clip}\n  - id: desk\n    input: {base}/{streamable.name}\n"
        f"  - id: broken\n    input: {base}/index_at_end.mp4\n",
    )
    broker = Mosquitto(tmp_path, persistent=True)
    broker.start()
    sub = Subscriber(broker.port)
    try:
        argv = ["run", "--streams", str(streams), "--ckpt", str(live_ckpt), "--engine", "onnxruntime"]
        rc = main([*argv, "--pace", "fast", "--broker", f"mqtt://127.0.0.1:{broker.port}"])
        expected = {"dfmq/lobby/status", "dfmq/desk/status", "dfmq/broken/status"}
        wait_until(lambda: expected <= {t for t, p, _ in sub.messages if p == b"offline"}, 5.0, "every status offline")
        time.sleep(0.3)  # the last QoS 1 events are already in: they precede each stream's `offline`
        messages = list(sub.messages)
    finally:
        sub.stop()
        broker.stop()
        server.shutdown()
    out, err = capsys.readouterr()
    assert rc == 2
    assert "1 of 3 streams failed: broken" in err
    assert "stream broken:" in out and "index_at_end.mp4" in out and "decoding failed" in out
    by_stream: dict[str, list[dict[str, object]]] = {"lobby": [], "desk": [], "broken": []}
    for topic, payload, _ in messages:
        if topic.endswith("/intent"):
            event = json.loads(payload)
            assert topic == f"dfmq/{event['stream_id']}/intent"
            by_stream[str(event["stream_id"])].append(event)
    for stream_id in ("lobby", "desk"):
        events = by_stream[stream_id]
        assert [e["utterance_id"] for e in events] == list(range(len(SENTENCES))), stream_id
        assert "thank" in str(events[0]["text"]).lower()
    # Each stream has its own connection, status and last will: `online` then `offline` per stream.
    for stream_id in ("lobby", "desk", "broken"):
        statuses = [p for t, p, _ in messages if t == f"dfmq/{stream_id}/status"]
        assert statuses[0] == b"online" and statuses[-1] == b"offline", (stream_id, statuses)


def test_with_several_streams_each_keeps_its_own_record_file() -> None:
    from stream.options import PipelineOptions
    from stream.run import _stream_options

    options = PipelineOptions(record="/tmp/session.jsonl")
    assert _stream_options(options, "desk", 2).record == "/tmp/session.desk.jsonl"
    assert _stream_options(options, "desk", 1).record == "/tmp/session.jsonl"  # one stream: the file as given
    assert _stream_options(options, "desk", 2).stream_id == "desk"
