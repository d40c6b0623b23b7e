"""What speculative endpointing's pitch cue reads on questions, statements and mid-sentence breaks.

Speculative endpointing (stream/endpointing.py) ends an utterance early only when the last 80 ms
of voiced speech sit below `segmenter.final_pitch_ratio` (0.84) of the utterance's median pitch
(stream/prosody.py). This table shows, for eleven espeak-ng voices, the ratio at the end of whole
questions and whole statements and before a 300 ms break inside a sentence (the speech before the
break, as the segmenter would see it at the pause): which ends the cue lets go early, which it
holds for the silence hang-over, and whether any setting could tell questions from breaks.

    .venv/bin/python tools/pitch_cue_table.py --json docs/results/pitch_cue_table.json

Needs espeak-ng. Prints a markdown table; no model, no broker.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from stream.media import SAMPLE_RATE_HZ
from stream.options import SegmenterOptions
from stream.prosody import final_pitch_ratio
from stream.render import speak

VOICES = (
    "en",
    "en-us",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-029",
    "en-us+f3",
    "en-us+m3",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us+Alicia",
    "en-us+f4",
)
QUESTIONS = (
    "Where is the nearest train station?",
    "Can you call a taxi for me?",
    "Is this seat taken?",
    "Do you have this in a smaller size?",
    "What time does the museum close?",
    "Could you help me with my bags?",
)
STATEMENTS = (
    "I would like to check in please.",
    "Thank you very much for your help.",
    "I forgot my key at home.",
    "The printer is out of paper again.",
)
# The words before the break read as a finished sentence or question in the first two and the last.
BREAKS = (
    ("could you tell me", "where the station is?"),
    ("can you remind me", "to water the plants tonight?"),
    ("the report is finished", "but I still need to check the numbers."),
    ("I think we should", "wait until the rain stops."),
    ("do you know", "if the shop is open today?"),
)
QUIET = 0.01  # sample level under which espeak-ng's output is silence
BREAK_GAP_S = 0.15  # a silence this long inside the speech is the break


def spoken(samples: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > QUIET)
    return samples[loud[0] : loud[-1] + 1]


def before_break(samples: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > QUIET)
    gaps = np.flatnonzero(np.diff(loud) > BREAK_GAP_S * SAMPLE_RATE_HZ)
    end = loud[gaps[0]] if len(gaps) else loud[-1]
    return samples[loud[0] : end + 1]


def ratio(samples: np.ndarray) -> float | None:
    value = final_pitch_ratio(samples, SAMPLE_RATE_HZ)
    return None if value is None else round(value, 3)


def measure() -> dict[str, Any]:
    threshold = SegmenterOptions().final_pitch_ratio
    rows: list[dict[str, Any]] = []
    for voice in VOICES:
        rows.append(
            {
                "voice": voice,
                "questions": [ratio(spoken(speak(text, voice))) for text in QUESTIONS],
                "statements": [ratio(spoken(speak(text, voice))) for text in STATEMENTS],
                "breaks": [
                    ratio(before_break(speak(f'<speak>{a} <break time="300ms"/> {b}</speak>', voice, ssml=True)))
                    for a, b in BREAKS
                ],
            }
        )

    def released(kind: str) -> list[int]:
        return [sum(v is not None and v < threshold for v in row[kind]) for row in rows]

    summary: dict[str, Any] = {
        kind: {"released_early": sum(released(kind)), "of": sum(len(row[kind]) for row in rows)}
        for kind in ("questions", "statements", "breaks")
    }
    every = [v for row in rows for v in row["questions"] if v is not None]
    held = [v for row in rows for v in row["breaks"] if v is not None]
    summary["question_ratio_range"] = [min(every), max(every)]
    summary["break_ratio_range"] = [min(held), max(held)]
    return {
        "final_pitch_ratio": threshold,
        "questions": QUESTIONS,
        "statements": STATEMENTS,
        "breaks": [f"{a} | {b}" for a, b in BREAKS],
        "rows": rows,
        "summary": summary,
    }


def markdown(report: dict[str, Any]) -> str:
    def cells(values: list[float | None]) -> str:
        return " ".join(
            "–" if v is None else (f"**{v:.2f}**" if v < report["final_pitch_ratio"] else f"{v:.2f}") for v in values
        )

    lines = [
        f"Ratio of the last 80 ms of voiced pitch to the median; bold: under {report['final_pitch_ratio']} "
        "(ended early when the transcript reads finished).",
        "",
        "| voice | questions | statements | before a break |",
        "|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['voice']} | {cells(row['questions'])} | {cells(row['statements'])} | {cells(row['breaks'])} |"
        )
    summary = report["summary"]
    lines.append("")
    for kind in ("questions", "statements", "breaks"):
        lines.append(f"- {kind}: {summary[kind]['released_early']} of {summary[kind]['of']} under the threshold")
    lines.append(
        f"- questions span {summary['question_ratio_range'][0]:.2f}-{summary['question_ratio_range'][1]:.2f}, "
        f"breaks {summary['break_ratio_range'][0]:.2f}-{summary['break_ratio_range'][1]:.2f}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    report = measure()
    print(markdown(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
