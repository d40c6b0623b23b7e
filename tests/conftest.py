"""Shared fixtures: tiny datasets in both layouts, with feature pickles, made per test."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import MELD_DA_LABELS, MINTREC_LABELS, DFMQConfig

torch.set_num_threads(2)

REQUIRE_SYSTEM_DEPS = os.environ.get("DFMQ_REQUIRE_SYSTEM_DEPS") == "1"


def require_binary(name: str, debian_package: str) -> str:
    """Path of a system binary; skip with the install hint, or fail in CI where it must exist."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: apt-get install {debian_package}"
        if REQUIRE_SYSTEM_DEPS:
            pytest.fail(message + " (DFMQ_REQUIRE_SYSTEM_DEPS=1 makes this a failure)")
        pytest.skip(reason=message)
    return path


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Mosquitto:
    """A real Mosquitto on a free loopback port; `config` lines are added to its listener, and
    `persistent` keeps acknowledged messages across a stop and start."""

    def __init__(self, folder: Path, config: str = "allow_anonymous true", persistent: bool = False) -> None:
        from stream.broker import free_port

        self.exe = require_binary("mosquitto", "mosquitto")
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        # As root, Mosquitto drops to user `mosquitto`, who can neither read the files made here
        # nor write a persistence file into a test's folder.
        user = "user root\n" if os.geteuid() == 0 else ""
        persistence = f"persistence true\npersistence_location {folder}/\n" if persistent else ""
        self.conf.write_text(f"{user}{persistence}listener {self.port} 127.0.0.1\n{config}\n")
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc
        wait_until(lambda: listening(self.port) or proc.poll() is not None, 5.0, "mosquitto listening")
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


SENTENCES = {
    "Thank": ["thank you so much for the help", "thanks a lot, really", "i appreciate it, thank you"],
    "Greet": ["hello there, good morning", "hi, how are you doing", "hey, nice to see you"],
    "Apologise": ["i am so sorry about that", "sorry, my mistake", "i apologise for the delay"],
    "Leave": ["i have to go now, bye", "i'm leaving, see you later", "gotta head out now"],
}


def _write_features(
    folder: Path, keys: list[str], labels: list[int], audio_dim: int, video_dim: int, seed: int
) -> None:
    """Features whose statistics depend on the label, so a multimodal model has something to use."""
    rng = np.random.default_rng(seed)
    audio, video = {}, {}
    for i, (key, label) in enumerate(zip(keys, labels)):
        ta, tv = 20 + 7 * (i % 5), 6 + (i % 4)
        a = rng.normal(0, 1, (ta, audio_dim)).astype(np.float32)
        a[:, label % audio_dim] += 4.0
        audio[key] = a
        if i % 7 != 3:  # some samples have no video at all
            v = rng.normal(0, 1, (tv, video_dim)).astype(np.float32)
            v[:, (2 * label) % video_dim] += 3.0
            video[key] = v
    with (folder / "audio_feats.pkl").open("wb") as handle:
        pickle.dump(audio, handle)
    with (folder / "video_feats.pkl").open("wb") as handle:
        pickle.dump(video, handle)


@pytest.fixture
def tiny_mintrec(tmp_path: Path) -> Path:
    """MIntRec layout: 4 intents x 3 sentences, the same rows in every split, plus pickles."""
    folder = tmp_path / "mintrec"
    folder.mkdir()
    keys, labels = [], []
    rows = ["season\tepisode\tclip\ttext\tlabel"]
    for intent, sentences in SENTENCES.items():
        for j, text in enumerate(sentences):
            key = f"S01_E{len(keys):02d}_{j}"
            keys.append(key)
            labels.append(MINTREC_LABELS.index(intent))
            season, episode, clip = key.split("_")
            rows.append(f"{season}\t{episode}\t{clip}\t{text}\t{intent}")
    for split in ("train", "dev", "test"):
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    _write_features(folder, keys, labels, audio_dim=16, video_dim=8, seed=1)
    return folder


@pytest.fixture
def tiny_meld(tmp_path: Path) -> Path:
    folder = tmp_path / "meld"
    folder.mkdir()
    abbrevs = list(MELD_DA_LABELS)
    rows = ["Dialogue\tUtterance\tText\tLabel"]
    keys, labels = [], []
    for i, text in enumerate(["how are you", "yes, exactly", "no way", "hello", "okay", "what time is it"]):
        abbrev = ["q", "ag", "dag", "g", "a", "q"][i]
        rows.append(f"{i // 2}\t{i % 2}\t{text}\t{abbrev}")
        keys.append(f"dia{i // 2}_utt{i % 2}")
        labels.append(abbrevs.index(abbrev))
    for split in ("train", "dev", "test"):
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    _write_features(folder, keys, labels, audio_dim=16, video_dim=8, seed=2)
    return folder


@pytest.fixture
def tiny_config_yaml(tmp_path: Path) -> Path:
    """Feature widths of the fixtures and a short schedule."""
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "model:\n  audio_dim: 16\n  video_dim: 8\n  audio_max_len: 40\n  video_max_len: 8\n"
        "train:\n  batch_size: 6\n  lr_text_encoder: 1.0e-4\n  lr_heads: 3.0e-3\n  patience_epochs: 5\n"
    )
    return path


@pytest.fixture
def tiny_model_config() -> DFMQConfig:
    return DFMQConfig(
        labels=list(MINTREC_LABELS[:4]),
        text_width=32,
        audio_dim=16,
        video_dim=8,
        audio_max_len=40,
        video_max_len=8,
        dropout=0.0,
    )


def tiny_text_encoder(width: int = 32, layers: int = 1) -> torch.nn.Module:
    """A small random BERT: unit tests of the fusion need the shape of an encoder, not its knowledge."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=100,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=64,
    )
    return BertModel(cfg)


def render_clip(
    path: Path,
    text: str,
    *,
    snr_db: float | None = None,
    dark: bool = False,
    smile: float = 0.3,
    fps: int = 15,
    seed: int = 0,
) -> Path:
    """A real mp4: espeak-ng speech with 0.5 s pauses around it and a talking drawn face."""
    from stream.render import FaceStyle, add_white_noise, render_face, speak

    require_binary("espeak-ng", "espeak-ng")
    pause = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([pause, speak(text, "en-us", 150, 50), pause])
    if snr_db is not None:
        audio = add_white_noise(audio, snr_db, np.random.default_rng(seed))
    count = int(len(audio) / 16000 * fps)
    frames = []
    for i in range(count):
        loud = float(np.abs(audio[int(i / fps * 16000) : int((i + 1) / fps * 16000)]).mean())
        image = render_face(i / fps, min(1.0, 8 * loud), FaceStyle(smile=smile))
        frames.append((image * 0.04).astype(np.uint8) if dark else image)
    from stream.render import write_clip

    write_clip(path, audio, frames, fps)
    return path


def cls_pooled_minilm(tmp_path: Path) -> Path:
    """A real sentence-transformers folder that embeds differently from the bundled encoder: the
    bundled all-MiniLM-L6-v2 read with CLS pooling instead of mean pooling."""
    from model.checkpoint import default_text_encoder_folder

    folder = tmp_path / "minilm-cls"
    (folder / "1_Pooling").mkdir(parents=True)
    for item in default_text_encoder_folder().iterdir():
        if item.is_file():
            (folder / item.name).symlink_to(item)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    return folder
