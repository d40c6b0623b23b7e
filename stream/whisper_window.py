"""faster-whisper with the encoder run over the utterance, not over 30 s of padding.

Whisper pads every call to 30 s and the encoder's cost follows that length, so a 2 s utterance
costs as much to encode as 30 s of speech. Trimming the padding to at least `min_window_s`
(measured on 121 spoken sentences, tools/asr_window_bench.py: a 10 s window has the word error
rate of the full 30 s at a third of the CPU time; below ~8 s the model starts repeating itself
and the temperature fallback, on by default then, costs more than the trim saves)."""

from __future__ import annotations

from typing import Any

import numpy as np
from faster_whisper import WhisperModel

FRAMES_PER_S = 100  # Whisper's log-mel hop is 10 ms
TAIL_FRAMES = 100  # 1 s of padding kept after the speech


class WindowedWhisper(WhisperModel):  # type: ignore[misc]
    def __init__(self, *args: Any, min_window_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_window_frames = int(min_window_s * FRAMES_PER_S)

    def encode(self, features: np.ndarray) -> Any:
        # faster-whisper pads the log-mel with exact zeros (pad_or_trim); a real log-mel column is
        # never all zeros, so the padding is found from the features themselves: no per-call state.
        full = features.shape[-1]
        spoken = np.flatnonzero(np.any(features.reshape(-1, full) != 0.0, axis=0))
        content = int(spoken[-1]) + 1 if len(spoken) else 0
        frames = min(full, max(content + TAIL_FRAMES, self.min_window_frames))
        frames += frames % 2  # the encoder's stride-2 convolution
        return super().encode(np.ascontiguousarray(features[..., :frames]))
