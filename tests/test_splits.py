"""Forced splits lose no word: ~45 s of continuous real speech, cut by the live segmenter, read by the real
Whisper, against one transcript of the whole audio (tools/split_bench.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from stream.options import SegmenterOptions
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[1]


def test_cuts_at_the_quietest_point_lose_no_word(tmp_path: Path) -> None:
    require_binary("espeak-ng", "espeak-ng")
    report_path = tmp_path / "split.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "split_bench.py"), "--json", str(report_path)],
        cwd=ROOT,
        # The script's own folder comes first on its path: this checkout's packages, not an installed copy.
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["audio_s"] > 40 and report["reference_words"] > 120
    quiet, exact = report["settings"]["split_search_s=2.5"], report["settings"]["split_search_s=0"]
    assert len(quiet["cuts"]) >= 2  # the run really is forced apart
    for cut in quiet["cuts"]:
        # Tolerance: one word per cut, for tiny.en reading a word at a piece's edge differently.
        assert len(cut["lost"]) <= 1, cut
    assert sum(len(c["lost"]) for c in quiet["cuts"]) <= sum(len(c["lost"]) for c in exact["cuts"])
    for piece in quiet["pieces"]:
        assert piece["end_s"] - piece["start_s"] <= 12.0 + 0.04


def test_a_short_maximum_halves_the_search() -> None:
    require_binary("espeak-ng", "espeak-ng")
    from stream.render import speak
    from tests.test_vad import segment

    audio = np.concatenate([speak("we keep on talking and talking and never stop for a pause " * 2), np.zeros(16000)])
    options = SegmenterOptions(max_utterance_s=2.0)  # split_search_s stays 2.5: only 1 s of it is used
    pieces = segment(audio.astype(np.float32), 100.0, options)
    forced = [u for u in pieces if u.forced_split]
    assert forced and all(1.0 - 0.04 <= u.end_s - u.start_s <= 2.0 + 0.04 for u in forced)
