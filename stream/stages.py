"""The stages of the live path, each one small unit with a typed message in and out.

    capture items ─► Segmenting ─► Utterance ─► Transcribing ─► Transcript
        ─► Scoring (features + quality) ─► ScoredWindow ─► Deciding ─► IntentEvent
    MediaBuffer (recent frames and audio) ─► QualityTicker ─► QualityReport

`stream/pipeline.py` joins them with bounded queues and fans their outputs out to the sinks.
Blocking work (ASR, features) runs in an executor handed in by the wiring.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import numpy as np
import torch

from engines.base import WindowBatch
from engines.batcher import MicroBatcher
from model.config import DFMQConfig
from model.errors import ConfigError
from model.features import ClipFeatures, FaceTracker, FeatureOptions, extract_features, score_audio_raw, score_video_raw
from model.quality import (
    LOGPROB_FAIL,
    RecogniserScores,
    RunningReference,
    recognised_text_quality,
    recogniser_confidence,
    text_quality,
)
from model.semantic import OUT_OF_SCOPE, IntentAnchors
from stream.asr import Recognised, transcribe_batch
from stream.messages import AudioChunk, IntentEvent, QualityReport, ScoredWindow, Transcript, Utterance, VideoFrame
from stream.options import AsrOptions, DecisionOptions, PipelineOptions
from stream.vad import Segmenter, Snapshot

T = TypeVar("T")


def check_live_compatible(config: DFMQConfig) -> FeatureOptions:
    """The feature options live extraction must use: those the checkpoint was trained on (a
    text-only checkpoint: the defaults, for the running quality only; `Deciding` gives it no
    audio or video)."""
    if config.text_only:
        return FeatureOptions()
    if config.feature_options is None:
        raise ConfigError(
            "--ckpt",
            "a checkpoint trained on features from `dfmq extract` (e.g. 'default'); this one was trained on "
            f"benchmark features ({config.audio_dim}-d audio, {config.video_dim}-d video) that live media cannot "
            "reproduce",
            "a benchmark-feature checkpoint",
        )
    options = FeatureOptions(**config.feature_options)
    if (options.mel_bins, options.video_dim) != (config.audio_dim, config.video_dim):
        raise ConfigError(
            "--ckpt", f"feature widths {config.audio_dim}/{config.video_dim}", f"{options.mel_bins}/{options.video_dim}"
        )
    return options


class MediaBuffer:
    """The last seconds of frames and audio: segmenting writes them and hands each utterance its frames
    when it is cut; the quality ticker reads the newest.

    Bounded by stream time (`video_buffer_s`, `quality_window_s`), so memory does not grow with the
    length of the input."""

    def __init__(self, options: PipelineOptions) -> None:
        self.options = options
        self.frames: deque[VideoFrame] = deque()
        self.recent_audio: deque[AudioChunk] = deque()
        self.has_video = False
        self.has_audio = False
        self.audio_clock_s = 0.0

    def add_frame(self, frame: VideoFrame) -> None:
        self.has_video = True
        self.frames.append(frame)
        while self.frames and self.frames[0].pts_s < frame.pts_s - self.options.video_buffer_s:
            self.frames.popleft()

    def add_audio(self, chunk: AudioChunk) -> None:
        self.has_audio = True
        self.audio_clock_s = chunk.end_s
        self.recent_audio.append(chunk)
        while self.recent_audio and self.recent_audio[0].start_s < chunk.end_s - self.options.quality_window_s:
            self.recent_audio.popleft()

    def frames_between(self, start_s: float, end_s: float) -> list[VideoFrame]:
        return [f for f in self.frames if start_s <= f.pts_s <= end_s]

    def now_s(self) -> float:
        if self.has_audio:
            return self.audio_clock_s
        return self.frames[-1].pts_s if self.frames else 0.0

    def recent_samples(self) -> np.ndarray:
        if not self.recent_audio:
            return np.zeros(0, np.float32)
        return np.concatenate([c.samples for c in self.recent_audio])


class LiveQuality:
    """Per-stream quality: raw-signal scores against running references (EMA over utterances),
    seeded from the checkpoint's training statistics."""

    def __init__(self, config: DFMQConfig, options: FeatureOptions, momentum: float) -> None:
        self.reference = RunningReference(config.reference, momentum)
        self.options = options

    def score(self, feats: ClipFeatures) -> tuple[float, float]:
        ref = self.reference.current
        q_audio = score_audio_raw(feats.audio_stats, ref.audio_energy, self.options)
        q_video = score_video_raw(feats.video_stats, ref.video_motion, ref.video_contrast, self.options)
        return q_audio, q_video

    def update(self, feats: ClipFeatures) -> None:
        a, v = feats.audio_stats, feats.video_stats
        self.reference.fold(
            energy=a.energy if a is not None else None,
            motion=v.motion if v is not None else None,
            contrast=v.contrast if v is not None else None,
        )


