"""What `dfmq capture` and `dfmq worker` send each other through the broker, and how it is written.

A work item is one utterance: its audio as 16-bit PCM (what a microphone delivers; half of float32),
the features and quality the capture node computed from its media buffer (float32, the model's own
inputs, so a split run decides on the same numbers as `dfmq run`) and what the capture node decides
about its events (top-k, transcripts on or off). On the wire: a 4-byte big-endian header length, the
JSON header, then the arrays' bytes in the order the header lists them.

A result is JSON: the decided intent event's fields (no audio) with the worker's id and timings,
or an error saying why the worker could not decide. Both carry the capture run's id and the attempt,
so a late answer to an earlier run or an earlier attempt is recognised for what it is.

Topics live outside the `dfmq/` tree on purpose: a `dfmq/#` subscription (the way to watch events)
never receives utterance audio, and broker ACLs can grant `dfmq/#` to consumers without it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from model.errors import DfmqError

WORK_SCHEMA = "dfmq.work/1"
RESULT_SCHEMA = "dfmq.result/1"
INTERNAL_ROOT = "dfmq-internal"
_HEADER_LEN = struct.Struct(">I")
_ARRAYS = ("samples_pcm16", "audio_features", "video_features")
_DTYPES: dict[str, np.dtype[Any]] = {
    "samples_pcm16": np.dtype("<i2"),
    "audio_features": np.dtype("<f4"),
    "video_features": np.dtype("<f4"),
}


class WorkFormatError(DfmqError):
    """A payload on an internal topic is not a work item or result this version reads."""

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"malformed {what}: {problem}")


def work_topic(stream_id: str) -> str:
    return f"{INTERNAL_ROOT}/work/{stream_id}"


def result_topic(stream_id: str) -> str:
    return f"{INTERNAL_ROOT}/result/{stream_id}"


def shared_work_subscription(group: str) -> str:
    """The MQTT 5 shared subscription of a worker group: each item goes to one worker of the group."""
    return f"$share/{group}/{INTERNAL_ROOT}/work/+"


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def from_pcm16(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32767.0


@dataclass
class WorkItem:
    """One utterance for a worker. Wall times are the capture node's clock: the worker only echoes
    them; what it measures itself is durations."""

    run_id: str  # one per capture run: results of an earlier run with the same stream id are ignored
    stream_id: str
    utterance_id: int
    attempt: int  # 1 on the first send
    timeout_s: float  # the capture node sends it again after this; a worker skips a copy older than it
    start_s: float  # stream seconds
    end_s: float
    speech_end_wall_s: float
    samples_pcm16: np.ndarray  # (n,) int16, 16 kHz mono
    audio_features: np.ndarray | None  # (Ta, mel_bins) float32; None without audio
    video_features: np.ndarray | None  # (Tv, face_size_px**2) float32; None without frames
    quality_audio: float
    quality_video: float
    features_ms: float
    features_id: str  # the checkpoint's feature options (model/features.py): a worker checks it has the same
    top_k: int
    publish_transcripts: bool
    forced_split: bool = False
    sample_rate_hz: int = 16000
    schema: str = WORK_SCHEMA

    def encode(self) -> bytes:
        header: dict[str, Any] = {}
        arrays: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in _ARRAYS:
                header[f.name] = value
            elif value is not None:
                data = np.ascontiguousarray(value, dtype=_DTYPES[f.name])
                arrays.append({"name": f.name, "shape": list(data.shape)})
                blobs.append(data.tobytes())
        header["arrays"] = arrays
        head = json.dumps(header, separators=(",", ":")).encode()
        return b"".join([_HEADER_LEN.pack(len(head)), head, *blobs])

    @classmethod
    def decode(cls, payload: bytes) -> WorkItem:
        if len(payload) < _HEADER_LEN.size:
            raise WorkFormatError("work item", f"{len(payload)} bytes, shorter than its header length")
        (size,) = _HEADER_LEN.unpack_from(payload)
        end = _HEADER_LEN.size + size
        try:
            header = json.loads(payload[_HEADER_LEN.size : end])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WorkFormatError("work item", f"header is not JSON ({exc})") from None
        if not isinstance(header, dict) or header.get("schema") != WORK_SCHEMA:
            got = header.get("schema") if isinstance(header, dict) else type(header).__name__
            raise WorkFormatError("work item", f"schema {got!r}, this dfmq reads {WORK_SCHEMA}")
        values: dict[str, Any] = dict.fromkeys(_ARRAYS)
        offset = end
        for spec in header.pop("arrays", []):
            name, shape = spec.get("name"), spec.get("shape")
            if name not in _ARRAYS or not isinstance(shape, list):
                raise WorkFormatError("work item", f"unknown array {name!r}")
            dtype = _DTYPES[name]
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if offset + nbytes > len(payload):
                raise WorkFormatError("work item", f"array {name} needs {nbytes} bytes, {len(payload) - offset} left")
            values[name] = np.frombuffer(payload, dtype, int(np.prod(shape, dtype=np.int64)), offset).reshape(shape)
            offset += nbytes
        if values["samples_pcm16"] is None:
            raise WorkFormatError("work item", "no samples_pcm16")
        try:
            return cls(**header, **values)
        except TypeError as exc:
            raise WorkFormatError("work item", str(exc)) from None


@dataclass
class WorkResult:
    """A worker's answer to one work item: the event's fields, or the error that stopped it."""

    run_id: str
    stream_id: str
    utterance_id: int
    attempt: int
    worker_id: str
    event: dict[str, Any] | None  # stream.messages.IntentEvent's fields; None with an error
    error: str | None = None
    asr_ms: float = 0.0
    engine_ms: float = 0.0
    batch_wait_ms: float = 0.0
    worker_ms: float = 0.0  # from the item's arrival at the worker to its result handed to the client
    intents_id: str | None = None  # the worker's intent set (IntentSet.digest): one per stream
    schema: str = RESULT_SCHEMA

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> WorkResult:
        try:
            data = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WorkFormatError("result", f"not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("schema") != RESULT_SCHEMA:
            got = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise WorkFormatError("result", f"schema {got!r}, this dfmq reads {RESULT_SCHEMA}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise WorkFormatError("result", str(exc)) from None
