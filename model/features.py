"""Features from raw media: the one code path for `dfmq extract` (training sets) and live use.

What the model consumes:
- audio: log-mel frames of 16 kHz mono (25 ms Hann window, 20 ms hop, 64 mel bands), so an
  utterance of 9.6 s fills the default 480 frames;
- video: a 16 x 16 grey face crop per frame at 10 fps (256 values in [0, 1]); the face comes from
  OpenCV's bundled frontal-face Haar cascade, falling back to a centre crop when none is found
  (the share of frames with a detected face is reported with the features).

Quality statistics come from the raw signal, not from the features: frame power and STFT
spectral entropy of the waveform, pixel contrast and frame-to-frame change of the picture, and
of the face region (the Haar box, else the centre crop) its sharpness, brightness and clipped
pixels, with the share of frames where the detector found a face.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, TypeVar

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
VIDEO_QUALITY_FORMULAS = ("paper", "relative", "face")
# The face region is resized to this side before its sharpness is measured, so that a large face
# in a 1080p picture and a small one in a 360p picture are judged on the same scale.
SHARPNESS_SIZE_PX = 64
# Grey levels counted as clipped: the sensor's floor and ceiling.
CLIPPED_LOW, CLIPPED_HIGH = 5, 250


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
    # pixel scales in [0, 1]. 'relative': sigmoid(slope * (x / x_ref - 1)). 'face': is there a
    # face to read: the product of four ramps on absolute statistics (face found, exposure,
    # sharpness, motion), with no reference (see `score_video_arrays`). A checkpoint keeps the
    # formula it stored; 'face' is the default of new options only.
    video_quality: str = "face"
    relative_slope: float = 4.0
    snr_midpoint_db: float = 12.0
    snr_width_db: float = 4.0
    # 'face' ramps, ramp(x; lo, hi) = clip((x - lo) / (hi - lo), 0, 1). Set by hand from the
    # GRID clips and the drawn faces (docs/results/video_quality.md), not learnt.
    face_ratio_lo: float = 0.2  # share of frames with a detected face: 0 at or below,
    face_ratio_hi: float = 0.8  # 1 at or above (sporadic false detections stay at 0)
    brightness_lo: float = 0.05  # mean grey level of the face region: 0 below lo or above 1 - lo,
    brightness_ok: float = 0.20  # 1 between ok and 1 - ok
    clipped_ok: float = 0.10  # share of face-region pixels at the floor or ceiling: 1 up to ok,
    clipped_hi: float = 0.50  # 0 from hi on
    sharpness_lo: float = 0.05  # std(Laplacian) / (std + 0.01) of the 64 x 64 grey face region
    sharpness_hi: float = 0.35
    motion_rms_lo: float = 0.002  # RMS change per face-crop pixel between sampled frames
    motion_rms_hi: float = 0.008  # (about 0.5 and 2 grey levels of 255): frozen -> 0

    def __post_init__(self) -> None:
        if self.audio_quality not in AUDIO_QUALITY_FORMULAS:
            raise ConfigError("audio_quality", f"one of {AUDIO_QUALITY_FORMULAS}", self.audio_quality)
        if self.video_quality not in VIDEO_QUALITY_FORMULAS:
            raise ConfigError("video_quality", f"one of {VIDEO_QUALITY_FORMULAS}", self.video_quality)
        if self.sample_rate_hz != 16000:
            raise ConfigError("sample_rate_hz", "16000 (Whisper and the features expect 16 kHz)", self.sample_rate_hz)
        if self.video_fps <= 0:
            raise ConfigError("video_fps", "a frame rate > 0", self.video_fps)
        for lo, hi in (
            ("face_ratio_lo", "face_ratio_hi"),
            ("brightness_lo", "brightness_ok"),
            ("clipped_ok", "clipped_hi"),
            ("sharpness_lo", "sharpness_hi"),
            ("motion_rms_lo", "motion_rms_hi"),
        ):
            if not 0.0 <= getattr(self, lo) < getattr(self, hi):
                raise ConfigError(hi, f"a value above {lo} = {getattr(self, lo)!r}", getattr(self, hi))
        if self.brightness_ok >= 0.5:
            raise ConfigError(
                "brightness_ok", "a grey level below 0.5 (the ramp is mirrored at 1 - ok)", self.brightness_ok
            )

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
    """Raw video statistics of one window; the fields after `face_ratio` came with the 'face'
    formula and default to NaN ("not measured") so that older quality_stats.pkl files load."""

    motion: float  # mean squared change between consecutive face crops (sum over the crop's pixels in [0, 1])
    contrast: float  # mean per-frame std of the grey picture (pixels in [0, 1])
    face_ratio: float  # share of sampled frames whose latest detection found a face
    sharpness: float = math.nan  # mean per-frame std(Laplacian) / (std + 0.01) of the 64 x 64 grey face region
    brightness: float = math.nan  # mean grey level of the face region, in [0, 1]
    clipped: float = math.nan  # mean share of face-region pixels at <= 5 or >= 250 (of 255)


# The column order of raw video statistics in a table (one row per window, NaN rows: no video):
# what training batches should hold so that `score_video_table` can use every formula.
VIDEO_STAT_COLUMNS = ("motion", "contrast", "face_ratio", "sharpness", "brightness", "clipped")


def video_stats_row(stats: RawVideoStats) -> tuple[float, ...]:
    """The statistics in `VIDEO_STAT_COLUMNS` order."""
    return tuple(float(getattr(stats, name)) for name in VIDEO_STAT_COLUMNS)


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


class FrameCrop(NamedTuple):
    """What the tracker makes of one frame."""

    crop: np.ndarray  # flattened face_size_px x face_size_px grey crop in [0, 1]
    contrast: float  # std of the whole grey picture, in [0, 1]
    face_found: bool  # the latest detection (this frame or the last one run) found a face
    sharpness: float  # std(Laplacian) / (std + 0.01) of the face region at 64 x 64, grey in [0, 1]
    brightness: float  # mean grey level of the face region, in [0, 1]
    clipped: float  # share of face-region pixels at the floor (<= 5) or ceiling (>= 250)


def region_stats(region: np.ndarray) -> tuple[float, float, float]:
    """(sharpness, brightness, clipped share) of a grey uint8 region, judged at 64 x 64 pixels.

    Sharpness is the std of the Laplacian over the std of the picture (+ 0.01, so that a flat or
    black region scores 0): fine detail per unit of contrast, judged at one scale whatever the
    size of the face. Regions of 256 px and more are halved with pyrDown before the INTER_AREA
    resize, which is slow at non-integer scales (0.8 ms for a 400 px face, 0.1 ms this way); the
    pyramid's Gaussian lowers their sharpness by about a tenth.
    """
    import cv2

    if region.size == 0:
        return 0.0, 0.0, 1.0
    side = SHARPNESS_SIZE_PX
    while min(region.shape) >= 4 * side:
        region = cv2.pyrDown(region)
    shrinking = region.shape[0] >= side and region.shape[1] >= side
    small = cv2.resize(region, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    grey = small.astype(np.float32) * (1.0 / 255.0)
    mean, std = cv2.meanStdDev(grey)
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F))
    sharpness = float(lap_std[0, 0]) / (float(std[0, 0]) + 0.01)
    clipped = float(np.count_nonzero((small <= CLIPPED_LOW) | (small >= CLIPPED_HIGH))) / small.size
    return sharpness, float(mean[0, 0]), clipped


class FaceTracker:
    """Face crops frame by frame: detection on every third frame, the last box reused between.

    The crop follows the last box found, but a frame counts as showing a face only when the latest
    detection found one: a camera that turns away or goes dark stops counting at the next detection.

    Results are cached by frame time, so windows that overlap (the running quality a few times a
    second, then the utterance) crop each frame once. Safe to share between threads.
    """

    def __init__(self, opts: FeatureOptions, cache_frames: int = 900) -> None:
        self.opts = opts
        self.cache_frames = cache_frames
        self._cache: OrderedDict[float, FrameCrop] = OrderedDict()
        self._box: tuple[int, int, int, int] | None = None
        self._found = False
        self._count = 0
        self._lock = threading.Lock()

    @property
    def last_box(self) -> tuple[int, int, int, int] | None:
        """The newest face box (x, y, width, height in pixels), None before a face was found."""
        return self._box

    def crop(self, frame: TimedImage) -> FrameCrop:
        """The face crop of one frame and the statistics of its face region."""
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
                self._found = len(faces) > 0
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
            sharpness, brightness, clipped = region_stats(region)
            result = FrameCrop(crop.reshape(-1), float(grey.std()) / 255.0, self._found, sharpness, brightness, clipped)
            self._cache[frame.pts_s] = result
            while len(self._cache) > self.cache_frames:
                self._cache.popitem(last=False)
            return result


def face_crops(
    frames: Sequence[TimedImage], opts: FeatureOptions, tracker: FaceTracker | None = None
) -> tuple[np.ndarray, list[FrameCrop]]:
    """(T, size*size) crops in [0, 1] and what the tracker found in each frame."""
    tracker = tracker or FaceTracker(opts)
    results = [tracker.crop(frame) for frame in frames]
    if not results:
        return np.zeros((0, opts.video_dim), dtype=np.float32), []
    return np.stack([r.crop for r in results]), results


def video_stats_raw(crops: np.ndarray, per_frame: Sequence[FrameCrop]) -> RawVideoStats:
    """Window statistics: motion from the crops, the rest the mean of the per-frame values."""
    if len(crops) == 0 or not per_frame:
        return RawVideoStats(0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    motion = float(np.mean(np.sum(np.diff(crops, axis=0) ** 2, axis=1))) if len(crops) > 1 else 0.0
    return RawVideoStats(
        motion=motion,
        contrast=float(np.mean([r.contrast for r in per_frame])),
        face_ratio=sum(r.face_found for r in per_frame) / len(per_frame),
        sharpness=float(np.mean([r.sharpness for r in per_frame])),
        brightness=float(np.mean([r.brightness for r in per_frame])),
        clipped=float(np.mean([r.clipped for r in per_frame])),
    )


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


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 at or below lo, 1 at or above hi, linear between (NaN stays NaN)."""
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def face_quality_terms(
    motion: np.ndarray,
    face_ratio: np.ndarray,
    sharpness: np.ndarray,
    brightness: np.ndarray,
    clipped: np.ndarray,
    opts: FeatureOptions,
) -> dict[str, np.ndarray]:
    """The four factors of the 'face' video quality, each in [0, 1] (NaN where not measured)."""
    rms = np.sqrt(np.maximum(motion, 0.0) / opts.video_dim)
    exposure = (
        _ramp(brightness, opts.brightness_lo, opts.brightness_ok)
        * _ramp(1.0 - brightness, opts.brightness_lo, opts.brightness_ok)
        * (1.0 - _ramp(clipped, opts.clipped_ok, opts.clipped_hi))
    )
    return {
        "face": _ramp(face_ratio, opts.face_ratio_lo, opts.face_ratio_hi),
        "exposure": exposure,
        "sharpness": _ramp(sharpness, opts.sharpness_lo, opts.sharpness_hi),
        "motion": _ramp(rms, opts.motion_rms_lo, opts.motion_rms_hi),
    }


