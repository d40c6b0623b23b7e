"""Features and raw quality from real media: espeak-ng speech and a drawn face muxed by PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.features import (
    FeatureOptions,
    RawVideoStats,
    extract_features,
    score_audio_raw,
    score_video_raw,
)
from stream.media import MediaError, decode_clip
from stream.messages import MediaClip, VideoFrame
from stream.render import FaceStyle, add_white_noise, render_face, speak, write_clip
from tests.conftest import require_binary

FPS = 15


@pytest.fixture(scope="module")
def spoken_clip(tmp_path_factory: pytest.TempPathFactory) -> MediaClip:
    """A real mp4: 0.5 s silence, an espeak-ng sentence, 0.5 s silence, and a talking face."""
    require_binary("espeak-ng", "espeak-ng")
    speech = speak("thank you so much for covering my shift, i really appreciate it", "en-us", 150, 50)
    pause = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([pause, speech, pause])
    count = int(len(audio) / 16000 * FPS)
    loudness = [float(np.abs(audio[int(i / FPS * 16000) : int((i + 1) / FPS * 16000)]).mean()) for i in range(count)]
    frames = [render_face(i / FPS, min(1.0, 8 * loud), FaceStyle(smile=0.5)) for i, loud in enumerate(loudness)]
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    write_clip(path, audio, frames, FPS)
    return decode_clip(path)


def test_decoded_clip_has_both_tracks_on_one_clock(spoken_clip: MediaClip) -> None:
    assert spoken_clip.sample_rate_hz == 16000
    assert 4.5 < len(spoken_clip.audio) / 16000 < 7.0
    assert spoken_clip.frames[0].pts_s == 0.0
    steps = np.diff([f.pts_s for f in spoken_clip.frames])
    assert np.allclose(steps, 1 / FPS, atol=1e-3)
    assert abs(spoken_clip.frames[-1].pts_s - len(spoken_clip.audio) / 16000) < 0.6


def test_feature_shapes_and_face_detection(spoken_clip: MediaClip) -> None:
    opts = FeatureOptions()
    feats = extract_features(spoken_clip.audio, spoken_clip.frames, opts)
    assert feats.audio is not None and feats.video is not None
    # 20 ms hop: 50 frames per second of audio; 10 fps of 16 x 16 face crops.
    assert abs(feats.audio.shape[0] - len(spoken_clip.audio) / 320) <= 2
    assert feats.audio.shape[1] == 64
    assert feats.video.shape[1] == 256
    assert abs(feats.video.shape[0] - spoken_clip.frames[-1].pts_s * 10) <= 2
    assert feats.video.min() >= 0.0 and feats.video.max() <= 1.0
    assert feats.video_stats is not None and feats.video_stats.face_ratio > 0.9  # the cascade finds the face


def test_noise_at_0db_lowers_audio_quality_by_at_least_015(spoken_clip: MediaClip) -> None:
    opts = FeatureOptions(audio_quality="snr")
    clean = extract_features(spoken_clip.audio, [], opts).audio_stats
    noisy_audio = add_white_noise(spoken_clip.audio, 0.0, np.random.default_rng(0))
    noisy = extract_features(noisy_audio, [], opts).audio_stats
    assert clean is not None and noisy is not None
    reference = clean.energy  # a stream that was clean until now
    drop = score_audio_raw(clean, reference, opts) - score_audio_raw(noisy, reference, opts)
    assert drop >= 0.15, drop
    # The paper's two-term score alone does not fall: louder noise lifts the energy term.
    paper = FeatureOptions(audio_quality="paper")
    assert score_audio_raw(noisy, reference, paper) > score_audio_raw(clean, reference, paper) - 0.05
    assert noisy.entropy > clean.entropy and noisy.snr_db < clean.snr_db


def test_black_and_frozen_camera_lower_video_quality_by_at_least_02(spoken_clip: MediaClip) -> None:
    opts = FeatureOptions(video_quality="relative")
    normal = extract_features(np.zeros(0, np.float32), spoken_clip.frames, opts).video_stats
    dark_frames = [VideoFrame((f.image * 0.03).astype(np.uint8), f.pts_s) for f in spoken_clip.frames]
    frozen_frames = [VideoFrame(spoken_clip.frames[0].image, f.pts_s) for f in spoken_clip.frames]
    dark = extract_features(np.zeros(0, np.float32), dark_frames, opts).video_stats
    frozen = extract_features(np.zeros(0, np.float32), frozen_frames, opts).video_stats
    assert normal is not None and dark is not None and frozen is not None
    assert frozen.motion == 0.0
    base = score_video_raw(normal, normal.motion, normal.contrast, opts)
    assert base - score_video_raw(dark, normal.motion, normal.contrast, opts) >= 0.2
    assert base - score_video_raw(frozen, normal.motion, normal.contrast, opts) >= 0.2
    assert score_video_raw(None, 1.0, 1.0, opts) == 0.0  # no camera


def test_paper_video_formula_is_kept_and_barely_moves_on_pixel_scales() -> None:
    opts = FeatureOptions(video_quality="paper")
    normal = RawVideoStats(motion=0.2, contrast=0.2, face_ratio=1.0)
    black = RawVideoStats(motion=0.0, contrast=0.0, face_ratio=0.0)
    assert score_video_raw(normal, 0.2, 0.2, opts) == pytest.approx(0.5)
    assert score_video_raw(black, 0.2, 0.2, opts) == pytest.approx(1 / (1 + np.exp(0.2)))


def test_unreadable_and_missing_files_are_named(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.mp4"
    bogus.write_bytes(b"this is not a video")
    with pytest.raises(MediaError, match=r"broken\.mp4.*not a readable media file"):
        decode_clip(bogus)
    with pytest.raises(MediaError, match="no such file"):
        decode_clip(tmp_path / "absent.wav")


def test_bad_feature_options_are_rejected() -> None:
    from model.errors import ConfigError

    with pytest.raises(ConfigError, match="audio_quality"):
        FeatureOptions(audio_quality="loudness")
    with pytest.raises(ConfigError, match="sample_rate_hz"):
        FeatureOptions(sample_rate_hz=44100)


def test_overlapping_windows_pick_the_same_frames_so_each_is_cropped_once(spoken_clip: MediaClip) -> None:
    from model.features import FaceTracker, sample_frames

    frames = spoken_clip.frames  # 15 fps, sampled at 10 fps
    # The running quality looks at [0.35 s, 2.35 s], the utterance at [1.02 s, 2.9 s].
    quality = sample_frames([f for f in frames if 0.35 <= f.pts_s <= 2.35], 10.0)
    utterance = sample_frames([f for f in frames if 1.02 <= f.pts_s <= 2.9], 10.0)
    shared = {f.pts_s for f in quality} & {f.pts_s for f in utterance}
    assert len(shared) >= 12  # the 1.1 s .. 2.3 s ticks, one frame each
    tracker = FaceTracker(FeatureOptions())
    for frame in quality:
        tracker.crop(frame)
    cropped = tracker._count
    for frame in utterance:
        tracker.crop(frame)
    assert tracker._count - cropped == len({f.pts_s for f in utterance} - shared)
