"""Video quality of real and drawn faces under controlled conditions, 'face' formula vs 'relative'.

Each row is one whole clip (3 s of GRID at 25 fps, or a drawn talking face from
stream.render.render_scene at 15 fps) scored as one window, sampled at 10 fps like the live path.
'relative' is scored against the starter checkpoint's reference (model/starter/config.json).
The per-frame cost is the time of FaceTracker.crop per sampled frame (detection every third frame
included) with and without the statistics of the face region.

    .venv/bin/python tools/video_quality_table.py --out docs/results/video_quality.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from model import features
from model.features import (
    FaceTracker,
    FeatureOptions,
    extract_features,
    face_quality_terms,
    region_stats,
    sample_frames,
    score_video_raw,
)
from stream.media import decode_clip
from stream.messages import VideoFrame
from stream.render import render_scene

ROOT = Path(__file__).resolve().parent.parent
FACES = ROOT / "tests" / "data" / "faces"
GRID_CLIPS = ("bbaf2n", "lbax4n", "pwij3p")
DRAWN_SENTENCES = ("thank you so much for covering my shift", "hello there, good morning")
DARK_GAIN = 0.06  # as stream/synth.py's 'dark' and tools/make_demo_clip.py

Image = np.ndarray

TEMPLATE = """# Video quality: is there a face to read?

Issue "trust", item 3. Produced by

    .venv/bin/python tools/video_quality_table.py --out docs/results/video_quality.md

on a working tree on top of commit {commit}, on {cpus} CPU cores (shared with other work; the timings
are the best of the repeats).

## The formula

`FeatureOptions.video_quality = 'face'` (the default of new options; a checkpoint keeps the formula
stored in its `feature_options`, so the starter checkpoint keeps `'relative'`). With
`ramp(x; lo, hi) = clip((x - lo) / (hi - lo), 0, 1)`:

    q_face      = ramp(face_ratio; 0.2, 0.8)
    q_exposure  = ramp(brightness; 0.05, 0.20) * ramp(1 - brightness; 0.05, 0.20)
                  * (1 - ramp(clipped; 0.10, 0.50))
    q_sharpness = ramp(sharpness; 0.05, 0.35)
    q_motion    = ramp(sqrt(motion / 256); 0.002, 0.008)
    q_video     = q_face * q_exposure * q_sharpness * q_motion      (0 without video)

Statistics of one window, frames sampled at 10 fps (`RawVideoStats`):

- `face_ratio`: share of sampled frames whose latest Haar detection (run on every third frame)
  found a face. Before this change a frame counted as a face as soon as *any* face had been seen
  on the stream, because the tracker keeps the last box for cropping.
- `brightness`: mean grey level of the face region (the Haar box, else the centre crop), in [0, 1].
- `clipped`: share of face-region pixels at the floor (<= 5) or the ceiling (>= 250) of 255.
- `sharpness`: std of the Laplacian over (std + 0.01) of the grey face region resized to 64 x 64
  (INTER_AREA; regions of 256 px and more are first halved with pyrDown): fine detail per unit of
  contrast, the same for a face of 100 or 400 pixels.
- `motion`: mean over consecutive sampled frames of the summed squared change of the 16 x 16 face
  crop (pixels in [0, 1]), as before; `sqrt(motion / 256)` is the RMS change per crop pixel, and
  0.002 / 0.008 are about 0.5 / 2 grey levels of 255. A frozen picture has exactly 0.

Every factor is a condition for reading a face (found, neither black nor blown out, not smeared,
not frozen), so they multiply. The thresholds are fields of `FeatureOptions`, set by hand from the
rows below; nothing is learnt and no running reference enters (the reference arguments that
'paper' and 'relative' use are ignored).

## Scores

Each clip is one window: 3 s of a GRID clip (360 x 288, 25 fps) or 2 sentences of a drawn face from
`stream.render.render_scene` (160 x 160, 15 fps). 'relative' is the former default,
`(sigmoid(4 (V / V_ref - 1)) + sigmoid(4 (C / C_ref - 1))) / 2`, against the starter checkpoint's
reference (model/starter/config.json: V_ref = {motion_ref:.4f}, C_ref = {contrast_ref:.4f}). The last four
columns are the factors of 'face'.

| clip | condition | q_video 'face' | q_video 'relative' | face | exposure | sharpness | motion |
|---|---|---:|---:|---:|---:|---:|---:|
{quality_rows}

