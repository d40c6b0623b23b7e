"""Whether a speaker's voice fell at a pause: the pitch cue speculative endpointing checks before
it ends an utterance early (stream/endpointing.py).

A sentence ends on a fall to the speaker's low pitch; a speaker who pauses mid-sentence holds it
up ("the report is finished | but I still need to check the numbers", where the words before the
pause read as a finished sentence and Whisper writes a full stop). Measured before use on espeak-ng
voices (en-us, en-gb, a female en-us) saying five sentences once whole and once with a 400 ms
break inside: the last 80 ms of voiced speech sat at 0.71-0.80 of the utterance's median pitch at
a sentence end and at 0.86-0.94 before a mid-sentence break, apart from two sentence ends the
tracker did not see fall (0.92, 0.95) that then wait for the silence hang-over as before
(docs/results/endpointing_cpu_2core.md).
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.040  # two periods of a 50 Hz voice
HOP_S = 0.010
PITCH_MIN_HZ = 60.0
PITCH_MAX_HZ = 400.0
VOICED_PEAK = 0.5  # normalised autocorrelation at the period: below it a frame is not voiced
QUIET_SHARE = 0.1  # frames under this share of the loudest frame's RMS are not voiced
TAIL_FRAMES = 8  # the last 80 ms of voiced frames
MIN_VOICED_FRAMES = 10  # fewer: too little voice to tell ("Yes.")
WINDOW_S = 3.0  # only the end of a long utterance is tracked
OCTAVE_ERROR = 1.6  # a ratio above this is a frame read at half its period, not a rise


def voiced_pitch_hz(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """The pitch of each voiced 40 ms frame (hop 10 ms), in order: autocorrelation by FFT, its
    peak between the periods of 400 and 60 Hz."""
    frame, hop = round(FRAME_S * rate_hz), round(HOP_S * rate_hz)
    if len(samples) < frame:
        return np.zeros(0, np.float32)
    starts = np.arange(0, len(samples) - frame + 1, hop)
    frames = samples[starts[:, None] + np.arange(frame)].astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    rms = np.sqrt((frames**2).mean(axis=1))
    spectrum = np.fft.rfft(frames, n=2 * frame, axis=1)
    autocorrelation = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :frame]
    autocorrelation /= np.maximum(autocorrelation[:, :1], 1e-12)
    shortest, longest = int(rate_hz / PITCH_MAX_HZ), int(rate_hz / PITCH_MIN_HZ)
    lags = shortest + np.argmax(autocorrelation[:, shortest:longest], axis=1)
    peaks = autocorrelation[np.arange(len(frames)), lags]
    voiced = (peaks > VOICED_PEAK) & (rms > QUIET_SHARE * rms.max())
    return (rate_hz / lags[voiced]).astype(np.float32)


def final_pitch_ratio(samples: np.ndarray, rate_hz: int) -> float | None:
    """Pitch of the last 80 ms of voiced speech over the median pitch of the last 3 s (None: too
    little voiced speech to tell)."""
    pitch = voiced_pitch_hz(samples[-round(WINDOW_S * rate_hz) :], rate_hz)
    if len(pitch) < MIN_VOICED_FRAMES:
        return None
    ratio = float(np.median(pitch[-TAIL_FRAMES:]) / np.median(pitch))
    while ratio > OCTAVE_ERROR:
        ratio /= 2.0
    return ratio
