"""Engines: ONNX export and parity, engine choice, plan cache checks, the micro-batcher, bench."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.base import pad_and_stack
from engines.batcher import BatcherOptions, MicroBatcher
from engines.export import example_batch, export_onnx, model_fingerprint, plain_attention, read_meta
from engines.onnxruntime_engine import OnnxRuntimeEngine
from engines.select import choose_engine, load_engine, onnx_for
from engines.tensorrt_engine import EngineCacheError, PlanKey, check_plan, write_plan
from engines.torch_engine import TorchEngine
from model.checkpoint import default_text_encoder_folder, load_tokenizer, save_checkpoint
from model.config import DFMQConfig
from model.dfmq import DFMQMC, sdpa_attention
from model.errors import BackendUnavailableError
from stream.cli import main
from tests.conftest import tiny_text_encoder


@pytest.fixture(params=["dynamic", "anchor"])
def tiny_model(tiny_model_config: DFMQConfig, request: pytest.FixtureRequest) -> DFMQMC:
    torch.manual_seed(0)
    tiny_model_config.fusion = request.param
    model = DFMQMC(tiny_model_config, tiny_text_encoder(32)).eval()
    assert model.semantic_proj is not None
    torch.nn.init.normal_(model.semantic_proj.weight, std=0.1)  # zero at init: give the export something to carry
    return model


def test_onnx_export_matches_torch_across_batch_and_sequence_sizes(tiny_model: DFMQMC, tmp_path: Path) -> None:
    path = export_onnx(tiny_model, tmp_path / "m.onnx")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["fingerprint"] == model_fingerprint(tiny_model)
    torch_engine = TorchEngine(tiny_model)
    ort_engine = OnnxRuntimeEngine(path, threads=1)
    # Shapes unlike the export example's (2, 12, 20, 8): the axes must really be dynamic.
    for batch, text, audio, video in [(1, 5, 7, 1), (5, 30, 40, 8), (3, 9, 3, 2)]:
        windows = example_batch(tiny_model, batch, text, audio, video, seed=batch)
        expected = torch_engine.infer(windows)
        got = ort_engine.infer(windows)
        assert got.logits.shape == (batch, 4)
        assert np.abs(got.logits - expected.logits).max() <= 1e-4
        assert np.abs(got.weights - expected.weights).max() <= 1e-5
        assert got.weights[-1, 1] == 0.0  # the window without video has no video weight
        for name in ("embedding", "sentence"):
            assert getattr(got, name).shape == (batch, 32)
            assert np.abs(getattr(got, name) - getattr(expected, name)).max() <= 1e-4
        assert np.abs(got.embedding - got.sentence).max() > 1e-3  # the fused shift is exported too


def test_plain_attention_matches_sdpa_with_padded_keys() -> None:
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 5, 16), torch.randn(3, 9, 16), torch.randn(3, 9, 16)
    keep = torch.rand(3, 9) > 0.5
    keep[:, 0] = True  # what every caller guarantees: position 0 stays visible
    keep[2] = False
    keep[2, 0] = True
    expected = sdpa_attention(q, k, v, keep, 4)
    assert torch.allclose(plain_attention(q, k, v, keep, 4), expected, atol=1e-6)
    keep[1, 3] = ~keep[1, 3]
    assert not torch.allclose(plain_attention(q, k, v, keep, 4), expected, atol=1e-3)  # the mask is read


@pytest.mark.parametrize("moved", ["nothing shared", "shared layer", "embeddings"])
def test_export_computes_the_shared_frozen_layers_once(
    tiny_model_config: DFMQConfig, tmp_path: Path, moved: str
) -> None:
    import onnx

    torch.manual_seed(0)
    tiny_model_config.frozen_text_layers = 1
    model = DFMQMC(tiny_model_config, tiny_text_encoder(32, layers=2)).eval()
    with torch.no_grad():
        model.text_encoder.encoder.layer[1].output.dense.weight.add_(0.05)  # fine-tuning moved layer 1
        model.text_encoder.pooler.dense.bias.add_(0.05)  # unused by the model: sharing may ignore it
        # A checkpoint whose "frozen" part differs from the semantic encoder: nothing may be shared.
        if moved == "shared layer":
            model.text_encoder.encoder.layer[0].output.dense.weight.add_(0.05)
        elif moved == "embeddings":
            model.text_encoder.embeddings.LayerNorm.weight.add_(0.05)
    fine_tuned_shared_layer = moved != "nothing shared"
    path = export_onnx(model, tmp_path / "m.onnx")
    names = [node.name for node in onnx.load(str(path)).graph.node]
    semantic_layer0 = [n for n in names if n.startswith("/semantic_encoder/encoder/layer.0/")]
    assert any(n.startswith("/semantic_encoder/encoder/layer.1/") for n in names)
    assert bool(semantic_layer0) == fine_tuned_shared_layer
    assert read_meta(path)["semantic_layers_shared"] == (0 if fine_tuned_shared_layer else 1)
    windows = example_batch(model, 3, 11, 17, 5, seed=2)
    expected, got = TorchEngine(model).infer(windows), OnnxRuntimeEngine(path, threads=1).infer(windows)
    for name in ("logits", "embedding", "sentence"):
        assert np.abs(getattr(got, name) - getattr(expected, name)).max() <= 1e-4


def test_fp16_export_runs_close_to_fp32(tiny_model: DFMQMC, tmp_path: Path) -> None:
    path = export_onnx(tiny_model, tmp_path / "m16.onnx", precision="fp16")
    engine = OnnxRuntimeEngine(path, threads=1)
    assert engine.name.endswith("fp16")
    windows = example_batch(tiny_model, 3, 10, 12, 4, seed=5)
    expected = TorchEngine(tiny_model).infer(windows)
    got = engine.infer(windows)
    assert np.abs(got.probs - expected.probs).max() < 2e-2
    assert (got.logits.argmax(1) == expected.logits.argmax(1)).all()


def test_auto_falls_back_when_backends_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    choice = choose_engine("auto")
    assert any(s.startswith("tensorrt-cuda") for s in choice.skipped)
    if not torch.cuda.is_available():
        assert (choice.backend, choice.device) == ("onnxruntime", "cpu")
    # Inject the fault a user without onnxruntime would hit.
    monkeypatch.setattr("engines.select.onnxruntime_status", lambda: (False, False, "No module named 'onnxruntime'"))
    fallback = choose_engine("auto", device="cpu")
    assert (fallback.backend, fallback.device) == ("torch", "cpu")
    assert "onnxruntime-cpu: No module named 'onnxruntime'" in fallback.reason
    with pytest.raises(BackendUnavailableError, match="onnxruntime is not available"):
        choose_engine("onnxruntime")


def test_tensorrt_unavailable_here_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip(reason="this test covers machines without TensorRT and CUDA")
    with pytest.raises(BackendUnavailableError, match="tensorrt is not available"):
        choose_engine("tensorrt")


def test_stale_or_mismatched_plan_is_refused(tmp_path: Path) -> None:
    key = PlanKey("abc123", "10.7.0", "NVIDIA H100 80GB HBM3", "fp16", 32)
    plan = key.plan_path(tmp_path)
    write_plan(b"serialized", key, plan)
    check_plan(plan, key)  # matches: no error
    other_gpu = PlanKey("abc123", "10.7.0", "NVIDIA GeForce RTX 4090", "fp16", 32)
    with pytest.raises(EngineCacheError, match="gpu_name is 'NVIDIA H100 80GB HBM3'") as info:
        check_plan(plan, other_gpu)
    assert info.value.field == "gpu_name"
    assert other_gpu.plan_path(tmp_path) != plan  # a changed key never reuses the old file
    plan.with_suffix(".json").unlink()
    with pytest.raises(EngineCacheError, match="metadata"):
        check_plan(plan, key)


def test_onnx_cache_is_keyed_by_weights(tiny_model: DFMQMC, tmp_path: Path) -> None:
    first = onnx_for(tiny_model, "fp32", tmp_path)
    assert onnx_for(tiny_model, "fp32", tmp_path) == first
    with torch.no_grad():
        tiny_model.classifier.bias.add_(1.0)
    assert onnx_for(tiny_model, "fp32", tmp_path) != first


def test_batcher_routes_each_row_back_to_its_stream_in_order(tiny_model: DFMQMC) -> None:
    engine = TorchEngine(tiny_model)
    windows = {
        f"cam{s}": [example_batch(tiny_model, 1, 4 + i, 5 + 2 * i + s, 2 + s, seed=10 * s + i) for i in range(4)]
        for s in range(3)
    }
    # Unbatched answers; batching pads to the longest window, which must not change them.
    expected = {sid: [engine.infer(w).logits for w in ws] for sid, ws in windows.items()}

    async def scenario() -> tuple[dict[str, list[np.ndarray]], MicroBatcher]:
        batcher = MicroBatcher(engine, BatcherOptions(max_batch=5, max_delay_ms=50))
        results: dict[str, list[np.ndarray]] = {sid: [] for sid in windows}

        async def stream(sid: str) -> None:
            for w in windows[sid]:
                result = await batcher.infer(sid, w)
                assert result.stream_id == sid
                results[sid].append(result.output.logits)

        async with batcher:
            await asyncio.wait_for(asyncio.gather(*(stream(s) for s in windows)), 30)
        return results, batcher

    results, batcher = asyncio.run(scenario())
    for sid in windows:
        assert len(results[sid]) == 4
        for got, want in zip(results[sid], expected[sid]):
            np.testing.assert_allclose(got, want, atol=1e-5)
    assert batcher.stats.windows == 12
    assert batcher.stats.batches < 12  # concurrent streams really shared engine calls


def test_batcher_deadline_flushes_a_partial_batch(tiny_model: DFMQMC) -> None:
    async def scenario() -> int:
        async with MicroBatcher(TorchEngine(tiny_model), BatcherOptions(max_batch=8, max_delay_ms=20)) as batcher:
            result = await asyncio.wait_for(batcher.infer("solo", example_batch(tiny_model, 1, 5, 5, 2)), 10)
            return result.batch_size

    assert asyncio.run(scenario()) == 1


def test_batcher_hands_engine_errors_to_every_caller(tiny_model: DFMQMC) -> None:
    class FailingEngine:
        name = "failing"

        def infer(self, batch: object) -> object:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    async def scenario() -> list[BaseException | object]:
        async with MicroBatcher(FailingEngine(), BatcherOptions(max_batch=4, max_delay_ms=20)) as batcher:  # type: ignore[arg-type]
            calls = [batcher.infer(f"s{i}", example_batch(tiny_model, 1, 4, 4, 2)) for i in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) and "illegal memory access" in str(o) for o in outcomes)


def test_pad_and_stack_pads_masks_with_false(tiny_model: DFMQMC) -> None:
    a = example_batch(tiny_model, 1, 4, 3, 2)
    b = example_batch(tiny_model, 1, 6, 5, 1)
    stacked = pad_and_stack([a, b])
    assert stacked.audio.shape[:2] == (2, 5)
    assert not stacked.audio_mask[0, 3:].any()
    assert not stacked.attention_mask[0, 4:].any()


def test_bench_cli_writes_the_documented_json(
    tiny_model: DFMQMC, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "ckpt"
    save_checkpoint(tiny_model, load_tokenizer(default_text_encoder_folder()), ckpt)
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--ckpt",
            str(ckpt),
            "--engines",
            "torch,onnxruntime,tensorrt",
            "--batch-sizes",
            "1,2",
            "--iters",
            "3",
            "--text-len",
            "8",
            "--audio-frames",
            "10",
            "--video-frames",
            "4",
            "--json",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    for engine in ("torch-cpu", "onnxruntime-cpu"):
        for batch in ("1", "2"):
            row = report["engines"][engine][batch]
            assert row["windows_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert report["parity"]["torch-cpu"] == 0.0
    assert report["parity"]["onnxruntime-cpu"] <= 1e-4
    assert report["params"] == sum(p.numel() for p in tiny_model.parameters())
    assert "tensorrt" in report["errors"]  # not installable here: reported, not crashed
    printed = capsys.readouterr().out
    assert "onnxruntime-cpu vs torch-cpu at batch 1" in printed and "paper (RTX 4090)" in printed


def test_export_cli_and_load_engine(tiny_model: DFMQMC, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    save_checkpoint(tiny_model, load_tokenizer(default_text_encoder_folder()), ckpt)
    assert main(["export", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "e.onnx")]) == 0
    assert (tmp_path / "e.onnx").stat().st_size > 1000
    engine = load_engine(tiny_model, choose_engine("onnxruntime", device="cpu"), cache_dir=tmp_path / "cache")
    assert engine.name == "onnxruntime-cpu"
