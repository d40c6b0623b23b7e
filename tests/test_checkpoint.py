"""Compact checkpoints: only the trained part is stored (fp16) and merged with the base at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engines.export import example_batch
from engines.torch_engine import TorchEngine
from model.checkpoint import WEIGHTS_FILE, load_checkpoint, new_model, save_checkpoint
from model.config import MINTREC_LABELS, DFMQConfig
from model.errors import CheckpointError


def test_compact_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = DFMQConfig(labels=list(MINTREC_LABELS), audio_dim=16, video_dim=8, frozen_text_layers=2)
    model, tokenizer = new_model(config)
    frozen = model.frozen_parameter_names()
    assert "text_encoder.embeddings.word_embeddings.weight" in frozen
    assert "text_encoder.encoder.layer.1.output.dense.weight" in frozen
    assert "text_encoder.encoder.layer.2.output.dense.weight" not in frozen
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    with torch.no_grad():  # stand-in for training: move the trainable part away from the base
        for name, param in model.named_parameters():
            if name not in frozen:
                param.add_(0.01 * torch.randn_like(param))
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    full_bytes = sum(p.numel() for p in model.parameters()) * 4
    assert (tmp_path / "ckpt" / WEIGHTS_FILE).stat().st_size < full_bytes / 3

    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    windows = example_batch(model, 3, 10, 12, 4, seed=3)
    expected = TorchEngine(model.eval()).infer(windows)
    got = TorchEngine(loaded).infer(windows)
    assert (got.logits.argmax(1) == expected.logits.argmax(1)).all()
    assert abs(got.logits - expected.logits).max() < 5e-2  # fp16 storage of the trained part

    cfg_path = tmp_path / "ckpt" / "config.json"
    payload = json.loads(cfg_path.read_text())
    payload["weights"]["base_digest"] = "0" * 16
    cfg_path.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="base text encoder"):
        load_checkpoint(tmp_path / "ckpt")


def test_shipped_starter_model_loads_offline_and_is_live_compatible() -> None:
    from model.checkpoint import STARTER_DIR, resolve_ckpt
    from stream.stages import check_live_compatible

    assert resolve_ckpt("default") == STARTER_DIR
    model, tokenizer = load_checkpoint(resolve_ckpt("default"))
    options = check_live_compatible(model.config)
    assert options.mel_bins == model.config.audio_dim and model.config.labels == list(MINTREC_LABELS)
    assert sum(f.stat().st_size for f in STARTER_DIR.rglob("*") if f.is_file()) < 25 * 2**20
    assert tokenizer("hello there")["input_ids"][0] == tokenizer.cls_token_id
