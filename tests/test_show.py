"""`dfmq run --show`: the canvas alone, the sink's redraw schedule, a real window on Xvfb read back
from the X server's framebuffer, and the command itself drawing a real clip's run there."""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import stream.show as show
from model.errors import BackendUnavailableError
from stream.messages import IntentEvent, QualityReport, VideoFrame
from stream.render import FaceStyle, render_face
from stream.show import (
    BAR_LENGTH_PX,
    BAR_TRACK_BGR,
    CANVAS_HEIGHT_PX,
    CANVAS_WIDTH_PX,
    FACE_BOX_BGR,
    QUALITY_BAR_BGR,
    VIDEO_HEIGHT_PX,
    WEIGHT_BAR_BGR,
    WINDOW_TITLE,
    ViewerSink,
    render_canvas,
)
from tests.conftest import require_binary, until

# Distinct values, so that rows swapped or mixed up show.
QUALITY = {"text": 0.6, "audio": 0.8, "video": 0.4}
WEIGHTS = {"audio": 0.3, "video": 0.7}
FACE_BOX = (60, 40, 120, 160)  # x, y, w, h in the 240 px frame
FRAME_PX = 240


def _frame(t_s: float = 0.0) -> np.ndarray:
    return render_face(t_s, 0.5, FaceStyle(smile=0.5), size_px=FRAME_PX)


def _quality(audio: float = QUALITY["audio"], video: float = QUALITY["video"]) -> QualityReport:
    return QualityReport("cam", 1.0, time.time(), audio, video, True, True, FACE_BOX)


def _intent(quality: dict[str, float] | None = None) -> IntentEvent:
    return IntentEvent(
        stream_id="cam",
        utterance_id=1,
        start=0.0,
        end=1.5,
        speech_end_wall=0.0,
        published_wall=0.0,
        text="thank you so much",
        recognized=True,
        reason=None,
        intent="Thank",
        confidence=0.87,
        transcript_confidence=0.9,
        scope=0.97,
        top_k=[],
        quality=quality or dict(QUALITY),
        weights=dict(WEIGHTS),
        engine="dfmq",
        latency_ms={},
    )