class Segmenting:
    """Capture items in, finished utterances out; frames and audio also go to the media buffer.

    Snapshots of the utterance in progress (stream/vad.py), when the segmenter takes any, go with
    their frames to `on_snapshot` (stream/endpointing.py `Provisional.offer`, safe from any thread)."""

    def __init__(
        self, segmenter: Segmenter, buffer: MediaBuffer, on_snapshot: Callable[[Snapshot], None] | None = None
    ) -> None:
        self.segmenter = segmenter
        self.buffer = buffer
        self.on_snapshot = on_snapshot

    def process(self, item: AudioChunk | VideoFrame) -> list[Utterance]:
        if isinstance(item, VideoFrame):
            self.buffer.add_frame(item)
            return []
        self.buffer.add_audio(item)
        utterances = self._with_frames(self.segmenter.process(item))
        if self.on_snapshot is not None:
            for snapshot in self.segmenter.take_snapshots():
                self._with_frames([snapshot.utterance])
                self.on_snapshot(snapshot)
        return utterances

    def flush(self) -> list[Utterance]:
        """The utterance being spoken when the input ended, cut where it is."""
        return self._with_frames(self.segmenter.flush())

    def _with_frames(self, utterances: list[Utterance]) -> list[Utterance]:
        for utterance in utterances:
            utterance.frames = self.buffer.frames_between(utterance.start_s, utterance.end_s)
        return utterances


def _timed(work: Callable[..., T], *args: Any) -> tuple[T, float]:
    """`work(*args)` and its milliseconds, measured on the worker thread: what it cost, apart from
    the wait for the thread, which several streams share."""
    started = time.perf_counter()
    return work(*args), (time.perf_counter() - started) * 1000


class AsrBatcher:
    """Whisper, shared by the streams of a run: utterances that wait together (they come from
    different streams: each stream hands over one at a time) go in one batched call of at most
    `asr.batch_max` (stream/asr.py `transcribe_batch`); up to `asr.parallel_calls` calls run at
    once, on the executor's threads."""

    def __init__(self, asr: AsrOptions, executor: Executor) -> None:
        self.asr = asr
        self.executor = executor
        self._waiting: list[tuple[np.ndarray, asyncio.Future[tuple[Recognised, float]]]] = []
        self._calls = 0  # running now

    async def transcribe_if_idle(self, samples: np.ndarray) -> tuple[Recognised, float] | None:
        """As `transcribe`, or None at once when Whisper is busy or has work waiting: provisional
        work never makes a finished utterance wait for a whole call."""
        if self._calls or self._waiting:
            return None
        return await self.transcribe(samples)

    async def transcribe(self, samples: np.ndarray) -> tuple[Recognised, float]:
        """The transcript, and this utterance's share of its call's milliseconds."""
        future: asyncio.Future[tuple[Recognised, float]] = asyncio.get_running_loop().create_future()
        self._waiting.append((samples, future))
        self._start_next()
        return await future

    def _start_next(self) -> None:
        while self._waiting and self._calls < self.asr.parallel_calls:
            batch, self._waiting = self._waiting[: self.asr.batch_max], self._waiting[self.asr.batch_max :]
            self._calls += 1
            call = asyncio.get_running_loop().run_in_executor(
                self.executor, _timed, transcribe_batch, [samples for samples, _ in batch], self.asr
            )
            call.add_done_callback(functools.partial(self._finish, batch=batch))

    def _finish(
        self,
        done: asyncio.Future[tuple[list[Recognised], float]],
        batch: list[tuple[np.ndarray, asyncio.Future[tuple[Recognised, float]]]],
    ) -> None:
        self._calls -= 1
        waiting = [future for _, future in batch if not future.done()]
        if done.cancelled():
            for future in waiting:
                future.cancel()
        elif (error := done.exception()) is not None:
            for future in waiting:
                future.set_exception(error)
        else:
            heard, call_ms = done.result()
            for (_, future), recognised in zip(batch, heard):
                if not future.done():
                    future.set_result((recognised, call_ms / len(batch)))
        self._start_next()


class Transcribing:
    def __init__(self, whisper: AsrBatcher) -> None:
        self.whisper = whisper
        # What was heard already of an utterance that ended where an endpoint snapshot had
        # listened (speculative, or asr_in_pause; stream/endpointing.py): the same samples need no
        # second Whisper call.
        self.heard_before: Callable[[Utterance], Awaitable[Transcript | None]] | None = None

    async def process(self, utterance: Utterance) -> Transcript:
        if self.heard_before is not None and (earlier := await self.heard_before(utterance)) is not None:
            return earlier
        dequeued = time.time()
        started = time.perf_counter()
        heard, asr_ms = await self.whisper.transcribe(utterance.samples)
        waited_ms = (time.perf_counter() - started) * 1000 - asr_ms
        return Transcript(utterance, heard.text, heard.scores, dequeued, asr_ms, max(0.0, waited_ms))


