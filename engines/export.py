"""`dfmq export`: the whole DFMQ-MC forward (text encoder included) to ONNX, or on to TensorRT."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engines.base import INPUT_NAMES, OUTPUT_NAMES, WindowBatch
from model.checkpoint import hash_state
from model.dfmq import DFMQMC
from model.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
OPSET = 17
# Bumped when the exported graph's form changes for the same weights: a cached export of another
# form is made again (2: plain attention, shared frozen layers).
GRAPH_FORM = 2


def example_batch(
    model: DFMQMC, batch: int = 2, text_len: int = 12, audio_len: int = 20, video_len: int = 8, seed: int = 0
) -> WindowBatch:
    """Random but well-formed windows (partial masks, one sample without video) for export and benchmarks."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    vocab = int(getattr(model.text_encoder.config, "vocab_size", 1000))
    attention = np.ones((batch, text_len), dtype=np.int64)
    attention[0, text_len // 2 :] = 0
    audio_mask = np.ones((batch, audio_len), dtype=bool)
    audio_mask[0, audio_len // 2 :] = False
    video_mask = np.ones((batch, video_len), dtype=bool)
    video_mask[-1] = False
    return WindowBatch(
        input_ids=rng.integers(1, vocab, (batch, text_len)).astype(np.int64) * attention,
        attention_mask=attention,
        audio=rng.normal(0, 1, (batch, audio_len, cfg.audio_dim)).astype(np.float32),
        audio_mask=audio_mask,
        video=rng.normal(0, 1, (batch, video_len, cfg.video_dim)).astype(np.float32),
        video_mask=video_mask,
        quality=rng.uniform(0, 1, (batch, 3)).astype(np.float32),
    )


def plain_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, heads: int, dropout_p: float = 0.0) -> Tensor:
    """`sdpa_attention` as the exporter should see it: an additive key mask and the scale folded into q.

    Traced from scaled_dot_product_attention with a bool mask, the graph carries a Where over every
    (B, heads, L, L) score and a NaN guard of the same size: on the 480-frame audio window, two
    passes over 0.9 M scores. Here the mask is one (B, L) row added to the scores. Every key mask
    reaching it keeps position 0, so no row is all -inf."""
    head_dim = q.shape[-1] // heads

    def split(t: Tensor) -> Tensor:
        return t.unflatten(-1, (heads, head_dim)).transpose(1, 2)

    bias = torch.zeros(keep.shape, dtype=q.dtype).masked_fill(~keep, float("-inf"))[:, None, None, :]
    scores = torch.matmul(split(q * head_dim**-0.5), split(k).transpose(-1, -2)) + bias
    weights = F.dropout(scores.softmax(-1), dropout_p, training=dropout_p > 0)
    return torch.matmul(weights, split(v)).transpose(1, 2).flatten(2)


def _for_export(model: DFMQMC) -> DFMQMC:
    """A CPU fp32 copy whose attention traces to plain MatMul / Add / Softmax (numerically the same)."""
    model = copy.deepcopy(model).cpu().float().eval()
    model.use_attention(plain_attention)
    for encoder in (model.text_encoder, model.semantic_encoder):
        # transformers' "eager" attention is the plain form with an additive mask; "sdpa" traces
        # to the Where and NaN guard above.
        set_implementation = getattr(encoder, "set_attn_implementation", None)
        if callable(set_implementation):
            set_implementation("eager")
    return model


def shared_frozen_layers(model: DFMQMC) -> int:
    """How many bottom layers (embeddings included) the semantic encoder shares with the text
    encoder, weight for weight: frozen in training, they compute the same hidden states twice.

    Every tensor the bottom layers may read must be equal, not only theirs: everything but the
    upper layers and the pooler (an encoder-wide relative attention bias, as MPNet's, counts)."""
    if model.semantic_encoder is None or not model.config.frozen_text_layers:
        return 0
    text, semantic = model.text_encoder.state_dict(), model.semantic_encoder.state_dict()
    depth = int(getattr(model.text_encoder.config, "num_hidden_layers", 0))
    layers = min(model.config.frozen_text_layers, depth)
    upper = tuple(f"encoder.layer.{i}." for i in range(layers, depth))
    names = [n for n in text if not n.startswith((*upper, "pooler."))]
    if not layers or any(n not in semantic or not torch.equal(text[n], semantic[n]) for n in names):
        return 0
    return layers


def share_frozen_layers(onnx_model: Any, layers: int) -> bool:
    """Feed the semantic encoder's upper layers from the text encoder's copy of the shared ones and
    drop the duplicate nodes. Found by the exporter's node names (BERT family); a graph named
    otherwise is left whole (False)."""
    graph = onnx_model.graph
    produced = {out for node in graph.node for out in node.output}
    mine, theirs = (
        f"/{encoder}/encoder/layer.{layers - 1}/output/LayerNorm/LayerNormalization_output_0"
        for encoder in ("text_encoder", "semantic_encoder")
    )
    if layers < 1 or mine not in produced or theirs not in produced:
        return False
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == theirs:
                node.input[i] = mine
    wanted = {o.name for o in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | wanted
        dead = [node for node in graph.node if not any(out in read for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)
    return True


def _same_outputs(whole: Any, shared: Any, batch: WindowBatch) -> bool:
    """The graph with shared layers answers as the whole one (the names matched, the wiring holds)."""
    from engines.onnxruntime_engine import import_onnxruntime

    ort = import_onnxruntime()
    outputs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, batch.arrays())
        for m in (whole, shared)
    ]
    return all(np.allclose(a, b, atol=1e-5) for a, b in zip(*outputs))


def model_fingerprint(model: DFMQMC) -> str:
    """Hash of the configuration and every weight: engine caches are keyed by it."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    hash_state(digest, model)
    return digest.hexdigest()[:16]


def export_onnx(
    model: DFMQMC,
    out_path: Path,
    precision: str = "fp32",
    fingerprint: str | None = None,
    tokenizer: Any = None,
    fp32_path: Path | None = None,
) -> Path:
    """Export with dynamic batch and sequence axes, then run the ONNX checker on the file.

    int8 quantises an fp32 export (`fp32_path`, else one made here) and needs the model's tokenizer:
    its calibration and parity gate run real sentences (engines/int8.py)."""
    import onnx

    if precision not in PRECISIONS:
        raise ConfigError("--precision", f"one of {PRECISIONS}", precision)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if precision == "int8":
        return _export_int8(model, out_path, fingerprint or model_fingerprint(model), tokenizer, fp32_path)
    # Traced on a CPU fp32 copy: the caller's model may live on the GPU for another engine.
    model = _for_export(model)
    example = example_batch(model)
    args = tuple(torch.from_numpy(a) for a in example.arrays().values())
    dynamic_axes = {
        "input_ids": {0: "batch", 1: "text_len"},
        "attention_mask": {0: "batch", 1: "text_len"},
        "audio": {0: "batch", 1: "audio_len"},
        "audio_mask": {0: "batch", 1: "audio_len"},
        "video": {0: "batch", 1: "video_len"},
        "video_mask": {0: "batch", 1: "video_len"},
        "quality": {0: "batch"},
        **{name: {0: "batch"} for name in OUTPUT_NAMES},
    }
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes on transformers' mask helpers and on index export are expected:
        # the dynamic-shape parity tests are what vouch for the exported graph.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        torch.onnx.export(
            model,
            args,
            str(out_path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    shared = shared_frozen_layers(model)
    if shared:
        whole = onnx.load(str(out_path))
        graph = copy.deepcopy(whole)
        if share_frozen_layers(graph, shared) and _same_outputs(whole, graph, example_batch(model, 3, seed=4)):
            onnx.save(graph, str(out_path))
        else:
            log.info("the semantic encoder's %d shared layers were not found or differ; exported twice", shared)
            shared = 0
    if precision == "fp16":
        # Tracing a half-precision model on the CPU yields mixed-type LayerNorms; converting the
        # fp32 graph gives a consistent fp16 one (fp16 inputs and outputs too, as TensorRT's
        # strongly typed mode wants).
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(out_path)), keep_io_types=False), str(out_path))
    onnx.checker.check_model(str(out_path), full_check=True)
    meta = {
        "fingerprint": fingerprint or model_fingerprint(model),
        "precision": precision,
        "opset": OPSET,
        "graph_form": GRAPH_FORM,
        "semantic_layers_shared": shared,
        "labels": model.config.labels,
    }
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return out_path


def _export_int8(model: DFMQMC, out_path: Path, fingerprint: str, tokenizer: Any, fp32_path: Path | None) -> Path:
    import onnx

    from engines.int8 import quantize_int8

    if tokenizer is None:
        raise ValueError("an int8 export needs the model's tokenizer (calibration and parity run real sentences)")
    with tempfile.TemporaryDirectory() as tmp:
        if fp32_path is None:
            fp32_path = export_onnx(model, Path(tmp) / "fp32.onnx", "fp32", fingerprint)
        record = quantize_int8(fp32_path, out_path, model, tokenizer)
    onnx.checker.check_model(str(out_path), full_check=True)
    meta = {
        "fingerprint": fingerprint,
        "precision": "int8",
        "opset": OPSET,
        "graph_form": read_meta(fp32_path).get("graph_form"),
        "labels": model.config.labels,
        **record,
    }
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return out_path


def read_meta(onnx_path: Path) -> dict[str, Any]:
    """The sidecar an export wrote beside its .onnx."""
    return dict(json.loads(Path(onnx_path).with_suffix(".json").read_text()))
