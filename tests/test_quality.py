"""Each quality score against values computed by hand (DESIGN §1)."""

from __future__ import annotations

import math

import pytest
import torch

from model.config import ReferenceStats
from model.quality import (
    RunningReference,
    audio_stats,
    quality_vector,
    score_audio,
    score_video,
    spectral_entropy,
    text_quality,
    video_stats,
)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_text_quality_counts_real_tokens_not_stack_rows() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    q = text_quality(mask, max_len=6)
    assert q.tolist() == pytest.approx([0.5, 1.0, 0.0])
    # Padding the batch further must not change the score: L is the configured length.
    padded = torch.cat([mask, torch.zeros(3, 4, dtype=mask.dtype)], dim=1)
    assert text_quality(padded, max_len=6).tolist() == pytest.approx([0.5, 1.0, 0.0])


def test_spectral_entropy_tone_is_zero_and_flat_is_one() -> None:
    n = 64
    t = torch.arange(n, dtype=torch.float32)
    tone = torch.cos(2 * math.pi * 5 * t / n)
    impulse = torch.zeros(n)
    impulse[0] = 1.0  # flat spectrum: every bin the same power
    h = spectral_entropy(torch.stack([tone, impulse]))
    assert h[0].item() == pytest.approx(0.0, abs=1e-4)
    assert h[1].item() == pytest.approx(1.0, abs=1e-5)


def test_audio_quality_tone_beats_white_noise_and_silence_by_hand() -> None:
    n, frames = 64, 10
    t = torch.arange(n, dtype=torch.float32)
    tone = (2.0 * torch.cos(2 * math.pi * 5 * t / n)).repeat(frames, 1)
    noise = torch.randn(frames, n, generator=torch.Generator().manual_seed(0))
    silence = torch.zeros(frames, n)
    seq = torch.stack([tone, noise, silence])
    mask = torch.ones(3, frames, dtype=torch.bool)
    stats = audio_stats(seq, mask)
    # ||2 cos|| over 64 samples = 2 * sqrt(32).
    assert stats.energy[0].item() == pytest.approx(2 * math.sqrt(32), rel=1e-4)
    assert stats.energy[2].item() == 0.0
    q = score_audio(stats, energy_ref=5.0)
    assert q[0].item() == pytest.approx((sigmoid(2 * math.sqrt(32) - 5.0) + 1.0) / 2, abs=1e-4)
    assert q[2].item() == pytest.approx((sigmoid(-5.0) + 0.0) / 2, abs=1e-6)  # silence: entropy 1
    assert stats.entropy[1].item() > 0.8
    assert q[0] > q[1] > q[2]


def test_audio_padding_frames_are_ignored_and_missing_scores_zero() -> None:
    seq = torch.zeros(2, 4, 8)
    seq[0, :2] = 1.0
    seq[0, 2:] = 100.0  # padding garbage must not count
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    stats = audio_stats(seq, mask)
    assert stats.energy[0].item() == pytest.approx(math.sqrt(8))
    assert score_audio(stats, 0.0)[1].item() == 0.0


def test_video_frozen_vs_moving_and_black_frame_by_hand() -> None:
    frozen = torch.tensor([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    moving = torch.tensor([[0.0, 2.0], [1.0, 3.0], [3.0, 3.0]])
    black = torch.zeros(3, 2)
    stats = video_stats(torch.stack([frozen, moving, black]), torch.ones(3, 3, dtype=torch.bool))
    assert stats.motion.tolist() == pytest.approx([0.0, (2.0 + 4.0) / 2, 0.0])
    # std of [0,2] = 1, of [1,3] = 1, of [3,3] = 0 -> contrast of moving = 2/3.
    assert stats.contrast.tolist() == pytest.approx([1.0, 2 / 3, 0.0])
    q = score_video(stats, motion_ref=1.0, contrast_ref=0.5)
    assert q[0].item() == pytest.approx((sigmoid(-1.0) + sigmoid(0.5)) / 2)
    assert q[1].item() == pytest.approx((sigmoid(2.0) + sigmoid(2 / 3 - 0.5)) / 2)
    assert q[2].item() == pytest.approx((sigmoid(-1.0) + sigmoid(-0.5)) / 2)
    assert q[1] > q[0] > q[2]


def test_quality_vector_and_running_reference_ema() -> None:
    audio = torch.ones(1, 3, 4)
    video = torch.zeros(1, 2, 4)
    a = audio_stats(audio, torch.ones(1, 3, dtype=torch.bool))
    v = video_stats(video, torch.zeros(1, 2, dtype=torch.bool))  # no camera
    running = RunningReference(ReferenceStats(audio_energy=4.0, video_motion=1.0, video_contrast=1.0), momentum=0.5)
    q = running.score(torch.tensor([[1, 1, 0, 0]]), 4, a, v)
    assert q[0].tolist() == pytest.approx([0.5, (sigmoid(2.0 - 4.0) + (1.0 - 0.0)) / 2, 0.0], abs=1e-5)
    # Energy 2 folded into the reference with momentum 0.5; video untouched (absent).
    assert running.current.audio_energy == pytest.approx(3.0)
    assert running.current.video_motion == 1.0
    seeded = quality_vector(torch.tensor([[1, 1, 0, 0]]), 4, a, v, ReferenceStats(3.0, 1.0, 1.0))
    assert running.score(torch.tensor([[1, 1, 0, 0]]), 4, a, v)[0].tolist() == pytest.approx(seeded[0].tolist())
