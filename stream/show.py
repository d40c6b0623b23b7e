"""`dfmq run --show`: a window with the video, the face box, the quality bars and the last intent.

`ViewerSink` is a sink (`stream.sinks.Sink`): it keeps the newest frame, quality report, intent
and status, and redraws at most `max_fps` times a second, when a message arrives (a frame, or on
an audio-only stream a quality report or an intent) and once more after the last message of a
burst, so the window always ends on the newest state. The picture is made by `render_canvas`,
a pure function of what is shown, testable without a display.

The window: on X11 (and Wayland through XWayland: wherever DISPLAY is set) it is drawn by
python-xlib, which speaks the X protocol over the socket in pure Python, so it needs no system
library and does not touch OpenCV: the project keeps opencv-python-headless, whose `import cv2`
needs no libGL and no Qt. Where there is no DISPLAY but the installed OpenCV was built with a GUI
(someone installed opencv-python on macOS or Windows), its HighGUI window is used instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from model.errors import BackendUnavailableError
from stream.messages import IntentEvent, QualityReport, SinkMessage, VideoFrame

log = logging.getLogger("dfmq.show")

WINDOW_TITLE = "dfmq"
MAX_FPS = 15.0
WINDOW_POLL_S = 0.1  # how often an idle window handles its events (expose, close)
CLOSE_TIMEOUT_S = 2.0

# Canvas layout: the video letterboxed in the top area, a panel of bars and the intent below it.
CANVAS_WIDTH_PX = 640
VIDEO_HEIGHT_PX = 480
PANEL_HEIGHT_PX = 140
CANVAS_HEIGHT_PX = VIDEO_HEIGHT_PX + PANEL_HEIGHT_PX
BAR_ROWS = (  # label, group, key: top to bottom
    ("q text", "quality", "text"),
    ("q audio", "quality", "audio"),
    ("q video", "quality", "video"),
    ("w audio", "weights", "audio"),
    ("w video", "weights", "video"),
)
BAR_X_PX = 80  # where a bar's track starts
BAR_LENGTH_PX = 240  # a value of 1.0
BAR_HEIGHT_PX = 14
BAR_PITCH_PX = 24
BAR_TOP_PX = VIDEO_HEIGHT_PX + 14

# BGR colours (exact: a test finds the bars by them in a screenshot).
PANEL_BGR = (28, 28, 28)
BAR_TRACK_BGR = (70, 70, 70)
QUALITY_BAR_BGR = (90, 200, 90)
WEIGHT_BAR_BGR = (230, 160, 60)
FACE_BOX_BGR = (0, 230, 255)
TEXT_BGR = (235, 235, 235)
DIM_TEXT_BGR = (150, 150, 150)


def _clean_value(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else min(1.0, max(0.0, value))


def _ascii(text: str) -> str:
    """Hershey fonts draw ASCII only."""
    return text.encode("ascii", "replace").decode("ascii")


def _fit_text(cv2: Any, text: str, max_width_px: int, scale: float, thickness: int) -> str:
    text = _ascii(text)
    if cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] <= max_width_px:
        return text
    while text and cv2.getTextSize(text + "...", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] > max_width_px:
        text = text[:-1]
    return text + "..."


def video_placement(frame_shape: tuple[int, ...]) -> tuple[float, int, int]:
    """Scale and top-left offset (x, y) of a frame letterboxed into the video area."""
    height, width = frame_shape[:2]
    scale = min(CANVAS_WIDTH_PX / width, VIDEO_HEIGHT_PX / height)
    shown_w, shown_h = round(width * scale), round(height * scale)
    return scale, (CANVAS_WIDTH_PX - shown_w) // 2, (VIDEO_HEIGHT_PX - shown_h) // 2


def shown_decision(event: IntentEvent) -> str:
    """The intent's name, or why the utterance was not recognized."""
    return event.intent if event.intent is not None else f"not recognized: {event.reason}"