Tested (tests/test_video_quality.py): the three GRID clips >= 0.6; black, frozen, no face (background
corner and shoulders only) and gain x4 <= 0.1 on each; a drawn talking face >= 0.5 and the same
darkened x0.06 (as `render_scene`'s `dark_gain`) <= 0.1.

## Cost

Per sampled frame (the live ticker and the utterance share one `FaceTracker`, so each frame is
cropped once at 10 fps). `region_stats` is the whole extra cost of the new statistics (one 64 x 64
resize, a Laplacian and three reductions per frame): about 50 µs at 360 x 288, 0.2 ms for a 430 px
face, i.e. 0.5 to 2 ms per second of video at 10 fps. The crop itself is dominated by the Haar
detection every third frame; its with/without difference below is within the noise of the shared
machine.

| clip | picture | FaceTracker.crop per sampled frame | same without the face-region statistics | region_stats alone |
|---|---|---:|---:|---:|
{cost_rows}

## What it does not see

- **Upside down is not "no face" for the Haar cascade**: on the flipped GRID pictures it finds a
  "face" on the chin and mouth in 0-100 % of the frames (pwij3p: all), and on the flipped drawn face
  always, so those rows score up to 1. The no-face tests use pictures without a person's face instead.
- **Noise** raises the Laplacian, so sharpness stays high; the 'face' score does not fall with
  sensor noise unless the detector loses the face.
- **A face that holds still** (listening, not talking) has little crop motion; the thresholds
  (0.5 to 2 grey levels RMS) sit below the talking GRID speakers (3.4 to 5.8 levels) but a very
  still face on a clean camera can come near them.
- **Means over the window**: a window that is half lit and half dark averages its brightness; the
  face factor (half the frames) and the brightness mean then give a middle score.
- Thresholds were set on three GRID speakers (one lighting set-up) and the drawn faces; there is no
  webcam footage in the project to check them on.
"""


def _gain(gain: float) -> Callable[[Image], Image]:
    return lambda a: np.clip(a.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _background(a: Image) -> Image:
    """The top-right quarter of the picture (wall only), stretched back to the full size."""
    h, w = a.shape[:2]
    return cv2.resize(a[: h // 2, w - w // 4 :], (w, h))


CONDITIONS: dict[str, Callable[[list[Image]], list[Image]]] = {
    "clean": lambda ims: ims,
    "black": lambda ims: [np.zeros_like(a) for a in ims],
    "frozen (first frame repeated)": lambda ims: [ims[0]] * len(ims),
    "no face (background corner)": lambda ims: [_background(a) for a in ims],
    "no face (bottom third: shoulders)": lambda ims: [np.ascontiguousarray(a[2 * a.shape[0] // 3 :]) for a in ims],
    "over-exposed (gain x4, clipped)": lambda ims: [_gain(4.0)(a) for a in ims],
    f"dark (gain x{DARK_GAIN})": lambda ims: [_gain(DARK_GAIN)(a) for a in ims],
    "blur (Gaussian sigma 6 px)": lambda ims: [cv2.GaussianBlur(a, (0, 0), 6) for a in ims],
    "blur (Gaussian sigma 2 px)": lambda ims: [cv2.GaussianBlur(a, (0, 0), 2) for a in ims],
    "noise (Gaussian sigma 20 levels)": lambda ims: [
        np.clip(a + np.random.default_rng(i).normal(0, 20, a.shape), 0, 255).astype(np.uint8) for i, a in enumerate(ims)
    ],
    "upside down": lambda ims: [a[::-1].copy() for a in ims],
}


def sources() -> dict[str, list[VideoFrame]]:
    out = {name: decode_clip(FACES / f"{name}.mpg").frames for name in GRID_CLIPS}
    _, images, _, _ = render_scene(DRAWN_SENTENCES, snr_db=60.0, dark_gain=1.0, fps=15, seed=0)
    out["drawn (render_scene)"] = [VideoFrame(image, i / 15) for i, image in enumerate(images)]
    return out


def apply(frames: list[VideoFrame], condition: str) -> list[VideoFrame]:
    images = CONDITIONS[condition]([f.image for f in frames])
    return [VideoFrame(image, f.pts_s) for image, f in zip(images, frames)]


def measure(frames: list[VideoFrame], reference: dict[str, float]) -> dict[str, float]:
    face, relative = FeatureOptions(), FeatureOptions(video_quality="relative")
    stats = extract_features(np.zeros(0, np.float32), frames, face, model_inputs=False).video_stats
    assert stats is not None
    terms = face_quality_terms(
        np.array(stats.motion),
        np.array(stats.face_ratio),
        np.array(stats.sharpness),
        np.array(stats.brightness),
        np.array(stats.clipped),
        face,
    )
    return {
        "q_face": score_video_raw(stats, reference["video_motion"], reference["video_contrast"], face),
        "q_relative": score_video_raw(stats, reference["video_motion"], reference["video_contrast"], relative),
        **{f"t_{k}": float(v) for k, v in terms.items()},
        **{k: float(v) for k, v in vars(stats).items()},
    }


def _crop_pass(sampled: list[VideoFrame]) -> float:
    tracker = FaceTracker(FeatureOptions())  # a fresh cache: every frame is cropped again
    start = time.perf_counter()
    for f in sampled:
        tracker.crop(f)
    return (time.perf_counter() - start) / len(sampled)


def per_frame_cost(frames: list[VideoFrame], repeats: int) -> dict[str, float]:
    """Seconds per sampled frame: FaceTracker.crop (detection every third frame included) as it
    is, with the face-region statistics replaced by constants (the cost before them), and
    region_stats alone on the tracked face regions. Passes with and without alternate, and the
    best of each counts (other work on the machine only ever adds time)."""
    sampled = sample_frames(frames, 10.0)
    _crop_pass(sampled)  # warm-up: the cascade's first calls are slower
    original = features.region_stats
    with_stats = without_stats = math.inf
    for _ in range(repeats):
        with_stats = min(with_stats, _crop_pass(sampled))
        features.region_stats = lambda region: (0.0, 0.0, 0.0)
        try:
            without_stats = min(without_stats, _crop_pass(sampled))
        finally:
            features.region_stats = original
    regions = []
    tracker = FaceTracker(FeatureOptions())
    for f in sampled:
        tracker.crop(f)
        if (box := tracker.last_box) is not None:
            x, y, w, h = box
            regions.append(cv2.cvtColor(f.image, cv2.COLOR_BGR2GRAY)[y : y + h, x : x + w])
    stats_s = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for region in regions:
            region_stats(region)
        stats_s = min(stats_s, (time.perf_counter() - start) / max(1, len(regions)))
    return {"crop_s": with_stats, "crop_without_stats_s": without_stats, "region_stats_s": stats_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    parser.add_argument("--json", type=Path, help="also write every statistic as JSON")
    parser.add_argument("--repeats", type=int, default=20, help="timing repeats per clip")
    args = parser.parse_args()
    reference = json.loads((ROOT / "model" / "starter" / "config.json").read_text())["model"]["reference"]
    clips = sources()
    rows: list[dict[str, object]] = []
    for clip, frames in clips.items():
        for condition in CONDITIONS:
            rows.append({"clip": clip, "condition": condition, **measure(apply(frames, condition), reference)})
    # The cost also on a webcam-sized picture: a GRID clip upscaled x3 (1080 x 864, a 430 px face).
    timed = {
        **clips,
        "bbaf2n upscaled x3": [VideoFrame(cv2.resize(f.image, None, fx=3, fy=3), f.pts_s) for f in clips["bbaf2n"]],
    }
    costs = {clip: per_frame_cost(frames, args.repeats) for clip, frames in timed.items()}

    quality_rows = [
        f"| {row['clip']} | {row['condition']} | "
        + " | ".join(
            f"{float(str(row[k])):.2f}"
            for k in ("q_face", "q_relative", "t_face", "t_exposure", "t_sharpness", "t_motion")
        )
        + " |"
        for row in rows
    ]
    cost_rows = []
    for clip, cost in costs.items():
        h, w = timed[clip][0].image.shape[:2]
        cost_rows.append(
            f"| {clip} | {w} x {h} | {cost['crop_s'] * 1e3:.2f} ms | {cost['crop_without_stats_s'] * 1e3:.2f} ms "
            f"| {cost['region_stats_s'] * 1e6:.0f} µs |"
        )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    lines = [
        TEMPLATE.format(
            commit=commit.stdout.strip() or "unknown",
            cpus=os.cpu_count(),
            motion_ref=reference["video_motion"],
            contrast_ref=reference["video_contrast"],
            quality_rows="\n".join(quality_rows),
            cost_rows="\n".join(cost_rows),
        )
    ]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"reference": reference, "rows": rows, "cost": costs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
