"""Streaming speech segmentation with the Silero VAD that faster-whisper ships (ONNX)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from stream.messages import AudioChunk, Utterance
from stream.options import SegmenterOptions

WINDOW = 512  # samples per VAD step at 16 kHz (32 ms), as the model expects
SECOND_LOOK_LEAD_WINDOWS = 4  # 128 ms: one Whisper call on the utterance so far, on a 2-core CPU
CONTEXT = 64
# Chunks whose read times are kept (32-100 ms each: 2-6 s); a speech end is decided a hang-over
# (400 ms) after it, a forced split at its own end.
CHUNK_WALLS_KEPT = 64


class SileroVad:
    """One 512-sample step at a time, carrying the LSTM state between calls."""

    def __init__(self) -> None:
        import onnxruntime
        from faster_whisper.utils import get_assets_path

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        path = os.path.join(get_assets_path(), "silero_vad_v6.onnx")
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=opts)
        self.reset()

    def reset(self) -> None:
        self.h = np.zeros((1, 1, 128), dtype=np.float32)
        self.c = np.zeros((1, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, window: np.ndarray) -> float:
        frame = np.concatenate([self.context, window.astype(np.float32)])[None, :]
        out, self.h, self.c = self.session.run(None, {"input": frame, "h": self.h, "c": self.c})
        self.context = window[-CONTEXT:].astype(np.float32)
        return float(np.asarray(out).reshape(-1)[0])


@dataclass
class Snapshot:
    """The utterance being spoken, as heard so far (not cut: the segmenter goes on with it).

    `partial`: taken every `partial_interval_s` of speech, for a provisional intent. `endpoint`:
    taken at a pause of `speculative_pause_ms`, a candidate end of the utterance that `close` may
    confirm while the pause lasts; with silence endpointing (`asr_in_pause`), where the pause holds
    the pad: the samples the hang-over will end the utterance with, heard ahead of it."""

    kind: str  # partial | endpoint
    utterance: Utterance  # carries the id the finished utterance will have
    windows: int  # windows of the utterance when it was taken: which pause an endpoint is


class Segmenter:
    """AudioChunks in, Utterances out: speech start/end with padding, minimum silence, forced splits.

    With `partial_interval_s` and `speculate`, it also takes snapshots of the utterance in progress
    (`take_snapshots`). The segmenter may run on another thread than the one that decides on its
    snapshots: a lock keeps `close` and the processing of a window apart."""

    def __init__(
        self,
        options: SegmenterOptions,
        vad: SileroVad | None = None,
        partial_interval_s: float | None = None,
        speculate: bool = False,
    ) -> None:
        self.options = options
        self.vad = vad or SileroVad()
        self.partial_interval_s = partial_interval_s
        self.speculate = speculate
        self._pad_windows = self._windows(options.speech_pad_ms)
        self._silence_windows = self._windows(options.min_silence_ms)
        pause_windows = self._windows(options.speculative_pause_ms)
        # A second look at twice the pause where Whisper can still answer before the hang-over ends
        # the utterance anyway: the answer at the first look may have been unfinished or the pitch
        # still settling. Too close to the hang-over, the second call delays the final one it was
        # meant to spare (at 160 ms: p95 489 ms against 423 without; docs/results/endpointing_cpu_2core.md).
        second_look = 2 * pause_windows + SECOND_LOOK_LEAD_WINDOWS <= self._silence_windows
        self._endpoint_looks: tuple[int, ...] = (pause_windows, 2 * pause_windows) if second_look else (pause_windows,)
        if options.endpointing == "silence":
            # One look, where the pause holds exactly the pad: the samples the hang-over will end the
            # utterance with, so that its transcript is the one Whisper gave in the pause.
            at_pad = self._pad_windows
            self._endpoint_looks = (at_pad,) if options.asr_in_pause and at_pad < self._silence_windows else ()
        self._snapshots: list[Snapshot] = []
        self._next_partial_s = 0.0
        # Windows of the utterance at its candidate end; None once speech resumed after it.
        self._candidate_windows: int | None = None
        self._lock = threading.Lock()
        self._pending = np.zeros(0, dtype=np.float32)
        self._pending_start_s = 0.0
        self._history: list[np.ndarray] = []  # recent windows, for the leading pad
        self._history_levels: list[tuple[float, float]] = []
        self._speech: list[np.ndarray] = []
        # (VAD probability, RMS) of each window of _speech: where a forced split finds a quiet point.
        self._levels: list[tuple[float, float]] = []
        self._speech_start_s = 0.0
        self._silence_run = 0
        self._speech_windows = 0
        self._in_speech = False
        self._next_id = 0
        self._last_wall = 0.0
        self._last_chunk_end_s = 0.0
        # (end on the stream clock, unix time it was read) of the recent chunks: when a sample was read.
        self._chunk_walls: deque[tuple[float, float]] = deque(maxlen=CHUNK_WALLS_KEPT)

    def _wall_at(self, stream_s: float) -> float:
        """Unix time at which the sample at `stream_s` was captured or read: its chunk's wall time
        less the rest of that chunk, never before the chunk ahead of it was read. In real time that
        is the chunk's wall less the stream time after the sample; a file read faster than real
        time runs its stream clock ahead of the wall clock, where that alone went back in time
        from one utterance to the next."""
        earlier_wall = None
        for end_s, wall in self._chunk_walls:
            if end_s >= stream_s:
                estimate = wall - (end_s - stream_s)
                return estimate if earlier_wall is None else max(earlier_wall, estimate)
            earlier_wall = wall
        return self._last_wall - max(0.0, self._last_chunk_end_s - stream_s)

    def _window_s(self) -> float:
        return WINDOW / 16000

    def _windows(self, ms: float) -> int:
        """VAD windows in `ms` milliseconds, at least one."""
        return max(1, round(ms / 1000 / self._window_s()))

    def process(self, chunk: AudioChunk) -> list[Utterance]:
        with self._lock:
            return self._process(chunk)

    def _process(self, chunk: AudioChunk) -> list[Utterance]:
        if not self._pending.size:
            self._pending_start_s = chunk.start_s
        self._pending = np.concatenate([self._pending, chunk.samples])
        self._last_wall = chunk.wall_s or time.time()
        self._last_chunk_end_s = chunk.end_s
        self._chunk_walls.append((chunk.end_s, self._last_wall))
        out: list[Utterance] = []
        while len(self._pending) >= WINDOW:
            window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            start_s = self._pending_start_s
            self._pending_start_s += self._window_s()
            utterance = self._step(window, start_s)
            if utterance is not None:
                out.append(utterance)
        return out

    def _step(self, window: np.ndarray, start_s: float) -> Utterance | None:
        opts = self.options
        prob = self.vad(window)
        pad_windows = self._pad_windows
        level = (prob, float(np.sqrt(np.mean(np.square(window, dtype=np.float64)))))
        if not self._in_speech:
            keep = pad_windows - 1
            self._history = [*self._history[-keep:], window] if keep else [window]
            self._history_levels = [*self._history_levels[-keep:], level] if keep else [level]
            if prob >= opts.threshold:
                self._in_speech = True
                self._speech = list(self._history)
                self._levels = list(self._history_levels)
                self._speech_start_s = start_s - (len(self._history) - 1) * self._window_s()
                self._speech_windows, self._silence_run = 1, 0
                self._next_partial_s = self.partial_interval_s or 0.0
                self._candidate_windows = None
            return None
        self._speech.append(window)
        self._levels.append(level)
        if prob >= self._low():
            self._speech_windows += 1
            self._silence_run = 0
            self._candidate_windows = None
        else:
            self._silence_run += 1
        duration_s = len(self._speech) * self._window_s()
        self._take_snapshot(duration_s)
        if duration_s >= opts.max_utterance_s:
            return self._emit(forced=True, cut=self._quietest())
        if self._silence_run >= self._silence_windows:
            # Keep only `pad` of the trailing silence.
            drop = max(0, self._silence_run - pad_windows)
            if drop:
                self._speech, self._levels = self._speech[:-drop], self._levels[:-drop]
            return self._emit(forced=False)
        return None

    def _take_snapshot(self, duration_s: float) -> None:
        speech_s = self._speech_windows * self._window_s()
        if speech_s * 1000 < self.options.min_speech_ms:
            return
        if self.partial_interval_s is not None and self._silence_run == 0 and duration_s >= self._next_partial_s:
            # While speaking only: a partial taken in a pause would hold Whisper when the end comes.
            self._next_partial_s = duration_s + self.partial_interval_s
            self._snapshots.append(Snapshot("partial", self._so_far(0), len(self._speech)))
        if self.speculate and self._silence_run in self._endpoint_looks:
            self._candidate_windows = len(self._speech)
            drop = max(0, self._silence_run - self._pad_windows)
            self._snapshots.append(Snapshot("endpoint", self._so_far(drop), len(self._speech)))

    def _so_far(self, drop: int) -> Utterance:
        """The utterance so far without its last `drop` windows (silence beyond the pad)."""
        kept = self._speech[: len(self._speech) - drop]
        samples = np.concatenate(kept)
        end_s = self._speech_start_s + len(samples) / 16000
        trailing = min(self._silence_run - drop, len(kept)) if self._silence_run else 0
        speech_end_s = end_s - trailing * self._window_s()
        speech_end_wall = self._wall_at(speech_end_s)
        return Utterance(self._next_id, self._speech_start_s, end_s, samples, speech_end_wall)

    def take_snapshots(self) -> list[Snapshot]:
        """The snapshots taken since the last call (none unless asked for at construction)."""
        with self._lock:
            snapshots, self._snapshots = self._snapshots, []
        return snapshots

    def close(self, snapshot: Snapshot) -> bool:
        """End the utterance at an endpoint snapshot, if the pause it was taken in still lasts.

        True: the utterance is over (its id is used up and it will not come out of `process`);
        False: speech resumed since, or the utterance already ended, and nothing changed."""
        with self._lock:
            if not (
                self._in_speech
                and snapshot.kind == "endpoint"
                and snapshot.utterance.utterance_id == self._next_id
                and self._candidate_windows == snapshot.windows
            ):
                return False
            drop = max(0, self._silence_run - self._pad_windows)
            if drop:
                self._speech, self._levels = self._speech[:-drop], self._levels[:-drop]
            self._emit(forced=False)
            return True

    def _low(self) -> float:
        """VAD probability under which a window inside speech counts as a pause."""
        return max(self.options.threshold - 0.15, 0.01)

    def _quietest(self) -> int:
        """Where a forced split cuts: after the quietest window of the last `split_search_s`.

        Windows the VAD calls a pause come first (a breath, a comma), then the lowest energy: between
        two words the level dips even where the VAD stays sure of speech, and in the middle of a word
        it does not. Searching at most `split_search_s` back keeps the pieces near the maximum length."""
        n = len(self._speech)
        search_s = min(self.options.split_search_s, self.options.max_utterance_s / 2)
        span = min(n - 1, round(search_s / self._window_s()))
        if span <= 0:
            return n
        quietest = min(range(n - span, n), key=lambda i: (self._levels[i][0] >= self._low(), self._levels[i][1]))
        return quietest + 1

    def _emit(self, forced: bool, cut: int | None = None) -> Utterance | None:
        cut = len(self._speech) if cut is None else cut
        endpoint_windows = None if forced else self._candidate_windows
        carry, carry_levels = self._speech[cut:], self._levels[cut:]
        carry_speech = sum(prob >= self._low() for prob, _ in carry_levels)
        samples = np.concatenate(self._speech[:cut])
        start_s = self._speech_start_s
        speech_ms = (self._speech_windows - carry_speech) * self._window_s() * 1000
        self._in_speech = False
        self._speech, self._history, self._levels, self._history_levels = [], [], [], []
        self._silence_run = self._speech_windows = 0
        self._candidate_windows = None
        if forced:
            # Speech goes on: the next utterance starts at the cut, with the windows after it.
            self._in_speech = True
            self._speech, self._levels = carry, carry_levels
            self._speech_start_s = start_s + len(samples) / 16000
            self._speech_windows = max(1, carry_speech)
            self._next_partial_s = len(carry) * self._window_s() + (self.partial_interval_s or 0.0)
            # A pause that had begun before the cut goes on counting toward the end of speech.
            while self._silence_run < len(carry_levels) and carry_levels[-1 - self._silence_run][0] < self._low():
                self._silence_run += 1
        if speech_ms < self.options.min_speech_ms:
            return None
        end_s = start_s + len(samples) / 16000
        # The trailing pad is silence: speech ended that much before the end of the samples.
        speech_end_s = end_s if forced else end_s - min(self.options.speech_pad_ms / 1000, end_s - start_s)
        speech_end_wall = self._wall_at(speech_end_s)
        utterance = Utterance(self._next_id, start_s, end_s, samples, speech_end_wall, forced)
        utterance.endpoint_windows = endpoint_windows
        self._next_id += 1
        return utterance

    def flush(self) -> list[Utterance]:
        """End of input: whatever speech is open becomes the last utterance."""
        with self._lock:
            if not self._in_speech or not self._speech:
                return []
            utterance = self._emit(forced=False)
        return [utterance] if utterance is not None else []
