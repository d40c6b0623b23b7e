"""Capture: files and network streams (PyAV), microphones (sounddevice), cameras (OpenCV).

Every AudioChunk and VideoFrame is stamped on one stream clock: a file's own time stamps, or for
live devices a StreamClock shared by the microphone and the camera (seconds since the first of
them delivered anything). `wall_s` on audio says when its last sample was captured or read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from model.errors import BackendUnavailableError, ConfigError, DfmqError
from stream.media import SAMPLE_RATE_HZ, MediaError, decoded, open_media
from stream.messages import AudioChunk, VideoFrame

log = logging.getLogger("dfmq.sources")

Sink = Callable[[AudioChunk | VideoFrame | None], None]  # None marks the end of the input


class Source(Protocol):
    """What `dfmq run` starts: items go to the sink from the source's own thread or callback."""

    error: DfmqError | None  # what ended the input early, reported when the run ends

    def start(self, sink: Sink) -> None: ...

    def stop(self) -> None: ...


@dataclass
class SourceOptions:
    pace: str = "realtime"  # realtime | fast (files only)
    # Audio is handed over in 100 ms blocks: every hand-off wakes the capture thread and the event
    # loop, and on a small CPU the wake-ups cost more than the work. tools/latency_bench.py: 20 /
    # 64 / 100 ms blocks gave pipeline CPU 2.99 / 2.64 / 2.45 s and p50 latency 468 / 489 / 507 ms.
    chunk_ms: float = 100.0
    max_video_fps: float = 15.0

    def __post_init__(self) -> None:
        if self.pace not in ("realtime", "fast"):
            raise ConfigError("--pace", "'realtime' or 'fast'", self.pace)


def _requirement(audio: bool, video: bool) -> tuple[str | None, str | None]:
    """The track a file source cannot do without, and what to tell a user whose file lacks it."""
    if audio and video:  # --input
        return "audio", "expected a file with an audio stream; use --audio FILE --video FILE to combine separate files"
    if audio:  # --audio FILE
        return "audio", "expected a file with an audio stream for --audio"
    if video:  # --video FILE
        return "video", "expected a file with a video stream for --video; use --video none to run on sound alone"
    return None, None


class Lockstep:
    """Files read side by side faster than real time (`--audio FILE --video FILE --pace fast`).

    One file's tracks come interleaved by their time stamps, so an utterance's frames are in before
    its end is heard. Two files read each on its own thread are not: the audio, quicker to decode,
    ran seconds ahead and utterances were decided before their frames arrived (video quality 0, a
    silent loss). Here no file runs more than `LEAD_S` of stream time ahead of the slowest; a file
    that has ended holds no one back."""

    # An utterance is decided a hang-over (400 ms) after its speech ends: its frames are in by then.
    LEAD_S = 0.2

    def __init__(self) -> None:
        self._at_s: dict[int, float] = {}
        self._changed = threading.Condition()

    def join(self) -> int:
        with self._changed:
            member = len(self._at_s)
            self._at_s[member] = 0.0
            return member

    def advance(self, member: int, stream_s: float, stop: threading.Event) -> None:
        """Wait until `stream_s` is within LEAD_S of every other file, then take it. The file that
        is furthest behind never waits, whatever its step (a frame of a 2 fps video): no deadlock."""
        with self._changed:
            while not stop.is_set():
                others = [at for m, at in self._at_s.items() if m != member]
                slowest = min(others, default=float("inf"))
                if stream_s <= slowest + self.LEAD_S or self._at_s[member] <= slowest:
                    break
                self._changed.wait(timeout=0.2)
            self._at_s[member] = max(self._at_s[member], stream_s)
            self._changed.notify_all()

    def leave(self, member: int) -> None:
        with self._changed:
            self._at_s[member] = float("inf")
            self._changed.notify_all()


