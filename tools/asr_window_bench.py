"""Word error rate and CPU time of the live ASR's encoder window, side by side in one run.

Whisper pads every call to 30 s; the live pipeline encodes the utterance plus 1 s, at least
`--windows` seconds (stream/whisper_window.py). This speaks the corpus sentences and MIntRec dev
texts with espeak-ng (three voices, four speeds), adds the real recordings in tests/data, and
transcribes every utterance with each window, stock 30 s included.

    .venv/bin/python tools/asr_window_bench.py --json docs/results/asr_window_cpu_2core.json

Needs espeak-ng (Debian package of that name).
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import numpy as np
from benchkit import cpu_seconds, edit_distance, write_report
from tqdm import tqdm

from stream.asr import load_whisper, transcribe
from stream.media import decode_clip
from stream.options import AsrOptions
from stream.render import speak
from stream.synth_sentences import OWN_SENTENCES

ROOT = Path(__file__).resolve().parents[1]
REAL_SPEECH = {
    "jfk.mp3": "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country.",
}


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def utterances(mintrec_count: int) -> list[tuple[str, np.ndarray]]:
    with open(ROOT / "data/mintrec/dev.tsv") as handle:
        mintrec = [row["text"] for row in csv.DictReader(handle, delimiter="\t")][:mintrec_count]
    texts = [s for group in OWN_SENTENCES.values() for s in group] + mintrec
    voices = ("en-us", "en", "en-us+f3")
    spoken = [
        (text, speak(text, voice=voices[i % 3], words_per_min=150 + 10 * (i % 4)))
        for i, text in enumerate(tqdm(texts, desc="espeak-ng", unit="sentence"))
    ]
    spoken += [
        (text, decode_clip(ROOT / "tests/data" / name, with_video=False).audio) for name, text in REAL_SPEECH.items()
    ]
    return spoken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", default="30,15,10,8,5", help="minimum encoder windows to compare, seconds")
    parser.add_argument("--mintrec", type=int, default=60, help="MIntRec dev texts to speak besides the corpus's")
    parser.add_argument("--models", default="tiny.en", help="Whisper models (asr.model values), comma-separated")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    spoken = utterances(args.mintrec)
    report: dict[str, object] = {
        "utterances": len(spoken),
        "mean_utterance_s": round(float(np.mean([len(a) / 16000 for _, a in spoken])), 2),
        "windows": {},
    }
    models = args.models.split(",")
    runs = [(model, float(w)) for model in models for w in args.windows.split(",")]
    for model, window_s in runs:
        options = AsrOptions(model=model, encoder_min_window_s=window_s)
        load_whisper(options)
        errors = total = broken = 0
        before = cpu_seconds()
        for ref, audio in tqdm(spoken, desc=f"{model}, window {window_s:g} s", unit="utt", leave=False):
            ref_words, hyp_words = words(ref), words(transcribe(audio, options).text)
            distance = edit_distance(ref_words, hyp_words)
            errors, total = errors + distance, total + len(ref_words)
            broken += distance > len(ref_words) // 2
        cpu_s = cpu_seconds() - before
        row = {"wer_percent": round(100 * errors / total, 1), "cpu_s": round(cpu_s, 2), "over_half_wrong": broken}
        # One model keeps the report's original keys (window only).
        key = f"{window_s:g}" if len(models) == 1 else f"{model} {window_s:g}"
        report["windows"][key] = row  # type: ignore[index]
        print(
            f"{model:>8s}  window {window_s:>4g} s   WER {row['wer_percent']:5.1f} %   CPU {cpu_s:6.2f} s   "
            f"over half wrong {broken}"
        )
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
