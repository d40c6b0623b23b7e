"""Video quality that says whether there is a face to read ('face' formula), on real and drawn faces.

Real faces: three GRID clips (tests/data/faces, CC BY 4.0; 360 x 288, 25 fps, a speaker facing the
camera on a blue background), decoded with PyAV. Drawn faces: stream.render.render_face, darkened
the way render_scene darkens the picture.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.errors import ConfigError
from model.features import (
    VIDEO_STAT_COLUMNS,
    FaceTracker,
    FeatureOptions,
    RawVideoStats,
    extract_features,
    region_stats,
    score_video_arrays,
    score_video_raw,
    score_video_table,
    video_stats_row,
)
from stream.media import decode_clip
from stream.messages import VideoFrame
from stream.render import FaceStyle, render_face

FACES = Path(__file__).resolve().parent / "data" / "faces"
GRID = ("bbaf2n", "lbax4n", "pwij3p")
ROOT = Path(__file__).resolve().parent.parent
STARTER_REFERENCE = json.loads((ROOT / "model" / "starter" / "config.json").read_text())["model"]["reference"]
DARK_GAIN = 0.06  # what stream/synth.py's 'dark' degradation and tools/make_demo_clip.py pass to render_scene
FACE = FeatureOptions()


@pytest.fixture(scope="module")
def grid() -> dict[str, list[VideoFrame]]:
    clips = {name: decode_clip(FACES / f"{name}.mpg").frames for name in GRID}
    for frames in clips.values():
        assert len(frames) == 75 and frames[0].image.shape == (288, 360, 3)
    return clips


@pytest.fixture(scope="module")
def drawn() -> list[VideoFrame]:
    """A drawn face talking for 3 s at 15 fps: the mouth opens and closes, the head nods."""
    fps = 15
    return [
        VideoFrame(render_face(i / fps, abs(math.sin(2 * math.pi * 2.5 * i / fps)), FaceStyle(smile=0.3)), i / fps)
        for i in range(3 * fps)
    ]


def stats_of(frames: list[VideoFrame], opts: FeatureOptions = FACE) -> RawVideoStats:
    stats = extract_features(np.zeros(0, np.float32), frames, opts, model_inputs=False).video_stats
    assert stats is not None
    return stats


def q_face(frames: list[VideoFrame]) -> float:
    # Any references: the 'face' formula must not read them.
    return score_video_raw(
        stats_of(frames), STARTER_REFERENCE["video_motion"], STARTER_REFERENCE["video_contrast"], FACE
    )


def transformed(frames: list[VideoFrame], change: Callable[[np.ndarray], np.ndarray]) -> list[VideoFrame]:
    return [VideoFrame(np.ascontiguousarray(change(f.image)), f.pts_s) for f in frames]


def gain(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda image: np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def background_only(image: np.ndarray) -> np.ndarray:
    """The top-right quarter of a GRID picture (blue wall, no person), stretched to full size."""
    h, w = image.shape[:2]
    return cv2.resize(image[: h // 2, w - w // 4 :], (w, h))


def shoulders_only(image: np.ndarray) -> np.ndarray:
    """The bottom third of a GRID picture: the speaker's shoulders and shirt moving, no face."""
    return image[2 * image.shape[0] // 3 :]


@pytest.mark.parametrize("name", GRID)
def test_a_real_lit_talking_face_scores_at_least_06(grid: dict[str, list[VideoFrame]], name: str) -> None:
    stats = stats_of(grid[name])
    assert stats.face_ratio == 1.0
    assert q_face(grid[name]) >= 0.6
    # The old 'relative' score against the starter checkpoint's (drawn-face) references stays low.
    relative = FeatureOptions(video_quality="relative")
    old = score_video_raw(stats, STARTER_REFERENCE["video_motion"], STARTER_REFERENCE["video_contrast"], relative)
    assert old < 0.5


@pytest.mark.parametrize("name", GRID)
def test_black_frozen_faceless_and_blown_out_real_pictures_score_at_most_01(
    grid: dict[str, list[VideoFrame]], name: str
) -> None:
    frames = grid[name]
    frozen = [VideoFrame(frames[0].image, f.pts_s) for f in frames]
    conditions = {
        "black": transformed(frames, np.zeros_like),
        "frozen": frozen,
        "background only": transformed(frames, background_only),
        "shoulders only": transformed(frames, shoulders_only),
        "gain x4, clipped": transformed(frames, gain(4.0)),
    }
    scores = {label: q_face(cond) for label, cond in conditions.items()}
    assert all(q <= 0.1 for q in scores.values()), scores
    assert stats_of(frozen).motion == 0.0
    assert stats_of(conditions["shoulders only"]).face_ratio == 0.0  # the picture moves, but shows no face


def test_a_clean_drawn_face_scores_well_and_a_dark_one_not(drawn: list[VideoFrame]) -> None:
    assert q_face(drawn) >= 0.5
    # render_scene darkens with (image * dark_gain).astype(np.uint8).
    dark = transformed(drawn, lambda image: (image * DARK_GAIN).astype(np.uint8))
    assert q_face(dark) <= 0.1
    assert stats_of(dark).brightness < 0.05


def test_blur_lowers_the_score_through_sharpness(grid: dict[str, list[VideoFrame]], drawn: list[VideoFrame]) -> None:
    for frames in (grid["bbaf2n"], drawn):
        clean = stats_of(frames)
        blurred = stats_of(transformed(frames, lambda image: cv2.GaussianBlur(image, (0, 0), 6)))
        assert blurred.sharpness < 0.4 * clean.sharpness
        assert q_face(transformed(frames, lambda image: cv2.GaussianBlur(image, (0, 0), 6))) < 0.4


def test_sharpness_does_not_depend_on_the_size_of_the_face(grid: dict[str, list[VideoFrame]]) -> None:
    """The face region is judged at 64 x 64: an upscaled picture holds no more detail, and scores alike."""
    frame = grid["pwij3p"][30]
    tracker = FaceTracker(FACE)
    tracker.crop(frame)
    assert tracker.last_box is not None
    x, y, w, h = tracker.last_box
    grey = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
    native = region_stats(grey[y : y + h, x : x + w])[0]
    for scale in (2, 4):
        big = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        scaled = region_stats(big[y * scale : (y + h) * scale, x * scale : (x + w) * scale])[0]
        assert scaled == pytest.approx(native, rel=0.15), (scale, scaled, native)
    assert region_stats(np.zeros((80, 80), np.uint8)) == (0.0, 0.0, 1.0)  # black: no detail, all clipped


def test_face_ratio_counts_the_latest_detection_not_any_face_ever_seen(grid: dict[str, list[VideoFrame]]) -> None:
    """The tracker keeps cropping where the face was, but a camera gone black stops counting as a face."""
    frames = grid["lbax4n"]
    half = len(frames) // 2
    turned_black = frames[:half] + transformed(frames[half:], np.zeros_like)
    tracker = FaceTracker(FACE)
    first = extract_features(np.zeros(0, np.float32), frames[: half + 1], FACE, tracker, model_inputs=False)
    later = extract_features(np.zeros(0, np.float32), turned_black[half + 1 :], FACE, tracker, model_inputs=False)
    assert first.video_stats is not None and later.video_stats is not None
    assert first.video_stats.face_ratio == 1.0
    assert later.video_stats.face_ratio <= 0.1
    assert tracker.last_box is not None  # the box of the last face seen is kept for the crop (and the viewer)


def test_face_quality_stays_in_0_1_and_ignores_the_references() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    columns = {
        "motion": rng.uniform(0, 2, n),
        "contrast": rng.uniform(0, 0.5, n),
        "face_ratio": rng.uniform(0, 1, n),
        "sharpness": rng.uniform(0, 3, n),
        "brightness": rng.uniform(0, 1, n),
        "clipped": rng.uniform(0, 1, n),
    }
    table = np.stack([columns[name] for name in VIDEO_STAT_COLUMNS], axis=-1)
    table[::7] = np.nan  # windows without video
    q = score_video_table(table, 0.34, 0.16, FACE)
    assert q.shape == (n,) and np.all((q >= 0.0) & (q <= 1.0))
    assert np.all(q[::7] == 0.0)
    assert np.array_equal(q, score_video_table(table, 100.0, 0.0001, FACE))  # no running reference
    assert np.array_equal(q, score_video_table(table[None], 0.0, 0.0, FACE)[0])  # any leading shape
    assert score_video_raw(None, 1.0, 1.0, FACE) == 0.0  # no camera


def test_old_formulas_stay_selectable_and_checkpoints_keep_theirs() -> None:
    assert FeatureOptions().video_quality == "face"
    # A checkpoint stores its feature options; one trained with 'relative' keeps it, not the new default.
    stored = json.loads(json.dumps(dataclasses.asdict(FeatureOptions(video_quality="relative"))))
    assert FeatureOptions(**stored).video_quality == "relative"
    shipped = json.loads((ROOT / "model" / "starter" / "config.json").read_text())["model"]["feature_options"]
    assert FeatureOptions(**shipped).video_quality == "face"
    stats = RawVideoStats(motion=0.1, contrast=0.12, face_ratio=1.0, sharpness=0.6, brightness=0.5, clipped=0.0)
    relative = FeatureOptions(video_quality="relative")
    expected = (1 / (1 + math.exp(-4 * (0.1 / 0.34 - 1))) + 1 / (1 + math.exp(-4 * (0.12 / 0.16 - 1)))) / 2
    assert score_video_raw(stats, 0.34, 0.16, relative) == pytest.approx(expected)
    paper = FeatureOptions(video_quality="paper")
    expected_paper = (1 / (1 + math.exp(0.24)) + 1 / (1 + math.exp(0.04))) / 2
    assert score_video_raw(stats, 0.34, 0.16, paper) == pytest.approx(expected_paper)
    # A two-column table (motion, contrast) is enough for the old formulas, not for 'face'.
    two = np.array([[0.1, 0.12]])
    assert score_video_table(two, 0.34, 0.16, relative)[0] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="video_quality"):
        score_video_table(two, 0.34, 0.16, FACE)
    with pytest.raises(ConfigError, match="video_quality"):
        score_video_arrays(two[:, 0], two[:, 1], 0.34, 0.16, FACE)
    with pytest.raises(ConfigError, match="sharpness_hi"):
        FeatureOptions(sharpness_lo=0.5, sharpness_hi=0.4)


def test_statistics_from_before_the_face_formula_still_load() -> None:
    """quality_stats.pkl entries written before the new fields: they load; 'face' scores them 0."""
    old_entry = {"motion": 0.2, "contrast": 0.15, "face_ratio": 1.0}
    stats = RawVideoStats(**old_entry)
    assert math.isnan(stats.sharpness) and math.isnan(stats.brightness) and math.isnan(stats.clipped)
    assert score_video_raw(stats, 0.34, 0.16, FACE) == 0.0
    relative = FeatureOptions(video_quality="relative")
    two_columns = score_video_table(np.array([0.2, 0.15]), 0.34, 0.16, relative)
    assert score_video_raw(stats, 0.34, 0.16, relative) == pytest.approx(float(two_columns))
    new = RawVideoStats(0.2, 0.15, 1.0, 0.6, 0.5, 0.0)
    assert RawVideoStats(**dataclasses.asdict(new)) == new
    assert video_stats_row(new) == (0.2, 0.15, 1.0, 0.6, 0.5, 0.0)
