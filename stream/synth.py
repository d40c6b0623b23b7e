"""`dfmq synth`: a labelled multimodal corpus for the 20 MIntRec intents, rendered here.

Speech comes from espeak-ng with several voices; pitch, rate and loudness follow the intent's
family, and so do the drawn face's smile, brows and head motion, so audio and video carry what the
words alone may not (the neutral phrases are said by several families). Each clip may get one
degradation, recorded in `labels.csv`. Deterministic for a seed.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.config import MINTREC_LABELS
from model.data import read_tsv
from model.errors import ConfigError
from stream.render import FaceStyle, add_white_noise, render_face, speak, write_clip
from stream.synth_sentences import NEUTRAL_INTENTS, NEUTRAL_PHRASES, OWN_SENTENCES


@dataclass(frozen=True)
class Family:
    pitch: int  # espeak-ng pitch 0..99
    words_per_min: int
    gain: float
    smile: float
    brow_raise: float
    nod_px: float


FAMILIES = {
    "warm": Family(pitch=65, words_per_min=170, gain=1.0, smile=0.8, brow_raise=0.3, nod_px=3.0),
    "hostile": Family(pitch=30, words_per_min=190, gain=1.5, smile=-0.8, brow_raise=0.0, nod_px=6.0),
    "playful": Family(pitch=80, words_per_min=125, gain=1.1, smile=0.5, brow_raise=1.0, nod_px=1.0),
    "humble": Family(pitch=40, words_per_min=120, gain=0.55, smile=-0.3, brow_raise=0.8, nod_px=0.5),
    "matter_of_fact": Family(pitch=50, words_per_min=160, gain=0.9, smile=0.0, brow_raise=0.2, nod_px=1.5),
}
INTENT_FAMILY = {
    **dict.fromkeys(("Praise", "Thank", "Agree", "Comfort", "Care", "Greet"), "warm"),
    **dict.fromkeys(("Complain", "Criticize", "Oppose", "Prevent"), "hostile"),
    **dict.fromkeys(("Taunt", "Joke", "Flaunt"), "playful"),
    **dict.fromkeys(("Apologise", "Ask for help", "Leave"), "humble"),
    **dict.fromkeys(("Inform", "Advise", "Arrange", "Introduce"), "matter_of_fact"),
}
VOICES = ("en-us", "en-us+f3", "en-gb", "en-gb+f2", "en-us+m3", "en-029+f4", "en-gb-scotland")
DEGRADATIONS = (
    "noise_0db",
    "noise_5db",
    "noise_10db",
    "clipping",
    "dropouts",
    "blur",
    "dark",
    "overexposed",
    "frozen",
    "no_camera",
    "truncated_text",
)
FPS = 15


def _slug(label: str) -> str:
    return re.sub(r"[^a-z]+", "_", label.lower()).strip("_")


def _texts_by_intent(text_source: Path | None) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {intent: [] for intent in MINTREC_LABELS}
    if text_source is not None:
        for _, text, label in read_tsv("mintrec", text_source):
            if 3 <= len(text.split()) <= 20:
                texts[MINTREC_LABELS[label]].append(text)
    return texts


def _degrade_audio(audio: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind.startswith("noise_"):
        return add_white_noise(audio, float(kind.split("_")[1].removesuffix("db")), rng)
    if kind == "clipping":
        return np.clip(audio * 8.0, -0.3, 0.3)
    if kind == "dropouts":
        out = audio.copy()
        chunk = 1600  # 100 ms
        for start in range(0, len(out), chunk):
            if rng.random() < 0.3:
                out[start : start + chunk] = 0.0
        return out
    return audio


def _degrade_frame(image: np.ndarray, kind: str) -> np.ndarray:
    import cv2

    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), 6)
    if kind == "dark":
        return (image * 0.06).astype(np.uint8)
    if kind == "overexposed":
        return np.clip(image.astype(np.float32) * 3.5 + 60, 0, 255).astype(np.uint8)
    return image


@dataclass
class SynthClip:
    clip: str
    label: str
    text: str
    split: str
    degradation: str
    family: str
    voice: str


def render_corpus(
    out_dir: Path, per_intent: int, seed: int, text_source: Path | None, degrade_share: float = 0.5
) -> list[SynthClip]:
    if per_intent < 3:
        raise ConfigError("--per-intent", "at least 3 (one clip per split)", per_intent)
    if not 0.0 <= degrade_share <= 1.0:
        raise ConfigError("--degrade-share", "a share in [0, 1]", degrade_share)
    rng = np.random.default_rng(seed)
    texts = _texts_by_intent(text_source)
    clips_dir = out_dir / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    plan: list[SynthClip] = []
    for intent in MINTREC_LABELS:
        family = INTENT_FAMILY[intent]
        n_dev = max(1, round(per_intent * 0.15))
        n_train = min(round(per_intent * 0.7), per_intent - n_dev - 1)
        for i in range(per_intent):
            source = rng.random()
            if intent in NEUTRAL_INTENTS and source < 0.25:
                text = str(rng.choice(NEUTRAL_PHRASES))
            elif texts[intent] and source < 0.6:
                text = str(rng.choice(texts[intent]))
            else:
                text = str(rng.choice(OWN_SENTENCES[intent]))
            degradation = str(rng.choice(DEGRADATIONS)) if rng.random() < degrade_share else "none"
            split = "train" if i < n_train else "dev" if i < n_train + n_dev else "test"
            voice = str(rng.choice(VOICES))
            plan.append(SynthClip(f"{_slug(intent)}_{i:03d}.mp4", intent, text, split, degradation, family, voice))

    for index, item in enumerate(tqdm(plan, desc="synth", unit="clip", disable=None)):
        clip_rng = np.random.default_rng([seed, index])
        fam = FAMILIES[item.family]
        pitch = int(np.clip(fam.pitch + clip_rng.integers(-8, 9), 0, 99))
        rate = int(fam.words_per_min + clip_rng.integers(-15, 16))
        speech = speak(item.text, item.voice, rate, pitch) * fam.gain * float(clip_rng.uniform(0.8, 1.2))
        pause = np.zeros(int(0.3 * 16000), dtype=np.float32)
        audio = np.clip(np.concatenate([pause, speech, pause]), -1.0, 1.0)
        audio = _degrade_audio(audio, item.degradation, clip_rng)
        style = FaceStyle(
            smile=fam.smile + float(clip_rng.normal(0, 0.15)),
            brow_raise=float(np.clip(fam.brow_raise + clip_rng.normal(0, 0.15), 0, 1)),
            nod_px=fam.nod_px * float(clip_rng.uniform(0.7, 1.3)),
            skin_bgr=tuple(int(c) for c in clip_rng.integers(110, 230, 3)),  # type: ignore[arg-type]
            background_bgr=tuple(int(c) for c in clip_rng.integers(30, 110, 3)),  # type: ignore[arg-type]
        )
        frames: list[np.ndarray] = []
        if item.degradation != "no_camera":
            envelope = np.abs(audio)
            for f in range(int(len(audio) / 16000 * FPS)):
                loud = float(envelope[int(f / FPS * 16000) : int((f + 1) / FPS * 16000)].mean())
                image = render_face(f / FPS, min(1.0, 6 * loud), style)
                frames.append(_degrade_frame(image, item.degradation))
            if item.degradation == "frozen":
                frames = [frames[0]] * len(frames)
        write_clip(clips_dir / item.clip, audio, frames, FPS)
        if item.degradation == "truncated_text":
            words = item.text.split()
            item.text = " ".join(words[: max(1, len(words) * 2 // 5)])

    with (out_dir / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["clip", "label", "text", "split", "degradation", "family", "voice"])
        for item in plan:
            writer.writerow([item.clip, item.label, item.text, item.split, item.degradation, item.family, item.voice])
    return plan
