"""The int8 engine: parity with fp32 on real sentences, `dfmq eval`/`dfmq export` with it, and the auto rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.export import read_meta
from engines.int8 import GATE, Parity, gate_sentences, parity, text_windows
from engines.onnxruntime_engine import OnnxRuntimeEngine
from engines.select import INT8, choose_engine, int8_gate, load_engine, onnx_for
from model.checkpoint import default_text_encoder_folder, load_checkpoint, load_tokenizer, resolve_ckpt, save_checkpoint
from model.config import DFMQConfig
from model.dfmq import DFMQMC
from model.errors import ConfigError
from stream.cli import main

MINTREC_DEV = Path(__file__).resolve().parents[1] / "data" / "mintrec" / "dev.tsv"


@pytest.fixture(scope="module")
def starter_int8() -> tuple[DFMQMC, object, Path, Path]:
    """The starter's fp32 and int8 exports from the user's engine cache (built there once, ~1 min)."""
    model, tokenizer = load_checkpoint(resolve_ckpt("default"))
    return model, tokenizer, onnx_for(model, "fp32"), onnx_for(model, "int8", tokenizer=tokenizer)


def _dev_sentences(n: int) -> list[str]:
    rows = MINTREC_DEV.read_text(encoding="utf-8").splitlines()[1 : n + 1]
    return [row.split("\t")[3] for row in rows]


def test_int8_keeps_fp32_decisions_and_embeddings_on_real_sentences(starter_int8: tuple) -> None:
    model, tokenizer, fp32_path, int8_path = starter_int8
    fp32, int8 = OnnxRuntimeEngine(fp32_path), OnnxRuntimeEngine(int8_path)
    assert int8.name == "onnxruntime-int8-cpu"
    # MIntRec dev sentences: neither the calibration nor the gate saw them.
    windows = text_windows(model, tokenizer, _dev_sentences(96))
    check = parity(fp32.infer(windows), int8.infer(windows))
    # Tolerances: at most one of the 96 decisions may flip (99 % agreement; 445 dev rows measured 99.8 %),
    # logits within 0.1, and the two unit-norm outputs the intent sets score on within a cosine of 0.99.
    assert check.argmax_agreement >= 95 / 96
    assert check.max_abs_dlogit <= 0.1
    assert check.min_cosine_embedding >= 0.99 and check.min_cosine_sentence >= 0.99
    meta = read_meta(int8_path)
    assert meta["precision"] == "int8" and meta["parity"]["passed"]
    assert meta["parity"]["sentences"] == len(gate_sentences()[1])
    assert int8_path.stat().st_size < fp32_path.stat().st_size


def test_eval_scores_a_split_on_the_int8_engine(starter_int8: tuple, tmp_path: Path) -> None:
    data = tmp_path / "mintrec"
    data.mkdir()
    rows = MINTREC_DEV.read_text(encoding="utf-8").splitlines()[:25]
    (data / "dev.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    results = {}
    for engine in ("torch", INT8):
        out = tmp_path / f"{engine}.json"
        argv = ["eval", "--engine", engine, "--ckpt", "default", "--dataset", "mintrec", "--data", str(data)]
        assert main([*argv, "--split", "dev", "--json", str(out)]) == 0
        metrics = json.loads(out.read_text())
        assert metrics["n"] == 24
        results[engine] = metrics
        predicted = [line.split("\t")[2] for line in out.with_suffix(".predictions.tsv").read_text().splitlines()[1:]]
        results[engine]["predicted"] = predicted
    assert results["torch"]["engine"] == "torch-cpu" and results[INT8]["engine"] == "onnxruntime-int8-cpu"
    same = sum(a == b for a, b in zip(results["torch"]["predicted"], results[INT8]["predicted"]))
    assert same >= 23  # one flip in 24 allowed, as in the parity test


def _small_model(tiny_model_config: DFMQConfig, tokenizer: object) -> DFMQMC:
    """A small random BERT with the real tokenizer's vocabulary: the gate runs real sentences."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    encoder = BertModel(
        BertConfig(
            vocab_size=len(tokenizer),  # type: ignore[arg-type]
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    return DFMQMC(tiny_model_config, encoder).eval()


def test_export_cli_writes_an_int8_file_onnxruntime_loads(
    tiny_model_config: DFMQConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenizer = load_tokenizer(default_text_encoder_folder())
    model = _small_model(tiny_model_config, tokenizer)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(model, tokenizer, ckpt)
    out = tmp_path / "m-int8.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--precision", "int8", "--out", str(out)]) == 0
    import onnx

    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}  # really quantised
    engine = OnnxRuntimeEngine(out)
    windows = text_windows(model, tokenizer, ["could you help me carry this box", "thank you so much"])
    got = engine.infer(windows)
    assert got.logits.shape == (2, 4) and np.isfinite(got.logits).all()
    meta = read_meta(out)
    assert meta["quantization"]["level"] == meta["levels_tried"][-1]["level"]
    capsys.readouterr()
    assert main(["export", "--ckpt", str(ckpt), "--format", "tensorrt", "--precision", "int8", "--out", str(out)]) == 2
    assert "option '--precision' expected fp32 or fp16 with --format tensorrt" in capsys.readouterr().err


