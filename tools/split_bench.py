"""Words lost at forced splits: ~40 s of continuous real speech, cut by the live segmenter, against one
transcript of the whole audio.

The audio joins the real recordings in tests/data (jfk.mp3, hotwords.mp3) and espeak-ng sentences with
their leading and trailing silence trimmed, so no pause reaches `min_silence_ms` and the segmenter must
force splits. The reference is Whisper over the whole audio in its stock 30 s windows (which move on at
segment timestamps, never mid-word), with word timestamps. Each setting of `split_search_s` (0: cut at
`max_utterance_s` exactly, the old behaviour) is segmented, every piece transcribed the live way
(stream/asr.py transcribe), and the pieces' words aligned to the reference: a reference word within
`--around-s` of a cut that is missing or changed in the pieces counts as lost at that cut (a word cut
in two comes out changed or missing). Word timestamps only place the cuts' neighbourhoods: they are
too coarse (~0.1 s) to say whether a cut fell inside a word.

    .venv/bin/python tools/split_bench.py --json docs/results/split_words_cpu_2core.json

Needs espeak-ng (Debian package of that name).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from stream.asr import load_whisper, transcribe
from stream.media import decode_clip
from stream.messages import AudioChunk
from stream.options import AsrOptions, SegmenterOptions
from stream.render import speak
from stream.vad import Segmenter

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
RATE = 16000
SENTENCES = (
    "We have been planning the new schedule for weeks and everybody in the store agrees it works better "
    "for the morning shift than the old one did",
    "Could you bring the boxes from the back room to the front counter before the delivery truck arrives "
    "this afternoon because we will need the space",
    "Thank you so much for covering my shift yesterday it was really kind of you and I promise to return "
    "the favour next week whenever you need it",
    "Your presentation at the meeting was perfect and the manager said the numbers looked much better "
    "than anyone expected at the start of the quarter",
)


def trimmed(audio: np.ndarray, floor: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > floor)
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio[:0]


def continuous_speech() -> np.ndarray:
    """About 45 s: two espeak sentences, JFK, two more and hotwords, each trimmed, joined without pauses.

    JFK's own pauses end utterances; the forced splits fall in the runs on either side of it. (Put
    first, hotwords made tiny.en drop the synthetic sentence after it in every setting, cut or not.)"""
    jfk = decode_clip(DATA / "jfk.mp3", with_video=False).audio
    hotwords = decode_clip(DATA / "hotwords.mp3", with_video=False).audio
    spoken = [speak(sentence) for sentence in SENTENCES]
    parts = [spoken[0], spoken[1], jfk, spoken[2], spoken[3], hotwords]
    return np.concatenate([trimmed(np.asarray(p, np.float32)) for p in parts])


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))


def reference_words(audio: np.ndarray) -> list[tuple[str, float, float]]:
    """(word, start_s, end_s) of Whisper over the whole audio, stock 30 s windows."""
    model = load_whisper(AsrOptions(encoder_min_window_s=30.0))
    segments, _ = model.transcribe(audio, language="en", word_timestamps=True, condition_on_previous_text=False)
    out = []
    for segment in segments:
        for word in segment.words or []:
            out += [(w, float(word.start), float(word.end)) for w in words(word.word)]
    return out


def pieces(audio: np.ndarray, options: SegmenterOptions, chunk_s: float = 0.1) -> list[tuple[float, float, bool, str]]:
    """(start_s, end_s, forced, transcript) of each utterance, fed in capture-sized chunks."""
    segmenter = Segmenter(options)
    size = int(RATE * chunk_s)
    utterances = []
    for start in range(0, len(audio), size):
        chunk = audio[start : start + size]
        utterances += segmenter.process(AudioChunk(chunk, start / RATE, RATE, (start + len(chunk)) / RATE))
    utterances += segmenter.flush()
    asr = AsrOptions()
    return [(u.start_s, u.end_s, u.forced_split, transcribe(u.samples, asr).text) for u in utterances]


def lost_at_cuts(
    reference: list[tuple[str, float, float]], cut: list[tuple[float, float, bool, str]], around_s: float
) -> dict[str, Any]:
    ref = [w for w, _, _ in reference]
    hyp = [w for *_, text in cut for w in words(text)]
    matched = [False] * len(ref)
    for block in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_matching_blocks():
        for i in range(block.a, block.a + block.size):
            matched[i] = True
    cuts: list[dict[str, Any]] = []
    for _, end_s, forced, _ in cut:
        if not forced:
            continue
        near = [i for i, (_, start, end) in enumerate(reference) if end > end_s - around_s and start < end_s + around_s]
        cuts.append(
            {
                "at_s": round(end_s, 3),
                "words_near": len(near),
                "lost": [ref[i] for i in near if not matched[i]],
            }
        )
    return {
        "cuts": cuts,
        "lost_per_cut": round(float(np.mean([len(c["lost"]) for c in cuts])), 2) if cuts else 0.0,
        "words_lost_overall": int(len(ref) - sum(matched)),
        "pieces": [{"start_s": round(s, 3), "end_s": round(e, 3), "forced": f, "text": t} for s, e, f, t in cut],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="report to write")
    parser.add_argument("--search-s", type=float, nargs="+", default=[0.0, 2.5], help="split_search_s settings")
    parser.add_argument("--around-s", type=float, default=1.5, help="words this close to a cut count for it")
    args = parser.parse_args()
    audio = continuous_speech()
    reference = reference_words(audio)
    report: dict[str, Any] = {
        "audio_s": round(len(audio) / RATE, 2),
        "reference_words": len(reference),
        "reference": " ".join(w for w, _, _ in reference),
        "around_s": args.around_s,
        "settings": {},
    }
    for search_s in args.search_s:
        cut = pieces(audio, SegmenterOptions(split_search_s=search_s))
        report["settings"][f"split_search_s={search_s:g}"] = lost_at_cuts(reference, cut, args.around_s)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    for name, result in report["settings"].items():
        print(
            f"{name}: {len(result['cuts'])} cuts, {result['lost_per_cut']} words lost per cut, "
            f"{result['words_lost_overall']} of {report['reference_words']} lost overall"
        )
    print(f"report: {args.json}")


if __name__ == "__main__":
    main()
