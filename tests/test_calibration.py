"""Confidence that means something: expected calibration error, temperature scaling, and the
temperature's place in the checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import (
    CONFIG_FILE,
    default_text_encoder_folder,
    load_checkpoint,
    load_tokenizer,
    read_checkpoint_config,
    save_checkpoint,
    write_calibration,
)
from model.config import DFMQConfig
from model.dfmq import DFMQMC
from model.errors import ConfigError
from model.metrics import (
    TEMPERATURE_BOUNDS,
    calibration_bins,
    choose_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    save_reliability_diagram,
    softmax,
)
from tests.conftest import tiny_text_encoder


def _calibrated_set() -> tuple[np.ndarray, np.ndarray]:
    """Two classes; in each of five confidence levels exactly that share of the samples is right."""
    probs, labels = [], []
    for confidence in (0.55, 0.65, 0.75, 0.85, 0.95):
        right = round(confidence * 100)
        probs += [[confidence, 1 - confidence]] * 100
        labels += [0] * right + [1] * (100 - right)
    return np.array(probs), np.array(labels)


def test_ece_of_a_perfectly_calibrated_set_is_zero() -> None:
    probs, labels = _calibrated_set()
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-9)
    # The model's own probabilities, drawn from: close to zero as well.
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (20000, 4))
    drawn = softmax(logits)
    sampled = np.array([rng.choice(4, p=p) for p in drawn])
    assert expected_calibration_error(drawn, sampled) < 0.015


def test_ece_of_an_over_confident_set_is_large() -> None:
    # 99% sure, right half of the time: ECE = 0.49.
    probs = np.array([[0.99, 0.01]] * 200)
    labels = np.array([0, 1] * 100)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.49)


def test_ece_by_hand_over_15_bins() -> None:
    # 3 samples at 0.9 confidence (2 right), 1 at 0.6 (wrong): |2/3 - 0.9| * 3/4 + |0 - 0.6| * 1/4.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(abs(2 / 3 - 0.9) * 0.75 + 0.6 * 0.25)
    bins = calibration_bins(probs, labels)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4
    assert [b["count"] for b in bins if b["count"]] == [1, 3]  # (0.6 in (8/15, 9/15]; 0.9 in (13/15, 14/15])


def _over_confident_set(scale: float, n: int = 4000, classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(base); the 'model' reports `scale * base` (scale > 1: over-confident)."""
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1.5, (n, classes))
    labels = np.array([rng.choice(classes, p=p) for p in softmax(base)])
    return scale * base, labels


@pytest.mark.parametrize("scale", [4.0, 0.4])
def test_temperature_fitting_recovers_the_scale_and_lowers_nll_and_ece(scale: float) -> None:
    logits, labels = _over_confident_set(scale)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(scale, rel=0.1)
    nll_before, nll_after = (
        negative_log_likelihood(logits, labels),
        negative_log_likelihood(logits, labels, temperature),
    )
    ece_before = expected_calibration_error(softmax(logits), labels)
    ece_after = expected_calibration_error(softmax(logits, temperature), labels)
    assert nll_after < nll_before
    assert ece_after < ece_before and ece_after < 0.03
    # The fitted T is the minimum: nudging it either way costs NLL.
    for nudged in (temperature * 0.97, temperature * 1.03):
        assert negative_log_likelihood(logits, labels, nudged) > nll_after
    # Temperature does not move the argmax, so accuracy is untouched.
    assert (softmax(logits, temperature).argmax(1) == logits.argmax(1)).all()


def test_temperature_stays_inside_its_bounds_on_degenerate_sets() -> None:
    logits = np.array([[3.0, 0.0], [0.0, 3.0]])
    assert fit_temperature(logits, np.array([0, 1])) == TEMPERATURE_BOUNDS[0]  # all right: sharper is better
    assert fit_temperature(logits, np.array([1, 0])) == TEMPERATURE_BOUNDS[1]  # all wrong: flatter is better
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


