"""`dfmq run --record FILE.jsonl`: the session kept on disk, one JSON object per line.

Every line has a `kind` and the `stream_id` it belongs to:

- `header`: first line of every file (schema, stream id, when the file was begun, which part it is);
- `run`: what the run recognises and with which options (`stream.messages.RunStarted`), repeated
  after the header of every later part so that each part can be read alone;
- `intent`: one per utterance, the payload of dfmq/<stream_id>/intent (`text` absent when
  transcripts are switched off);
- `quality`: the running quality, the payload of dfmq/<stream_id>/quality;
- `status`: `online` and `offline` of the run (`offline` counts the lines the disk could not take,
  `lines_dropped`, and the intent events the broker never acknowledged, `events_undelivered`),
  `broker_unreachable` / `broker_connected`,
  `camera_lost` / `camera_found`, `microphone_lost` / `microphone_found`.

Never media: video frames are ignored and no sample or pixel is written. The file is bounded:
when the next line would take it past `record_max_mb` it is renamed FILE.jsonl.1 (the older parts
move up to .2, .3, ...; beyond `record_keep_files` the oldest is deleted), so the disk holds at
most (record_keep_files + 1) x record_max_mb. Lines are written by a thread of the sink's own,
from a bounded queue: `handle` only builds a small dict and queues it.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from model.errors import DfmqError
from stream.messages import IntentEvent, QualityReport, RunStarted, SinkMessage
from stream.options import PipelineOptions
from stream.publisher import Publisher

log = logging.getLogger("dfmq.record")

RECORD_SCHEMA = "dfmq.record/1"
# Lines waiting for the writer. A quality line every quality_interval_s (0.5 s by default) and one
# intent line per utterance: 10 000 lines is over an hour of a disk that does not answer.
QUEUE_MAX = 10_000
_STOP = None


class RecordError(DfmqError):
    """The session record could not be written."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(f"session record {path}: {problem}")


def part_path(path: Path, index: int) -> Path:
    """FILE.jsonl (index 0), FILE.jsonl.1 (the newest rotated part), FILE.jsonl.2, ..."""
    return path if index == 0 else path.with_name(f"{path.name}.{index}")


