"""Features from raw media: the one code path for `dfmq extract` (training sets) and live use.

What the model consumes:
- audio: log-mel frames of 16 kHz mono (25 ms Hann window, 20 ms hop, 64 mel bands), so an
  utterance of 9.6 s fills the default 480 frames;
- video: a 16 x 16 grey face crop per frame at 10 fps (256 values in [0, 1]); the face comes from
  OpenCV's bundled frontal-face Haar cascade, falling back to a centre crop when none is found
  (the share of frames with a detected face is reported with the features).

Quality statistics come from the raw signal, not from the features: frame power and STFT
spectral entropy of the waveform, pixel contrast and frame-to-frame change of the picture.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, TypeVar

import numpy as np

from model.errors import ConfigError


class TimedImage(Protocol):
    """A picture stamped on the stream clock (the live pipeline's frame message is one); declared
    here so that the feature code needs nothing from the pipeline above it."""

    @property
    def image(self) -> np.ndarray: ...  # (H, W, 3) uint8 BGR

    @property
    def pts_s(self) -> float: ...


FrameT = TypeVar("FrameT", bound=TimedImage)

AUDIO_QUALITY_FORMULAS = ("paper", "snr")
VIDEO_QUALITY_FORMULAS = ("paper", "relative")


@dataclass
class FeatureOptions:
    sample_rate_hz: int = 16000
    audio_window_ms: float = 25.0
    audio_hop_ms: float = 20.0
    mel_bins: int = 64
    video_fps: float = 10.0
    face_size_px: int = 16
    # 'paper': (sigmoid(E - E_ref) + 1 - H) / 2. 'snr' adds a third term from the noise floor,
    # because loud broadband noise raises E while it lowers 1 - H and the two cancel.
    audio_quality: str = "snr"
    # 'paper': sigmoid(V - V_ref), sigmoid(C - C_ref) on raw differences, which barely move on
    # pixel scales in [0, 1]. 'relative': sigmoid(slope * (x / x_ref - 1)).
    video_quality: str = "relative"
    relative_slope: float = 4.0
    snr_midpoint_db: float = 12.0
    snr_width_db: float = 4.0

    def __post_init__(self) -> None:
        if self.audio_quality not in AUDIO_QUALITY_FORMULAS:
            raise ConfigError("audio_quality", f"one of {AUDIO_QUALITY_FORMULAS}", self.audio_quality)
        if self.video_quality not in VIDEO_QUALITY_FORMULAS:
            raise ConfigError("video_quality", f"one of {VIDEO_QUALITY_FORMULAS}", self.video_quality)
        if self.sample_rate_hz != 16000:
            raise ConfigError("sample_rate_hz", "16000 (Whisper and the features expect 16 kHz)", self.sample_rate_hz)
        if self.video_fps <= 0:
            raise ConfigError("video_fps", "a frame rate > 0", self.video_fps)

    @property
    def window_samples(self) -> int:
        return round(self.sample_rate_hz * self.audio_window_ms / 1000)

    @property
    def hop_samples(self) -> int:
        return round(self.sample_rate_hz * self.audio_hop_ms / 1000)

    @property
    def video_dim(self) -> int:
        return self.face_size_px * self.face_size_px


@dataclass
class RawAudioStats:
    energy: float  # mean log10 frame power (bels); the 'E' of the quality score
    entropy: float  # power-weighted mean normalised spectral entropy of the STFT frames
    snr_db: float  # 90th over 10th percentile frame power


@dataclass
class RawVideoStats:
    motion: float  # mean squared change between consecutive face crops (pixels in [0, 1])
    contrast: float  # mean per-frame std of the grey picture (pixels in [0, 1])
    face_ratio: float  # share of frames with a detected face


def _frames(samples: np.ndarray, opts: FeatureOptions) -> np.ndarray:
    win, hop = opts.window_samples, opts.hop_samples
    if len(samples) < win:
        samples = np.pad(samples, (0, win - len(samples)))
    count = 1 + (len(samples) - win) // hop
    index = np.arange(win)[None, :] + hop * np.arange(count)[:, None]
    return samples[index] * np.hanning(win).astype(np.float32)[None, :]


def _power_spectrum(samples: np.ndarray, opts: FeatureOptions) -> np.ndarray:
    n_fft = 1 << (opts.window_samples - 1).bit_length()
    return np.abs(np.fft.rfft(_frames(samples.astype(np.float32), opts), n=n_fft, axis=1)) ** 2


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate_hz: int, n_fft: int, mel_bins: int) -> np.ndarray:
    """Triangular HTK-style mel filters, (mel_bins, n_fft // 2 + 1)."""

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (mel / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sample_rate_hz / 2)), mel_bins + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate_hz)
    bank = np.zeros((mel_bins, len(bins)), dtype=np.float32)
    for m in range(mel_bins):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (bins - lo) / max(mid - lo, 1e-9)
        falling = (hi - bins) / max(hi - mid, 1e-9)
        bank[m] = np.clip(np.minimum(rising, falling), 0.0, None)
    return bank