def render_canvas(
    frame: np.ndarray | None,
    *,
    face_box_px: tuple[int, int, int, int] | None = None,
    quality: Mapping[str, float | None] | None = None,
    weights: Mapping[str, float | None] | None = None,
    intent: str | None = None,
    confidence: float | None = None,
    transcript: str | None = None,
    status: str | None = None,
) -> np.ndarray:
    """The picture the window shows, as a (CANVAS_HEIGHT_PX, CANVAS_WIDTH_PX, 3) BGR uint8 array.

    `frame` (BGR, any size) is letterboxed into the top area (black when None: audio only), with
    `face_box_px` (x, y, width, height in the frame's pixels) drawn on it. Below, one bar per
    `BAR_ROWS` entry: `quality` text/audio/video and `weights` audio/video, each in [0, 1] (a
    missing or NaN value shows an empty track and "n/a"), then the intent and its confidence.
    """
    import cv2

    canvas = np.zeros((CANVAS_HEIGHT_PX, CANVAS_WIDTH_PX, 3), dtype=np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    if frame is not None and frame.ndim == 3 and frame.shape[0] > 0 and frame.shape[1] > 0:
        scale, x0, y0 = video_placement(frame.shape)
        shown_w, shown_h = round(frame.shape[1] * scale), round(frame.shape[0] * scale)
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        canvas[y0 : y0 + shown_h, x0 : x0 + shown_w] = cv2.resize(
            frame[:, :, :3], (shown_w, shown_h), interpolation=interpolation
        )
        if face_box_px is not None:
            x, y, w, h = face_box_px
            top_left = (x0 + round(x * scale), y0 + round(y * scale))
            bottom_right = (x0 + round((x + w) * scale), y0 + round((y + h) * scale))
            cv2.rectangle(canvas, top_left, bottom_right, FACE_BOX_BGR, 2)
    else:
        cv2.putText(canvas, "no video", (CANVAS_WIDTH_PX // 2 - 50, VIDEO_HEIGHT_PX // 2), font, 0.7, DIM_TEXT_BGR, 1)

    canvas[VIDEO_HEIGHT_PX:] = PANEL_BGR
    sources = {"quality": quality or {}, "weights": weights or {}}
    for row, (label, group, key) in enumerate(BAR_ROWS):
        top = BAR_TOP_PX + row * BAR_PITCH_PX
        value = _clean_value(sources[group].get(key))
        cv2.putText(canvas, label, (8, top + BAR_HEIGHT_PX - 2), font, 0.45, TEXT_BGR, 1, cv2.LINE_AA)
        bottom = top + BAR_HEIGHT_PX - 1
        cv2.rectangle(canvas, (BAR_X_PX, top), (BAR_X_PX + BAR_LENGTH_PX - 1, bottom), BAR_TRACK_BGR, -1)
        fill = 0 if value is None else round(value * BAR_LENGTH_PX)
        if fill > 0:
            colour = QUALITY_BAR_BGR if group == "quality" else WEIGHT_BAR_BGR
            cv2.rectangle(canvas, (BAR_X_PX, top), (BAR_X_PX + fill - 1, bottom), colour, -1)
        shown = "n/a" if value is None else f"{value:.2f}"
        cv2.putText(canvas, shown, (BAR_X_PX + BAR_LENGTH_PX + 8, top + BAR_HEIGHT_PX - 2), font, 0.45, TEXT_BGR, 1)

    right = BAR_X_PX + BAR_LENGTH_PX + 60
    width = CANVAS_WIDTH_PX - right - 8
    if intent is None:
        cv2.putText(canvas, "no intent yet", (right, BAR_TOP_PX + 30), font, 0.6, DIM_TEXT_BGR, 1, cv2.LINE_AA)
    else:
        name = _fit_text(cv2, intent, width, 0.9, 2)
        cv2.putText(canvas, name, (right, BAR_TOP_PX + 30), font, 0.9, TEXT_BGR, 2, cv2.LINE_AA)
        if confidence is not None and not math.isnan(confidence):
            shown = f"confidence {confidence:.2f}"
            cv2.putText(canvas, shown, (right, BAR_TOP_PX + 58), font, 0.5, TEXT_BGR, 1, cv2.LINE_AA)
        if transcript:
            said = _fit_text(cv2, f'"{transcript}"', width, 0.45, 1)
            cv2.putText(canvas, said, (right, BAR_TOP_PX + 84), font, 0.45, DIM_TEXT_BGR, 1, cv2.LINE_AA)
    if status:
        cv2.putText(canvas, status, (right, CANVAS_HEIGHT_PX - 10), font, 0.45, DIM_TEXT_BGR, 1, cv2.LINE_AA)
    return canvas


class _WindowGone(Exception):
    """The window or the display went away while drawing."""


class _Window(Protocol):
    # True: drawn from a thread of the sink's own (the event loop never waits on the display);
    # False: drawn on the event loop (HighGUI wants the thread that made its window, on macOS the main one).
    threaded: bool

    def show(self, canvas: np.ndarray) -> None: ...

    def poll(self) -> bool:
        """Handle pending window events; True while the window is open (False once the user closed it)."""
        ...

    def close(self) -> None: ...


class _X11Window:
    """A fixed-size X11 window drawn with PutImage (python-xlib: the X protocol in pure Python).

    Made on one thread and then used by one other only (python-xlib's locks are no-ops by default)."""

    threaded = True

    def __init__(self, title: str, width: int, height: int) -> None:
        try:
            from Xlib import X, Xatom, Xutil, display, error
        except ImportError as exc:
            raise BackendUnavailableError(
                "--show",
                "python-xlib is not installed",
                "It is a dependency of dfmq-stream: reinstall it (pip install -e .) or pip install python-xlib.",
            ) from exc
        self._x = X
        self._errors: tuple[type[BaseException], ...] = (error.ConnectionClosedError, error.XError, OSError)
        name = os.environ.get("DISPLAY", "")
        try:
            self.display = display.Display()
        except (error.DisplayError, error.ConnectionClosedError, OSError) as exc:
            raise BackendUnavailableError(
                "--show",
                f"cannot open the X display {name!r} ({exc})",
                "Check that the X server runs and lets this user in (XAUTHORITY, xhost); over ssh use ssh -X.",
            ) from exc
        self._x_error: str | None = None
        self.display.set_error_handler(self._on_x_error)
        try:
            self._setup(title, width, height, X, Xatom, Xutil)
        except BackendUnavailableError:
            self.display.close()
            raise

    def _on_x_error(self, err: Any, request: Any) -> None:
        """An X protocol error (python-xlib would print it): the window is taken as gone."""
        self._x_error = str(err).strip()

    def _setup(self, title: str, width: int, height: int, X: Any, Xatom: Any, Xutil: Any) -> None:
        info = self.display.display.info
        screen = self.display.screen()
        depth = screen.root_depth
        visual = next(
            (
                v
                for d in screen.allowed_depths
                if d.depth == depth
                for v in d.visuals
                if v.visual_id == screen.root_visual
            ),
            None,
        )
        bits = {f.depth: f.bits_per_pixel for f in info.pixmap_formats}.get(depth)
        masks = (visual.red_mask, visual.green_mask, visual.blue_mask) if visual is not None else (0, 0, 0)
        if (
            visual is None
            or visual.visual_class not in (X.TrueColor, X.DirectColor)
            or bits != 32
            or any(m == 0 or m >> ((m & -m).bit_length() - 1) != 0xFF for m in masks)
        ):
            raise BackendUnavailableError(
                "--show",
                f"the X screen is {depth}-bit ({bits} bits per pixel), not 24-bit true colour",
                "Run the X server at depth 24 (Xvfb: -screen 0 1280x800x24).",
            )
        self._shifts = [(m & -m).bit_length() - 1 for m in masks]  # red, green, blue
        self._byte_order = "<u4" if info.image_byte_order == X.LSBFirst else ">u4"
        self._depth = depth
        self.width, self.height = width, height
        # A PutImage request holds at most max_request_length 4-byte units: draw in strips of rows.
        self._rows_per_request = max(1, (info.max_request_length * 4 - 64) // (width * 4))
        self.window = screen.root.create_window(
            0,
            0,
            width,
            height,
            0,
            depth,
            X.InputOutput,
            X.CopyFromParent,
            background_pixel=screen.black_pixel,
            event_mask=X.ExposureMask | X.StructureNotifyMask,
        )
        self.window.set_wm_name(title)
        self.window.set_wm_class("dfmq", "Dfmq")
        self.window.set_wm_normal_hints(
            flags=Xutil.PMinSize | Xutil.PMaxSize,
            min_width=width,
            min_height=height,
            max_width=width,
            max_height=height,
        )
        self._wm_protocols = self.display.intern_atom("WM_PROTOCOLS")
        self._wm_delete = self.display.intern_atom("WM_DELETE_WINDOW")
        self.window.change_property(self._wm_protocols, Xatom.ATOM, 32, [self._wm_delete])
        self.gc = self.window.create_gc()
        self.window.map()
        self.display.flush()
        self._last: np.ndarray | None = None

    def _pixels(self, canvas: np.ndarray) -> np.ndarray:
        """(H, W * 4) bytes in the screen's pixel layout."""
        if self._shifts == [16, 8, 0] and self._byte_order == "<u4":  # the usual one: B, G, R, pad
            import cv2

            return cv2.cvtColor(canvas, cv2.COLOR_BGR2BGRA).reshape(canvas.shape[0], -1)
        red, green, blue = (canvas[:, :, i].astype(np.uint32) for i in (2, 1, 0))
        r_shift, g_shift, b_shift = self._shifts
        pixels = ((red << r_shift) | (green << g_shift) | (blue << b_shift)).astype(self._byte_order)
        return pixels.view(np.uint8).reshape(canvas.shape[0], -1)

    def show(self, canvas: np.ndarray) -> None:
        self._last = canvas
        pixels = self._pixels(canvas)
        height, width = canvas.shape[:2]
        try:
            for top in range(0, height, self._rows_per_request):
                strip = pixels[top : top + self._rows_per_request]
                self.window.put_image(
                    self.gc, 0, top, width, len(strip), self._x.ZPixmap, self._depth, 0, strip.tobytes()
                )
            self.display.flush()
        except self._errors as exc:
            raise _WindowGone(str(exc)) from exc

    def poll(self) -> bool:
        X = self._x
        try:
            redraw = False
            while self.display.pending_events():
                event = self.display.next_event()
                if event.type == X.ClientMessage and event.client_type == self._wm_protocols:
                    if event.data[1][0] == self._wm_delete:
                        return False
                elif event.type == X.DestroyNotify:
                    return False
                elif event.type == X.Expose and event.count == 0:
                    redraw = True
        except self._errors as exc:
            raise _WindowGone(str(exc)) from exc
        if self._x_error is not None:
            raise _WindowGone(f"X protocol error: {self._x_error}")
        if redraw and self._last is not None:
            self.show(self._last)
        return True

    def close(self) -> None:
        try:
            self.window.destroy()
            self.display.close()
        except self._errors:
            pass  # the display is gone already


def opencv_has_gui() -> bool:
    """Whether the installed OpenCV was built with HighGUI (opencv-python, not -headless)."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() != "NONE"
    return False


class _OpenCvWindow:
    """OpenCV's HighGUI window, where the installed OpenCV has one."""

    threaded = False

    def __init__(self, title: str) -> None:
        import cv2

        self.cv2, self.title = cv2, title
        try:
            cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
        except cv2.error as exc:
            raise BackendUnavailableError(
                "--show", f"OpenCV cannot open a window ({exc})", "Run where a display exists."
            ) from exc

    def show(self, canvas: np.ndarray) -> None:
        try:
            self.cv2.imshow(self.title, canvas)
            self.cv2.waitKey(1)
        except self.cv2.error as exc:
            raise _WindowGone(str(exc)) from exc

    def poll(self) -> bool:
        self.cv2.waitKey(1)
        return bool(self.cv2.getWindowProperty(self.title, self.cv2.WND_PROP_VISIBLE) >= 1)

    def close(self) -> None:
        try:
            self.cv2.destroyWindow(self.title)
            self.cv2.waitKey(1)
        except self.cv2.error:
            pass


def open_window(title: str, width: int, height: int, backend: str = "auto") -> _Window:
    """A window of the given backend: "x11", "opencv", or "auto" (X11 where DISPLAY is set, else OpenCV's GUI)."""
    if backend not in ("auto", "x11", "opencv"):
        raise ValueError(f"backend must be auto, x11 or opencv, got {backend!r}")
    if backend == "x11" or (backend == "auto" and os.environ.get("DISPLAY")):
        if not os.environ.get("DISPLAY"):
            raise BackendUnavailableError(
                "--show", "no X display (DISPLAY is not set)", "Run in a desktop session, or over ssh -X."
            )
        return _X11Window(title, width, height)
    if opencv_has_gui():
        return _OpenCvWindow(title)
    if backend == "opencv":
        raise BackendUnavailableError(
            "--show",
            "this OpenCV has no GUI (opencv-python-headless)",
            "Use the X11 window (backend auto or x11), or install opencv-python in place of opencv-python-headless.",
        )
    raise BackendUnavailableError(
        "--show",
        "no display: DISPLAY is not set and this OpenCV has no GUI (opencv-python-headless)",
        "Run in a desktop session (X11, or Wayland with XWayland) or over ssh -X; leave out --show when headless.",
    )


class ViewerSink:
    """The `--show` window as a sink: newest frame, face box, quality and weight bars, last intent.

    `max_fps` bounds the redraws; `title` names the window; `backend` is "auto", "x11" or
    "opencv" (see `open_window`). `handle` only keeps the message and wakes the drawing: on X11 a
    thread of the sink's own renders and sends the picture, so a slow display (ssh -X) never holds
    up the event loop. A window the user closes stays closed; the run goes on without it.
    """

    name = "show"

    def __init__(self, *, max_fps: float = MAX_FPS, title: str = WINDOW_TITLE, backend: str = "auto") -> None:
        if not max_fps > 0:
            raise ValueError(f"max_fps must be > 0, got {max_fps!r}")
        self.title = title
        self.backend = backend
        self.min_interval_s = 1.0 / max_fps
        self.frame: np.ndarray | None = None
        self.quality: QualityReport | None = None
        self.intent: IntentEvent | None = None
        self.status: str | None = None
        self.draws = 0  # canvases shown
        self._window: _Window | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # threaded backends
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        # backends drawn on the event loop
        self._last_draw = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._poller: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        return self._window is not None

    async def start(self) -> None:
        if self._window is not None:
            return
        self._loop = asyncio.get_running_loop()
        window = open_window(self.title, CANVAS_WIDTH_PX, CANVAS_HEIGHT_PX, self.backend)
        self._window = window
        self._stop.clear()
        if window.threaded:
            self._wake.set()  # the first picture at once
            self._thread = threading.Thread(target=self._draw_loop, args=(window,), name="dfmq-show", daemon=True)
            self._thread.start()
        else:
            self._draw_inline()
            self._poller = self._loop.call_later(WINDOW_POLL_S, self._poll_inline)

    def handle(self, message: SinkMessage) -> None:
        status = getattr(message, "status", None)  # a status change (online/offline), where one is sent
        if isinstance(message, VideoFrame):
            self.frame = message.image
        elif isinstance(message, QualityReport):
            self.quality = message
        elif isinstance(message, IntentEvent):
            self.intent = message
        elif isinstance(status, str):
            self.status = status
        else:
            return
        window = self._window
        if window is None:
            return
        if window.threaded:
            self._wake.set()
            return
        assert self._loop is not None
        due = self._last_draw + self.min_interval_s
        if self._loop.time() >= due:
            self._draw_inline()
        elif self._timer is None:  # draw the newest state once the interval has passed
            self._timer = self._loop.call_at(due, self._on_timer)

    async def close(self) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, CLOSE_TIMEOUT_S)
            if thread.is_alive():
                log.warning("--show window did not close within %.0f s; left to exit with the process", CLOSE_TIMEOUT_S)
        self._drop_inline()

    def canvas(self) -> np.ndarray:
        """What the window shows now: running audio/video quality from the newest report (the last
        intent's until one arrives), text quality and weights from the last intent."""
        report, event = self.quality, self.intent
        quality: dict[str, float | None] = {"text": None, "audio": None, "video": None}
        weights: dict[str, float | None] = {"audio": None, "video": None}
        if event is not None:
            quality.update({k: event.quality.get(k) for k in quality})
            weights.update({k: event.weights.get(k) for k in weights})
        if report is not None:
            quality["audio"], quality["video"] = report.audio, report.video
        return render_canvas(
            self.frame,
            face_box_px=report.face_box_px if report is not None else None,
            quality=quality,
            weights=weights,
            intent=shown_decision(event) if event is not None else None,
            confidence=event.confidence if event is not None else None,
            transcript=event.text if event is not None else None,
            status=self.status,
        )

    # A threaded window: every call on it from this thread, which also closes it.

    def _draw_loop(self, window: _Window) -> None:
        next_draw = 0.0
        try:
            while not self._stop.is_set():
                if self._wake.wait(WINDOW_POLL_S):
                    wait_s = next_draw - time.monotonic()
                    if wait_s > 0 and self._stop.wait(wait_s):
                        break
                    self._wake.clear()  # what arrives from here on is drawn next time
                    next_draw = time.monotonic() + self.min_interval_s
                    window.show(self.canvas())
                    self.draws += 1
                if not window.poll():
                    log.info("--show window closed; the run goes on without it")
                    break
        except _WindowGone as exc:
            log.warning("--show window lost (%s); the run goes on without it", exc)
        except Exception:
            log.exception("--show window failed; the run goes on without it")
        finally:
            window.close()
            self._window = None

    # A window drawn on the event loop.

    def _on_timer(self) -> None:
        self._timer = None
        self._draw_inline()

    def _draw_inline(self) -> None:
        window = self._window
        if window is None or self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last_draw = self._loop.time()
        try:
            window.show(self.canvas())
            self.draws += 1
            still_open = window.poll()
        except _WindowGone as exc:
            log.warning("--show window lost (%s); the run goes on without it", exc)
            still_open = False
        if not still_open:
            self._drop_inline()

    def _poll_inline(self) -> None:
        self._poller = None
        window = self._window
        if window is None or self._loop is None:
            return
        try:
            still_open = window.poll()
        except _WindowGone as exc:
            log.warning("--show window lost (%s); the run goes on without it", exc)
            still_open = False
        if still_open:
            self._poller = self._loop.call_later(WINDOW_POLL_S, self._poll_inline)
        else:
            self._drop_inline()

    def _drop_inline(self) -> None:
        for handle in (self._timer, self._poller):
            if handle is not None:
                handle.cancel()
        self._timer = self._poller = None
        window = self._window
        if window is not None and not window.threaded:
            self._window = None
            window.close()
