"""The streaming Silero segmenter on real espeak-ng speech, fed in capture-sized chunks."""

from __future__ import annotations

import numpy as np
import pytest

from stream.messages import AudioChunk, Utterance
from stream.options import SegmenterOptions
from stream.render import speak
from stream.vad import Segmenter
from tests.conftest import require_binary

RATE = 16000
CAPTURED_AT = 1_000.0  # unix time of stream second 0


def segment(audio: np.ndarray, chunk_ms: float, options: SegmenterOptions | None = None) -> list[Utterance]:
    segmenter = Segmenter(options or SegmenterOptions())
    size = int(RATE * chunk_ms / 1000)
    out: list[Utterance] = []
    for start in range(0, len(audio), size):
        samples = audio[start : start + size]
        # wall_s: when the chunk's last sample was captured.
        chunk = AudioChunk(samples, start / RATE, RATE, CAPTURED_AT + (start + len(samples)) / RATE)
        out += segmenter.process(chunk)
    return out + segmenter.flush()


def speech_spans(parts: list[np.ndarray | float]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Audio of speech arrays and pauses (seconds), and the (start, end) of each speech part."""
    audio, spans, t = [], [], 0.0
    for part in parts:
        if isinstance(part, float):
            audio.append(np.zeros(int(part * RATE), np.float32))
            t += part
            continue
        loud = np.flatnonzero(np.abs(part) > 0.02)
        spans.append((t + loud[0] / RATE, t + loud[-1] / RATE))
        audio.append(part)
        t += len(part) / RATE
    return np.concatenate(audio), spans


@pytest.fixture(scope="module")
def two_sentences() -> tuple[np.ndarray, list[tuple[float, float]]]:
    require_binary("espeak-ng", "espeak-ng")
    return speech_spans([0.8, speak("thank you so much for the help"), 1.0, speak("see you tomorrow, bye"), 1.0])


@pytest.mark.parametrize("chunk_ms", [20.0, 100.0])
def test_one_utterance_per_sentence_with_the_capture_time_of_its_end(
    two_sentences: tuple[np.ndarray, list[tuple[float, float]]], chunk_ms: float
) -> None:
    audio, spans = two_sentences
    utterances = segment(audio, chunk_ms)
    assert len(utterances) == 2
    for utterance, (start_s, end_s) in zip(utterances, spans, strict=True):
        assert start_s - 0.25 < utterance.start_s <= start_s  # the 150 ms pad, one 32 ms window
        assert end_s <= utterance.end_s < end_s + 0.25
        # When the last speech sample was captured, whatever the chunk size.
        assert abs(utterance.speech_end_wall - (CAPTURED_AT + end_s)) < 0.08
        assert not utterance.forced_split


def test_a_file_read_faster_than_real_time_gives_speech_ends_in_read_order(
    two_sentences: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    """`--pace fast`: chunks of 100 ms read every 5 ms. A speech end's unix time lies within the
    reading of its chunk, so later ends are never earlier (wall less stream time went back 0.4 s)."""
    audio, spans = two_sentences
    segmenter, size = Segmenter(SegmenterOptions()), RATE // 10
    utterances: list[Utterance] = []
    read_at: list[tuple[float, float]] = []  # (chunk end on the stream clock, when it was read)
    for i, start in enumerate(range(0, len(audio), size)):
        samples = audio[start : start + size]
        chunk = AudioChunk(samples, start / RATE, RATE, CAPTURED_AT + 0.005 * (i + 1))
        read_at.append((chunk.end_s, chunk.wall_s))
        utterances += segmenter.process(chunk)
    assert len(utterances) == 2
    walls = [u.speech_end_wall for u in utterances]
    assert walls == sorted(walls)
    for utterance, (_, end_s) in zip(utterances, spans, strict=True):
        chunk = next(i for i, (chunk_end_s, _) in enumerate(read_at) if chunk_end_s >= end_s)
        assert read_at[chunk - 1][1] <= utterance.speech_end_wall <= read_at[chunk][1]


def test_long_speech_is_split_at_the_maximum_length() -> None:
    require_binary("espeak-ng", "espeak-ng")
    words = "we keep on talking and talking and never stop for a pause " * 3
    audio, spans = speech_spans([0.5, speak(words, words_per_min=200), 1.0])
    assert spans[0][1] - spans[0][0] > 6.0
    exact = segment(audio, 100.0, SegmenterOptions(max_utterance_s=5.0, split_search_s=0.0))
    assert len(exact) >= 2
    assert exact[0].forced_split and exact[0].end_s - exact[0].start_s == pytest.approx(5.0, abs=0.04)
    assert exact[1].start_s == pytest.approx(exact[0].end_s, abs=1e-6)  # nothing lost between
    quiet = segment(audio, 100.0, SegmenterOptions(max_utterance_s=5.0, split_search_s=2.0))
    first = quiet[0]
    assert first.forced_split and 3.0 - 0.04 <= first.end_s - first.start_s <= 5.0 + 0.04
    assert quiet[1].start_s == pytest.approx(first.end_s, abs=1e-6)
    joined = np.concatenate([u.samples for u in quiet[:2]])
    start = round(first.start_s * RATE)
    assert np.array_equal(joined, audio[start : start + len(joined)])  # the cut moves, no sample is lost
    # The cut is the quietest 32 ms window of the search span.
    cut = round(first.end_s * RATE)
    rms = [float(np.sqrt(np.mean(np.square(audio[i - 512 : i])))) for i in range(cut - 32 * 512, cut + 1, 512)]
    assert rms[-1] <= np.percentile(rms, 10)


def test_a_click_is_not_an_utterance() -> None:
    click = np.zeros(3 * RATE, np.float32)
    click[RATE : RATE + 800] = np.random.default_rng(0).uniform(-0.8, 0.8, 800)  # 50 ms burst
    assert segment(click, 20.0) == []
