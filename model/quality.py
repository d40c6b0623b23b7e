"""Modality quality scores (DESIGN §1): no learned parameters, each score in [0, 1].

This module scores *feature sequences* (what the model consumes): the audio spectral entropy is
taken over the feature dimension of each frame, and the video contrast is the spread of the
feature values of each frame, because pre-extracted benchmark features carry no raw pixels or
samples. Scores from raw waveforms and pixels (an STFT, pixel statistics) belong to the live
feature extractor, which feeds the same `score_*` functions with its own raw statistics.

The split between raw statistics (`*_stats`) and scores (`score_*`) exists because the
references differ by context: the batch mean in training, a running mean per stream live.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.config import ReferenceStats
from model.features import FeatureOptions, score_audio_arrays, score_video_table


@dataclass
class AudioStats:
    energy: Tensor  # (B,) mean L2 norm of the valid frames
    entropy: Tensor  # (B,) normalised spectral entropy in [0, 1]
    present: Tensor  # (B,) bool


@dataclass
class VideoStats:
    motion: Tensor  # (B,) mean squared L2 distance between consecutive valid frames
    contrast: Tensor  # (B,) mean over frames of the std of the frame's values
    present: Tensor  # (B,) bool


def _masked_frame_mean(per_frame: Tensor, mask: Tensor) -> Tensor:
    weights = mask.to(per_frame.dtype)
    return (per_frame * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def text_quality(attention_mask: Tensor, max_len: int) -> Tensor:
    """Valid (non-padding) tokens over the configured length L, from the real token mask."""
    return (attention_mask.to(torch.float32).sum(dim=1) / float(max_len)).clamp(0.0, 1.0)


@dataclass
class RecogniserScores:
    """What faster-whisper says of its own transcript (segment means over the utterance)."""

    avg_logprob: float  # mean token log-probability
    no_speech_prob: float  # probability that the window holds no speech at all
    compression_ratio: float  # gzip ratio of the text: repeated phrases (hallucinations) compress well


# Whisper's own fallback thresholds (faster-whisper's defaults): a segment under -1.0 mean
# log-probability or over a 2.4 compression ratio is treated as failed decoding, and over 0.6
# no-speech probability as silence. The ramps end where clean speech sits (measured with
# tools/trust_bench.py on espeak-ng and real speech: clean avg_logprob mostly above -0.45,
# compression ratio below 1.9).
LOGPROB_FAIL, LOGPROB_GOOD = -1.0, -0.45
COMPRESSION_GOOD, COMPRESSION_FAIL = 1.9, 2.4


def recogniser_confidence(scores: RecogniserScores) -> float:
    """How far the recogniser's transcript can be trusted, in [0, 1]: the product of three ramps
    (any one failing sinks it): log-probability from -1.0 to -0.45, speech probability
    `1 - no_speech_prob`, and compression ratio from 2.4 down to 1.9."""
    q_logprob = min(1.0, max(0.0, (scores.avg_logprob - LOGPROB_FAIL) / (LOGPROB_GOOD - LOGPROB_FAIL)))
    q_speech = min(1.0, max(0.0, 1.0 - scores.no_speech_prob))
    q_repeat = min(1.0, max(0.0, (COMPRESSION_FAIL - scores.compression_ratio) / (COMPRESSION_FAIL - COMPRESSION_GOOD)))
    return q_logprob * q_speech * q_repeat


def recognised_text_quality(coverage: float, confidence: float) -> float:
    """Live (and `dfmq extract`) text quality: `q_text = confidence * (1 + coverage) / 2`.

    The paper's token coverage alone rises under noise (garbage transcripts are longer), so the
    recogniser's confidence gates it: an unreliable transcript scores low however long it is, and
    among reliable ones a fuller sentence still scores higher than a single word."""
    return confidence * (1.0 + coverage) / 2.0


# The column order of recogniser scores in a training batch (one row per sample; a NaN row: the
# sample has no recogniser scores, e.g. benchmark text without audio).
TEXT_SCORE_COLUMNS = ("avg_logprob", "no_speech_prob", "compression_ratio")


def text_scores_row(scores: RecogniserScores) -> tuple[float, float, float]:
    """The scores in `TEXT_SCORE_COLUMNS` order."""
    return (scores.avg_logprob, scores.no_speech_prob, scores.compression_ratio)


def recogniser_confidence_table(scores: Tensor) -> Tensor:
    """`recogniser_confidence` of every row of a (..., 3) table in `TEXT_SCORE_COLUMNS` order
    (float64; a NaN row gives NaN)."""
    logprob, no_speech, ratio = scores.to(torch.float64).unbind(-1)
    q_logprob = ((logprob - LOGPROB_FAIL) / (LOGPROB_GOOD - LOGPROB_FAIL)).clamp(0.0, 1.0)
    q_speech = (1.0 - no_speech).clamp(0.0, 1.0)
    q_repeat = ((COMPRESSION_FAIL - ratio) / (COMPRESSION_FAIL - COMPRESSION_GOOD)).clamp(0.0, 1.0)
    return q_logprob * q_speech * q_repeat


def sample_text_quality(attention_mask: Tensor, max_len: int, text_scores: Tensor | None = None) -> Tensor:
    """Training text quality, per sample the way the live pipeline scores it: with recogniser
    scores (data from `dfmq extract`), `recognised_text_quality(coverage, recogniser_confidence)`;
    without (a NaN row, or no table at all: benchmark text), token coverage alone."""
    coverage = text_quality(attention_mask, max_len)
    if text_scores is None:
        return coverage
    confidence = recogniser_confidence_table(text_scores.to(coverage.device))
    recognised = (confidence * (1.0 + coverage.to(torch.float64)) / 2.0).to(coverage.dtype)
    return torch.where(torch.isnan(confidence), coverage, recognised)


def spectral_entropy(frames: Tensor) -> Tensor:
    """Normalised spectral entropy per frame over the last dimension: flat spectrum -> 1."""
    power = torch.fft.rfft(frames.to(torch.float32), dim=-1).abs().pow(2)
    total = power.sum(dim=-1, keepdim=True)
    p = power / total.clamp(min=1e-12)
    bins = power.shape[-1]
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum(dim=-1) / torch.log(torch.tensor(float(bins)))
    # A silent frame has no spectrum at all; treat it as structureless (entropy 1).
    return torch.where(total.squeeze(-1) > 1e-12, entropy, torch.ones_like(entropy))


def audio_stats(audio: Tensor, mask: Tensor) -> AudioStats:
    """Energy and spectral entropy of an audio feature sequence (B, T, D) with mask (B, T)."""
    present = mask.any(dim=1)
    energy = _masked_frame_mean(audio.to(torch.float32).norm(dim=-1), mask)
    entropy = _masked_frame_mean(spectral_entropy(audio), mask)
    return AudioStats(energy=energy, entropy=entropy, present=present)


def video_stats(video: Tensor, mask: Tensor) -> VideoStats:
    """Temporal variance and contrast of a video sequence (B, T, D) with mask (B, T)."""
    video = video.to(torch.float32)
    present = mask.any(dim=1)
    step = (video[:, 1:] - video[:, :-1]).pow(2).sum(dim=-1)
    pair_mask = mask[:, 1:] & mask[:, :-1]
    motion = _masked_frame_mean(step, pair_mask)
    contrast = _masked_frame_mean(video.std(dim=-1, unbiased=False), mask)
    return VideoStats(motion=motion, contrast=contrast, present=present)


def score_audio(stats: AudioStats, energy_ref: Tensor | float) -> Tensor:
    q_energy = torch.sigmoid(stats.energy - energy_ref)
    q_entropy = 1.0 - stats.entropy
    return torch.where(stats.present, (q_energy + q_entropy) / 2.0, torch.zeros_like(q_energy))


def score_video(stats: VideoStats, motion_ref: Tensor | float, contrast_ref: Tensor | float) -> Tensor:
    q = (torch.sigmoid(stats.motion - motion_ref) + torch.sigmoid(stats.contrast - contrast_ref)) / 2.0
    return torch.where(stats.present, q, torch.zeros_like(q))


def _present_mean(values: Tensor, present: Tensor) -> Tensor:
    if not bool(present.any()):
        return torch.zeros((), dtype=values.dtype, device=values.device)
    return values[present].mean()


def batch_references(audio: AudioStats, video: VideoStats) -> ReferenceStats:
    """Training references: the batch mean over samples that have the modality (the paper)."""
    return ReferenceStats(
        audio_energy=float(_present_mean(audio.energy, audio.present)),
        video_motion=float(_present_mean(video.motion, video.present)),
        video_contrast=float(_present_mean(video.contrast, video.present)),
    )


def quality_vector(
    attention_mask: Tensor,
    text_max_len: int,
    audio: AudioStats,
    video: VideoStats,
    reference: ReferenceStats,
    text_scores: Tensor | None = None,
) -> Tensor:
    """`q = [q_t, q_a, q_v]` of shape (B, 3), the weight predictor's input; `text_scores` (B, 3):
    recogniser scores where a sample has them (see `sample_text_quality`)."""
    return torch.stack(
        [
            sample_text_quality(attention_mask, text_max_len, text_scores),
            score_audio(audio, reference.audio_energy),
            score_video(video, reference.video_motion, reference.video_contrast),
        ],
        dim=1,
    )


class RunningReference:
    """Per-stream references for live use: an EMA over recent utterances.

    Seeded from the training statistics stored in the checkpoint so that the first utterance of
    a stream is scored against something sensible instead of against itself.
    """

    def __init__(self, seed: ReferenceStats, momentum: float = 0.1) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.momentum = momentum
        self.current = ReferenceStats(seed.audio_energy, seed.video_motion, seed.video_contrast)

    def score(self, attention_mask: Tensor, text_max_len: int, audio: AudioStats, video: VideoStats) -> Tensor:
        """Score against the references as they stand, then fold these samples into them."""
        q = quality_vector(attention_mask, text_max_len, audio, video, self.current)
        self.update(audio, video)
        return q

    def update(self, audio: AudioStats, video: VideoStats) -> None:
        for value in audio.energy[audio.present].tolist():
            self.fold(energy=value)
        for motion, contrast in zip(video.motion[video.present].tolist(), video.contrast[video.present].tolist()):
            self.fold(motion=motion, contrast=contrast)

    def fold(self, energy: float | None = None, motion: float | None = None, contrast: float | None = None) -> None:
        """One observation into the EMA; None leaves that reference as it is (channel absent)."""
        m = self.momentum
        ref = self.current
        if energy is not None:
            ref.audio_energy = (1 - m) * ref.audio_energy + m * energy
        if motion is not None:
            ref.video_motion = (1 - m) * ref.video_motion + m * motion
        if contrast is not None:
            ref.video_contrast = (1 - m) * ref.video_contrast + m * contrast


def raw_batch_references(raw_audio: Tensor, raw_video: Tensor) -> ReferenceStats:
    """Batch means of raw-signal statistics over the windows that have the modality."""

    def mean(column: Tensor) -> float:
        values = column[~torch.isnan(column)]
        return float(values.mean()) if len(values) else 0.0

    return ReferenceStats(mean(raw_audio[:, 0]), mean(raw_video[:, 0]), mean(raw_video[:, 1]))


def raw_quality_vector(
    attention_mask: Tensor,
    text_max_len: int,
    raw_audio: Tensor,
    raw_video: Tensor,
    reference: ReferenceStats,
    options: FeatureOptions,
    text_scores: Tensor | None = None,
) -> Tensor:
    """`q = [q_t, q_a, q_v]` from raw-signal statistics, with the formulas of `model.features`;
    `text_scores` (rows as `attention_mask`'s): recogniser scores (see `sample_text_quality`)."""
    a = raw_audio.detach().cpu().double().numpy()
    v = raw_video.detach().cpu().double().numpy()
    q_audio = score_audio_arrays(a[..., 0], a[..., 1], a[..., 2], reference.audio_energy, options)
    q_video = score_video_table(v, reference.video_motion, reference.video_contrast, options)
    q_text = sample_text_quality(attention_mask, text_max_len, text_scores)
    while q_text.dim() < raw_audio.dim() - 1:
        q_text = q_text.unsqueeze(-1).expand(raw_audio.shape[:-1])
    # Stacked on the CPU, where the numpy scores are, then moved to the batch's device (q_text is
    # on the batch's device already: a CUDA batch would not stack with CPU tensors).
    return torch.stack(
        [q_text.to(torch.float32).cpu(), torch.from_numpy(q_audio).float(), torch.from_numpy(q_video).float()], dim=-1
    ).to(attention_mask.device)
