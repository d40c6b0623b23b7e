"""Loaders in both layouts, and clear errors on bad data folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import default_text_encoder_folder, load_tokenizer
from model.config import MELD_DA_LABELS, MINTREC_LABELS
from model.data import Collator, FeatureStore, load_split, read_split
from model.errors import DataError


def test_mintrec_layout_with_features(tiny_mintrec: Path) -> None:
    store = FeatureStore(tiny_mintrec, audio_dim=16, video_dim=8)
    samples = load_split("mintrec", tiny_mintrec, "train", store)
    assert len(samples) == 12
    first = samples[0]
    assert first.key == "S01_E00_0"
    assert MINTREC_LABELS[first.label] == "Thank"
    assert first.audio is not None and first.audio.shape == (20, 16)
    assert any(s.video is None for s in samples)  # the fixture leaves some samples without camera

    collate = Collator(
        load_tokenizer(default_text_encoder_folder()),
        text_max_len=5,
        audio_dim=16,
        audio_max_len=30,
        video_dim=8,
        video_max_len=4,
    )
    batch = collate(samples[:6])
    assert batch.input_ids.shape[1] <= 5  # truncated to the configured text length
    assert batch.audio.shape == (6, 30, 16)  # longest sample is 48 frames, truncated to 30
    assert batch.audio_mask.sum(1).tolist() == [20, 27, 30, 30, 30, 20]
    assert batch.video.shape == (6, 4, 8)
    assert not batch.video_mask[3].any()  # sample 3 has no video
    assert batch.labels.tolist() == [s.label for s in samples[:6]]


def test_meld_da_layout_maps_abbreviations(tiny_meld: Path) -> None:
    rows = read_split("meld-da", tiny_meld, "dev")
    labels = list(MELD_DA_LABELS.values())
    assert [labels[r[2]] for r in rows] == [
        "Question",
        "Agreement",
        "Disagreement",
        "Greeting",
        "Acknowledge",
        "Question",
    ]
    assert rows[1][0] == "dia0_utt1"
    samples = load_split("meld-da", tiny_meld, "dev", FeatureStore(tiny_meld, 16, 8))
    assert samples[0].audio is not None


def test_text_only_folder_has_no_features(tmp_path: Path, tiny_mintrec: Path) -> None:
    for name in ("audio_feats.pkl", "video_feats.pkl"):
        (tiny_mintrec / name).unlink()
    store = FeatureStore(tiny_mintrec, 768, 256)
    assert store.text_only
    assert all(s.audio is None and s.video is None for s in load_split("mintrec", tiny_mintrec, "dev", store))


def test_missing_split_file_is_named(tiny_mintrec: Path) -> None:
    (tiny_mintrec / "dev.tsv").unlink()
    with pytest.raises(DataError, match=r"dev\.tsv: split file is missing"):
        read_split("mintrec", tiny_mintrec, "dev")


def test_unknown_label_names_line_and_value(tiny_mintrec: Path) -> None:
    path = tiny_mintrec / "train.tsv"
    path.write_text(path.read_text() + "S09\tE01\t7\tsome text\tSulk\n")
    with pytest.raises(DataError, match=r"train\.tsv:14: unknown label.*got 'Sulk'") as info:
        read_split("mintrec", tiny_mintrec, "train")
    assert info.value.line == 14


def test_bad_header_and_short_row(tiny_mintrec: Path) -> None:
    path = tiny_mintrec / "test.tsv"
    path.write_text("season\tepisode\ttext\tlabel\nS01\tE01\thello\tGreet\n")
    with pytest.raises(DataError, match=r"header lacks column\(s\) \['clip'\]"):
        read_split("mintrec", tiny_mintrec, "test")
    path.write_text("season\tepisode\tclip\ttext\tlabel\nS01\tE01\t3\thello\n")
    with pytest.raises(DataError, match=r"test\.tsv:2: row has too few fields"):
        read_split("mintrec", tiny_mintrec, "test")


def test_wrong_feature_dimension_is_explained(tiny_mintrec: Path) -> None:
    with (tiny_mintrec / "audio_feats.pkl").open("wb") as handle:
        pickle.dump({"S01_E00_0": np.zeros((10, 12), dtype=np.float32)}, handle)
    with pytest.raises(
        DataError,
        match=r"audio features of sample 'S01_E00_0' have the wrong shape "
        r"\(expected \(T, 16\), got \(10, 12\)\)",
    ):
        FeatureStore(tiny_mintrec, audio_dim=16, video_dim=8)


def test_alternative_feature_file_names_are_found(tiny_mintrec: Path) -> None:
    (tiny_mintrec / "video_feats.pkl").rename(tiny_mintrec / "swin_feats.pkl")
    store = FeatureStore(tiny_mintrec, 16, 8)
    assert store.video_path is not None and store.video_path.name == "swin_feats.pkl"
