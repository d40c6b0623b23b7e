"""Dataset loaders for the MIntRec and MELD-DA layouts, with optional feature pickles, and the
`intents` layout: `label<TAB>text` rows whose labels are the names of a user's intent set."""

from __future__ import annotations

import csv
import dataclasses
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from model.config import MELD_DA_LABELS, MINTREC_LABELS
from model.errors import DataError
from model.features import VIDEO_STAT_COLUMNS, RawAudioStats, RawVideoStats, video_stats_row
from model.quality import TEXT_SCORE_COLUMNS, RecogniserScores, text_scores_row

DATASETS = ("mintrec", "meld-da", "intents")
SPLITS = ("train", "dev", "test")
# Feature file names by release, tried in order; the official release nests them in folders.
AUDIO_FEATURE_FILES = ("audio_feats.pkl", "wavlm_feats.pkl", "audio_data/audio_feats.pkl")
VIDEO_FEATURE_FILES = ("video_feats.pkl", "swin_feats.pkl", "video_data/video_feats.pkl")


QUALITY_STATS_FILE = "quality_stats.pkl"
FEATURE_OPTIONS_FILE = "features.json"


@dataclass
class Sample:
    key: str
    text: str
    label: int
    audio: np.ndarray | None  # (T, D) float32
    video: np.ndarray | None  # (T, D) float32
    # Raw-signal quality statistics, present in folders written by `dfmq extract`.
    raw_audio: RawAudioStats | None = None
    raw_video: RawVideoStats | None = None
    # What the recogniser said of the clip's audio (`dfmq extract`); text quality is then scored
    # as live. None: token coverage alone (benchmark text, older extracted folders).
    text_scores: RecogniserScores | None = None


