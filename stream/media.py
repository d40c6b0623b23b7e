"""Decoding media files with PyAV: 16 kHz mono float audio and timestamped BGR frames."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import DfmqError
from stream.messages import MediaClip, VideoFrame

SAMPLE_RATE_HZ = 16000


class MediaError(DfmqError):
    """A media file or stream cannot be opened or decoded."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"cannot read media {source!r}: {problem}")


@dataclass
class OpenMedia:
    """An opened file or stream with the tracks that will be decoded (at most one of each)."""

    source: str
    container: Any
    audio_stream: Any
    video_stream: Any


def open_media(
    source: str, audio: bool = True, video: bool = True, required: str | None = None, hint: str | None = None
) -> OpenMedia:
    """Open `source` with the tracks asked for; `required` ('audio' or 'video') must be among them.

    Every way a file can be unusable is a MediaError naming the file and the problem (`hint`
    says what to do about a missing required track), raised here, before anything is decoded."""
    import av

    is_url = "://" in source
    if not is_url:
        _check_local_file(source)
    try:
        container = av.open(source, timeout=10.0) if is_url else av.open(source)
    except av.FFmpegError as exc:
        raise MediaError(source, f"not a readable media file ({_ffmpeg_reason(exc)})") from exc
    except OSError as exc:
        raise MediaError(source, f"not a readable media file ({exc.strerror or exc})") from exc
    audio_stream = container.streams.audio[0] if audio and container.streams.audio else None
    video_stream = container.streams.video[0] if video and container.streams.video else None
    missing = None
    if required == "audio" and audio_stream is None:
        missing = "no audio track"
    elif required == "video" and video_stream is None:
        missing = "no video track"
    elif audio_stream is None and video_stream is None:
        missing = "no audio or video track"
    if missing is not None:
        found = [
            f"{len(group)} {kind} track{'s' if len(group) > 1 else ''}"
            for kind, group in _tracks(container).items()
            if group
        ]
        container.close()
        held = f"the file holds {' and '.join(found)}" if found else "the file holds no tracks"
        detail = "; ".join(part for part in (held, hint) if part)
        raise MediaError(source, f"{missing} ({detail})")
    return OpenMedia(source, container, audio_stream, video_stream)


def _tracks(container: Any) -> dict[str, Any]:
    streams = container.streams
    return {"video": streams.video, "audio": streams.audio, "subtitle": streams.subtitles, "data": streams.data}


def _ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's own words for a failure, without the errno and the repeated file name."""
    return str(getattr(exc, "strerror", None) or exc)


def _check_local_file(source: str) -> None:
    """The problems a local path can have that FFmpeg would report vaguely or not at all."""
    path = Path(source)
    if not path.exists():
        raise MediaError(source, "no such file")
    if path.is_dir():
        raise MediaError(source, "a folder, not a media file")
    size = path.stat().st_size
    if size == 0:
        raise MediaError(source, "empty file (0 bytes)")
    truncated = _iso_bmff_truncation(path, size)
    if truncated is not None:
        raise MediaError(source, truncated)


_INCOMPLETE = "an interrupted recording or an incomplete copy"


def _iso_bmff_truncation(path: Path, size: int) -> str | None:
    """Why an MP4/MOV file (ISO base media: a chain of sized top-level boxes) is cut short, if it is.

    FFmpeg opens a cut-off file whose index comes first and silently decodes the part that is
    there, and calls one whose index was never written 'invalid data'; walking the box sizes tells
    both apart from a damaged file. Anything that does not look like such a file is left to FFmpeg."""
    kinds: list[str] = []
    pos = 0
    with path.open("rb") as handle:
        while pos < size:
            handle.seek(pos)
            header = handle.read(16)
            if len(header) < 8:
                if "moov" in kinds:
                    return None  # a few stray bytes after a complete file: FFmpeg plays it
                return f"truncated: the file ends inside a box header at byte {size} ({_INCOMPLETE})"
            kind = header[4:8].decode("latin-1")
            if not kinds and kind != "ftyp":
                return None  # not an ISO base media file
            if not (kind.isascii() and kind.isprintable()):
                return None  # not a box: let FFmpeg judge the file
            box_size = int.from_bytes(header[:4], "big")
            if box_size == 1:  # 64-bit size after the type
                if len(header) < 16:
                    return f"truncated: the file ends inside a box header at byte {size} ({_INCOMPLETE})"
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:  # the box runs to the end of the file
                box_size = size - pos
            if box_size < 8:
                return None
            if pos + box_size > size:
                return (
                    f"truncated: the file ends at byte {size}, inside its '{kind}' box that needs "
                    f"{pos + box_size} bytes ({_INCOMPLETE})"
                )
            kinds.append(kind)
            pos += box_size
    if "moov" not in kinds and "moof" not in kinds:
        return f"incomplete: its index ('moov' box) was never written ({_INCOMPLETE})"
    return None


def decoded(media: OpenMedia, max_video_fps: float) -> Generator[np.ndarray | VideoFrame, None, None]:
    """16 kHz mono float32 sample blocks and BGR frames in decoding order, frames thinned to
    `max_video_fps` and stamped from the first frame on. Closes the container when done."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
    streams = [st for st in (media.audio_stream, media.video_stream) if st is not None]
    min_gap_s = 1.0 / max_video_fps
    last_frame_s = -1.0
    first_video_s: float | None = None
    try:
        for packet in media.container.demux(*streams):
            for frame in packet.decode():
                if isinstance(frame, av.AudioFrame):
                    for out in resampler.resample(frame):
                        yield out.to_ndarray().reshape(-1).astype(np.float32)
                elif isinstance(frame, av.VideoFrame):
                    pts = float(frame.time) if frame.time is not None else last_frame_s + min_gap_s
                    if first_video_s is None:
                        first_video_s = pts
                    pts -= first_video_s
                    if pts - last_frame_s < min_gap_s - 1e-6:
                        continue
                    last_frame_s = pts
                    yield VideoFrame(frame.to_ndarray(format="bgr24"), pts)
        if media.audio_stream is not None:
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1).astype(np.float32)
    except av.FFmpegError as exc:
        raise MediaError(media.source, f"decoding failed ({_ffmpeg_reason(exc)})") from exc
    finally:
        media.container.close()


def decode_clip(path: Path | str, with_video: bool = True, max_video_fps: float = 30.0) -> MediaClip:
    """Whole-file decode; audio resampled to 16 kHz mono, video frames thinned to `max_video_fps`."""
    media = open_media(str(path), audio=True, video=with_video)
    audio_parts: list[np.ndarray] = []
    frames: list[VideoFrame] = []
    for item in decoded(media, max_video_fps):
        if isinstance(item, VideoFrame):
            frames.append(item)
        else:
            audio_parts.append(item)
    audio = np.concatenate(audio_parts) if audio_parts else np.zeros(0, dtype=np.float32)
    return MediaClip(audio=audio, frames=frames, sample_rate_hz=SAMPLE_RATE_HZ)