def log_mel(samples: np.ndarray, opts: FeatureOptions, power: np.ndarray | None = None) -> np.ndarray:
    """(T, mel_bins) float32 log10 mel energies; the audio input of the model."""
    power = _power_spectrum(samples, opts) if power is None else power
    n_fft = 2 * (power.shape[1] - 1)
    mel = power @ mel_filterbank(opts.sample_rate_hz, n_fft, opts.mel_bins).T
    return np.log10(mel + 1e-8).astype(np.float32)


def audio_stats_raw(samples: np.ndarray, opts: FeatureOptions, power: np.ndarray | None = None) -> RawAudioStats:
    """Energy, spectral entropy (over an STFT of the waveform) and a noise-floor SNR."""
    power = _power_spectrum(samples, opts) if power is None else power
    frame_power = power.sum(axis=1)
    p = power / np.maximum(frame_power[:, None], 1e-20)
    entropy = -(p * np.log(np.maximum(p, 1e-20))).sum(axis=1) / math.log(power.shape[1])
    entropy = np.where(frame_power > 1e-12, entropy, 1.0)
    # Power-weighted: the pauses between words would otherwise count as much as the words.
    weights = frame_power / max(float(frame_power.sum()), 1e-20)
    mean_entropy = float((entropy * weights).sum()) if frame_power.sum() > 1e-12 else 1.0
    floor = float(np.percentile(frame_power, 10))
    peak = float(np.percentile(frame_power, 90))
    snr_db = 10.0 * math.log10((peak + 1e-12) / (floor + 1e-12))
    energy = float(np.mean(np.log10(frame_power + 1e-10)))
    return RawAudioStats(energy=energy, entropy=mean_entropy, snr_db=snr_db)


@lru_cache(maxsize=1)
def _face_detector() -> Any:
    import importlib

    # The OpenCV 5 stubs lack `data` and `CascadeClassifier`, both present at run time.
    cv2: Any = importlib.import_module("cv2")
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    detector = cv2.CascadeClassifier(path)
    if detector.empty():
        raise ConfigError("face detector", f"a readable Haar cascade at {path}", "an empty classifier")
    return detector


def sample_frames(frames: Sequence[FrameT], fps: float) -> list[FrameT]:
    """Frames at a fixed rate (nearest earlier frame for each tick), whatever the source rate.

    The ticks lie on one grid of stream time (multiples of 1/fps), not one per window, so that
    overlapping windows (the running quality, then the utterance) pick the same frames and the
    FaceTracker crops each of them once."""
    if not frames:
        return []
    step = 1.0 / fps
    first_tick = math.ceil(frames[0].pts_s / step - 1e-6)
    last_tick = math.floor(frames[-1].pts_s / step + 1e-6)
    out = []
    j = 0
    for tick in range(first_tick, last_tick + 1):
        t = tick * step
        while j + 1 < len(frames) and frames[j + 1].pts_s <= t + 1e-9:
            j += 1
        out.append(frames[j])
    return out or [frames[0]]


