"""Unusable media files are named with their problem before anything loads; other sample rates are resampled.

Broker-free and fast: small real files made here with PyAV and FFmpeg, decoded by the code under test.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from stream.broker import free_port
from stream.cli import main
from stream.media import SAMPLE_RATE_HZ, MediaError, decode_clip, open_media
from stream.messages import AudioChunk, VideoFrame
from stream.render import write_clip
from stream.sources import FileSource, Lockstep, SourceOptions
from tests.conftest import require_binary

FPS = 15


def _frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(count)]


def _tone(seconds: float, rate_hz: int, freq_hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (0.3 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small file of each kind: good, video only, audio only at 44.1 kHz stereo, and broken ones."""
    folder = tmp_path_factory.mktemp("media")
    files = {name: folder / name for name in ("both.mp4", "video_only.mp4", "empty.mp4", "random.mp4")}
    write_clip(files["both.mp4"], _tone(2.0, SAMPLE_RATE_HZ), _frames(2 * FPS), FPS)
    write_clip(files["video_only.mp4"], np.zeros(0, dtype=np.float32), _frames(FPS), FPS)
    files["empty.mp4"].write_bytes(b"")
    files["random.mp4"].write_bytes(np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    whole = files["both.mp4"].read_bytes()
    files["truncated.mp4"] = folder / "truncated.mp4"  # PyAV writes the index at the end: it is cut off
    files["truncated.mp4"].write_bytes(whole[: len(whole) // 2])
    files["audio44k_stereo.wav"] = folder / "audio44k_stereo.wav"
    _write_wav(files["audio44k_stereo.wav"], _tone(2.0, 44_100), rate_hz=44_100, channels=2)
    return files


def _write_wav(path: Path, samples: np.ndarray, rate_hz: int, channels: int) -> None:
    import av

    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate_hz)
        stream.layout = layout
        interleaved = np.repeat(pcm, channels).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout=layout)
        frame.sample_rate = rate_hz
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _faststart_truncated(source: Path, out: Path) -> Path:
    """An MP4 with its index first (as cameras and `-movflags +faststart` write), cut in half."""
    ffmpeg = require_binary("ffmpeg", "ffmpeg")
    whole = out.with_name("faststart.mp4")
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-y", "-i", str(source), "-c", "copy", "-movflags", "+faststart", str(whole)],
        check=True,
        timeout=30,
    )
    data = whole.read_bytes()
    assert data[4:8] == b"ftyp" and b"moov" in data[: len(data) // 4], "ffmpeg did not move the index first"
    out.write_bytes(data[: len(data) // 2])
    return out


def _drain(source: FileSource) -> list[AudioChunk | VideoFrame]:
    items: list[AudioChunk | VideoFrame] = []
    done = threading.Event()

    def sink(item: AudioChunk | VideoFrame | None) -> None:
        if item is None:
            done.set()
        else:
            items.append(item)

    source.start(sink)
    assert done.wait(10), "the source did not end"
    return items


@pytest.mark.parametrize(
    ("audio", "video", "hint"),
    [
        (True, True, "use --audio FILE --video FILE to combine separate files"),  # --input
        (True, False, "expected a file with an audio stream for --audio"),  # --audio FILE
    ],
)
def test_a_file_without_sound_is_refused_where_sound_is_needed(
    media: dict[str, Path], audio: bool, video: bool, hint: str
) -> None:
    with pytest.raises(MediaError, match=r"video_only\.mp4': no audio track \(the file holds 1 video track") as info:
        FileSource(str(media["video_only.mp4"]), SourceOptions(), audio=audio, video=video)
    assert hint in str(info.value)
    # For the picture alone, the same file is fine.
    assert FileSource(str(media["video_only.mp4"]), SourceOptions(), audio=False, video=True).has_video


def test_a_file_without_picture_is_refused_for_video_and_fine_for_input(media: dict[str, Path]) -> None:
    wav = str(media["audio44k_stereo.wav"])
    with pytest.raises(MediaError, match=r"no video track \(the file holds 1 audio track;.*--video none"):
        FileSource(wav, SourceOptions(), audio=False, video=True)
    source = FileSource(wav, SourceOptions(), audio=True, video=True)  # --input: video is optional
    assert source.has_audio and not source.has_video
    source.media.container.close()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("empty.mp4", r"empty file \(0 bytes\)"),
        ("random.mp4", r"not a readable media file \(Invalid data found when processing input\)"),
        ("truncated.mp4", r"truncated: the file ends at byte \d+, inside its 'mdat' box that needs \d+ bytes"),
        ("absent.mp4", "no such file"),
    ],
)
def test_broken_files_are_named_with_their_problem(media: dict[str, Path], name: str, problem: str) -> None:
    path = media["both.mp4"].with_name(name)
    with pytest.raises(MediaError, match=rf"{name}': {problem}"):
        open_media(str(path))


def test_a_truncated_file_with_its_index_first_is_refused_not_half_played(media: dict[str, Path]) -> None:
    """FFmpeg opens such a file and quietly decodes the half that is there."""
    cut = _faststart_truncated(media["both.mp4"], media["both.mp4"].with_name("cut_faststart.mp4"))
    with pytest.raises(MediaError, match=r"cut_faststart\.mp4': truncated: .*'mdat' box.*interrupted recording"):
        open_media(str(cut))


def test_a_folder_is_not_a_media_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="a folder, not a media file"):
        open_media(str(tmp_path))


