"""Work on utterances still being spoken (stream/endpointing.py): partial intents and speculative
endpointing, on real speech through the real segmenter, and end to end through `dfmq run` and a
real Mosquitto."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from stream.media import decode_clip
from stream.messages import AudioChunk, Utterance
from stream.options import SegmenterOptions
from stream.render import speak
from stream.vad import Segmenter, Snapshot
from tests.conftest import Mosquitto, require_binary, wait_until

RATE = 16000
DATA = Path(__file__).parent / "data"


def test_turn_completion_reads_the_end_of_the_transcript() -> None:
    from stream.endpointing import turn_complete

    finished = ["Thank you so much for covering my shift.", "Could you help me?", "Hi everyone, good morning!"]
    finished += ['He said "stop."', "Thanks, really.", "Where the station is?", "Yes, I can."]
    unfinished = ["ask not what your country can do for.", "I was going to the.", "and because.", "I think that..."]
    unfinished += ["Thank you so much for covering my shift", "", "Well, um.", "I think we should."]
    assert all(turn_complete(text) for text in finished)
    assert not any(turn_complete(text) for text in unfinished)


def _feed(
    segmenter: Segmenter, audio: np.ndarray, until_s: float | None = None, from_s: float = 0.0
) -> tuple[list[Utterance], list[Snapshot]]:
    """The utterances cut and the snapshots taken from `audio[from_s:until_s]`, in 20 ms chunks."""
    utterances: list[Utterance] = []
    snapshots: list[Snapshot] = []
    end = len(audio) if until_s is None else int(until_s * RATE)
    for start in range(int(from_s * RATE), end, 320):
        utterances += segmenter.process(AudioChunk(audio[start : min(start + 320, end)], start / RATE, RATE, 0.0))
        snapshots += segmenter.take_snapshots()
    return utterances, snapshots


def _trimmed(speech: np.ndarray) -> np.ndarray:
    """espeak-ng's speech without the silence it writes before and after."""
    loud = np.flatnonzero(np.abs(speech) > 0.01)
    return speech[loud[0] : loud[-1] + 1]


@pytest.fixture(scope="module")
def paused_sentence() -> np.ndarray:
    """One sentence said in two halves with a 300 ms pause between them: a breath mid-sentence."""
    require_binary("espeak-ng", "espeak-ng")
    silence = np.zeros(int(0.3 * RATE), np.float32)
    first, second = _trimmed(speak("i would like to order")), _trimmed(speak("a large coffee with milk please"))
    return np.concatenate([silence, first, silence, second, np.zeros(RATE, np.float32)])


def test_partials_come_every_interval_of_speech_and_an_endpoint_at_each_short_pause(
    paused_sentence: np.ndarray,
) -> None:
    segmenter = Segmenter(SegmenterOptions(endpointing="speculative"), partial_interval_s=0.5, speculate=True)
    utterances, snapshots = _feed(segmenter, paused_sentence)
    partials = [s for s in snapshots if s.kind == "partial"]
    endpoints = [s for s in snapshots if s.kind == "endpoint"]
    assert len(partials) >= 3
    assert all(s.utterance.utterance_id == 0 for s in snapshots)
    heard = [s.utterance.end_s - s.utterance.start_s for s in partials]
    assert heard == sorted(heard) and all(b - a >= 0.45 for a, b in itertools.pairwise(heard))
    # A candidate 128 ms into each pause and a second look 128 ms later (the 300 ms pause
    # mid-sentence lasts for both); the pause is under the hang-over, so without a close the
    # sentence is one utterance.
    second_half_s = 0.3 + len(_trimmed(speak("i would like to order"))) / RATE + 0.3
    mid, end = [[s for s in endpoints if (s.utterance.end_s > second_half_s) == late] for late in (False, True)]
    assert len(mid) == 2 and len(end) == 2
    assert all(b.windows == a.windows + 4 for a, b in (mid, end))  # 128 ms later: four 32 ms windows more
    assert [u.utterance_id for u in utterances] == [0]


