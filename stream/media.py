"""Decoding media files with PyAV: 16 kHz mono float audio and timestamped BGR frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stream.errors import DfmqError
from stream.messages import MediaClip, VideoFrame

SAMPLE_RATE_HZ = 16000


class MediaError(DfmqError):
    """A media file or stream cannot be opened or decoded."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"cannot read media {source!r}: {problem}")


def decode_clip(path: Path | str, with_video: bool = True, max_video_fps: float = 30.0) -> MediaClip:
    """Whole-file decode; audio resampled to 16 kHz mono, video frames thinned to `max_video_fps`."""
    import av

    source = str(path)
    if not Path(source).exists() and "://" not in source:
        raise MediaError(source, "no such file")
    try:
        container = av.open(source)
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(source, f"not a readable media file ({exc})") from exc
    with container:
        audio_streams = list(container.streams.audio)
        video_streams = list(container.streams.video) if with_video else []
        if not audio_streams and not video_streams:
            raise MediaError(source, "no audio or video track")
        audio_parts: list[np.ndarray] = []
        frames: list[VideoFrame] = []
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
        min_gap_s = 1.0 / max_video_fps
        wanted = [*audio_streams[:1], *video_streams[:1]]
        try:
            for packet in container.demux(*wanted):
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame):
                        for out in resampler.resample(frame):
                            audio_parts.append(out.to_ndarray().reshape(-1))
                    elif isinstance(frame, av.VideoFrame):
                        pts_s = float(frame.time) if frame.time is not None else len(frames) * min_gap_s
                        if frames and pts_s - frames[-1].pts_s < min_gap_s - 1e-6:
                            continue
                        frames.append(VideoFrame(frame.to_ndarray(format="bgr24"), pts_s))
            if audio_streams:
                for out in resampler.resample(None):
                    audio_parts.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise MediaError(source, f"decoding failed ({exc})") from exc
    audio = np.concatenate(audio_parts).astype(np.float32) if audio_parts else np.zeros(0, dtype=np.float32)
    if frames:
        start = frames[0].pts_s
        frames = [VideoFrame(f.image, f.pts_s - start) for f in frames]
    return MediaClip(audio=audio, frames=frames, sample_rate_hz=SAMPLE_RATE_HZ)