def test_auto_takes_int8_only_when_it_is_cached_and_clears_its_gate(
    tiny_model_config: DFMQConfig, tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip(reason="auto prefers the CUDA engines on this machine")
    tokenizer = load_tokenizer(default_text_encoder_folder())
    model = _small_model(tiny_model_config, tokenizer)
    gate = int8_gate(model, tmp_path)
    absent = choose_engine("auto", "cpu", gate)
    assert absent.backend == "onnxruntime"  # auto never builds one: it takes about a minute here
    assert "onnxruntime-int8-cpu: no int8 export of the current graph form in the cache" in absent.reason
    meta = read_meta(onnx_for(model, "int8", tmp_path, tokenizer=tokenizer))
    cleared, note = gate()
    assert cleared == meta["parity"]["passed"] and (note == "ok") == cleared
    choice = choose_engine("auto", "cpu", gate)
    assert choice.backend == (INT8 if cleared else "onnxruntime")
    if not cleared:
        assert any(s.startswith("onnxruntime-int8-cpu: int8 export misses its accuracy gate") for s in choice.skipped)
    loaded = load_engine(model, choice, cache_dir=tmp_path, tokenizer=tokenizer)
    assert loaded.name == ("onnxruntime-int8-cpu" if cleared else "onnxruntime-cpu")
    # Both verdicts, whatever this random model's was: the sidecar is what auto reads.
    failing = {**meta["parity"], "argmax_agreement": 0.9, "passed": False}
    onnx_for(model, "int8", tmp_path).with_suffix(".json").write_text(json.dumps({**meta, "parity": failing}))
    refused = choose_engine("auto", "cpu", int8_gate(model, tmp_path))
    assert refused.backend == "onnxruntime" and "argmax agreement 0.900" in refused.reason
    passing = {**meta["parity"], "argmax_agreement": 1.0, "passed": True}
    onnx_for(model, "int8", tmp_path).with_suffix(".json").write_text(json.dumps({**meta, "parity": passing}))
    assert choose_engine("auto", "cpu", int8_gate(model, tmp_path)).backend == INT8
    # Without a model to look the export up for, auto does not consider int8.
    assert choose_engine("auto", "cpu").backend == "onnxruntime"
    with pytest.raises(ConfigError, match="--device"):
        choose_engine(INT8, "cuda")


def test_gate_rule_bounds_the_accuracy_change() -> None:
    # One flip in 200 is the 0.5 points the issue allows; a cosine under the floor fails on its own.
    assert Parity(200, 0.995, 0.05, 0.999, 0.999).passed
    assert not Parity(200, 0.99, 0.05, 0.999, 0.999).passed
    assert not Parity(200, 1.0, 0.05, 0.999, GATE["min_cosine"] - 0.001).passed
