"""Render the demo clip committed under data/demo/: nine spoken sentences with a talking face;
the audio turns noisy (white noise, 0 dB SNR) after a third, the picture goes dark after two thirds.

    .venv/bin/python tools/make_demo_clip.py --out data/demo/demo.mp4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stream.render import render_scene, write_clip
from stream.synth_sentences import SCENE_SENTENCES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/demo/demo.mp4"), help="clip to write")
    parser.add_argument("--snr-db", type=float, default=0.0, help="noise level from a third of the clip on")
    parser.add_argument("--dark-gain", type=float, default=0.06, help="brightness from two thirds of the clip on")
    args = parser.parse_args()
    audio, frames, noise_s, dark_s = render_scene(
        SCENE_SENTENCES, args.snr_db, args.dark_gain, fps=15, seed=0, noise_from_share=1 / 3, dark_from_share=2 / 3
    )
    write_clip(args.out, audio, frames, 15)
    size_mb = args.out.stat().st_size / 1e6
    # The demo reads these to summarise each phase of the clip.
    args.out.with_suffix(".json").write_text(
        json.dumps({"noise_from_s": round(noise_s, 2), "dark_from_s": round(dark_s, 2)}, indent=2)
    )
    print(f"wrote {args.out} ({size_mb:.2f} MB, {len(audio) / 16000:.1f} s)")
    print(f"noise from {noise_s:.1f} s, dark picture from {dark_s:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