class RecordSink:
    """Writes the session record of one stream; see the module docstring for the lines."""

    name = "record"

    def __init__(self, options: PipelineOptions, publisher: Publisher | None = None) -> None:
        if options.record is None:
            raise ValueError("RecordSink needs options.record")
        self.path = Path(options.record)
        self.stream_id = options.stream_id
        self.max_bytes = int(options.record_max_mb * 2**20)
        self.keep_files = options.record_keep_files
        self.publisher = publisher
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_MAX)
        self.dropped = 0  # lines lost because the writer fell QUEUE_MAX behind
        self.written = 0
        self.rotations = 0
        self._run: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        self._file: IO[bytes] | None = None
        self._size = 0
        self._part = 0  # how many files this run has begun
        self._lines_in_file = 0
        self._error: BaseException | None = None
        self._broker: bool | None = None
        self._devices: dict[str, bool] = {}
        # In every part's header: `dfmq report` reads the parts of one session only.
        self.session = uuid.uuid4().hex[:12]

    async def start(self) -> None:
        self._replace_earlier_session()
        try:
            self._open()
        except OSError as exc:
            raise RecordError(self.path, f"cannot be written ({exc.strerror or exc})") from exc
        self._thread = threading.Thread(target=self._write_loop, name=f"dfmq-record-{self.stream_id}", daemon=True)
        self._thread.start()
        self._status("online")

    def handle(self, message: SinkMessage) -> None:
        if isinstance(message, IntentEvent):
            line = asdict(message)
            if message.text is None:  # transcripts switched off: no key at all, as on MQTT
                del line["text"]
            self._put({"kind": "intent", **line})
        elif isinstance(message, QualityReport):
            self._watch_devices(message)
            self._put({"kind": "quality", **message.payload()})
        elif isinstance(message, RunStarted):
            self._put({"kind": "run", **message.payload()})
        else:
            return  # video frames: never recorded
        self._watch_broker()

    async def close(self) -> None:
        if self._thread is None:
            return
        # Closed after the MQTT sink (stream/run.py): its drain is over, its count final.
        undelivered = self.publisher.stats.undelivered if self.publisher is not None else 0
        self._status("offline", lines_dropped=self.dropped, events_undelivered=undelivered)
        self.queue.put(_STOP)  # waits for room: the last lines and the stop always get in
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self.dropped:
            log.warning("session record %s: %d lines dropped (the disk fell behind)", self.path, self.dropped)
        if self._error is not None:
            raise RecordError(self.path, f"writing failed ({self._error})") from self._error
        log.info("session record %s: %d lines, %d rotations", self.path, self.written, self.rotations)

    def _replace_earlier_session(self) -> None:
        """FILE.jsonl is this run's: an earlier session's record there is replaced, its rotated parts
        removed with it (left behind, `dfmq report` would read them as this session's), and said so."""
        earlier = record_parts(self.path)
        if not earlier:
            return
        try:
            for part in earlier:
                if part != self.path:
                    part.unlink()
        except OSError as exc:
            raise RecordError(self.path, f"an earlier session's part cannot be removed ({exc})") from exc
        log.warning("session record %s: replacing an earlier session's record (%d file(s))", self.path, len(earlier))

    # ---- on the event loop ---------------------------------------------------------------------
    def _put(self, line: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _status(self, status: str, **detail: Any) -> None:
        self._put(
            {"kind": "status", "stream_id": self.stream_id, "wall": round(time.time(), 3), "status": status, **detail}
        )

    def _watch_broker(self) -> None:
        """The MQTT connection, seen whenever a message passes (a few times a second)."""
        if self.publisher is None:
            return
        connected = self.publisher.stats.connected
        if self._broker is not None and connected != self._broker:
            self._status("broker_connected" if connected else "broker_unreachable")
        self._broker = connected

    def _watch_devices(self, report: QualityReport) -> None:
        for device, present in (("camera", report.camera), ("microphone", report.microphone)):
            before = self._devices.get(device)
            if before is not None and before != present:
                self._status(f"{device}_found" if present else f"{device}_lost", time=report.time_s)
            self._devices[device] = present

    # ---- on the writer thread --------------------------------------------------------------------
    def _write_loop(self) -> None:
        stopped = False
        try:
            while (line := self.queue.get()) is not _STOP:
                if line["kind"] == "run":
                    self._run = line
                self._write(line)
                if self.queue.empty():
                    self._flush()
            stopped = True
            self._flush()
        except OSError as exc:
            self._error = exc
            while not stopped:  # let handle() and close() go on: take what comes until the stop
                stopped = self.queue.get() is _STOP
        finally:
            self._close_file()

    def _close_file(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as exc:  # the last buffered bytes did not fit either
            self._error = self._error or exc
        self._file = None

    def _flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def _write(self, line: dict[str, Any]) -> None:
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        if self._size + len(data) > self.max_bytes and self._lines_in_file > (2 if self._run else 1):
            self._rotate()
        assert self._file is not None
        self._file.write(data)
        self._size += len(data)
        self._lines_in_file += 1
        self.written += 1

    def _open(self) -> None:
        self._file = part_path(self.path, 0).open("wb")
        self._size = self._lines_in_file = 0
        self._part += 1
        header = {
            "kind": "header",
            "schema": RECORD_SCHEMA,
            "stream_id": self.stream_id,
            "wall": round(time.time(), 3),
            "session": self.session,
            "part": self._part,
            "record_max_mb": self.max_bytes / 2**20,
            "record_keep_files": self.keep_files,
        }
        self._write(header)
        if self._run is not None:
            self._write(self._run)

    def _rotate(self) -> None:
        self._close_file()
        if self._error is not None:
            raise self._error
        self.rotations += 1
        if self.keep_files == 0:
            self.path.unlink()
        else:
            for index in range(self.keep_files - 1, 0, -1):
                older = part_path(self.path, index)
                if older.exists():
                    older.replace(part_path(self.path, index + 1))
            self.path.replace(part_path(self.path, 1))
        self._open()


def record_parts(path: Path) -> list[Path]:
    """The files of a record, oldest first: FILE.jsonl.N ... FILE.jsonl.1, FILE.jsonl (all of
    them, also past a missing one: the report says what is missing)."""
    rotated = [p for p in path.parent.glob(f"{glob.escape(path.name)}.*") if p.name[len(path.name) + 1 :].isdigit()]
    rotated.sort(key=lambda p: int(p.name[len(path.name) + 1 :]), reverse=True)
    return rotated + ([path] if path.exists() else [])
