"""Work on utterances still being spoken: partial intents and speculative endpointing.

The segmenter (stream/vad.py) takes snapshots of the utterance in progress; `Provisional` decides
on them, one at a time, on the loop, with the pipeline's own Whisper, features and engine:

- a `partial` snapshot becomes a PartialIntent on dfmq/<stream_id>/partial (QoS 0);
- an `endpoint` snapshot (a short pause, and again at twice it) is transcribed; when the
  transcript reads as a finished turn (`turn_complete`) and the voice fell at the pause
  (stream/prosody.py; too little voice to tell counts as fallen in a short answer only), the
  segmenter is asked to end the utterance there (`Segmenter.close`, refused when speech resumed
  meanwhile) and the decided event is published at once, without waiting for the long hang-over
  of silence. Otherwise the utterance ends the usual way;
- with silence endpointing and `asr_in_pause`, an `endpoint` snapshot is taken where the pause holds
  the pad and is only transcribed: the hang-over ends the utterance as always, and takes that
  transcript instead of calling Whisper then (`heard_before`).

Neither ever makes a finished utterance wait behind it: a snapshot is skipped while an earlier
utterance is still on its way to its event or while Whisper is busy (`AsrBatcher.transcribe_if_idle`),
and only the newest snapshot of each kind waits its turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from stream.media import SAMPLE_RATE_HZ
from stream.messages import PartialIntent, SinkMessage, Transcript, Utterance
from stream.pipeline import PipelineStats
from stream.prosody import final_pitch_ratio
from stream.stages import Deciding, Scoring, Transcribing
from stream.vad import Segmenter, Snapshot

log = logging.getLogger("dfmq.endpointing")

# Words a finished English sentence seldom ends on: conjunctions, articles, most prepositions,
# possessives, subject pronouns, fillers and most modals ("i think we should | wait until the rain
# stops" was cut there). Words that often end one ("where the station is?", "yes, I can.", "come
# in.") are not in it. Whisper ends most transcripts with a full stop, also those cut mid-sentence
# at a breath ("ask not what your country can do for."): the last word is what tells them apart.
UNFINISHED_ENDINGS = frozenset(
    """
    a an the and or but nor because since although though while whereas if unless until than which whose
    whether to of at by for with from into onto as through under between without within against during
    toward towards upon via my your his her its our their every each very uh um er erm ah i we he she
    they i'm we're you're let's should would could must might shall
    """.split()  # noqa: SIM905 (a word list reads better as words)
)
TERMINAL = (".", "?", "!")
# Audio blocks of a run with speculative endpointing, in place of 100 ms (stream/sources.py): the
# pause it decides at is 128 ms, and a block's length is added to it before the segmenter sees
# the pause. One VAD window per block costs more wake-ups (docs/results/endpointing_cpu_2core.md).
SPECULATIVE_BLOCK_MS = 32.0
SHORT_ANSWER_S = 1.0  # an utterance this short may end without enough voice to read its pitch


def turn_complete(text: str) -> bool:
    """Whether a transcript reads as a finished turn: it ends with terminal punctuation (not an
    ellipsis, which Whisper writes where speech trails off) and not on a word that wants more."""
    text = text.strip().rstrip("\"')]")
    if not text.endswith(TERMINAL) or text.endswith(("...", "…")):
        return False
    words = text.rstrip(".?!").split()
    if not words:
        return False
    last = "".join(ch for ch in words[-1].lower() if ch.isalnum() or ch == "'")
    return bool(last) and last not in UNFINISHED_ENDINGS


class Provisional:
    """Decides on the segmenter's snapshots; runs as one task of the pipeline's TaskGroup (`run`)."""

    def __init__(
        self,
        segmenter: Segmenter,
        transcribing: Transcribing,
        scoring: Scoring,
        deciding: Deciding,
        emit: Callable[[SinkMessage], None],
        stats: PipelineStats,
        finished: asyncio.Event,
    ) -> None:
        self.segmenter = segmenter
        self.transcribing = transcribing
        self.scoring = scoring
        self.deciding = deciding
        self.emit = emit
        self.stats = stats
        self.finished = finished
        self.loop = asyncio.get_running_loop()
        self._pending: dict[str, Snapshot] = {}
        self._wake = asyncio.Event()
        # (utterance id, windows, transcript) of the last endpoint snapshot heard, or being heard:
        # the transcript is a future until Whisper answers.
        self._heard: tuple[int, int, asyncio.Future[Transcript | None]] | None = None
        self.partials_sent = 0
        self.endpoints_tried = 0
        self.endpoints_closed = 0
        self.endpoints_held_by_pitch = 0

    def offer(self, snapshot: Snapshot) -> None:
        """Hand over a snapshot, from the loop or from a segmenting thread."""
        self.loop.call_soon_threadsafe(self._take, snapshot)

    def _take(self, snapshot: Snapshot) -> None:
        self._pending[snapshot.kind] = snapshot  # a newer snapshot of a kind replaces a waiting one
        self._wake.set()

    def _idle(self) -> bool:
        """No finished utterance on its way to its event: none would wait behind provisional work,
        and a speculative event cannot overtake an earlier one."""
        return self.stats.utterances - self.stats.dropped_utterances == self.stats.events

    async def run(self) -> None:
        finished = asyncio.ensure_future(self.finished.wait())
        try:
            while not self.finished.is_set():
                woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({woken, finished}, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                self._wake.clear()
                # An endpoint first: it can end the utterance, after which its partial is moot.
                for kind in ("endpoint", "partial"):
                    snapshot = self._pending.pop(kind, None)
                    if snapshot is not None and self._idle() and not self.finished.is_set():
                        await (self._endpoint(snapshot) if kind == "endpoint" else self._partial(snapshot))
        finally:
            finished.cancel()
            if self.segmenter.options.endpointing == "speculative":
                log.info(
                    "stream %s: %d partial intents; speculative endpoints: %d heard, %d ended the utterance, "
                    "%d read as finished but held by the pitch",
                    self.deciding.options.stream_id,
                    self.partials_sent,
                    self.endpoints_tried,
                    self.endpoints_closed,
                    self.endpoints_held_by_pitch,
                )
            else:  # silence endpointing: the endpoint snapshots are Whisper's look in the pause
                log.info(
                    "stream %s: %d partial intents; Whisper heard %d pauses ahead of the hang-over",
                    self.deciding.options.stream_id,
                    self.partials_sent,
                    self.endpoints_tried,
                )

    async def _transcript(self, snapshot: Snapshot) -> Transcript | None:
        dequeued = time.time()
        heard = await self.transcribing.whisper.transcribe_if_idle(snapshot.utterance.samples)
        if heard is None:
            return None
        recognised, asr_ms = heard
        return Transcript(snapshot.utterance, recognised.text, recognised.scores, dequeued, asr_ms, 0.0)

    async def heard_before(self, utterance: Utterance) -> Transcript | None:
        """The transcript of an endpoint snapshot, for the utterance that ended in its pause
        (`Transcribing.heard_before`): the same samples, so Whisper need not hear them again, and
        if Whisper is still hearing them, the answer is awaited rather than queued behind (a
        second look late in the pause was otherwise still running when the hang-over ended the
        utterance: docs/results/endpointing_cpu_2core.md). Whisper's time in the pause is off the
        utterance's path (asr_in_pause); what it still takes after the utterance ended is on it (asr)."""
        if self._heard is None:
            return None
        utterance_id, windows, heard = self._heard
        if (utterance_id, windows) != (utterance.utterance_id, utterance.endpoint_windows):
            return None
        dequeued = time.time()  # the VAD's share ends here; what Whisper still takes is on the path
        still_hearing = not heard.done()
        transcript = await asyncio.shield(heard)
        # A flush keeps more silence than the snapshot did: other samples, heard anew.
        if transcript is None or len(transcript.utterance.samples) != len(utterance.samples):
            return None
        self._heard = None
        still_ms = min(transcript.asr_ms, (time.time() - dequeued) * 1000) if still_hearing else 0.0
        return Transcript(
            utterance, transcript.text, transcript.scores, dequeued, still_ms, 0.0, transcript.asr_ms - still_ms
        )

    async def _partial(self, snapshot: Snapshot) -> None:
        transcript = await self._transcript(snapshot)
        if transcript is None:
            return
        scored = await self.scoring.process(transcript, update_reference=False)
        event = await self.deciding.process(scored)
        utterance = snapshot.utterance
        self.emit(
            PartialIntent(
                stream_id=event.stream_id,
                utterance_id=utterance.utterance_id,
                seq=self.partials_sent,
                start=round(utterance.start_s, 3),
                heard_until=round(utterance.end_s, 3),
                published_wall=round(time.time(), 3),
                text=event.text,
                recognized=event.recognized,
                intent=event.intent,
                confidence=event.confidence,
            )
        )
        self.partials_sent += 1

    async def _endpoint(self, snapshot: Snapshot) -> None:
        heard: asyncio.Future[Transcript | None] = self.loop.create_future()
        self._heard = (snapshot.utterance.utterance_id, snapshot.windows, heard)
        transcript = None
        try:
            transcript = await self._transcript(snapshot)
        finally:
            heard.set_result(transcript)  # None (Whisper busy, or cancelled): the utterance is heard anew
        if transcript is None:
            return
        self.endpoints_tried += 1
        if self.segmenter.options.endpointing == "silence":
            return  # heard ahead only (asr_in_pause): the hang-over ends the utterance and takes it
        complete = turn_complete(transcript.text)
        checked = complete and self.segmenter.options.final_pitch_ratio > 0
        pitch = final_pitch_ratio(snapshot.utterance.samples, SAMPLE_RATE_HZ) if checked else None
        if pitch is None:
            # Too little voice to tell: a short answer ("Yes.") is trusted to its transcript; a long
            # stretch without voiced frames (whispered, creaky) is left to the hang-over.
            fell = not checked or snapshot.utterance.end_s - snapshot.utterance.start_s < SHORT_ANSWER_S
        else:
            fell = pitch < self.segmenter.options.final_pitch_ratio
        closed = complete and fell and self.segmenter.close(snapshot)
        log.debug(
            "endpoint of utterance %d: %r, complete %s, final pitch ratio %s, closed %s",
            snapshot.utterance.utterance_id,
            transcript.text,
            complete,
            None if pitch is None else round(pitch, 3),
            closed,
        )
        if complete and not fell:
            self.endpoints_held_by_pitch += 1
        if not closed:
            return  # unfinished, or speech resumed while Whisper listened: the hang-over decides
        self.endpoints_closed += 1
        self.stats.utterances += 1
        scored = await self.scoring.process(transcript, update_reference=False)
        self.scoring.quality.update(scored.features)  # it is the utterance's final scoring after all
        event = await self.deciding.process(scored)
        self.emit(event)
        self.stats.events += 1
        self.stats.latency_ms.append(event.latency_ms["total"])
