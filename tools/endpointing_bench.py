"""Endpointing: false splits and speech-end latency, silence hang-over against speculative endpointing.

One audio track of sentences spoken with pauses inside them, each sentence followed by a second of
silence, replayed at real-time pace through `dfmq run`'s pipeline (the starter model, a real
Mosquitto and a real subscriber), once per endpointing mode:

- espeak-ng sentences with SSML breaks of 200-350 ms inside them (under the 400 ms hang-over: a
  breath, a hesitation; said as one sentence, its intonation running on across the break), and
  sentences with commas;
- the real speech in tests/data: jfk.mp3 (one sentence with two pauses at its commas) and
  hotwords.mp3 (one sentence).

Each intent event is given to the sentence its span overlaps most. A sentence heard as n events is
n - 1 false splits (the speaker only paused); an event over two sentences is a merge. Latency is
the subscriber's receipt of a sentence's last event minus the end of speech the event carries.

    .venv/bin/python tools/endpointing_bench.py --json docs/results/endpointing_cpu_2core.json

Needs espeak-ng and mosquitto (Debian packages of those names).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from benchkit import (
    DEFAULT_ENDPOINTING,
    ENDPOINTING_MODES,
    bad_argument,
    mosquitto,
    received_events,
    segmenter_options,
    write_report,
)

from stream.media import decode_clip
from stream.options import BrokerOptions, PipelineOptions, SegmenterOptions
from stream.render import speak, write_clip
from stream.run import RunRequest, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
GAP_S = 1.0  # silence after each sentence
# Sentences said in pieces, with the pause after each piece but the last.
PAUSED = (
    (("i would like to order", "a large coffee with milk please"), (0.30,)),
    (("could you tell me", "where the train station is"), (0.25,)),
    (("thank you so much", "for covering my shift yesterday"), (0.35,)),
    (("when you get home tonight", "please call your mother"), (0.30,)),
    (("the meeting has moved to", "three o'clock on friday"), (0.20,)),
    (("i think we should", "wait until the rain stops"), (0.30,)),
    (("my brother and i", "went to the market", "to buy some bread"), (0.25, 0.30)),
    (("if it rains tomorrow", "we will stay inside"), (0.35,)),
    (("the report is finished", "but i still need to check the numbers"), (0.30,)),
    (("please turn off the lights", "in the kitchen"), (0.25,)),
)
COMMAS = (
    "well, i am not sure, but maybe we can try again later",
    "yes, that makes sense, let us do it",
    "hello there, good morning, how are you",
    "first, open the box, then read the instructions",
)
# Written after the pitch check's threshold was chosen (stream/prosody.py) and said by voices it was
# not chosen on: half with words before the pause that read as a finished sentence, the case only
# the pitch can tell; then whole sentences, for latency at real ends.
HELD_OUT_VOICES = ("en-gb-scotland", "en-gb-x-rp", "en-029", "en-us+Alicia")
HELD_OUT_PAUSED = (
    (("the kettle has boiled", "so let us make some tea"), 0.30),
    (("we missed the last bus", "and had to walk home"), 0.25),
    (("she called me this morning", "to ask about the party"), 0.30),
    (("the door was open", "when i arrived at the office"), 0.35),
    (("turn the volume down", "a little bit please"), 0.25),
    (("can you remind me", "to water the plants tonight"), 0.30),
    (("i was hoping that", "we could meet on monday"), 0.30),
    (("the best thing about this city", "is the food"), 0.25),
)
HELD_OUT_WHOLE = (
    "what time does the pharmacy close",
    "send the file to my manager",
    "i have never been to spain",
    "book a table for two at seven",
)
REAL = ("jfk.mp3", "hotwords.mp3")


@dataclass
class Sentence:
    source: str  # espeak_paused | espeak_commas | real
    text: str
    start_s: float
    end_s: float


def trimmed(speech: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(speech) > 0.01)
    return speech[loud[0] : loud[-1] + 1]


def build_track() -> tuple[np.ndarray, list[Sentence]]:
    parts: list[np.ndarray] = [np.zeros(int(GAP_S * RATE), np.float32)]
    sentences: list[Sentence] = []
    clock = GAP_S

    def add(source: str, text: str, pieces: list[np.ndarray]) -> None:
        nonlocal clock
        audio = np.concatenate(pieces)
        sentences.append(Sentence(source, text, clock, clock + len(audio) / RATE))
        parts.extend([audio, np.zeros(int(GAP_S * RATE), np.float32)])
        clock += len(audio) / RATE + GAP_S

    for words, pauses in PAUSED:
        breaks = [f'<break time="{round(pause * 1000)}ms"/>' for pause in pauses]
        markup = " ".join(w for pair in zip(words, [*breaks, ""]) for w in pair if w)
        add("espeak_paused", " | ".join(words), [trimmed(speak(f"<speak>{markup}</speak>", ssml=True))])
    for text in COMMAS:
        add("espeak_commas", text, [trimmed(speak(text))])
    for name in REAL:
        add("real", name, [trimmed(decode_clip(ROOT / "tests" / "data" / name).audio)])
    for i, ((first, rest), pause) in enumerate(HELD_OUT_PAUSED):
        markup = f'<speak>{first} <break time="{round(pause * 1000)}ms"/> {rest}</speak>'
        voice = HELD_OUT_VOICES[i % len(HELD_OUT_VOICES)]
        add("held_out_paused", f"{first} | {rest}", [trimmed(speak(markup, voice=voice, ssml=True))])
    for i, text in enumerate(HELD_OUT_WHOLE):
        add("held_out_whole", text, [trimmed(speak(text, voice=HELD_OUT_VOICES[i % len(HELD_OUT_VOICES)]))])
    return np.concatenate(parts), sentences


def run_mode(
    clip: Path, port: int, segmenter: SegmenterOptions, ckpt: str, engine: str
) -> list[tuple[float, dict[str, Any]]]:
    with received_events(port, "dfmq/bench/intent", f"dfmq-endpointing-{segmenter.endpointing}") as received:
        asyncio.run(
            run_pipeline(
                RunRequest(ckpt=ckpt, input=str(clip), pace="realtime", engine=engine),
                BrokerOptions(url=f"mqtt://127.0.0.1:{port}"),
                PipelineOptions(stream_id="bench"),
                segmenter,
            )
        )
        time.sleep(0.5)
    return received


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def score(received: list[tuple[float, dict[str, Any]]], sentences: list[Sentence]) -> dict[str, Any]:
    per_sentence: list[list[tuple[float, dict[str, Any]]]] = [[] for _ in sentences]
    merges = 0
    for wall, event in received:
        spans = [overlap(event["start"], event["end"], s.start_s, s.end_s) for s in sentences]
        if sum(span > 0.2 for span in spans) > 1:
            merges += 1
        if max(spans) > 0:
            per_sentence[int(np.argmax(spans))].append((wall, event))
    rows: list[dict[str, Any]] = []
    for sentence, events in zip(sentences, per_sentence):
        last = max(events, key=lambda item: item[1]["end"]) if events else None
        rows.append(
            {
                "source": sentence.source,
                "sentence": sentence.text,
                "events": len(events),
                "texts": [e.get("text") for _, e in sorted(events, key=lambda item: item[1]["start"])],
                "latency_ms": None if last is None else round((last[0] - last[1]["speech_end_wall"]) * 1000, 1),
                "stage_ms": None if last is None else last[1]["latency_ms"],
            }
        )
    out: dict[str, Any] = {}
    for source in ("espeak_paused", "espeak_commas", "real", "held_out_paused", "held_out_whole", "all"):
        chosen = [r for r in rows if source in ("all", r["source"])]
        splits = sum(max(0, r["events"] - 1) for r in chosen)
        latency = [r["latency_ms"] for r in chosen if r["latency_ms"] is not None]
        out[source] = {
            "sentences": len(chosen),
            "utterances": sum(r["events"] for r in chosen),
            "false_splits": splits,
            "sentences_split": sum(r["events"] > 1 for r in chosen),
            "false_split_rate": round(sum(r["events"] > 1 for r in chosen) / len(chosen), 3),
            "missed": sum(r["events"] == 0 for r in chosen),
            "latency_ms_p50": round(float(np.percentile(latency, 50)), 1) if latency else None,
            "latency_ms_p95": round(float(np.percentile(latency, 95)), 1) if latency else None,
            # The sentence's last event came before the hang-over could have ended it: a speculative end.
            "ended_at_short_pause": sum(
                r["stage_ms"] is not None and r["stage_ms"]["vad"] < SegmenterOptions().min_silence_ms - 100
                for r in chosen
            ),
        }
    out["all"]["merges"] = merges
    out["events"] = len(received)
    out["sentences"] = rows
    return out


def mode_options(mode: str) -> SegmenterOptions:
    """`--modes` item -> the segmenter's options; a bad one exits 2 naming it."""
    name, _, settings = mode.partition(":")
    pause_ms, _, pitch_ratio = settings.partition(":")
    defaults = SegmenterOptions()
    if name not in ENDPOINTING_MODES or (settings and name != "speculative"):
        bad_argument("--modes", mode, f"one of {', '.join(ENDPOINTING_MODES)} (speculative:PAUSE_MS[:RATIO])")
    try:
        pause = float(pause_ms) if pause_ms else defaults.speculative_pause_ms
        ratio = float(pitch_ratio) if pitch_ratio else defaults.final_pitch_ratio
    except ValueError:
        bad_argument("--modes", mode, "speculative:PAUSE_MS[:FINAL_PITCH_RATIO] with numbers")
    return segmenter_options(name, speculative_pause_ms=pause, final_pitch_ratio=ratio)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="default", help="checkpoint (default: the starter model)")
    parser.add_argument("--engine", default="auto", help="engine backend")
    parser.add_argument(
        "--modes",
        default=f"{DEFAULT_ENDPOINTING},speculative:{SegmenterOptions().speculative_pause_ms:g}",
        help="endpointing modes, comma-separated: silence+asr (the default: Whisper hears the utterance in its "
        "pause), silence (Whisper after the hang-over), or speculative[:PAUSE_MS[:FINAL_PITCH_RATIO]] (0: no "
        "pitch check)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    segmenters = {mode: mode_options(mode) for mode in args.modes.split(",")}
    audio, sentences = build_track()
    report: dict[str, Any] = {
        "audio_s": round(len(audio) / RATE, 1),
        "sentences": len(sentences),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "modes": {},
    }
    with tempfile.TemporaryDirectory() as tmp, mosquitto() as port:
        clip = Path(tmp) / "paused.mp4"
        write_clip(clip, audio, [], 15)
        for mode, segmenter in segmenters.items():
            received = run_mode(clip, port, segmenter, args.ckpt, args.engine)
            report["modes"][mode] = score(received, sentences)
            report["modes"][mode]["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