def _bars(image: np.ndarray) -> list[tuple[float, int, tuple[int, int, int] | None]]:
    """The bars top to bottom, found by colour alone: (filled fraction, track length px, fill colour)."""
    colours = [BAR_TRACK_BGR, QUALITY_BAR_BGR, WEIGHT_BAR_BGR]
    masks = [np.all(image == np.array(c, dtype=np.uint8), axis=2) for c in colours]
    any_bar = masks[0] | masks[1] | masks[2]
    runs = []  # per image row: (length, start) of its longest run of bar pixels
    for row in any_bar:
        padded = np.concatenate([[0], row.astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(padded))
        starts, ends = edges[::2], edges[1::2]
        if len(starts) == 0:
            runs.append((0, 0))
            continue
        best = int(np.argmax(ends - starts))
        runs.append((int(ends[best] - starts[best]), int(starts[best])))
    bar_rows = [y for y, (length, _) in enumerate(runs) if length >= 100]
    groups: list[list[int]] = []
    for y in bar_rows:
        if groups and y == groups[-1][-1] + 1:
            groups[-1].append(y)
        else:
            groups.append([y])
    found = []
    for group in groups:
        y = group[len(group) // 2]
        length, start = runs[y]
        span = slice(start, start + length)
        filled = [int(mask[y, span].sum()) for mask in masks[1:]]
        colour = None if max(filled) == 0 else colours[1 + int(np.argmax(filled))]
        found.append((max(filled) / length, length, colour))
    return found


def _check_bars(image: np.ndarray) -> None:
    bars = _bars(image)
    assert len(bars) == 5, bars
    fractions = [fraction for fraction, _, _ in bars]
    expected = [QUALITY["text"], QUALITY["audio"], QUALITY["video"], WEIGHTS["audio"], WEIGHTS["video"]]
    assert fractions == pytest.approx(expected, abs=0.01)
    assert {length for _, length, _ in bars} == {BAR_LENGTH_PX}
    assert [colour for _, _, colour in bars] == [QUALITY_BAR_BGR] * 3 + [WEIGHT_BAR_BGR] * 2
    # q audio 0.8 against q video 0.4: twice as long
    assert fractions[1] / fractions[2] == pytest.approx(2.0, rel=0.03)


def _check_video(image: np.ndarray, frame: np.ndarray) -> None:
    """The frame, letterboxed (240 -> 480 px, centred), with the face box on it."""
    video = image[:VIDEO_HEIGHT_PX]
    x0 = (CANVAS_WIDTH_PX - 2 * FRAME_PX) // 2
    assert not video[:, :x0].any() and not video[:, x0 + 2 * FRAME_PX :].any()  # black side bars
    expected = cv2.resize(frame, (2 * FRAME_PX, 2 * FRAME_PX), interpolation=cv2.INTER_LINEAR).astype(int)
    shown = video[:, x0 : x0 + 2 * FRAME_PX].astype(int)
    x, y, w, h = (2 * v for v in FACE_BOX)
    off_box = np.ones(shown.shape[:2], dtype=bool)
    off_box[y - 3 : y + h + 4, x - 3 : x + w + 4] = False
    off_box[y + 4 : y + h - 3, x + 4 : x + w - 3] = True
    assert np.abs(shown - expected)[off_box].mean() < 2.0
    # the face box: its four sides in the box colour
    box = np.all(shown == np.array(FACE_BOX_BGR), axis=2)
    for side in (box[y, x : x + w], box[y + h, x : x + w], box[y : y + h, x], box[y : y + h, x + w]):
        assert side.mean() > 0.95


def test_render_canvas_draws_video_box_bars_and_intent() -> None:
    frame = _frame()
    canvas = render_canvas(
        frame, face_box_px=FACE_BOX, quality=QUALITY, weights=WEIGHTS, intent="Thank", confidence=0.87
    )
    assert canvas.shape == (CANVAS_HEIGHT_PX, CANVAS_WIDTH_PX, 3) and canvas.dtype == np.uint8
    _check_video(canvas, frame)
    _check_bars(canvas)
    no_intent = render_canvas(frame, face_box_px=FACE_BOX, quality=QUALITY, weights=WEIGHTS)
    changed = np.any(canvas != no_intent, axis=2)
    assert changed[:VIDEO_HEIGHT_PX].sum() == 0
    right = show.BAR_X_PX + BAR_LENGTH_PX + 60 - 3  # where the intent is written (antialiased)
    assert changed[VIDEO_HEIGHT_PX:, right:].sum() > 200  # the intent and its confidence
    assert changed[VIDEO_HEIGHT_PX:, :right].sum() == 0


def test_render_canvas_without_video_or_values() -> None:
    canvas = render_canvas(None, quality={"audio": 0.5, "video": math.nan}, weights=None)
    video = canvas[:VIDEO_HEIGHT_PX]
    assert (video.max(axis=2) == 0).mean() > 0.99  # black, but for a "no video" note
    bars = _bars(canvas)
    assert [fraction for fraction, _, _ in bars] == pytest.approx([0.0, 0.5, 0.0, 0.0, 0.0], abs=0.01)
    tall = render_canvas(np.full((480, 120, 3), 200, np.uint8), quality={"audio": 2.0})  # clipped to 1
    assert _bars(tall)[1][0] == 1.0
    assert tall[:VIDEO_HEIGHT_PX, 260:380].min() == 200 and not tall[:VIDEO_HEIGHT_PX, :259].any()


class FakeWindow:
    def __init__(self, threaded: bool) -> None:
        self.threaded = threaded
        self.shown: list[np.ndarray] = []
        self.open = True
        self.closed = False

    def show(self, canvas: np.ndarray) -> None:
        self.shown.append(canvas)

    def poll(self) -> bool:
        return self.open

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_window(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> FakeWindow:
    window = FakeWindow(threaded=request.param)
    monkeypatch.setattr(show, "open_window", lambda *args: window)
    return window


@pytest.mark.parametrize("fake_window", [True, False], ids=["threaded", "on-loop"], indirect=True)
def test_redraws_are_bounded_and_end_on_the_newest_state(fake_window: FakeWindow) -> None:
    async def scenario() -> None:
        sink = ViewerSink(max_fps=15)
        await sink.start()
        await until(lambda: sink.draws == 1, 10.0, "the first picture")
        began = time.monotonic()
        frames = [_frame(i / 15) for i in range(45)]
        for i, image in enumerate(frames):  # 3 s of video in ~0.2 s
            sink.handle(VideoFrame(image, i / 15))
            await asyncio.sleep(0.005)
        sink.handle(_quality())
        sink.handle(_intent())
        last = render_canvas(
            frames[-1], face_box_px=FACE_BOX, quality=QUALITY, weights=WEIGHTS, intent="Thank", confidence=0.87,
            transcript="thank you so much",
        )  # fmt: skip
        await until(lambda: bool(fake_window.shown) and np.array_equal(fake_window.shown[-1], last), 10.0, "the newest")
        elapsed_s = time.monotonic() - began
        assert 2 <= sink.draws - 1 <= elapsed_s * 15 + 2  # throttled, yet more than one redraw
        await sink.close()
        assert fake_window.closed and not sink.is_open
        sink.handle(VideoFrame(frames[0], 9.0))  # after close: kept, not drawn, no error
        assert np.array_equal(fake_window.shown[-1], last)

    asyncio.run(scenario())


@pytest.mark.parametrize("fake_window", [True, False], ids=["threaded", "on-loop"], indirect=True)
def test_audio_only_redraws_on_quality_and_intent(fake_window: FakeWindow) -> None:
    async def scenario() -> None:
        sink = ViewerSink(max_fps=15)
        await sink.start()
        await until(lambda: sink.draws == 1, 10.0, "the first picture")
        sink.handle(QualityReport("mic", 1.0, time.time(), 0.8, 0.0, False, True, None))
        await until(lambda: sink.draws == 2, 10.0, "a redraw on the quality report")
        sink.handle(_intent({"text": 0.6, "audio": 0.8, "video": 0.0}))
        await until(lambda: sink.draws == 3, 10.0, "a redraw on the intent")
        shown = fake_window.shown[-1]
        assert (shown[:VIDEO_HEIGHT_PX].max(axis=2) == 0).mean() > 0.99
        fractions = [fraction for fraction, _, _ in _bars(shown)]
        assert fractions == pytest.approx([0.6, 0.8, 0.0, 0.3, 0.7], abs=0.01)
        await sink.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("fake_window", [True, False], ids=["threaded", "on-loop"], indirect=True)
def test_a_window_the_user_closes_stays_closed(fake_window: FakeWindow) -> None:
    async def scenario() -> None:
        sink = ViewerSink()
        await sink.start()
        fake_window.open = False
        await until(lambda: not sink.is_open, 10.0, "the sink to notice")
        assert fake_window.closed
        drawn = sink.draws
        sink.handle(_quality())
        await asyncio.sleep(0)
        assert sink.draws == drawn
        await sink.close()

    asyncio.run(scenario())


def test_start_without_a_display_names_the_remedy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(BackendUnavailableError, match="DISPLAY is not set"):
        asyncio.run(ViewerSink(backend="x11").start())
    if not show.opencv_has_gui():  # opencv-python-headless, as the project installs
        with pytest.raises(BackendUnavailableError, match="ssh -X"):
            asyncio.run(ViewerSink().start())
    free = next(n for n in range(5000, 6000) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    monkeypatch.setenv("DISPLAY", f"unix/:{free}")  # a display no server answers (no fallback to TCP)
    with pytest.raises(BackendUnavailableError, match="cannot open the X display"):
        asyncio.run(ViewerSink().start())


# A real window on Xvfb.


@pytest.fixture
def xvfb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A private Xvfb on a free display number (it picks one and says which); DISPLAY set to it."""
    exe = require_binary("Xvfb", "xvfb")
    read_fd, write_fd = os.pipe()
    log_path = tmp_path / "xvfb.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [exe, "-displayfd", str(write_fd), "-screen", "0", "800x700x24", "-nolisten", "tcp", "-noreset"],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    os.close(write_fd)
    try:
        answer = b""
        deadline = time.monotonic() + 20
        while not answer.endswith(b"\n"):
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read_fd, 16) if ready else b""
            if not chunk:
                pytest.fail(f"Xvfb did not start: {log_path.read_text(errors='replace')[-500:]}")
            answer += chunk
        display = f":{int(answer)}"
        monkeypatch.setenv("DISPLAY", display)
        yield display
    finally:
        os.close(read_fd)
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class Screen:
    """The test's own connection to the X server: finds the window and reads the framebuffer."""

    def __init__(self, name: str) -> None:
        from Xlib import X, display

        self.X = X
        self.display = display.Display(name)
        self.root = self.display.screen().root
        assert self.display.display.info.image_byte_order == X.LSBFirst  # B, G, R, pad

    def window(self, title: str) -> Any:
        for child in self.root.query_tree().children:
            if child.get_wm_name() == title and child.get_attributes().map_state == self.X.IsViewable:
                return child
        return None

    def grab(self) -> np.ndarray:
        geometry = self.root.get_geometry()
        image = self.root.get_image(0, 0, geometry.width, geometry.height, self.X.ZPixmap, 0xFFFFFFFF)
        return np.frombuffer(image.data, np.uint8).reshape(geometry.height, geometry.width, 4)[:, :, :3].copy()

    def grab_window(self, window: Any) -> np.ndarray:
        origin = self.root.translate_coords(window, 0, 0)
        x, y = origin.x, origin.y
        return self.grab()[y : y + CANVAS_HEIGHT_PX, x : x + CANVAS_WIDTH_PX]

    def ask_to_close(self, window: Any) -> None:
        """What a window manager sends when the user clicks the close button."""
        from Xlib.protocol import event

        protocols = self.display.intern_atom("WM_PROTOCOLS")
        delete = self.display.intern_atom("WM_DELETE_WINDOW")
        message = event.ClientMessage(
            window=window, client_type=protocols, data=(32, [delete, self.X.CurrentTime, 0, 0, 0])
        )
        window.send_event(message, event_mask=0)
        self.display.flush()


async def _open_window(xvfb: str, title: str) -> tuple[Screen, ViewerSink]:
    """A started sink whose window the X server has mapped, and the screen to look at it."""
    screen = Screen(xvfb)
    sink = ViewerSink(title=title)
    await sink.start()
    await until(lambda: screen.window(title) is not None, 10.0, "the window to be mapped")
    return screen, sink


def test_window_on_xvfb_shows_video_box_bars_and_intent(xvfb: str, tmp_path: Path) -> None:
    title = "dfmq test window"

    async def scenario() -> None:
        screen, sink = await _open_window(xvfb, title)
        window = screen.window(title)
        frames = [_frame(i / 15) for i in range(10)]
        for i, image in enumerate(frames):
            sink.handle(VideoFrame(image, i / 15))
            await asyncio.sleep(0.01)
        sink.handle(_quality())
        sink.handle(_intent())
        expected = sink.canvas()
        await until(lambda: np.array_equal(screen.grab_window(window), expected), 10.0, "the newest picture on screen")
        shot = screen.grab()
        cv2.imwrite(str(tmp_path / "show.png"), shot)
        on_screen = screen.grab_window(window)
        # from the screen's pixels alone: the video with the face box, and the bars
        _check_video(on_screen, frames[-1])
        _check_bars(on_screen)
        assert not shot[CANVAS_HEIGHT_PX + 10 :].any()  # the rest of the screen stays black

        screen.ask_to_close(window)
        await until(lambda: not sink.is_open, 10.0, "the sink to see the window closed")
        await until(lambda: screen.window(title) is None, 10.0, "the window to go")
        sink.handle(_quality(audio=0.1))  # the run goes on without a window
        await sink.close()
        screen.display.close()

    asyncio.run(scenario())


def test_close_removes_the_window(xvfb: str) -> None:
    title = "dfmq test close"

    async def scenario() -> None:
        screen, sink = await _open_window(xvfb, title)
        await sink.close()
        assert not sink.is_open
        await until(lambda: screen.window(title) is None, 10.0, "the window to go")
        screen.display.close()

    asyncio.run(scenario())


def test_a_lost_display_connection_leaves_the_run_going(xvfb: str, caplog: pytest.LogCaptureFixture) -> None:
    title = "dfmq test kill"

    async def scenario() -> None:
        screen, sink = await _open_window(xvfb, title)
        window = screen.window(title)
        window.kill_client()  # as xkill does
        screen.display.flush()
        await until(lambda: not sink.is_open, 10.0, "the sink to see its connection gone")
        sink.handle(_quality())
        await sink.close()
        screen.display.close()

    asyncio.run(scenario())
    assert "window lost" in caplog.text


# `dfmq run --show` itself: the command in a subprocess on Xvfb, a real clip, the embedded broker.

SHOW_SENTENCES = ("thank you so much for the help", "hello there, good morning")
INTENT_LEFT_PX = show.BAR_X_PX + BAR_LENGTH_PX + 60 - 3  # the intent column (antialiased edge)


@pytest.fixture(scope="module")
def talking_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """Two spoken sentences (espeak-ng) and a drawn talking face, clean: about 7 s at 15 fps."""
    require_binary("espeak-ng", "espeak-ng")
    from stream.render import render_scene, write_clip

    audio, frames, _, _ = render_scene(SHOW_SENTENCES, snr_db=40.0, dark_gain=1.0, fps=15, seed=1)
    path = tmp_path_factory.mktemp("media") / "talking.mp4"
    write_clip(path, audio, frames, 15)
    return path, frames


class IntentListener:
    """paho-mqtt on dfmq/+/intent of the run's embedded broker, connecting once it listens."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.port = port
        self.events: list[dict[str, Any]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dfmq-test-show")
        self.client.on_message = lambda c, u, m: self.events.append(json.loads(m.payload))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("dfmq/+/intent", 1)
        self.connected = False

    def try_connect(self) -> bool:
        if not self.connected:
            try:
                self.client.connect("127.0.0.1", self.port)
            except OSError:  # the broker does not listen yet
                return False
            self.client.loop_start()
            self.connected = True
        return self.client.is_connected()

    def stop(self) -> None:
        if self.connected:
            self.client.loop_stop()
            self.client.disconnect()


def _closest_frame_error(video: np.ndarray, frames: list[np.ndarray]) -> float:
    """Median absolute difference between the video area and the nearest clip frame, letterboxed."""
    scale, x0, y0 = show.video_placement(frames[0].shape)
    h, w = round(frames[0].shape[0] * scale), round(frames[0].shape[1] * scale)
    shown = video[y0 : y0 + h, x0 : x0 + w].astype(np.int16)
    return min(
        float(np.median(np.abs(shown - cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.int16))))
        for f in frames
    )


def test_dfmq_run_show_draws_the_run_in_its_window(
    xvfb: str, talking_clip: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    """The real command: its window shows the clip's video, the running quality bars, then the
    first intent event's weights, text quality and name, as the event published on MQTT says."""
    from Xlib import error as xerror

    from stream.broker import free_port

    clip, frames = talking_clip
    port = free_port()
    command = [
        sys.executable, "-m", "stream.cli", "run", "--show", "--input", str(clip), "--pace", "realtime",
        "--broker", "embedded", "--embedded-port", str(port), "--stream-id", "show", "--engine", "onnxruntime",
        "--ckpt", "default",
    ]  # fmt: skip
    log_path = tmp_path / "run.log"
    screen = Screen(xvfb)
    listener = IntentListener(port)
    began = time.monotonic()
    with log_path.open("wb") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "DISPLAY": xvfb})
    try:
        seen_video: float | None = None  # when the window first showed a frame of the clip
        shot: np.ndarray | None = None  # the screen once the intent is drawn
        window_image = np.zeros(0)
        deadline = time.monotonic() + 60
        while shot is None:
            if run.poll() is not None or time.monotonic() > deadline:
                state = "exited" if run.returncode is not None else "timed out"
                pytest.fail(
                    f"dfmq run {state} before an intent was drawn (video seen: {seen_video is not None}):\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            listener.try_connect()
            time.sleep(0.05)
            try:
                window = screen.window(WINDOW_TITLE)
                if window is None:
                    continue
                full = screen.grab()
                origin = screen.root.translate_coords(window, 0, 0)
            except xerror.XError:  # the window went between two requests
                continue
            image = full[origin.y : origin.y + CANVAS_HEIGHT_PX, origin.x : origin.x + CANVAS_WIDTH_PX]
            if seen_video is None:
                if image[:VIDEO_HEIGHT_PX].max() > 0:
                    seen_video = time.monotonic() - began
                continue
            bars = _bars(image[VIDEO_HEIGHT_PX:])
            if len(bars) == 5 and all(bars[row][0] > 0 for row in (0, 3, 4)):  # q text, w audio, w video
                shot, window_image = full, image
        cv2.imwrite("/tmp/dfmq_show_e2e.png", shot)
        drawn_at = time.monotonic() - began
        rc = run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        listener.stop()
        screen.display.close()
    output = log_path.read_text(errors="replace")
    assert rc == 0, output[-3000:]
    assert "2 intent events from 2 utterances" in output

    # The video: a frame of the clip, not black, with the face box of the running quality.
    video = window_image[:VIDEO_HEIGHT_PX]
    assert video.mean() > 20 and video.std() > 20
    assert _closest_frame_error(video, frames) < 6
    assert (video == np.array(FACE_BOX_BGR, np.uint8)).all(axis=2).sum() > 1000
    # The bars: running q audio and q video non-empty; q text and the weights the event's.
    bars = _bars(window_image[VIDEO_HEIGHT_PX:])
    assert [length for _, length, _ in bars] == [BAR_LENGTH_PX] * 5
    assert [colour for _, _, colour in bars] == [QUALITY_BAR_BGR] * 3 + [WEIGHT_BAR_BGR] * 2
    assert bars[1][0] > 0 and bars[2][0] > 0
    assert listener.events  # the first at least: the run went on for seconds after it was drawn
    panel = window_image[VIDEO_HEIGHT_PX:, INTENT_LEFT_PX:]

    def drawn_as(event: dict[str, Any]) -> bool:
        expected = [event["quality"]["text"], event["weights"]["audio"], event["weights"]["video"]]
        fractions = [bars[row][0] for row in (0, 3, 4)]
        if fractions != pytest.approx(expected, abs=1 / BAR_LENGTH_PX):
            return False
        shown = event["intent"] if event["recognized"] else f"not recognized: {event['reason']}"
        canvas = render_canvas(None, intent=shown, confidence=event["confidence"], transcript=event["text"])
        return np.array_equal(panel, canvas[VIDEO_HEIGHT_PX:, INTENT_LEFT_PX:])

    # The intent column: name, confidence and transcript of a published event, pixel for pixel.
    assert (panel == np.array(show.TEXT_BGR, np.uint8)).all(axis=2).sum() > 200
    assert any(drawn_as(event) for event in listener.events), listener.events
    print(f"video at {seen_video:.1f} s, intent at {drawn_at:.1f} s, run {time.monotonic() - began:.1f} s")