def test_a_close_ends_the_utterance_only_while_its_pause_lasts(paused_sentence: np.ndarray) -> None:
    segmenter = Segmenter(SegmenterOptions(endpointing="speculative"), speculate=True)
    first_pause_end = 0.3 + len(_trimmed(speak("i would like to order"))) / RATE + 0.25
    utterances, snapshots = _feed(segmenter, paused_sentence, until_s=first_pause_end)
    (candidate,) = [s for s in snapshots if s.kind == "endpoint"]  # 250 ms in: before the second look
    assert not utterances
    # Still in the pause: the close takes, and the rest of the sentence is a new utterance.
    assert segmenter.close(candidate)
    assert not segmenter.close(candidate)  # once only
    rest, snapshots = _feed(segmenter, paused_sentence, from_s=first_pause_end)
    assert [u.utterance_id for u in rest] == [1] and {s.utterance.utterance_id for s in snapshots} == {1}
    assert rest[0].start_s > candidate.utterance.end_s - 0.2
    # Speech resumed after the candidate: the close is refused, and the sentence stays one utterance.
    segmenter = Segmenter(SegmenterOptions(endpointing="speculative"), speculate=True)
    utterances, snapshots = _feed(segmenter, paused_sentence, until_s=first_pause_end + 0.4)
    first_look, second_look = [s for s in snapshots if s.kind == "endpoint"]
    assert not segmenter.close(first_look)  # superseded by the second look
    candidate = second_look
    assert not segmenter.close(candidate)
    rest, _ = _feed(segmenter, paused_sentence, from_s=first_pause_end + 0.4)
    assert [u.utterance_id for u in utterances + rest] == [0]
    assert rest[0].start_s == candidate.utterance.start_s


def test_asr_in_pause_hears_the_samples_the_hang_over_ends_the_utterance_with(paused_sentence: np.ndarray) -> None:
    segmenter = Segmenter(SegmenterOptions(asr_in_pause=True), speculate=True)
    utterances, snapshots = _feed(segmenter, paused_sentence)
    looks = [s for s in snapshots if s.kind == "endpoint"]
    assert len(looks) == 2  # one in each pause: the 300 ms breath mid-sentence and the end
    assert [u.utterance_id for u in utterances] == [0]  # a look ends nothing: the breath stays inside
    (ended,) = utterances
    assert ended.endpoint_windows == looks[-1].windows
    assert np.array_equal(looks[-1].utterance.samples, ended.samples)  # so its transcript is the one
    assert looks[0].utterance.end_s < ended.end_s - 1.0
    without = Segmenter(SegmenterOptions(asr_in_pause=False), speculate=True)
    assert not [s for s in _feed(without, paused_sentence)[1] if s.kind == "endpoint"]


class Subscriber:
    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, dict[str, object], int, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dfmq-test-partials")
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, json.loads(m.payload) if m.payload[:1] == b"{" else {}, m.qos, m.retain)
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("dfmq/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 5.0, "the subscriber connected")

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _dfmq_run(tmp_path: Path, clip: Path, *flags: str) -> list[tuple[str, dict[str, object], int, bool]]:
    """`dfmq run` on a clip replayed in real time (partials need speech that is still going on),
    with a real Mosquitto and a subscriber to everything under dfmq/."""
    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port)
    command = [sys.executable, "-m", "stream.cli", "run", "--input", str(clip), "--stream-id", "test"]
    command += ["--broker", f"mqtt://127.0.0.1:{broker.port}", "--engine", "onnxruntime", *flags]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        wait_until(lambda: any(t.endswith("/status") and not m for t, m, _, _ in sub.messages[-1:]), 5.0, "offline")
    finally:
        sub.stop()
        broker.stop()
    return sub.messages


