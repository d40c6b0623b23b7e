"""Render the demo clip committed under data/demo/: spoken sentences with a talking face, the
audio turning noisy (white noise, 0 dB SNR) and the picture dark half-way.

    .venv/bin/python tools/make_demo_clip.py --out data/demo/demo.mp4
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stream.render import render_scene, write_clip

SENTENCES = (
    "hi everyone, good morning",
    "thank you so much for covering my shift yesterday",
    "could you help me carry these boxes to the back",
    "i am really sorry about the mess in aisle five",
    "you should put the sale signs by the entrance",
    "well, i have to go now, see you tomorrow",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/demo/demo.mp4"), help="clip to write")
    parser.add_argument("--snr-db", type=float, default=0.0, help="noise level of the second half")
    parser.add_argument("--dark-gain", type=float, default=0.06, help="brightness of the second half")
    args = parser.parse_args()
    audio, frames, half_s = render_scene(SENTENCES, args.snr_db, args.dark_gain, fps=15, seed=0)
    write_clip(args.out, audio, frames, 15)
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.2f} MB, {len(audio) / 16000:.1f} s; degraded from {half_s:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