class FileSource:
    """A media file or URL decoded by PyAV on a thread; paced to real time unless `fast` (then in
    `lockstep` with the other files of the stream, if it has any)."""

    def __init__(
        self,
        location: str,
        options: SourceOptions,
        audio: bool = True,
        video: bool = True,
        lockstep: Lockstep | None = None,
    ) -> None:
        self.location = location
        self.options = options
        self.lockstep = lockstep
        self._member = lockstep.join() if lockstep is not None else 0
        # Utterances come from speech, so a file that is to give the audio must have it; a file
        # given for the picture alone (--video FILE) must have a picture. --input's video is optional.
        required, hint = _requirement(audio, video)
        self.media = open_media(location, audio, video, required=required, hint=hint)
        self.error: DfmqError | None = None  # what ended the input early; `dfmq run` reports it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def has_audio(self) -> bool:
        return self.media.audio_stream is not None

    @property
    def has_video(self) -> bool:
        return self.media.video_stream is not None

    def start(self, sink: Sink) -> None:
        self._thread = threading.Thread(target=self._run, args=(sink,), name="dfmq-file-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, sink: Sink) -> None:
        started_wall = time.time()
        audio_pos = 0
        chunk = int(SAMPLE_RATE_HZ * self.options.chunk_ms / 1000)
        pending = np.zeros(0, dtype=np.float32)

        def pace(stream_s: float) -> None:
            if self.options.pace == "realtime":
                delay = started_wall + stream_s - time.time()
                if delay > 0:
                    time.sleep(delay)
            elif self.lockstep is not None:
                self.lockstep.advance(self._member, stream_s, self._stop)

        def emit_audio(samples: np.ndarray) -> None:
            nonlocal audio_pos
            start_s = audio_pos / SAMPLE_RATE_HZ
            pace(start_s + len(samples) / SAMPLE_RATE_HZ)
            sink(AudioChunk(samples, start_s, SAMPLE_RATE_HZ, time.time()))
            audio_pos += len(samples)

        items = decoded(self.media, self.options.max_video_fps)
        try:
            for item in items:
                if self._stop.is_set():
                    break
                if isinstance(item, VideoFrame):
                    if not self.has_audio:
                        pace(item.pts_s)
                    sink(item)
                    continue
                pending = np.concatenate([pending, item])
                while len(pending) >= chunk:
                    emit_audio(pending[:chunk])
                    pending = pending[chunk:]
            if len(pending):
                emit_audio(pending)
            if self.has_audio and audio_pos == 0 and not self._stop.is_set():
                raise MediaError(self.location, "its audio track holds no samples (nothing could be decoded)")
        except MediaError as exc:
            # What was read before still goes through the pipeline; the run then fails with this.
            self.error = exc
            log.error("%s", exc)
        finally:
            items.close()
            if self.lockstep is not None:
                self.lockstep.leave(self._member)
            # The end marker goes out on errors too, so the pipeline flushes what it has.
            sink(None)


class StreamClock:
    """The one clock of a live run: monotonic seconds since the first device delivered anything."""

    def __init__(self) -> None:
        self._origin_s: float | None = None
        self._lock = threading.Lock()

    def now_s(self) -> float:
        with self._lock:
            now = time.monotonic()
            if self._origin_s is None:
                self._origin_s = now
            return now - self._origin_s


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the module imports, but PortAudio itself is missing
        raise BackendUnavailableError(
            "sounddevice", str(exc), "Install PortAudio: `apt-get install libportaudio2` (Debian/Ubuntu)."
        ) from exc
    except ImportError as exc:
        raise BackendUnavailableError("sounddevice", str(exc), "pip install 'dfmq-stream[audio]'") from exc
    return sounddevice


class MicSource:
    """A microphone through PortAudio; the callback only copies and hands over, never blocks."""

    def __init__(self, device: str | int | None, options: SourceOptions, clock: StreamClock) -> None:
        sd = _sounddevice()
        self.sd = sd
        self.device = int(device) if isinstance(device, str) and device.isdigit() else device
        try:
            if self.device in (None, "default"):
                info = sd.query_devices(kind="input")  # a machine with no microphone fails here, not mid-run
            else:
                info = sd.query_devices(self.device, "input")
        except (ValueError, sd.PortAudioError) as exc:
            raise ConfigError("--audio", f"a microphone name or index from `dfmq devices` ({exc})", device) from exc
        self.info = info
        self.options = options
        self.clock = clock
        self.error: DfmqError | None = None  # never set: a microphone has no end of input
        self._stream: Any = None
        self._pos = 0
        self._offset_s: float | None = None

    def start(self, sink: Sink) -> None:
        blocksize = int(SAMPLE_RATE_HZ * self.options.chunk_ms / 1000)

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if self._offset_s is None:
                # Anchored once on the shared clock (the first block began a block ago), then
                # counted in samples: the device's own clock, with no jitter between chunks.
                self._offset_s = max(0.0, self.clock.now_s() - frames / SAMPLE_RATE_HZ)
            samples = indata[:, 0].astype(np.float32).copy()
            start_s = self._offset_s + self._pos / SAMPLE_RATE_HZ
            sink(AudioChunk(samples, start_s, SAMPLE_RATE_HZ, time.time()))
            self._pos += frames

        device = None if self.device in (None, "default") else self.device
        self._stream = self.sd.InputStream(
            samplerate=SAMPLE_RATE_HZ,
            channels=1,
            dtype="float32",
            blocksize=blocksize,
            device=device,
            callback=callback,
        )
        self._stream.start()

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()


class CameraSource:
    """A webcam through OpenCV, read on a thread, frames stamped on the stream clock."""

    def __init__(self, device: str, options: SourceOptions, clock: StreamClock) -> None:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # its probing warnings: above our error

        index: int | str = int(device) if device.isdigit() else device
        self.capture = cv2.VideoCapture(index)
        if not self.capture.isOpened():
            raise ConfigError(
                "--video", "a camera index or /dev/videoN that can be opened (see `dfmq devices`)", device
            )
        self.options = options
        self.clock = clock
        self.device = device
        self.error: DfmqError | None = None
        self._stop = threading.Event()

    def start(self, sink: Sink) -> None:
        def run() -> None:
            last = -1.0
            while not self._stop.is_set():
                ok, image = self.capture.read()
                if not ok:
                    # Unplugged or taken by another program: audio goes on, the run reports it.
                    self.error = MediaError(self.device, f"the camera stopped delivering frames at {last:.1f} s")
                    log.error("%s", self.error)
                    break
                t = self.clock.now_s()
                if t - last >= 1.0 / self.options.max_video_fps:
                    last = t
                    sink(VideoFrame(image, t))
            self.capture.release()

        threading.Thread(target=run, name="dfmq-camera", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def list_devices() -> list[str]:
    """Microphones (sounddevice) and cameras (/dev/video*), one line each."""
    import glob

    lines = []
    try:
        sd = _sounddevice()
        inputs = [(i, d) for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]
        lines += [f"audio {i}: {d['name']} ({d['max_input_channels']} ch)" for i, d in inputs]
        if not inputs:
            lines.append("audio: no input devices")
    except BackendUnavailableError as exc:
        lines.append(f"audio: unavailable ({exc})")
    cameras = sorted(glob.glob("/dev/video*"))
    lines += [f"video {path}" for path in cameras] or ["video: no /dev/video* devices"]
    return lines
