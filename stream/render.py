"""Making real media: espeak-ng speech, a drawn face, and muxing both into a file with PyAV.

Used by the corpus generator, the demo clip and the tests (no recorded benchmark media can be
downloaded here, so the project renders its own).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import DfmqError
from stream.media import SAMPLE_RATE_HZ


class RenderError(DfmqError):
    """A helper program needed to render media is missing or failed."""


def speak(text: str, voice: str = "en-us", words_per_min: int = 160, pitch: int = 50, ssml: bool = False) -> np.ndarray:
    """espeak-ng speech as 16 kHz mono float32; `ssml`: `text` is SSML (`<break time="300ms"/>`:
    a pause inside one sentence, its intonation kept)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RenderError("espeak-ng is not installed: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "speech.wav"
        markup = ["-m"] if ssml else []
        result = subprocess.run(
            [exe, "-v", voice, "-s", str(words_per_min), "-p", str(pitch), *markup, "-w", str(wav_path), text],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not wav_path.exists():
            raise RenderError(f"espeak-ng failed for voice {voice!r}: {result.stderr.strip()}")
        with wave.open(str(wav_path)) as handle:
            rate = handle.getframerate()
            pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    return resample(pcm, rate, SAMPLE_RATE_HZ)


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    if from_hz == to_hz or len(samples) == 0:
        return samples.astype(np.float32)
    n_out = round(len(samples) * to_hz / from_hz)
    positions = np.linspace(0, len(samples) - 1, n_out)
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)


def add_white_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at `snr_db` against the power of the non-silent part of the signal."""
    active = samples[np.abs(samples) > 0.01]
    power = float(np.mean(active**2)) if len(active) else float(np.mean(samples**2)) + 1e-12
    noise = rng.normal(0.0, math.sqrt(power / 10 ** (snr_db / 10)), len(samples)).astype(np.float32)
    return np.clip(samples + noise, -1.0, 1.0)


@dataclass
class FaceStyle:
    """How the drawn face looks and moves; intent families change these."""

    smile: float = 0.0  # -1 frown .. 1 smile
    brow_raise: float = 0.0  # 0 .. 1
    nod_px: float = 2.0  # head motion amplitude
    skin_bgr: tuple[int, int, int] = (150, 180, 220)
    background_bgr: tuple[int, int, int] = (70, 80, 60)


def render_face(t_s: float, speaking: float, style: FaceStyle, size_px: int = 160) -> np.ndarray:
    """One BGR frame: a face whose mouth opens with `speaking` (0..1) and whose head moves."""
    import cv2

    img = np.zeros((size_px, size_px, 3), dtype=np.uint8)
    img[:] = style.background_bgr
    cx = size_px // 2 + int(style.nod_px * math.sin(2 * math.pi * 0.7 * t_s))
    cy = size_px // 2 + int(style.nod_px * math.sin(2 * math.pi * 1.1 * t_s + 1.0))
    rx, ry = int(size_px * 0.28), int(size_px * 0.36)
    cv2.ellipse(img, (cx, cy), (rx, ry), 0, 0, 360, style.skin_bgr, -1)
    eye_y = cy - ry // 4
    blink = 1 if (t_s % 3.1) < 0.12 else max(2, size_px // 40)
    for side in (-1, 1):
        ex = cx + side * rx // 2
        cv2.ellipse(img, (ex, eye_y), (size_px // 22, blink), 0, 0, 360, (40, 30, 30), -1)
        brow_y = eye_y - size_px // 14 - int(style.brow_raise * size_px / 25)
        cv2.line(img, (ex - size_px // 20, brow_y + side * 0), (ex + size_px // 20, brow_y), (50, 40, 40), 2)
    mouth_y = cy + ry // 2
    width = rx // 2
    opening = int(2 + speaking * size_px / 14)
    curve = int(style.smile * size_px / 18)
    cv2.ellipse(
        img,
        (cx, mouth_y - curve // 2),
        (width, max(1, abs(curve) + 1)),
        0,
        0 if curve >= 0 else 180,
        180 if curve >= 0 else 360,
        (60, 40, 120),
        2,
    )
    cv2.ellipse(img, (cx, mouth_y), (width // 2, opening // 2 + 1), 0, 0, 360, (40, 20, 90), -1)
    return img


def write_clip(path: Path, audio: np.ndarray, frames: list[np.ndarray], fps: int) -> None:
    """Mux 16 kHz mono audio and BGR frames into a file (mp4: MPEG-4 + AAC; mkv/webm likewise)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        v_stream = container.add_stream("mpeg4", rate=fps) if frames else None
        if v_stream is not None:
            h, w = frames[0].shape[:2]
            v_stream.width, v_stream.height, v_stream.pix_fmt = w, h, "yuv420p"
            v_stream.bit_rate = 400_000
        a_stream = container.add_stream("aac", rate=SAMPLE_RATE_HZ) if len(audio) else None
        if a_stream is not None:
            a_stream.layout = "mono"
        if v_stream is not None:
            for image in frames:
                for packet in v_stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                    container.mux(packet)
            for packet in v_stream.encode(None):
                container.mux(packet)
        if a_stream is not None:
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
            chunk = 1024
            for start in range(0, len(pcm), chunk):
                block = pcm[start : start + chunk]
                frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = SAMPLE_RATE_HZ
                frame.pts = start
                for packet in a_stream.encode(frame):
                    container.mux(packet)
            for packet in a_stream.encode(None):
                container.mux(packet)


def render_scene(
    sentences: tuple[str, ...],
    snr_db: float,
    dark_gain: float,
    fps: int = 15,
    seed: int = 0,
    pause_s: float = 0.8,
    noise_from_share: float = 0.5,
    dark_from_share: float = 0.5,
) -> tuple[np.ndarray, list[np.ndarray], float, float]:
    """Sentences with pauses and a talking face; white noise from `noise_from_share` of the clip on,
    a dark picture from `dark_from_share` on.

    Returns the audio, the frames and the times (s) at which the noise and the darkness start.
    """
    rng = np.random.default_rng(seed)
    pause = np.zeros(int(pause_s * SAMPLE_RATE_HZ), dtype=np.float32)
    audio = np.concatenate([pause, *[part for s in sentences for part in (speak(s, "en-us", 150, 50), pause)]])
    duration_s = len(audio) / SAMPLE_RATE_HZ
    noise_s, dark_s = noise_from_share * duration_s, dark_from_share * duration_s
    cut = int(noise_s * SAMPLE_RATE_HZ)
    audio = np.concatenate([audio[:cut], add_white_noise(audio[cut:], snr_db, rng)])
    frames = []
    for i in range(int(duration_s * fps)):
        t = i / fps
        loud = float(np.abs(audio[int(t * SAMPLE_RATE_HZ) : int((t + 1 / fps) * SAMPLE_RATE_HZ)]).mean())
        image = render_face(t, min(1.0, 8 * loud), FaceStyle(smile=0.3))
        frames.append((image * dark_gain).astype(np.uint8) if t >= dark_s else image)
    return audio, frames, noise_s, dark_s