def test_an_audio_track_with_nothing_in_it_fails_the_source(tmp_path: Path) -> None:
    import av

    path = tmp_path / "mute_track.mkv"
    with av.open(str(path), "w") as container:
        v_stream = container.add_stream("mpeg4", rate=FPS)
        v_stream.width, v_stream.height, v_stream.pix_fmt = 64, 48, "yuv420p"
        a_stream = container.add_stream("aac", rate=SAMPLE_RATE_HZ)
        a_stream.layout = "mono"
        for image in _frames(5):
            for packet in v_stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for stream in (v_stream, a_stream):
            for packet in stream.encode(None):
                container.mux(packet)
    source = FileSource(str(path), SourceOptions(pace="fast"))
    assert source.has_audio
    _drain(source)
    assert isinstance(source.error, MediaError)
    assert "its audio track holds no samples" in str(source.error)


def test_44k1_stereo_audio_is_resampled_to_16k_mono(media: dict[str, Path]) -> None:
    clip = decode_clip(media["audio44k_stereo.wav"], with_video=False)
    assert clip.sample_rate_hz == SAMPLE_RATE_HZ
    assert abs(len(clip.audio) - 2 * SAMPLE_RATE_HZ) <= 0.01 * SAMPLE_RATE_HZ
    spectrum = np.abs(np.fft.rfft(clip.audio))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE_HZ / len(clip.audio)
    assert abs(peak_hz - 440.0) < 2.0  # the pitch survives: resampled, not relabelled
    chunks = _drain(FileSource(str(media["audio44k_stereo.wav"]), SourceOptions(pace="fast")))
    assert all(isinstance(c, AudioChunk) and c.sample_rate_hz == SAMPLE_RATE_HZ for c in chunks)
    assert sum(len(c.samples) for c in chunks if isinstance(c, AudioChunk)) == len(clip.audio)


def test_a_good_file_still_plays_through(media: dict[str, Path]) -> None:
    source = FileSource(str(media["both.mp4"]), SourceOptions(pace="fast"))
    items = _drain(source)
    assert source.error is None
    assert any(isinstance(i, VideoFrame) for i in items)
    audio_s = sum(len(i.samples) for i in items if isinstance(i, AudioChunk)) / SAMPLE_RATE_HZ
    assert 1.9 < audio_s < 2.2


def test_separate_audio_and_video_files_read_fast_keep_together() -> None:
    """`--audio FILE --video FILE --pace fast`: each file on its own thread, read as fast as it
    decodes. In lockstep the audio never runs more than Lockstep.LEAD_S ahead of the frames (as one
    file's interleaved tracks do), so an utterance's frames are in before its end is heard; without
    it the quicker audio was through before the frames (2.3 s ahead on this clip: the check fails)."""
    face = str(Path(__file__).parent / "data" / "faces" / "bbaf2n.mpg")  # real GRID speaker, 3 s
    lockstep = Lockstep()
    audio = FileSource(face, SourceOptions(pace="fast"), video=False, lockstep=lockstep)
    video = FileSource(face, SourceOptions(pace="fast"), audio=False, lockstep=lockstep)
    arrived: list[AudioChunk | VideoFrame] = []
    ends = threading.Semaphore(0)
    lock = threading.Lock()

    def sink(item: AudioChunk | VideoFrame | None) -> None:
        if item is None:
            ends.release()
            return
        with lock:
            arrived.append(item)

    audio.start(sink)
    video.start(sink)
    assert ends.acquire(timeout=20) and ends.acquire(timeout=20), "the sources did not end"
    frames_at = [i.pts_s for i in arrived if isinstance(i, VideoFrame)]
    assert frames_at and frames_at[-1] > 2.5
    lead = 0.0  # how far the audio was ahead of the newest frame when each chunk arrived
    newest_frame_s = 0.0
    for item in arrived:
        if isinstance(item, VideoFrame):
            newest_frame_s = item.pts_s
        elif newest_frame_s < frames_at[-1]:
            lead = max(lead, item.start_s + len(item.samples) / SAMPLE_RATE_HZ - newest_frame_s)
    assert lead <= Lockstep.LEAD_S + 0.1


def test_lockstep_never_stalls_on_steps_longer_than_its_lead() -> None:
    """A 2 fps video beside audio: steps longer than LEAD_S; the file furthest behind always goes on."""
    lockstep, stop = Lockstep(), threading.Event()

    def walk(member: int, step_s: float) -> None:
        at_s = 0.0
        while at_s < 5.0:
            at_s += step_s
            lockstep.advance(member, at_s, stop)
        lockstep.leave(member)

    walkers = [threading.Thread(target=walk, args=(lockstep.join(), step), daemon=True) for step in (0.5, 0.7)]
    for walker in walkers:
        walker.start()
    for walker in walkers:
        walker.join(timeout=10)
    stop.set()  # frees a stalled walker, so that a failure ends the test instead of hanging it
    assert not any(walker.is_alive() for walker in walkers)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--input", "{video_only.mp4}"], "no audio track"),
        (["--audio", "{video_only.mp4}", "--video", "none"], "no audio track"),
        (["--audio", "none", "--video", "{audio44k_stereo.wav}"], "no video track"),
        (["--input", "{random.mp4}"], "not a readable media file"),
        (["--input", "{truncated.mp4}"], "truncated"),
    ],
)
def test_dfmq_run_prints_one_line_and_exits_2(
    media: dict[str, Path], flags: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--pace", "fast", "--embedded-port", str(free_port())]
    argv += [media[f[1:-1]].as_posix() if f.startswith("{") else f for f in flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dfmq run: error: cannot read media") and needle in last, err
    assert "Traceback" not in err


def test_stray_bytes_after_a_complete_mp4_are_not_called_truncation(media: dict[str, Path], tmp_path: Path) -> None:
    padded = tmp_path / "padded.mp4"
    padded.write_bytes(media["both.mp4"].read_bytes() + b"\0\0\0")
    open_media(str(padded)).container.close()