def score_video_arrays(
    motion: np.ndarray,
    contrast: np.ndarray,
    motion_ref: float,
    contrast_ref: float,
    opts: FeatureOptions,
    *,
    face_ratio: np.ndarray | None = None,
    sharpness: np.ndarray | None = None,
    brightness: np.ndarray | None = None,
    clipped: np.ndarray | None = None,
) -> np.ndarray:
    """Video quality of many windows at once; NaN motion marks a window without video (score 0).

    'paper' and 'relative' score motion and contrast against the references. 'face' uses no
    reference:
        q_v = ramp(face_ratio; 0.2, 0.8)
              * ramp(brightness; 0.05, 0.2) * ramp(1 - brightness; 0.05, 0.2) * (1 - ramp(clipped; 0.1, 0.5))
              * ramp(sharpness; 0.05, 0.35)
              * ramp(sqrt(motion / video_dim); 0.002, 0.008)
    (the default thresholds; they are fields of `opts`). Each factor is a condition for reading a
    face: one found, neither black nor blown out, not smeared, not frozen. A window whose 'face'
    statistics are NaN (not measured, e.g. an older quality_stats.pkl) scores 0.
    """
    if opts.video_quality == "face":
        if face_ratio is None or sharpness is None or brightness is None or clipped is None:
            raise ConfigError(
                "video_quality",
                "'face' scores from face_ratio, sharpness, brightness and clipped statistics "
                f"(columns {VIDEO_STAT_COLUMNS})",
                "motion and contrast only",
            )
        terms = face_quality_terms(
            np.asarray(motion, dtype=np.float64), face_ratio, sharpness, brightness, clipped, opts
        )
        q = terms["face"] * terms["exposure"] * terms["sharpness"] * terms["motion"]
        q = np.where(np.isnan(motion), np.nan, q)
    elif opts.video_quality == "paper":
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


