"""`dfmq run --show`: a window with the video, the current quality bars and the last intent."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from model.errors import BackendUnavailableError

WINDOW = "dfmq"


class Viewer:
    def __init__(self) -> None:
        import cv2

        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            raise BackendUnavailableError("--show", "no display (DISPLAY is not set)", "Run where a display exists.")
        try:
            cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise BackendUnavailableError(
                "--show",
                f"this OpenCV has no GUI ({exc.__class__.__name__})",
                "Replace opencv-python-headless with opencv-python (same version) to open windows.",
            ) from exc
        self.cv2 = cv2

    def draw(self, frame: np.ndarray | None, quality: dict[str, float], weights: dict[str, float], intent: str) -> None:
        cv2 = self.cv2
        canvas = np.zeros((360, 480, 3), dtype=np.uint8)
        if frame is not None:
            canvas[:, :] = cv2.resize(frame, (480, 360))
        panel = canvas[250:, :]
        panel[:] = (panel * 0.3).astype(np.uint8)
        for row, (name, value) in enumerate([*quality.items(), *((f"w {k}", v) for k, v in weights.items())]):
            y = 262 + row * 16
            cv2.putText(canvas, name, (8, y + 9), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (230, 230, 230), 1)
            cv2.rectangle(canvas, (70, y), (70 + int(200 * max(0.0, min(1.0, value))), y + 10), (80, 200, 120), -1)
        cv2.putText(canvas, intent, (290, 300), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        cv2.imshow(WINDOW, canvas)
        cv2.waitKey(1)

    def close(self) -> None:
        self.cv2.destroyWindow(WINDOW)


def make_viewer(enabled: bool) -> Any:
    return Viewer() if enabled else None