@pytest.mark.broker
def test_partials_on_real_speech_come_at_qos_0_before_the_final_event_without_transcripts(tmp_path: Path) -> None:
    messages = _dfmq_run(tmp_path, DATA / "jfk.mp3", "--partials", "--no-transcripts")
    partials = [(i, m, qos, retain) for i, (t, m, qos, retain) in enumerate(messages) if t == "dfmq/test/partial"]
    finals = {m["utterance_id"]: i for i, (t, m, _, _) in enumerate(messages) if t == "dfmq/test/intent"}
    assert partials, [t for t, *_ in messages]
    assert finals
    for index, partial, qos, retain in partials:
        assert qos == 0 and not retain
        assert partial["partial"] is True and partial["schema"] == "dfmq.partial/1"
        assert partial["stream_id"] == "test" and "text" not in partial
        assert isinstance(partial["recognized"], bool) and 0 <= partial["confidence"] <= 1  # type: ignore[operator]
        assert index < finals[partial["utterance_id"]]  # superseded by its final event, which comes after it
        assert partial["start"] <= partial["heard_until"]  # type: ignore[operator]
    assert [p["seq"] for _, p, _, _ in partials] == list(range(len(partials)))
    assert all("text" not in m for t, m, _, _ in messages if t == "dfmq/test/intent")


@pytest.mark.broker
def test_partials_carry_what_was_heard_so_far_when_transcripts_are_on(tmp_path: Path) -> None:
    messages = _dfmq_run(tmp_path, DATA / "jfk.mp3", "--partials")
    texts = [str(m["text"]).lower() for t, m, _, _ in messages if t == "dfmq/test/partial"]
    assert texts and any("americans" in text or "country" in text for text in texts), texts


def test_partial_snapshots_are_of_real_speech() -> None:
    audio = decode_clip(DATA / "jfk.mp3").audio
    _, snapshots = _feed(Segmenter(SegmenterOptions(), partial_interval_s=1.0), audio)
    assert len(snapshots) >= 5 and all(s.kind == "partial" for s in snapshots)


@pytest.fixture(scope="module")
def two_sentences_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_binary("espeak-ng", "espeak-ng")
    from stream.render import write_clip

    gap = np.zeros(RATE, np.float32)
    first, second = speak("thank you so much for the help"), speak("see you tomorrow at the office")
    path = tmp_path_factory.mktemp("media") / "two.mp4"
    write_clip(path, np.concatenate([gap, _trimmed(first), gap, _trimmed(second), gap]), [], 15)
    return path


@pytest.mark.broker
def test_speculative_endpointing_publishes_finished_sentences_at_the_short_pause(
    tmp_path: Path, two_sentences_clip: Path
) -> None:
    messages = _dfmq_run(tmp_path, two_sentences_clip, "--endpointing", "speculative")
    events = [m for t, m, _, _ in messages if t == "dfmq/test/intent"]
    assert [e["utterance_id"] for e in events] == [0, 1]
    assert "thank" in str(events[0]["text"]).lower() and "tomorrow" in str(events[1]["text"]).lower()
    # Ended at the 160 ms pause, not after the 400 ms hang-over: the VAD's share of the latency
    # is the pause (and the chunk it ends in), not the hang-over.
    waits = [e["latency_ms"]["vad"] for e in events]  # type: ignore[index]
    assert min(waits) < 300, waits


@pytest.mark.broker
def test_silence_endpointing_takes_the_transcript_heard_in_the_pause(tmp_path: Path, two_sentences_clip: Path) -> None:
    config = tmp_path / "asr_in_pause.yaml"
    config.write_text("segmenter:\n  endpointing: silence\n  asr_in_pause: true\n")
    messages = _dfmq_run(tmp_path, two_sentences_clip, "--config", str(config))
    events = [m for t, m, _, _ in messages if t == "dfmq/test/intent"]
    assert [e["utterance_id"] for e in events] == [0, 1]
    assert "thank" in str(events[0]["text"]).lower() and "tomorrow" in str(events[1]["text"]).lower()
    # Whisper heard each sentence in its pause (on a slow machine it may still be at it when the
    # hang-over ends, and only that rest is on the path); the hang-over still ended it (the VAD's
    # wait is the whole hang-over, 12 windows of 32 ms, unlike speculative endpointing's).
    assert all(e["latency_ms"]["asr_in_pause"] > 0 for e in events), events  # type: ignore[index,operator]
    assert all(e["latency_ms"]["vad"] >= 350 for e in events), events  # type: ignore[index,operator]