class FaceTracker:
    """Face crops frame by frame: detection on every third frame, the last box reused between.

    Results are cached by frame time, so windows that overlap (the running quality a few times a
    second, then the utterance) crop each frame once. Safe to share between threads.
    """

    def __init__(self, opts: FeatureOptions, cache_frames: int = 900) -> None:
        self.opts = opts
        self.cache_frames = cache_frames
        self._cache: OrderedDict[float, tuple[np.ndarray, float, bool]] = OrderedDict()
        self._box: tuple[int, int, int, int] | None = None
        self._count = 0
        self._lock = threading.Lock()

    @property
    def last_box(self) -> tuple[int, int, int, int] | None:
        """The newest face box (x, y, width, height in pixels), None before a face was found."""
        return self._box

    def crop(self, frame: TimedImage) -> tuple[np.ndarray, float, bool]:
        """(flattened crop in [0, 1], contrast of the grey picture, face found)."""
        import cv2

        with self._lock:
            cached = self._cache.get(frame.pts_s)
            if cached is not None:
                return cached
            grey = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
            h, w = grey.shape
            if self._count % 3 == 0 or self._box is None:
                scale = 160.0 / max(h, w)
                small = cv2.resize(grey, (max(1, int(w * scale)), max(1, int(h * scale))))
                faces = _face_detector().detectMultiScale(small, scaleFactor=1.15, minNeighbors=4, minSize=(24, 24))
                if len(faces):
                    x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3])
                    self._box = (int(x / scale), int(y / scale), int(fw / scale), int(fh / scale))
            self._count += 1
            if self._box is not None:
                x, y, fw, fh = self._box
                region = grey[y : y + fh, x : x + fw]
            else:
                side = min(h, w) // 2
                region = grey[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
            size = self.opts.face_size_px
            crop = cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
            result = (crop.reshape(-1), float(grey.std()) / 255.0, self._box is not None)
            self._cache[frame.pts_s] = result
            while len(self._cache) > self.cache_frames:
                self._cache.popitem(last=False)
            return result


def face_crops(
    frames: Sequence[TimedImage], opts: FeatureOptions, tracker: FaceTracker | None = None
) -> tuple[np.ndarray, float, list[float]]:
    """(T, size*size) crops in [0, 1], the detected-face share, and each frame's contrast."""
    tracker = tracker or FaceTracker(opts)
    results = [tracker.crop(frame) for frame in frames]
    if not results:
        return np.zeros((0, opts.video_dim), dtype=np.float32), 0.0, []
    crops = np.stack([r[0] for r in results])
    return crops, sum(r[2] for r in results) / len(results), [r[1] for r in results]


def video_stats_raw(crops: np.ndarray, contrasts: list[float], face_ratio: float) -> RawVideoStats:
    if len(crops) == 0:
        return RawVideoStats(0.0, 0.0, 0.0)
    motion = float(np.mean(np.sum(np.diff(crops, axis=0) ** 2, axis=1))) if len(crops) > 1 else 0.0
    return RawVideoStats(motion=motion, contrast=float(np.mean(contrasts)), face_ratio=face_ratio)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def score_audio_arrays(
    energy: np.ndarray, entropy: np.ndarray, snr_db: np.ndarray, energy_ref: float, opts: FeatureOptions
) -> np.ndarray:
    """Audio quality of many windows at once; NaN energy marks a window without audio (score 0)."""
    terms = [_sigmoid(energy - energy_ref), 1.0 - entropy]
    if opts.audio_quality == "snr":
        terms.append(_sigmoid((snr_db - opts.snr_midpoint_db) / opts.snr_width_db))
    return np.nan_to_num(np.mean(terms, axis=0), nan=0.0)


def score_video_arrays(
    motion: np.ndarray, contrast: np.ndarray, motion_ref: float, contrast_ref: float, opts: FeatureOptions
) -> np.ndarray:
    """Video quality of many windows at once; NaN motion marks a window without video (score 0)."""
    if opts.video_quality == "paper":
        q = (_sigmoid(motion - motion_ref) + _sigmoid(contrast - contrast_ref)) / 2.0
    else:
        k = opts.relative_slope
        q = (
            _sigmoid(k * (motion / max(motion_ref, 1e-9) - 1.0))
            + _sigmoid(k * (contrast / max(contrast_ref, 1e-9) - 1.0))
        ) / 2.0
    return np.nan_to_num(q, nan=0.0)


def score_audio_raw(stats: RawAudioStats | None, energy_ref: float, opts: FeatureOptions) -> float:
    if stats is None:
        return 0.0
    arrays = (np.array([stats.energy]), np.array([stats.entropy]), np.array([stats.snr_db]))
    return float(score_audio_arrays(*arrays, energy_ref, opts)[0])


def score_video_raw(stats: RawVideoStats | None, motion_ref: float, contrast_ref: float, opts: FeatureOptions) -> float:
    if stats is None:
        return 0.0
    arrays = (np.array([stats.motion]), np.array([stats.contrast]))
    return float(score_video_arrays(*arrays, motion_ref, contrast_ref, opts)[0])


@dataclass
class ClipFeatures:
    """What one utterance window gives the model, plus the raw statistics of its quality."""

    audio: np.ndarray | None  # (Ta, mel_bins) float32; None without audio
    video: np.ndarray | None  # (Tv, face_size_px**2) float32; None without frames
    audio_stats: RawAudioStats | None
    video_stats: RawVideoStats | None


def extract_features(
    audio: np.ndarray,
    frames: Sequence[TimedImage],
    opts: FeatureOptions,
    tracker: FaceTracker | None = None,
    model_inputs: bool = True,
) -> ClipFeatures:
    """Features of one window (or a whole clip): 16 kHz mono samples and its frames.

    A live stream passes its FaceTracker so that frames shared by windows are cropped once;
    `model_inputs=False` computes the quality statistics alone (the running-quality ticker).
    """
    has_audio = len(audio) >= opts.window_samples
    power = _power_spectrum(audio, opts) if has_audio else None
    audio_feats = log_mel(audio, opts, power) if has_audio and model_inputs else None
    a_stats = audio_stats_raw(audio, opts, power) if has_audio else None
    video_feats = None
    v_stats = None
    if frames:
        crops, face_ratio, contrasts = face_crops(sample_frames(frames, opts.video_fps), opts, tracker)
        video_feats = crops
        v_stats = video_stats_raw(crops, contrasts, face_ratio)
    return ClipFeatures(audio_feats, video_feats, a_stats, v_stats)