class Scoring:
    """Features of the utterance's audio and frames, and their quality against the running references."""

    def __init__(self, quality: LiveQuality, tracker: FaceTracker, executor: Executor) -> None:
        self.quality = quality
        self.tracker = tracker
        self.executor = executor

    async def process(self, transcript: Transcript, update_reference: bool = True) -> ScoredWindow:
        """`update_reference=False`: a provisional window, which must not count twice in the running
        references (its utterance is scored again when it ends)."""
        utterance = transcript.utterance
        started = time.perf_counter()
        feats, features_ms = await asyncio.get_running_loop().run_in_executor(
            self.executor,
            _timed,
            extract_features,
            utterance.samples,
            utterance.frames,
            self.quality.options,
            self.tracker,
        )
        waited_ms = max(0.0, (time.perf_counter() - started) * 1000 - features_ms)
        q_audio, q_video = self.quality.score(feats)
        if update_reference:
            self.quality.update(feats)
        return ScoredWindow(transcript, feats, q_audio, q_video, features_ms, waited_ms)


def repeats_itself(text: str, times: int = 3) -> bool:
    """A phrase of one to four words said `times` times in a row: Whisper looping on noise."""
    words = ["".join(ch for ch in w.lower() if ch.isalnum()) for w in text.split()]
    for n in range(1, 5):
        for start in range(len(words) - n * times + 1):
            phrase = words[start : start + n]
            if all(words[start + k * n : start + (k + 1) * n] == phrase for k in range(1, times)):
                return True
    return False


def verdict(
    text: str,
    scores: RecogniserScores,
    transcript_confidence: float,
    confidence: float,
    options: DecisionOptions,
    in_scope: bool = True,
) -> str | None:
    """Why an utterance is not recognized, or None when it is.

    no_speech: nothing readable was heard, or Whisper's own silence rule holds (no-speech
    probability high and mean log-probability under -1.0). unreliable_transcript: the recogniser
    does not trust its transcript, or the transcript loops. out_of_scope: no intent of the set fits
    (model/semantic.py). low_confidence: the published confidence (intent probability x
    transcript confidence) is under the threshold."""
    if not any(ch.isalnum() for ch in text):
        return "no_speech"
    if scores.no_speech_prob >= options.no_speech_prob_min and scores.avg_logprob < LOGPROB_FAIL:
        return "no_speech"
    if transcript_confidence < options.min_transcript_confidence or repeats_itself(text):
        return "unreliable_transcript"
    if not in_scope:
        return OUT_OF_SCOPE
    if confidence < options.min_confidence:
        return "low_confidence"
    return None


