"""ASR across streams: one call per utterance against batches, side by side in one run.

Several streams in one process hand Whisper utterances that could be transcribed together. This
transcribes the same utterances (asr_window_bench's: corpus sentences and MIntRec dev texts spoken
by espeak-ng, and a real recording) three ways, with the live encoder window (the utterances of
a batch padded to the longest, plus 1 s, at least 10 s):

- per utterance: `stream.asr.transcribe`, the live path (greedy; with Whisper's temperature
  fallback on failure when the README's figures were measured, off by default since 2026-11-30);
- faster-whisper's `BatchedInferencePipeline`, the utterances laid end to end and cut again by
  `clip_timestamps`, `batch_size` of them per encoder and decoder call (greedy, no fallback);
- CTranslate2 directly: the batch's log-mels stacked, one `encode`, one `generate`.

Word error rate, process CPU seconds and wall seconds per way and batch size: medians of rounds in
which the ways take turns (a busy moment of the machine lands on every way alike).

    .venv/bin/python tools/asr_batch_bench.py --json docs/results/asr_batch_cpu_2core.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from asr_window_bench import utterances, words
from benchkit import cpu_seconds, edit_distance, write_report
from tqdm import tqdm

from stream.asr import load_whisper, transcribe
from stream.options import AsrOptions

SAMPLE_RATE = 16000


def per_utterance(spoken: list[tuple[str, np.ndarray]], options: AsrOptions) -> list[str]:
    return [transcribe(audio, options).text for _, audio in tqdm(spoken, desc="per utterance", leave=False)]


def batched_pipeline(spoken: list[tuple[str, np.ndarray]], options: AsrOptions, batch: int) -> list[str]:
    from faster_whisper import BatchedInferencePipeline

    pipeline = BatchedInferencePipeline(load_whisper(options))
    texts: list[str] = []
    for first in tqdm(range(0, len(spoken), batch), desc=f"batched pipeline x{batch}", leave=False):
        group = [audio for _, audio in spoken[first : first + batch]]
        bounds = np.cumsum([0, *[len(a) for a in group]]) / SAMPLE_RATE
        clips = [{"start": float(bounds[i]), "end": float(bounds[i + 1])} for i in range(len(group))]
        segments, _ = pipeline.transcribe(
            np.concatenate(group).astype(np.float32),
            language=options.language,
            beam_size=options.beam_size,
            clip_timestamps=clips,
            batch_size=batch,
            without_timestamps=True,
            vad_filter=False,
        )
        heard: list[list[str]] = [[] for _ in group]
        for segment in segments:
            # A segment belongs to the clip its start falls in.
            heard[int(np.searchsorted(bounds, segment.start + 1e-3, side="right")) - 1].append(segment.text.strip())
        texts += [" ".join(parts).strip() for parts in heard]
    return texts


def ctranslate2_batch(spoken: list[tuple[str, np.ndarray]], options: AsrOptions, batch: int) -> list[str]:
    from faster_whisper.tokenizer import Tokenizer

    whisper: Any = load_whisper(options)
    tokenizer = Tokenizer(whisper.hf_tokenizer, whisper.model.is_multilingual, task="transcribe", language="en")
    prompt = whisper.get_prompt(tokenizer, previous_tokens=[], without_timestamps=True)
    texts: list[str] = []
    for first in tqdm(range(0, len(spoken), batch), desc=f"ctranslate2 x{batch}", leave=False):
        mels = [
            whisper.feature_extractor(audio.astype(np.float32))[..., :-1] for _, audio in spoken[first : first + batch]
        ]
        frames = 3000  # the encoder window trims this padding (stream/whisper_window.py)
        stacked = np.stack([np.pad(m[..., :frames], ((0, 0), (0, frames - min(frames, m.shape[-1])))) for m in mels])
        encoded = whisper.encode(stacked.astype(np.float32))
        results = whisper.model.generate(
            encoded,
            [list(prompt) for _ in mels],
            beam_size=options.beam_size,
            max_length=whisper.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        texts += [tokenizer.decode(r.sequences_ids[0]).strip() for r in results]
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mintrec", type=int, default=60, help="MIntRec dev texts to speak besides the corpus's")
    parser.add_argument("--batches", default="4,8", help="batch sizes, comma-separated")
    parser.add_argument("--asr-model", default="tiny.en", help="asr.model")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each way once per round; medians reported")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    options = AsrOptions(model=args.asr_model)
    spoken = utterances(args.mintrec)
    load_whisper(options)
    ways: list[tuple[str, Any]] = [("per utterance", lambda: per_utterance(spoken, options))]
    for batch in (int(b) for b in args.batches.split(",")):
        ways.append((f"batched pipeline x{batch}", lambda b=batch: batched_pipeline(spoken, options, b)))
        ways.append((f"ctranslate2 x{batch}", lambda b=batch: ctranslate2_batch(spoken, options, b)))
    # The ways take turns, `--repeats` rounds: a busy moment of the machine then lands on every way
    # alike, and each figure is the median of its rounds.
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in ways}
    total = sum(len(words(ref)) for ref, _ in spoken)
    for _ in range(args.repeats):
        for name, run in ways:
            cpu, wall = cpu_seconds(), time.perf_counter()
            texts = run()
            cpu_s, wall_s = cpu_seconds() - cpu, time.perf_counter() - wall
            errors = sum(edit_distance(words(ref), words(hyp)) for (ref, _), hyp in zip(spoken, texts))
            samples[name].append((100 * errors / total, cpu_s, wall_s))
    rows: dict[str, dict[str, Any]] = {}
    for name, runs in samples.items():
        wer, cpu_s, wall_s = (float(np.median([r[i] for r in runs])) for i in range(3))
        rows[name] = {
            "wer_percent": round(wer, 1),
            "cpu_s": round(cpu_s, 2),
            "wall_s": round(wall_s, 2),
            "cpu_s_rounds": [round(r[1], 2) for r in runs],
        }
        print(f"{name:>22s}   WER {wer:5.1f} %   CPU {cpu_s:6.2f} s   wall {wall_s:6.2f} s (medians)", flush=True)
    base = rows["per utterance"]
    for row in rows.values():
        row["cpu_vs_per_utterance"] = round(row["cpu_s"] / base["cpu_s"], 3)
        row["wall_vs_per_utterance"] = round(row["wall_s"] / base["wall_s"], 3)
    write_report(
        {
            "utterances": len(spoken),
            "mean_utterance_s": round(float(np.mean([len(a) / SAMPLE_RATE for _, a in spoken])), 2),
            "asr": {"model": options.model, "cpu_threads": options.cpu_threads, "compute_type": options.compute_type},
            "ways": rows,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
