"""Message types that flow between stages. Units are in the field names; no tuples between stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from model.features import ClipFeatures
from model.quality import RecogniserScores


@dataclass
class AudioChunk:
    """Mono 16 kHz float32 samples in [-1, 1], stamped on the stream clock."""

    samples: np.ndarray  # (n,) float32
    start_s: float  # stream time of the first sample
    sample_rate_hz: int = 16000
    wall_s: float = 0.0  # unix time at which the last sample was captured or read

    @property
    def end_s(self) -> float:
        return self.start_s + len(self.samples) / self.sample_rate_hz


@dataclass
class VideoFrame:
    """One BGR frame stamped on the stream clock."""

    image: np.ndarray  # (H, W, 3) uint8 BGR
    pts_s: float


@dataclass
class MediaClip:
    """A whole decoded clip: what `dfmq extract` and tests feed the feature extractor."""

    audio: np.ndarray  # (n,) float32, 16 kHz mono; empty when there is no audio track
    frames: list[VideoFrame] = field(default_factory=list)
    sample_rate_hz: int = 16000

    @property
    def duration_s(self) -> float:
        audio_s = len(self.audio) / self.sample_rate_hz
        video_s = self.frames[-1].pts_s if self.frames else 0.0
        return max(audio_s, video_s)


@dataclass
class Utterance:
    """A stretch of speech found by the VAD, with the samples it covers (padding included)."""

    utterance_id: int
    start_s: float
    end_s: float
    samples: np.ndarray  # (n,) float32, 16 kHz mono
    speech_end_wall: float  # unix time at which the last speech sample was captured or read
    forced_split: bool = False  # cut at the maximum utterance length, not at a pause
    # The frames of [start_s, end_s], taken when the utterance is cut: the frame buffer only keeps
    # the last seconds, and a file replayed fast can cut utterances well ahead of their scoring.
    frames: list[VideoFrame] = field(default_factory=list)
    # Set when it ended in the pause of an endpoint snapshot with no speech since (stream/vad.py):
    # the snapshot's windows. Its samples are then the snapshot's, and so is the transcript.
    endpoint_windows: int | None = None


@dataclass
class Transcript:
    """An utterance with what the recogniser heard in it."""

    utterance: Utterance
    text: str
    scores: RecogniserScores
    dequeued_wall: float  # unix time at which transcription began (the VAD's share ends here)
    asr_ms: float  # Whisper's own time on the worker thread, on the utterance's way to its event
    asr_wait_ms: float  # waiting for the worker thread (busy with other streams' work)
    # Whisper's time on these samples spent before the utterance ended, in its pause (asr_in_pause
    # or a speculative look): off its way, asr_ms is then 0.
    asr_in_pause_ms: float = 0.0


@dataclass
class ScoredWindow:
    """An utterance ready for the model: its transcript, features and quality scores."""

    transcript: Transcript
    features: ClipFeatures
    quality_audio: float
    quality_video: float
    features_ms: float  # on the worker thread
    features_wait_ms: float  # waiting for it


@dataclass
class IntentEvent:
    """What subscribers of dfmq/<stream_id>/intent receive (as JSON)."""

    stream_id: str
    utterance_id: int
    start: float  # stream seconds
    end: float
    speech_end_wall: float
    published_wall: float
    text: str | None
    recognized: bool  # false: intent is None and `reason` says why
    # no_speech | unreliable_transcript | out_of_scope | low_confidence; None when recognized
    # (dfmq capture also: worker_timeout | worker_error, when no worker decided: stream/distributed.py)
    reason: str | None
    intent: str | None  # a name of the run's intent set
    confidence: float  # the top intent's probability x transcript_confidence
    transcript_confidence: float  # model.quality.recogniser_confidence of the transcript
    # Fraction of off-topic sentences that fit the intent set worse than this utterance
    # (model/semantic.py); below the set's reject_below it is out of scope. None: no semantic space.
    scope: float | None
    top_k: list[dict[str, float | str]]
    quality: dict[str, float]
    weights: dict[str, float]
    engine: str
    latency_ms: dict[str, float]
    schema: str = "dfmq.intent/3"


@dataclass
class PartialIntent:
    """What subscribers of dfmq/<stream_id>/partial receive (QoS 0, not retained): the intent of an
    utterance still being spoken, as heard so far. The final IntentEvent with the same
    `utterance_id` supersedes every partial of it; `seq` counts the partials of one stream."""

    stream_id: str
    utterance_id: int  # the id its final intent event will carry
    seq: int
    start: float  # stream seconds at which the utterance began
    heard_until: float  # stream seconds: the end of the audio this partial heard
    published_wall: float
    text: str | None  # None (and no key in the JSON) when transcripts are switched off
    recognized: bool
    intent: str | None
    confidence: float
    partial: bool = True
    schema: str = "dfmq.partial/1"


@dataclass
class QualityReport:
    """Running quality of the last seconds, between and during utterances (dfmq/<id>/quality)."""

    stream_id: str
    time_s: float  # stream time of the newest sample or frame scored
    wall_s: float
    audio: float
    video: float
    camera: bool  # a video source has delivered frames
    microphone: bool  # an audio source has delivered samples
    face_box_px: tuple[int, int, int, int] | None = None  # x, y, width, height in the newest frame
    schema: str = "dfmq.quality/1"

    def payload(self) -> dict[str, object]:
        """What dfmq/<id>/quality carries (and the session record keeps): no face box."""
        return {
            "schema": self.schema,
            "stream_id": self.stream_id,
            "time": self.time_s,
            "wall": self.wall_s,
            "audio": self.audio,
            "video": self.video,
            "camera": self.camera,
            "microphone": self.microphone,
        }


@dataclass
class RunStarted:
    """Sent once, after the model and the intent set are loaded and before the first sample: what
    this run recognises and with which thresholds (the session record's header keeps it)."""

    stream_id: str
    wall_s: float
    checkpoint: str
    engine: str
    intents: list[str]  # the names events can carry
    reject_below: float | None  # out-of-scope threshold on `scope`; None: no semantic space
    options: dict[str, dict[str, object]]  # option sections of the run (asr, segmenter, pipeline, decision)
    schema: str = "dfmq.run/1"

    def payload(self) -> dict[str, object]:
        """The session record's `run` line: `wall` as on every other line of the record."""
        line = asdict(self)
        line["wall"] = line.pop("wall_s")
        return line


# What every sink receives; each takes the kinds it shows and ignores the rest.
SinkMessage = IntentEvent | PartialIntent | QualityReport | VideoFrame | RunStarted