def test_a_split_that_cannot_tell_keeps_the_temperature() -> None:
    logits = np.tile([[3.0, 0.0], [0.0, 3.0], [2.0, 1.0]], (4, 1))  # 12 samples
    right, one_wrong = np.tile([0, 1, 0], 4), np.tile([0, 1, 1], 4)
    temperature, note = choose_temperature(logits, right, 1.7)  # all right: the NLL has no minimum
    assert temperature == 1.7 and note is not None and "no errors" in note
    temperature, note = choose_temperature(logits, one_wrong, 1.7)
    assert note is None and temperature == fit_temperature(logits, one_wrong)
    assert choose_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int), 1.7)[0] == 1.7
    temperature, note = choose_temperature(logits[:4], one_wrong[:4], 1.7)  # a 4-sentence dev split
    assert temperature == 1.7 and note is not None and "too few" in note
    temperature, note = choose_temperature(logits, 1 - right, 1.7)  # all wrong: the fit runs to its bound
    assert temperature == 1.7 and note is not None and "ran to its bound" in note


def test_reliability_diagram_is_written(tmp_path: Path) -> None:
    probs, labels = _calibrated_set()
    path = tmp_path / "r.png"
    save_reliability_diagram(probs, labels, path, "calibrated")
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, True, "1"])
def test_config_temperature_must_be_positive_and_finite(bad: object) -> None:
    with pytest.raises(ConfigError, match="option 'temperature' expected a finite value > 0"):
        DFMQConfig(labels=["a", "b"], temperature=bad)  # type: ignore[arg-type]
    assert DFMQConfig(labels=["a", "b"], temperature=2).temperature == 2.0


def test_temperature_lives_in_the_checkpoint_and_old_ones_load_with_1(
    tmp_path: Path, tiny_model_config: DFMQConfig
) -> None:
    ckpt = tmp_path / "ckpt"
    model = DFMQMC(tiny_model_config, tiny_text_encoder())
    save_checkpoint(model, load_tokenizer(default_text_encoder_folder()), ckpt)
    payload = json.loads((ckpt / CONFIG_FILE).read_text())
    assert payload["model"]["temperature"] == 1.0
    del payload["model"]["temperature"]  # as written before calibration existed
    (ckpt / CONFIG_FILE).write_text(json.dumps(payload))
    assert read_checkpoint_config(ckpt)[0].temperature == 1.0

    weights_before = (ckpt / "weights.pt").read_bytes()
    write_calibration(ckpt, 2.5, {"split": "dev", "temperature": 2.5})
    loaded, _ = load_checkpoint(ckpt)
    assert loaded.config.temperature == 2.5
    saved = json.loads((ckpt / CONFIG_FILE).read_text())
    assert saved["calibration"] == {"split": "dev", "temperature": 2.5}
    assert (ckpt / "weights.pt").read_bytes() == weights_before
    with pytest.raises(ConfigError, match="temperature"):
        write_calibration(ckpt, -1.0, {})
    assert load_checkpoint(ckpt)[0].config.temperature == 2.5  # a refused value leaves the file as it was


def test_inference_probabilities_and_eval_confidence_use_the_temperature(tiny_model_config: DFMQConfig) -> None:
    """What engines publish (the forward's probabilities) and what `dfmq eval` scores agree."""
    import torch

    from model.data import Batch
    from model.train import batch_quality, predict

    torch.manual_seed(0)
    config = DFMQConfig(**{**tiny_model_config.to_dict(), "temperature": 2.5})
    model = DFMQMC(config, tiny_text_encoder()).eval()
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        keys=[f"k{i}" for i in range(4)],
        input_ids=torch.randint(1, 100, (4, 6), generator=g),
        attention_mask=torch.ones(4, 6, dtype=torch.long),
        audio=torch.randn(4, 10, 16, generator=g),
        audio_mask=torch.ones(4, 10, dtype=torch.bool),
        video=torch.randn(4, 5, 8, generator=g),
        video_mask=torch.ones(4, 5, dtype=torch.bool),
        labels=torch.tensor([0, 1, 2, 3]),
    )
    quality, _ = batch_quality(model, batch, config.reference)  # as predict scores it
    with torch.no_grad():
        logits, probs, _, _, _ = model(
            batch.input_ids, batch.attention_mask, batch.audio, batch.audio_mask, batch.video, batch.video_mask, quality
        )
    assert torch.allclose(probs, torch.softmax(logits / 2.5, dim=-1), atol=1e-6)
    result = predict(model, [batch], torch.device("cpu"), config.reference)
    assert np.allclose(result["confidence"], probs.max(dim=-1).values.numpy(), atol=1e-6)
    assert np.allclose(result["logits"], logits.numpy(), atol=1e-5)
