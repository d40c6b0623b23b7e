"""The live pipeline, wired in one place.

    source thread ─► ingest (VAD segmenter, frame buffer) ─► utterance queue
        ─► worker: ASR ─► features + running quality ─► engine (micro-batched) ─► publisher
    quality ticker: running quality of the last seconds, a few times per second ─► publisher

Queues are bounded. A file source waits when they are full (nothing is lost); a live device never
waits: its items are dropped oldest-first and counted in `PipelineStats`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from engines.base import EngineOutput, WindowBatch
from engines.batcher import MicroBatcher
from model.config import DFMQConfig
from model.errors import ConfigError
from model.features import (
    ClipFeatures,
    FaceTracker,
    FeatureOptions,
    extract_features,
    score_audio_raw,
    score_video_raw,
)
from model.quality import RunningReference, text_quality
from stream.asr import transcribe
from stream.messages import AudioChunk, IntentEvent, Utterance, VideoFrame
from stream.options import AsrOptions, PipelineOptions
from stream.publisher import Publisher
from stream.show import make_viewer
from stream.vad import Segmenter

log = logging.getLogger("dfmq.pipeline")
END = None


@dataclass
class PipelineStats:
    utterances: int = 0
    events: int = 0
    dropped_items: int = 0  # live capture items dropped because the loop fell behind
    dropped_utterances: int = 0  # utterances dropped because ASR fell behind real time
    quality_messages: int = 0
    latency_ms: list[float] = field(default_factory=list)


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


def check_live_compatible(config: DFMQConfig) -> FeatureOptions:
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


class Pipeline:
    def __init__(
        self,
        config: DFMQConfig,
        tokenizer: Any,
        batcher: MicroBatcher,
        publisher: Publisher,
        options: PipelineOptions,
        segmenter: Segmenter,
        asr: AsrOptions,
        engine_name: str,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.batcher = batcher
        self.publisher = publisher
        self.options = options
        self.segmenter = segmenter
        self.asr = asr
        self.engine_name = engine_name
        self.features = check_live_compatible(config)
        self.quality = LiveQuality(config, self.features, options.reference_momentum)
        self.tracker = FaceTracker(self.features)
        self.stats = PipelineStats()
        self.viewer = make_viewer(options.show)
        self.frames: deque[VideoFrame] = deque()
        self.recent_audio: deque[AudioChunk] = deque()
        self.has_video = False
        self.has_audio = False
        self.stream_clock_s = 0.0
        # One worker thread for ASR and features keeps their order and leaves a core for the loop.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfmq-work")
        self.items: asyncio.Queue[AudioChunk | VideoFrame | None] = asyncio.Queue(options.max_pending_items)
        self.utterances: asyncio.Queue[Utterance | None] = asyncio.Queue(options.max_pending_utterances)
        self.blocking_source = True
        self.free_slots: threading.Semaphore | None = None
        self.finished = asyncio.Event()
        self.last_quality = {"text": 0.0, "audio": 0.0, "video": 0.0}
        self.last_weights = {"audio": 0.0, "video": 0.0}
        self.last_intent = ""

    # ---- capture side -------------------------------------------------------------------------
    def sink_for(self, loop: asyncio.AbstractEventLoop, blocking: bool) -> Any:
        """What a source thread calls for each item: waits (files) or drops oldest (devices)."""
        self.blocking_source = blocking
        # A file source takes a slot before it hands an item over and ingest frees it: the wait
        # happens on the source thread, with one wake-up of the loop per item (a coroutine and a
        # future per item cost the pipeline more CPU than the VAD).
        self.free_slots = threading.Semaphore(self.options.max_pending_items) if blocking else None

        def put_nowait_dropping(item: AudioChunk | VideoFrame | None) -> None:
            if self.items.full() and item is not END:
                self.items.get_nowait()
                self.stats.dropped_items += 1
            self.items.put_nowait(item)

        def sink(item: AudioChunk | VideoFrame | None) -> None:
            if self.free_slots is not None:
                self.free_slots.acquire()
                loop.call_soon_threadsafe(self.items.put_nowait, item)
            else:
                loop.call_soon_threadsafe(put_nowait_dropping, item)

        return sink

    async def ingest(self) -> None:
        while True:
            item = await self.items.get()
            if self.free_slots is not None:
                self.free_slots.release()
            if item is END:
                for utterance in self.segmenter.flush():
                    await self._queue_utterance(utterance)
                await self.utterances.put(END)
                return
            if isinstance(item, VideoFrame):
                self.has_video = True
                self.frames.append(item)
                while self.frames and self.frames[0].pts_s < item.pts_s - self.options.video_buffer_s:
                    self.frames.popleft()
                continue
            self.has_audio = True
            self.stream_clock_s = item.end_s
            self.recent_audio.append(item)
            while self.recent_audio and self.recent_audio[0].start_s < item.end_s - self.options.quality_window_s:
                self.recent_audio.popleft()
            for utterance in self.segmenter.process(item):
                await self._queue_utterance(utterance)

    async def _queue_utterance(self, utterance: Utterance) -> None:
        self.stats.utterances += 1
        if self.blocking_source:
            await self.utterances.put(utterance)
            return
        if self.utterances.full():
            # ASR is behind real time: the oldest waiting utterance goes, and is counted.
            self.utterances.get_nowait()
            self.stats.dropped_utterances += 1
            log.warning("ASR behind real time: dropped an utterance (%d so far)", self.stats.dropped_utterances)
        self.utterances.put_nowait(utterance)

    # ---- per utterance ------------------------------------------------------------------------
    def _window(self, text: str, feats: ClipFeatures, q_audio: float, q_video: float) -> WindowBatch:
        cfg = self.config
        tokens = self.tokenizer([text or ""], truncation=True, max_length=cfg.text_max_len, return_tensors="np")
        # Nothing recognised is no text at all, not the two special tokens of an empty string.
        q_text = float(text_quality(torch.from_numpy(tokens["attention_mask"]), cfg.text_max_len)[0]) if text else 0.0

        def seq(values: np.ndarray | None, dim: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
            if values is None or len(values) == 0:
                return np.zeros((1, 1, dim), np.float32), np.zeros((1, 1), bool)
            values = values[:max_len]
            return values[None].astype(np.float32), np.ones((1, len(values)), bool)

        audio, audio_mask = seq(feats.audio, cfg.audio_dim, cfg.audio_max_len)
        video, video_mask = seq(feats.video, cfg.video_dim, cfg.video_max_len)
        return WindowBatch(
            input_ids=tokens["input_ids"].astype(np.int64),
            attention_mask=tokens["attention_mask"].astype(np.int64),
            audio=audio,
            audio_mask=audio_mask,
            video=video,
            video_mask=video_mask,
            quality=np.array([[q_text, q_audio, q_video]], dtype=np.float32),
        )

    def _frames_between(self, start_s: float, end_s: float) -> list[VideoFrame]:
        return [f for f in self.frames if start_s <= f.pts_s <= end_s]

    async def work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            utterance = await self.utterances.get()
            if utterance is END:
                return
            dequeued = time.time()
            t0 = time.perf_counter()
            text = await loop.run_in_executor(self.executor, transcribe, utterance.samples, self.asr)
            t1 = time.perf_counter()
            frames = self._frames_between(utterance.start_s, utterance.end_s)
            feats = await loop.run_in_executor(
                self.executor, extract_features, utterance.samples, frames, self.features, self.tracker
            )
            t2 = time.perf_counter()
            q_audio, q_video = self.quality.score(feats)
            self.quality.update(feats)
            window = self._window(text, feats, q_audio, q_video)
            result = await self.batcher.infer(self.options.stream_id, window)
            t3 = time.perf_counter()
            self._publish(
                utterance,
                text,
                result.output,
                (float(window.quality[0, 0]), q_audio, q_video),
                {
                    "vad": max(0.0, (dequeued - utterance.speech_end_wall) * 1000),
                    "asr": (t1 - t0) * 1000,
                    "features": (t2 - t1) * 1000,
                    "engine": (t3 - t2) * 1000,
                    "batch_wait": result.wait_ms,
                },
            )

    def _publish(
        self,
        utterance: Utterance,
        text: str,
        output: EngineOutput,
        quality: tuple[float, float, float],
        latency: dict[str, float],
    ) -> None:
        probs = output.probs[0]
        order = np.argsort(-probs)[: self.options.top_k]
        labels = self.config.labels
        now = time.time()
        latency = {k: round(v, 1) for k, v in latency.items()}
        latency["total"] = round((now - utterance.speech_end_wall) * 1000, 1)
        event = IntentEvent(
            stream_id=self.options.stream_id,
            utterance_id=utterance.utterance_id,
            start=round(utterance.start_s, 3),
            end=round(utterance.end_s, 3),
            speech_end_wall=round(utterance.speech_end_wall, 3),
            published_wall=round(now, 3),
            text=text if self.options.publish_transcripts else None,
            intent=labels[int(order[0])],
            confidence=round(float(probs[order[0]]), 4),
            top_k=[{"intent": labels[int(i)], "confidence": round(float(probs[i]), 4)} for i in order],
            quality={"text": round(quality[0], 3), "audio": round(quality[1], 3), "video": round(quality[2], 3)},
            weights={"audio": round(float(output.weights[0, 0]), 3), "video": round(float(output.weights[0, 1]), 3)},
            engine=self.engine_name,
            latency_ms=latency,
        )
        payload = asdict(event)
        if not self.options.publish_transcripts:
            del payload["text"]
        self.publisher.send(self.publisher.topic("intent"), payload, qos=1)
        self.last_quality, self.last_weights = event.quality, event.weights
        self.last_intent = f"{event.intent} {event.confidence:.2f}"
        if self.options.hermes:
            name = event.intent.title().replace(" ", "")
            self.publisher.send(
                f"hermes/intent/{name}",
                {
                    "input": event.text or "",
                    "intent": {"intentName": name, "confidenceScore": event.confidence},
                    "siteId": event.stream_id,
                    "sessionId": f"{event.stream_id}-{event.utterance_id}",
                    "customData": None,
                    "slots": [],
                    "asrTokens": [],
                    "asrConfidence": None,
                },
                qos=1,
            )
        self.stats.events += 1
        self.stats.latency_ms.append(latency["total"])

    # ---- running quality between utterances ---------------------------------------------------
    async def quality_ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.finished.is_set():
            try:
                await asyncio.wait_for(self.finished.wait(), self.options.quality_interval_s)
                return
            except TimeoutError:
                pass
            if not self.recent_audio and not self.frames:
                continue
            now_s = self.stream_clock_s if self.has_audio else (self.frames[-1].pts_s if self.frames else 0.0)
            audio = (
                np.concatenate([c.samples for c in self.recent_audio]) if self.recent_audio else np.zeros(0, np.float32)
            )
            frames = self._frames_between(now_s - self.options.quality_window_s, now_s)
            feats = await loop.run_in_executor(
                None, extract_features, audio, frames, self.features, self.tracker, False
            )
            q_audio, q_video = self.quality.score(feats)
            self.publisher.send(
                self.publisher.topic("quality"),
                {
                    "schema": "dfmq.quality/1",
                    "stream_id": self.options.stream_id,
                    "time": round(now_s, 3),
                    "wall": round(time.time(), 3),
                    "audio": round(q_audio, 3),
                    "video": round(q_video, 3),
                    "camera": self.has_video,
                    "microphone": self.has_audio,
                },
                qos=0,
            )
            self.stats.quality_messages += 1

    async def run(self) -> PipelineStats:
        async with self.batcher:
            ticker = asyncio.create_task(self.quality_ticker())
            try:
                await asyncio.gather(self.ingest(), self.work())
            finally:
                self.finished.set()
                await ticker
        self.executor.shutdown(wait=False)
        return self.stats