def _longest_pause_start(audio: np.ndarray, floor: float) -> int:
    """Where the longest stretch of the 10 ms envelope under `floor` begins."""
    quiet = np.concatenate([[False], np.convolve(np.abs(audio), np.ones(160) / 160, "same") < floor, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    return int(starts[np.argmax(ends - starts)])


def test_the_voice_falls_at_a_sentence_end_and_holds_at_a_mid_sentence_pause() -> None:
    """The pitch cue of speculative endpointing (stream/prosody.py), on real speech and espeak-ng:
    JFK's sentence ends on a fall and holds up at its longest pause (after "ask not what your
    country can do for you"); an espeak-ng sentence falls at its end, not before a break inside it."""
    require_binary("espeak-ng", "espeak-ng")
    from stream.prosody import final_pitch_ratio

    threshold = SegmenterOptions().final_pitch_ratio
    jfk = _trimmed(decode_clip(DATA / "jfk.mp3").audio)
    jfk_end, jfk_pause = final_pitch_ratio(jfk, RATE), final_pitch_ratio(jfk[: _longest_pause_start(jfk, 0.01)], RATE)
    assert jfk_end is not None and jfk_pause is not None and jfk_end < threshold < jfk_pause
    whole = _trimmed(speak("hello there, good morning.", voice="en-us+f3"))
    markup = '<speak>hello there, good morning <break time="400ms"/> how are you</speak>'
    paused = _trimmed(speak(markup, voice="en-us+f3", ssml=True))
    end, held = final_pitch_ratio(whole, RATE), final_pitch_ratio(paused[: _longest_pause_start(paused, 0.005)], RATE)
    assert end is not None and held is not None and end < threshold < held
    assert final_pitch_ratio(np.zeros(RATE, np.float32), RATE) is None  # no voice: nothing to tell
    assert final_pitch_ratio(whole[: int(0.05 * RATE)], RATE) is None


def test_an_utterance_ending_where_whisper_is_still_listening_awaits_that_transcript() -> None:
    """The hang-over can end an utterance while Whisper is still transcribing the very same samples
    for a speculative look: `Transcribing` then takes that transcript instead of queueing a second
    call behind it (only the rest of that call is on the utterance's path). Real segmenter, real
    Whisper; the look reads as unfinished, so nothing is decided on it."""
    import asyncio
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    from stream.endpointing import Provisional
    from stream.options import AsrOptions
    from stream.pipeline import PipelineStats
    from stream.stages import AsrBatcher, Transcribing

    require_binary("espeak-ng", "espeak-ng")
    audio = np.concatenate([_trimmed(speak("the meeting has moved to")), np.zeros(RATE, np.float32)])
    segmenter = Segmenter(SegmenterOptions(endpointing="speculative"), speculate=True)
    _, snapshots = _feed(segmenter, audio)
    look = next(s for s in snapshots if s.kind == "endpoint")
    # The utterance the hang-over would cut there: the look's samples, ending where it was taken.
    ended = dataclasses.replace(look.utterance, endpoint_windows=look.windows)

    async def scenario() -> tuple[str, float, float, int]:
        with ThreadPoolExecutor(1) as executor:
            transcribing = Transcribing(AsrBatcher(AsrOptions(), executor))
            stats = PipelineStats()
            not_reached: Any = None  # no scoring nor deciding: the look reads as unfinished
            provisional = Provisional(
                segmenter, transcribing, not_reached, not_reached, lambda message: None, stats, asyncio.Event()
            )
            transcribing.heard_before = provisional.heard_before
            listening = asyncio.ensure_future(provisional._endpoint(look))
            await asyncio.sleep(0)  # the look has asked Whisper; the hang-over ends the utterance now
            transcript = await transcribing.process(ended)
            await listening
            return transcript.text, transcript.asr_ms, transcript.asr_in_pause_ms, provisional.endpoints_closed

    text, asr_ms, in_pause_ms, closed = asyncio.run(scenario())
    assert "meeting" in text.lower() and closed == 0
    assert asr_ms > 0 and in_pause_ms >= 0  # ended at once: Whisper's call was still to finish