class Deciding:
    """The model's decision on one window (through the shared micro-batcher) as an intent event.

    The intents are those of `anchors` (the run's intent set, model/semantic.py): the trained set
    mixes the linear head with the similarity to its descriptions, any other set is scored by
    similarity alone; an utterance no intent fits is `out_of_scope`. `anchors=None` (a checkpoint
    from before the semantic space): the trained head alone, nothing out of scope.
    Text is the fusion's backbone, so a transcript the recogniser does not trust weakens the
    decision itself: the published confidence is the intent's probability times the transcript's
    confidence, and the event says `recognized: false` with a reason when either falls too low.
    The scores, weights and top-k stay in the event either way."""

    def __init__(
        self,
        config: DFMQConfig,
        tokenizer: Any,
        batcher: MicroBatcher,
        options: PipelineOptions,
        decision: DecisionOptions,
        engine_name: str,
        anchors: IntentAnchors | None,
    ) -> None:
        self.config = config
        self.anchors = anchors
        self.tokenizer = tokenizer
        self.batcher = batcher
        self.options = options
        self.decision = decision
        self.engine_name = engine_name

    def window(self, scored: ScoredWindow, transcript_confidence: float) -> WindowBatch:
        cfg = self.config
        text = scored.transcript.text
        tokens = self.tokenizer([text or ""], truncation=True, max_length=cfg.text_max_len, return_tensors="np")
        # Nothing recognised is no text at all, not the two special tokens of an empty string.
        q_text = 0.0
        if text:
            coverage = float(text_quality(torch.from_numpy(tokens["attention_mask"]), cfg.text_max_len)[0])
            q_text = recognised_text_quality(coverage, transcript_confidence)

        def seq(values: np.ndarray | None, dim: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
            if values is None or len(values) == 0:
                return np.zeros((1, 1, dim), np.float32), np.zeros((1, 1), bool)
            values = values[:max_len]
            return values[None].astype(np.float32), np.ones((1, len(values)), bool)

        # A text-only checkpoint sees windows as it was trained: no audio, no video.
        heard = None if cfg.text_only else scored.features
        audio, audio_mask = seq(None if heard is None else heard.audio, cfg.audio_dim, cfg.audio_max_len)
        video, video_mask = seq(None if heard is None else heard.video, cfg.video_dim, cfg.video_max_len)
        q_audio, q_video = (0.0, 0.0) if heard is None else (scored.quality_audio, scored.quality_video)
        return WindowBatch(
            input_ids=tokens["input_ids"].astype(np.int64),
            attention_mask=tokens["attention_mask"].astype(np.int64),
            audio=audio,
            audio_mask=audio_mask,
            video=video,
            video_mask=video_mask,
            quality=np.array([[q_text, q_audio, q_video]], dtype=np.float32),
        )

    async def process(self, scored: ScoredWindow) -> IntentEvent:
        started = time.perf_counter()
        transcript = scored.transcript
        text = transcript.text
        transcript_confidence = recogniser_confidence(transcript.scores) if transcript.text else 0.0
        window = self.window(scored, transcript_confidence)
        result = await self.batcher.infer(self.options.stream_id, window)
        engine_ms = (time.perf_counter() - started) * 1000
        output = result.output
        weights = output.weights[0]
        labels: Sequence[str] = self.config.labels
        probs = output.probs[0]
        in_scope, scope = True, None
        if self.anchors is not None:
            if self.anchors.needs_transcripts:  # another encoder's forward pass, off the loop
                scores = await asyncio.to_thread(
                    self.anchors.score_transcripts, [text or ""], output.embedding, output.sentence, output.probs
                )
            else:
                scores = self.anchors.score(output.embedding, output.sentence, output.probs)
            labels, probs = self.anchors.names, scores.probs[0]
            in_scope, scope = bool(scores.in_scope[0]), float(scores.scope[0])
        order = np.argsort(-probs)[: self.options.top_k]
        utterance = transcript.utterance
        confidence = float(probs[order[0]]) * transcript_confidence
        reason = verdict(transcript.text, transcript.scores, transcript_confidence, confidence, self.decision, in_scope)
        now = time.time()
        latency = {
            "vad": max(0.0, (transcript.dequeued_wall - utterance.speech_end_wall) * 1000),
            "asr": transcript.asr_ms,
            "asr_in_pause": transcript.asr_in_pause_ms,
            "features": scored.features_ms,
            "worker_wait": transcript.asr_wait_ms + scored.features_wait_ms,
            "engine": engine_ms,
            "batch_wait": result.wait_ms,
            "total": (now - utterance.speech_end_wall) * 1000,
        }
        return IntentEvent(
            stream_id=self.options.stream_id,
            utterance_id=utterance.utterance_id,
            start=round(utterance.start_s, 3),
            end=round(utterance.end_s, 3),
            speech_end_wall=round(utterance.speech_end_wall, 3),
            published_wall=round(now, 3),
            text=transcript.text if self.options.publish_transcripts else None,
            recognized=reason is None,
            reason=reason,
            intent=labels[int(order[0])] if reason is None else None,
            confidence=round(confidence, 4),
            transcript_confidence=round(transcript_confidence, 3),
            scope=None if scope is None else round(scope, 3),
            top_k=[{"intent": labels[int(i)], "confidence": round(float(probs[i]), 4)} for i in order],
            quality={
                "text": round(float(window.quality[0, 0]), 3),
                "audio": round(scored.quality_audio, 3),
                "video": round(scored.quality_video, 3),
            },
            weights={"audio": round(float(weights[0]), 3), "video": round(float(weights[1]), 3)},
            engine=self.engine_name,
            latency_ms={k: round(v, 1) for k, v in latency.items()},
        )


class QualityTicker:
    """Running quality of the last seconds, scored without model inputs (no log-mel, no crops kept)."""

    def __init__(
        self, buffer: MediaBuffer, quality: LiveQuality, tracker: FaceTracker, options: PipelineOptions
    ) -> None:
        self.buffer = buffer
        self.quality = quality
        self.tracker = tracker
        self.options = options

    async def process(self) -> QualityReport | None:
        buffer = self.buffer
        if not buffer.recent_audio and not buffer.frames:
            return None
        now_s = buffer.now_s()
        frames = buffer.frames_between(now_s - self.options.quality_window_s, now_s)
        feats = await asyncio.get_running_loop().run_in_executor(
            None, extract_features, buffer.recent_samples(), frames, self.quality.options, self.tracker, False
        )
        q_audio, q_video = self.quality.score(feats)
        return QualityReport(
            stream_id=self.options.stream_id,
            time_s=round(now_s, 3),
            wall_s=round(time.time(), 3),
            audio=round(q_audio, 3),
            video=round(q_video, 3),
            camera=buffer.has_video,
            microphone=buffer.has_audio,
            face_box_px=self.tracker.last_box,
        )