def score_video_table(table: np.ndarray, motion_ref: float, contrast_ref: float, opts: FeatureOptions) -> np.ndarray:
    """Video quality from a (..., K) table of raw statistics in `VIDEO_STAT_COLUMNS` order.

    'paper' and 'relative' read the first two columns (motion, contrast); 'face' needs all six.
    """
    table = np.asarray(table, dtype=np.float64)
    if table.shape[-1] < len(VIDEO_STAT_COLUMNS):
        if opts.video_quality == "face":
            raise ConfigError(
                "video_quality", f"'face' scores from the columns {VIDEO_STAT_COLUMNS}", f"{table.shape[-1]} columns"
            )
        return score_video_arrays(table[..., 0], table[..., 1], motion_ref, contrast_ref, opts)
    columns = {name: table[..., i] for i, name in enumerate(VIDEO_STAT_COLUMNS)}
    return score_video_arrays(
        columns["motion"],
        columns["contrast"],
        motion_ref,
        contrast_ref,
        opts,
        face_ratio=columns["face_ratio"],
        sharpness=columns["sharpness"],
        brightness=columns["brightness"],
        clipped=columns["clipped"],
    )


def score_video_raw(stats: RawVideoStats | None, motion_ref: float, contrast_ref: float, opts: FeatureOptions) -> float:
    if stats is None:
        return 0.0
    return float(score_video_table(np.array(video_stats_row(stats)), motion_ref, contrast_ref, opts))


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
        crops, per_frame = face_crops(sample_frames(frames, opts.video_fps), opts, tracker)
        video_feats = crops
        v_stats = video_stats_raw(crops, per_frame)
    return ClipFeatures(audio_feats, video_feats, a_stats, v_stats)
