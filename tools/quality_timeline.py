"""Plot how the raw-signal quality scores follow a clip that turns noisy and dark half-way.

    .venv/bin/python tools/quality_timeline.py --out runs/quality_timeline.png

Renders real media (espeak-ng speech, a drawn face), degrades the second half (white noise at
--snr-db, picture darkened to --dark-gain), scores 2 s windows every 0.5 s against references
kept as an EMA of the windows seen so far, and draws the paper's and the extended formulas.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from model.features import FeatureOptions, extract_features, score_audio_raw, score_video_raw
from stream.messages import VideoFrame
from stream.render import render_scene

SENTENCES = (
    "could you help me carry these boxes to the back",
    "thank you so much for covering my shift",
    "i am really sorry about the mess in aisle five",
    "hi everyone, welcome to the store",
)


def build_clip(snr_db: float, dark_gain: float, fps: int, seed: int) -> tuple[np.ndarray, list[VideoFrame], float]:
    audio, images, half_s, _ = render_scene(SENTENCES, snr_db, dark_gain, fps, seed, pause_s=0.6)
    return audio, [VideoFrame(image, i / fps) for i, image in enumerate(images)], half_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/quality_timeline.png"), help="PNG to write")
    parser.add_argument("--snr-db", type=float, default=0.0, help="SNR of the noise in the second half")
    parser.add_argument("--dark-gain", type=float, default=0.05, help="brightness factor of the second half")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    fps, window_s, step_s, momentum = 15, 2.0, 0.5, 0.2
    audio, frames, half_s = build_clip(args.snr_db, args.dark_gain, fps, args.seed)
    formulas = {"paper": FeatureOptions(audio_quality="paper", video_quality="paper"), "extended": FeatureOptions()}
    times: list[float] = []
    scores: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in formulas}
    ref: dict[str, float] = {}
    for start in np.arange(0.0, len(audio) / 16000 - window_s, step_s):
        seg = audio[int(start * 16000) : int((start + window_s) * 16000)]
        seg_frames = [f for f in frames if start <= f.pts_s < start + window_s]
        feats = extract_features(seg, seg_frames, formulas["extended"])
        a, v = feats.audio_stats, feats.video_stats
        assert a is not None and v is not None
        if not ref:
            ref = {"energy": a.energy, "motion": v.motion, "contrast": v.contrast}
        for name, opts in formulas.items():
            scores[name][0].append(score_audio_raw(a, ref["energy"], opts))
            scores[name][1].append(score_video_raw(v, ref["motion"], ref["contrast"], opts))
        for key, value in (("energy", a.energy), ("motion", v.motion), ("contrast", v.contrast)):
            ref[key] = (1 - momentum) * ref[key] + momentum * value
        times.append(start + window_s / 2)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for ax, index, title in ((axes[0], 0, "audio quality"), (axes[1], 1, "video quality")):
        for name, style in (("paper", "--"), ("extended", "-")):
            ax.plot(times, scores[name][index], style, label=f"{name} formula")
        ax.axvspan(half_s, times[-1] + window_s / 2, color="grey", alpha=0.15, label="noisy + dark")
        ax.set_ylim(0, 1)
        ax.set_ylabel(title)
        ax.legend(loc="lower left", fontsize=8)
    axes[1].set_xlabel("stream time (s)")
    fig.suptitle(
        f"quality of 2 s windows; second half: white noise at {args.snr_db:g} dB SNR, picture x{args.dark_gain}"
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    for name in formulas:
        a_scores, v_scores = np.array(scores[name][0]), np.array(scores[name][1])
        clean = np.array(times) + window_s / 2 <= half_s
        degraded = np.array(times) - window_s / 2 >= half_s
        print(
            f"{name:>8}: audio {a_scores[clean].mean():.3f} -> {a_scores[degraded].mean():.3f}, "
            f"video {v_scores[clean].mean():.3f} -> {v_scores[degraded].mean():.3f}"
        )
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