@dataclass
class Batch:
    keys: list[str]
    input_ids: Tensor  # (B, L) int64
    attention_mask: Tensor  # (B, L) int64
    audio: Tensor  # (B, Ta, Da) float32
    audio_mask: Tensor  # (B, Ta) bool
    video: Tensor  # (B, Tv, Dv) float32
    video_mask: Tensor  # (B, Tv) bool
    labels: Tensor  # (B,) int64
    raw_audio: Tensor | None = None  # (B, 3) energy, entropy, snr_db; NaN rows have no audio
    raw_video: Tensor | None = None  # (B, 6) model.features.VIDEO_STAT_COLUMNS; NaN rows have no video
    # (B, 3) float64 recogniser scores in model.quality.TEXT_SCORE_COLUMNS order; NaN rows have none
    text_scores: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """Every tensor field on `device` (the optional ones too, where present)."""
        moved: dict[str, Any] = {
            f.name: value.to(device)
            for f in dataclasses.fields(self)
            if isinstance(value := getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)


def dataset_labels(dataset: str, intent_names: Sequence[str] | None = None) -> list[str]:
    """The label set of a layout; for `intents`, the intent set's names (required)."""
    if dataset == "intents":
        if not intent_names:
            raise DataError("the intents layout needs an intent set", expected="--intents FILE", got="none")
        return list(intent_names)
    if dataset == "mintrec":
        return list(MINTREC_LABELS)
    if dataset == "meld-da":
        return list(MELD_DA_LABELS.values())
    raise DataError("unknown dataset", expected=f"one of {DATASETS}", got=repr(dataset))


def _read_rows(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise DataError("split file is missing", path=path, expected="a tab-separated file with a header row")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataError("file is empty", path=path, expected=f"header {' '.join(required)}")
        names = [h.strip().lower() for h in header]
        missing = [col for col in required if col not in names]
        if missing:
            raise DataError(
                f"header lacks column(s) {missing}",
                path=path,
                line=1,
                expected=f"columns {list(required)}",
                got=str(header),
            )
        rows = []
        for line_no, cells in enumerate(reader, start=2):
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) < len(names):
                raise DataError(
                    "row has too few fields",
                    path=path,
                    line=line_no,
                    expected=f"{len(names)} tab-separated fields",
                    got=f"{len(cells)}: {cells!r}",
                )
            rows.append((line_no, dict(zip(names, (c.strip() for c in cells)))))
    return rows


def _label_index(raw: str, labels: list[str], aliases: dict[str, str], path: Path, line: int) -> int:
    name = aliases.get(raw.lower(), raw)
    lookup = {label.lower(): i for i, label in enumerate(labels)}
    if name.lower() not in lookup:
        raise DataError("unknown label", path=path, line=line, expected=f"one of {labels}", got=repr(raw))
    return lookup[name.lower()]


def read_split(
    dataset: str, data_dir: Path, split: str, intent_names: Sequence[str] | None = None
) -> list[tuple[str, str, int]]:
    """(key, text, label index) rows of one split."""
    if split not in SPLITS:
        raise DataError("unknown split", expected=f"one of {SPLITS}", got=repr(split))
    return read_tsv(dataset, Path(data_dir) / f"{split}.tsv", intent_names)


def read_tsv(dataset: str, path: Path, intent_names: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
    """(key, text, label index) rows of a tsv in the dataset's layout."""
    labels = dataset_labels(dataset, intent_names)
    out = []
    if dataset == "intents":
        for line, row in _read_rows(path, ("label", "text")):
            if not row["text"].strip():
                raise DataError("a row without text", path=path, line=line, expected="label<TAB>a sentence")
            out.append((f"{path.stem}_{line}", row["text"], _label_index(row["label"], labels, {}, path, line)))
    elif dataset == "mintrec":
        for line, row in _read_rows(path, ("season", "episode", "clip", "text", "label")):
            key = f"{row['season']}_{row['episode']}_{row['clip']}"
            out.append((key, row["text"], _label_index(row["label"], labels, {}, path, line)))
    else:
        for line, row in _read_rows(path, ("dialogue", "utterance", "text", "label")):
            key = f"dia{row['dialogue']}_utt{row['utterance']}"
            out.append((key, row["text"], _label_index(row["label"], labels, MELD_DA_LABELS, path, line)))
    if not out:
        raise DataError("file has no rows", path=path, expected="at least one labelled row")
    return out


def _find_feature_file(data_dir: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def load_features(path: Path, expected_dim: int, what: str) -> dict[str, np.ndarray]:
    """A pickled {sample key: (T, D) array} dict, checked for the configured feature width."""
    try:
        with path.open("rb") as handle:
            raw: Any = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(f"cannot read {what} features: {exc}", path=path) from exc
    if not isinstance(raw, dict):
        raise DataError(
            f"{what} features are not a dict", path=path, expected="dict keyed by sample key", got=type(raw).__name__
        )
    out = {}
    for key, value in raw.items():
        arr = np.asarray(value, dtype=np.float32)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2 or arr.shape[1] != expected_dim:
            raise DataError(
                f"{what} features of sample {key!r} have the wrong shape",
                path=path,
                expected=f"(T, {expected_dim}) as the config's model.{what}_dim says; folders written by "
                "`dfmq extract` train with --config configs/starter.yaml (their widths)",
                got=str(tuple(arr.shape)),
            )
        out[str(key)] = arr
    return out


class SampleStats(NamedTuple):
    """The quality statistics `dfmq extract` keeps per sample (None: not there)."""

    audio: RawAudioStats | None = None
    video: RawVideoStats | None = None
    text: RecogniserScores | None = None


def load_quality_stats(path: Path) -> dict[str, SampleStats]:
    """quality_stats.pkl: per key the raw audio and video statistics and, in folders extracted
    since text quality sees the recogniser, its scores of the clip's audio under 'text' (older
    files have no 'text' entries: those samples are scored on token coverage alone)."""
    try:
        with path.open("rb") as handle:
            raw: Any = pickle.load(handle)
        return {
            str(key): SampleStats(
                RawAudioStats(**entry["audio"]) if entry.get("audio") else None,
                RawVideoStats(**entry["video"]) if entry.get("video") else None,
                RecogniserScores(**entry["text"]) if entry.get("text") else None,
            )
            for key, entry in raw.items()
        }
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, KeyError, TypeError) as exc:
        raise DataError(
            f"cannot read quality statistics: {exc}",
            path=path,
            expected="{key: {'audio': {energy, entropy, snr_db} | None, "
            "'video': {motion, contrast, face_ratio, ...} | None, "
            f"'text' (optional): {{{', '.join(TEXT_SCORE_COLUMNS)}}} | None}}}}",
        ) from exc


class FeatureStore:
    """The optional feature pickles of a data folder, loaded once for all splits.

    Folders written by `dfmq extract` also carry raw-signal quality statistics and the
    `FeatureOptions` that made them; benchmark releases carry features only.
    """

    def __init__(self, data_dir: Path, audio_dim: int, video_dim: int) -> None:
        data_dir = Path(data_dir)
        self.audio_path = _find_feature_file(data_dir, AUDIO_FEATURE_FILES)
        self.video_path = _find_feature_file(data_dir, VIDEO_FEATURE_FILES)
        self.audio = load_features(self.audio_path, audio_dim, "audio") if self.audio_path else {}
        self.video = load_features(self.video_path, video_dim, "video") if self.video_path else {}
        quality_path = data_dir / QUALITY_STATS_FILE
        self.quality = load_quality_stats(quality_path) if quality_path.is_file() else {}
        options_path = data_dir / FEATURE_OPTIONS_FILE
        self.feature_options: dict[str, Any] | None = (
            json.loads(options_path.read_text()) if options_path.is_file() else None
        )

    @property
    def text_only(self) -> bool:
        return not self.audio and not self.video


def load_split(
    dataset: str, data_dir: Path, split: str, features: FeatureStore, intent_names: Sequence[str] | None = None
) -> list[Sample]:
    samples = []
    for key, text, label in read_split(dataset, Path(data_dir), split, intent_names):
        stats = features.quality.get(key, SampleStats())
        samples.append(
            Sample(
                key,
                text,
                label,
                features.audio.get(key),
                features.video.get(key),
                stats.audio,
                stats.video,
                stats.text,
            )
        )
    return samples


def _raw_tensor(rows: Sequence[tuple[float, ...] | None], width: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.tensor([row if row is not None else (float("nan"),) * width for row in rows], dtype=dtype)


def _pad_sequences(seqs: Sequence[np.ndarray | None], dim: int, max_len: int) -> tuple[Tensor, Tensor]:
    """Pad/truncate to the longest in the batch (at most `max_len`, at least 1 row)."""
    lengths = [0 if s is None else min(len(s), max_len) for s in seqs]
    width = max(1, max(lengths))
    out = torch.zeros(len(seqs), width, dim)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, (seq, n) in enumerate(zip(seqs, lengths)):
        if seq is not None and n:
            out[i, :n] = torch.from_numpy(seq[:n])
            mask[i, :n] = True
    return out, mask


class Collator:
    def __init__(
        self, tokenizer: Any, text_max_len: int, audio_dim: int, audio_max_len: int, video_dim: int, video_max_len: int
    ) -> None:
        self.tokenizer = tokenizer
        self.text_max_len = text_max_len
        self.audio_dim, self.audio_max_len = audio_dim, audio_max_len
        self.video_dim, self.video_max_len = video_dim, video_max_len

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        tokens = self.tokenizer(
            [s.text for s in samples],
            padding="longest",
            truncation=True,
            max_length=self.text_max_len,
            return_tensors="pt",
        )
        audio, audio_mask = _pad_sequences([s.audio for s in samples], self.audio_dim, self.audio_max_len)
        video, video_mask = _pad_sequences([s.video for s in samples], self.video_dim, self.video_max_len)
        has_raw = any(s.raw_audio is not None or s.raw_video is not None for s in samples)
        raw_audio = raw_video = None
        if has_raw:
            raw_audio = _raw_tensor(
                [(a.energy, a.entropy, a.snr_db) if (a := s.raw_audio) else None for s in samples], 3
            )
            raw_video = _raw_tensor(
                [video_stats_row(v) if (v := s.raw_video) else None for s in samples], len(VIDEO_STAT_COLUMNS)
            )
        text_scores = None
        if any(s.text_scores is not None for s in samples):
            text_scores = _raw_tensor(
                [text_scores_row(t) if (t := s.text_scores) else None for s in samples],
                len(TEXT_SCORE_COLUMNS),
                torch.float64,  # as the live pipeline's Python floats: q_text the same to the last bit
            )
        return Batch(
            raw_audio=raw_audio,
            raw_video=raw_video,
            text_scores=text_scores,
            keys=[s.key for s in samples],
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            audio=audio,
            audio_mask=audio_mask,
            video=video,
            video_mask=video_mask,
            labels=torch.tensor([s.label for s in samples], dtype=torch.long),
        )
