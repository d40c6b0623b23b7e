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


def open_media(source: str, audio: bool = True, video: bool = True) -> OpenMedia:
    import av

    is_url = "://" in source
    if not is_url and not Path(source).exists():
        raise MediaError(source, "no such file")
    try:
        container = av.open(source, timeout=10.0) if is_url else av.open(source)
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(source, f"not a readable media file ({exc})") from exc
    audio_stream = container.streams.audio[0] if audio and container.streams.audio else None
    video_stream = container.streams.video[0] if video and container.streams.video else None
    if audio_stream is None and video_stream is None:
        container.close()
        raise MediaError(source, "no audio or video track")
    return OpenMedia(source, container, audio_stream, video_stream)


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
        raise MediaError(media.source, f"decoding failed ({exc})") from exc
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
