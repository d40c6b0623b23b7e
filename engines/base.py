"""The engine interface every backend implements: a batch of windows in, logits/probs/weights/embeddings out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "audio", "audio_mask", "video", "video_mask", "quality")
OUTPUT_NAMES = ("logits", "probs", "weights", "embedding", "sentence")


@dataclass
class WindowBatch:
    """Model inputs of B utterance windows, already padded to common lengths."""

    input_ids: np.ndarray  # (B, L) int64
    attention_mask: np.ndarray  # (B, L) int64
    audio: np.ndarray  # (B, Ta, Da) float32
    audio_mask: np.ndarray  # (B, Ta) bool
    video: np.ndarray  # (B, Tv, Dv) float32
    video_mask: np.ndarray  # (B, Tv) bool
    quality: np.ndarray  # (B, 3) float32: text, audio, video

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in INPUT_NAMES}


@dataclass
class EngineOutput:
    logits: np.ndarray  # (B, C) float32
    probs: np.ndarray  # (B, C) float32
    weights: np.ndarray  # (B, 2) float32: audio, video
    embedding: np.ndarray  # (B, W) float32: unit-norm utterance embedding (transcript + fused shift)
    sentence: np.ndarray  # (B, W) float32: unit-norm transcript embedding of the frozen encoder

    def row(self, i: int) -> EngineOutput:
        rows = slice(i, i + 1)
        return EngineOutput(
            self.logits[rows], self.probs[rows], self.weights[rows], self.embedding[rows], self.sentence[rows]
        )


class Engine(Protocol):
    """A loaded model ready to run; `name` says backend and device, e.g. 'onnxruntime-cpu'."""

    name: str

    def infer(self, batch: WindowBatch) -> EngineOutput: ...


def pad_and_stack(windows: list[WindowBatch]) -> WindowBatch:
    """Concatenate batches whose sequence lengths differ by padding each to the longest."""

    def stack(name: str, axis_len: int) -> np.ndarray:
        parts = []
        for w in windows:
            arr = getattr(w, name)
            if arr.ndim >= 2 and arr.shape[1] < axis_len:
                pad = [(0, 0)] * arr.ndim
                pad[1] = (0, axis_len - arr.shape[1])
                arr = np.pad(arr, pad)
            parts.append(arr)
        return np.concatenate(parts, axis=0)

    longest = {
        "text": max(w.input_ids.shape[1] for w in windows),
        "audio": max(w.audio.shape[1] for w in windows),
        "video": max(w.video.shape[1] for w in windows),
    }
    return WindowBatch(
        input_ids=stack("input_ids", longest["text"]),
        attention_mask=stack("attention_mask", longest["text"]),
        audio=stack("audio", longest["audio"]),
        audio_mask=stack("audio_mask", longest["audio"]),
        video=stack("video", longest["video"]),
        video_mask=stack("video_mask", longest["video"]),
        quality=np.concatenate([w.quality for w in windows], axis=0),
    )
