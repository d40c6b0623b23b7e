"""Loaders in both layouts, and clear errors on bad data folders."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import default_text_encoder_folder, load_tokenizer
from model.config import MELD_DA_LABELS, MINTREC_LABELS, DFMQConfig, ReferenceStats
from model.data import Collator, FeatureStore, Sample, load_split, read_split
from model.dfmq import DFMQMC
from model.errors import DataError
from model.features import FeatureOptions, RawAudioStats, RawVideoStats
from model.quality import RecogniserScores, recognised_text_quality, recogniser_confidence, text_quality
from model.train import add_noise, batch_quality
from tests.conftest import tiny_text_encoder


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
        r"\(expected \(T, 16\) as the config's model.audio_dim says; folders written by `dfmq extract` train "
        r"with --config configs/starter.yaml \(their widths\), got \(10, 12\)\)",
    ):
        FeatureStore(tiny_mintrec, audio_dim=16, video_dim=8)


def test_alternative_feature_file_names_are_found(tiny_mintrec: Path) -> None:
    (tiny_mintrec / "video_feats.pkl").rename(tiny_mintrec / "swin_feats.pkl")
    store = FeatureStore(tiny_mintrec, 16, 8)
    assert store.video_path is not None and store.video_path.name == "swin_feats.pkl"


def _raw_stat_samples(count: int = 5) -> list[Sample]:
    """Samples as `dfmq extract` writes them: features plus raw-signal statistics (one without video)."""
    rng = np.random.default_rng(3)
    samples = []
    for i in range(count):
        video = rng.normal(0, 1, (4, 8)).astype(np.float32) if i != 2 else None
        samples.append(
            Sample(
                key=f"X00_E00_{i}",
                text=["thank you", "hello there friend", "sorry", "bye now", "help me please"][i % 5],
                label=i % 4,
                audio=rng.normal(0, 1, (10 + i, 16)).astype(np.float32),
                video=video,
                raw_audio=RawAudioStats(energy=-2.0 + 0.3 * i, entropy=0.3 + 0.1 * i, snr_db=25.0 - 4 * i),
                raw_video=RawVideoStats(motion=0.01 * (i + 1), contrast=0.2 + 0.02 * i, face_ratio=1.0)
                if video is not None
                else None,
                text_scores=RECOGNISER_SCORES[i % len(RECOGNISER_SCORES)],
            )
        )
    return samples


# What faster-whisper could say: confident, each ramp part-way, each one failing, and None (no scores).
RECOGNISER_SCORES: list[RecogniserScores | None] = [
    RecogniserScores(avg_logprob=-0.2, no_speech_prob=0.01, compression_ratio=1.3),
    RecogniserScores(avg_logprob=-0.7123456789, no_speech_prob=0.25, compression_ratio=2.05),
    None,
    RecogniserScores(avg_logprob=-1.4, no_speech_prob=0.9, compression_ratio=2.6),
    RecogniserScores(avg_logprob=-0.5, no_speech_prob=0.0, compression_ratio=2.3999),
]


def _collator() -> Collator:
    return Collator(load_tokenizer(default_text_encoder_folder()), 8, 16, 30, 8, 4)


def test_batch_to_moves_every_tensor_field_the_raw_statistics_too() -> None:
    batch = _collator()(_raw_stat_samples())
    assert batch.raw_audio is not None and batch.raw_video is not None
    moved = batch.to("meta")
    tensors = [f.name for f in dataclasses.fields(moved) if isinstance(getattr(moved, f.name), torch.Tensor)]
    assert {"raw_audio", "raw_video", "text_scores", "input_ids", "audio", "video", "labels"} <= set(tensors)
    for name in tensors:
        assert getattr(moved, name).device.type == "meta", name
    assert moved.keys == batch.keys
    assert batch.raw_audio.device.type == "cpu"  # a new batch; the original stays where it was


def test_eval_noise_keeps_raw_statistics_and_their_quality(tiny_model_config: DFMQConfig) -> None:
    """`dfmq eval --noise` perturbs the features only: a batch with raw-signal statistics keeps
    them, so its quality vector is scored from them exactly as without noise."""
    options = FeatureOptions(audio_quality="snr", video_quality="relative")
    config = dataclasses.replace(tiny_model_config, feature_options=dataclasses.asdict(options))
    model = DFMQMC(config, tiny_text_encoder())
    reference = ReferenceStats(audio_energy=-1.5, video_motion=0.02, video_contrast=0.22)
    clean = _collator()(_raw_stat_samples())
    noisy = add_noise(clean, 0.7, torch.Generator().manual_seed(0))
    assert not torch.equal(noisy.audio, clean.audio) and not torch.equal(noisy.video, clean.video)
    for f in dataclasses.fields(clean):
        if f.name not in ("audio", "video"):
            assert getattr(noisy, f.name) is getattr(clean, f.name), f.name
    q_clean, _ = batch_quality(model, clean, reference)
    q_noisy, _ = batch_quality(model, noisy, reference)
    assert torch.equal(q_noisy, q_clean)
    assert q_clean[2, 2] == 0.0 and (q_clean[:, 1] > 0).all()  # sample 2 has no video; all have audio
    # Benchmark features (no raw statistics) are scored on the features, which the noise does move.
    features_only = dataclasses.replace(clean, raw_audio=None, raw_video=None)
    noisy_features = add_noise(features_only, 0.7, torch.Generator().manual_seed(0))
    assert not torch.equal(batch_quality(model, noisy_features, reference)[0], q_clean)
    assert not torch.equal(
        batch_quality(model, noisy_features, reference)[0], batch_quality(model, features_only, reference)[0]
    )


def _live_text_quality(tokenizer: object, text: str, scores: RecogniserScores, max_len: int) -> float:
    """q_text exactly as stream/stages.py Deciding.window computes it for one utterance."""
    tokens = tokenizer([text], truncation=True, max_length=max_len, return_tensors="np")  # type: ignore[operator]
    coverage = float(text_quality(torch.from_numpy(tokens["attention_mask"]), max_len)[0])
    return recognised_text_quality(coverage, recogniser_confidence(scores))


def test_recogniser_scores_survive_collation_and_score_text_as_live(tiny_model_config: DFMQConfig) -> None:
    samples = _raw_stat_samples()
    collate = _collator()
    batch = collate(samples)
    assert batch.text_scores is not None and batch.text_scores.shape == (5, 3)
    assert batch.text_scores.dtype == torch.float64
    assert torch.isnan(batch.text_scores[2]).all()  # the sample without scores
    assert batch.text_scores[1].tolist() == [-0.7123456789, 0.25, 2.05]

    options = FeatureOptions(audio_quality="snr", video_quality="relative")
    reference = ReferenceStats(audio_energy=-1.5, video_motion=0.02, video_contrast=0.22)
    for feature_options in (dataclasses.asdict(options), None):  # raw-signal and feature-scored paths
        config = dataclasses.replace(tiny_model_config, text_max_len=8, feature_options=feature_options)
        q, _ = batch_quality(DFMQMC(config, tiny_text_encoder()), batch, reference)
        coverage = text_quality(batch.attention_mask, 8)
        for i, sample in enumerate(samples):
            if sample.text_scores is None:
                assert q[i, 0] == coverage[i]  # token coverage alone
            else:
                live = _live_text_quality(collate.tokenizer, sample.text, sample.text_scores, 8)
                assert float(q[i, 0]) == pytest.approx(live, abs=1e-7), i
    assert float(q[3, 0]) == 0.0 and float(q[0, 0]) > float(q[1, 0]) > 0.0  # failing, confident, part-way

    # Older extracted folders and benchmark data: no scores anywhere, coverage alone.
    plain = collate([dataclasses.replace(s, text_scores=None) for s in samples])
    assert plain.text_scores is None
    q_plain, _ = batch_quality(DFMQMC(tiny_model_config, tiny_text_encoder()), plain, reference)
    assert torch.equal(q_plain[:, 0], text_quality(plain.attention_mask, tiny_model_config.text_max_len))


def test_quality_stats_with_and_without_recogniser_scores_load(tiny_mintrec: Path) -> None:
    stats = {
        "S01_E00_0": {
            "audio": {"energy": -2.0, "entropy": 0.4, "snr_db": 20.0},
            "video": {"motion": 0.02, "contrast": 0.2, "face_ratio": 1.0},
            "text": {"avg_logprob": -0.3, "no_speech_prob": 0.02, "compression_ratio": 1.4},
        },
        # As written before the recogniser's scores were kept: no 'text' entry.
        "S01_E01_1": {"audio": {"energy": -2.5, "entropy": 0.5, "snr_db": 15.0}, "video": None},
    }
    with (tiny_mintrec / "quality_stats.pkl").open("wb") as handle:
        pickle.dump(stats, handle)
    samples = {s.key: s for s in load_split("mintrec", tiny_mintrec, "train", FeatureStore(tiny_mintrec, 16, 8))}
    assert samples["S01_E00_0"].text_scores == RecogniserScores(-0.3, 0.02, 1.4)
    assert samples["S01_E01_1"].text_scores is None and samples["S01_E01_1"].raw_video is None
    assert samples["S01_E02_2"].text_scores is None and samples["S01_E02_2"].raw_audio is None  # not in the file
    stats["S01_E00_0"]["text"] = {"logprob": -0.3}
    with (tiny_mintrec / "quality_stats.pkl").open("wb") as handle:
        pickle.dump(stats, handle)
    with pytest.raises(DataError, match="cannot read quality statistics"):
        FeatureStore(tiny_mintrec, 16, 8)
