"""The int8 engine's graph: dynamic int8 quantisation of the fp32 export, smoothed first, and its parity gate.

Dynamic quantisation (`onnxruntime.quantization.quantize_dynamic`) turns every MatMul with a constant
weight into an int8 one: weights per output channel, activations per tensor, their range measured on
each call. Measured on the starter, that alone moved MIntRec dev accuracy by -1.6 points (96 % of
decisions kept) and the semantic encoder's sentences to a cosine of 0.95 against fp32: one
per-tensor scale is set by the few large channels of a BERT-family hidden state and leaves the
others a handful of levels. Smoothing (SmoothQuant, Xiao et al. 2023) divides each input channel by
s_j = max|X_j|^a / max|W_j|^(1-a) and multiplies the weight's row j by s_j: the product is unchanged
in exact arithmetic, the activation range is flattened and the weight, quantised per channel, takes
a share. max|X_j| is measured once on real sentences (calibration), which is why the export needs a
tokenizer.

The gate: accuracy on any set can move by at most the share of decisions that change. So the export
records, on real sentences it was not calibrated on, the argmax agreement with fp32 and the cosine
of the embedding and sentence outputs (the intent sets score on those), tries the levels of
`LEVELS` fastest first and keeps the first that clears `GATE`; `--engine auto` takes int8 only
when the cached export cleared it.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineOutput, WindowBatch
from model.dfmq import DFMQMC
from model.errors import BackendUnavailableError

SMOOTH_ALPHA = 0.6  # of 0.3-1.0 on the starter, 0.6-0.7 kept the semantic encoder's sentences closest to fp32
SHIPPED_SETS = ("mintrec.yaml", "kiosk.yaml", "lab.yaml")
_FFN_OUT = r"^/(text|semantic)_encoder/encoder/layer\.\d+/output/"
# What stays fp32 (node-name patterns), fastest first. The input of each layer's second FFN MatMul
# (GELU outputs) keeps outliers smoothing cannot flatten: quantised, it cost the semantic encoder's
# sentences a cosine of 0.95 against fp32. The fine-tuned text encoder's own attention output moves
# logits most; the second level keeps that whole encoder fp32, giving up part of the speed. With
# the bottom layers shared (engines/export.py), "whole" includes them, which the semantic encoder
# reads too: a level with only the fine-tuned layers fp32 cleared the gate, ran no faster here and
# cost 0.68 points of MIntRec dev accuracy with descriptions (README "Engines").
LEVELS = {
    "encoders-partial": _FFN_OUT + r"|^/text_encoder/encoder/layer\.\d+/attention/output/",
    "text-encoder-fp32": _FFN_OUT + r"|^/text_encoder/",
}
# Share of fp32's decisions int8 must keep, and the lowest cosine of an embedding or sentence output,
# on the gate sentences. Accuracy can move by at most the share of decisions that change, so 99.5 %
# bounds it at the 0.5 points asked for, on sentences like these.
GATE = {"argmax_agreement": 0.995, "min_cosine": 0.99}


@dataclass
class Parity:
    sentences: int
    argmax_agreement: float
    max_abs_dlogit: float
    min_cosine_embedding: float
    min_cosine_sentence: float

    @property
    def passed(self) -> bool:
        return self.argmax_agreement >= GATE["argmax_agreement"] and (
            min(self.min_cosine_embedding, self.min_cosine_sentence) >= GATE["min_cosine"]
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gate": GATE, "passed": self.passed}


def import_quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime quantization", str(exc), "Install onnxruntime (it ships onnxruntime.quantization) and onnx."
        ) from exc
    return quantization


def gate_sentences() -> tuple[list[str], list[str]]:
    """(calibration, gate) sentences, shipped with the package, never the same sentence in both.

    Calibration: alternate off-topic sentences (small talk, commands, facts, fragments); the outlier
    channels smoothing evens out are the encoder's own, not a dataset's. Gate: the other off-topic
    sentences and every description and example of the shipped intent sets, so that any checkpoint
    can be quantised and checked without a dataset at hand."""
    from model.intents import load_intent_set
    from model.paths import config_file
    from model.semantic import offtopic_sentences

    background, rule = offtopic_sentences()
    lines = background + rule
    intents = [
        text
        for name in SHIPPED_SETS
        for intent in load_intent_set(config_file("intents", name)).intents
        for text in (intent.description, *intent.examples)
    ]
    return lines[0::2], lines[1::2] + intents


def text_windows(model: DFMQMC, tokenizer: Any, sentences: list[str]) -> WindowBatch:
    """Real sentences as text-only windows (audio and video masked out, the text quality of a clean transcript)."""
    cfg = model.config
    enc = tokenizer(sentences, padding=True, truncation=True, max_length=cfg.text_max_len, return_tensors="np")
    n = len(sentences)
    return WindowBatch(
        input_ids=enc["input_ids"].astype(np.int64),
        attention_mask=enc["attention_mask"].astype(np.int64),
        audio=np.zeros((n, 1, cfg.audio_dim), np.float32),
        audio_mask=np.zeros((n, 1), bool),
        video=np.zeros((n, 1, cfg.video_dim), np.float32),
        video_mask=np.zeros((n, 1), bool),
        quality=np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (n, 1)),
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12))


def parity(reference: EngineOutput, got: EngineOutput) -> Parity:
    return Parity(
        sentences=int(reference.logits.shape[0]),
        argmax_agreement=float((reference.logits.argmax(1) == got.logits.argmax(1)).mean()),
        max_abs_dlogit=float(np.abs(reference.logits - got.logits).max()),
        min_cosine_embedding=float(_cosine(reference.embedding, got.embedding).min()),
        min_cosine_sentence=float(_cosine(reference.sentence, got.sentence).min()),
    )


def _activation_maxima(fp32_path: Path, names: list[str], batch: WindowBatch) -> dict[str, np.ndarray]:
    """max |x| per channel (last axis) of each named tensor over the calibration windows."""
    import onnx

    from engines.onnxruntime_engine import import_onnxruntime

    ort = import_onnxruntime()
    probe = onnx.load(str(fp32_path))
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    options = ort.SessionOptions()
    # Fusions would rename or swallow the tensors being probed.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = session.run(names, batch.arrays())
    return {n: np.abs(out.reshape(-1, out.shape[-1])).max(axis=0) for n, out in zip(names, outputs)}


def smooth(fp32_path: Path, out_path: Path, calibration: WindowBatch, alpha: float = SMOOTH_ALPHA) -> int:
    """Write the smoothed fp32 graph; returns how many MatMul inputs were smoothed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    _own_weights(graph)
    inits = {i.name: i for i in graph.initializer}
    # Q, K and V read the same hidden state: one scale per input tensor, from all its weights.
    readers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            readers[node.input[0]].append(node)
    maxima = _activation_maxima(fp32_path, sorted(readers), calibration)
    for k, (x, nodes) in enumerate(sorted(readers.items())):
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = (np.maximum(maxima[x], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)).astype(np.float32)
        scale = np.clip(scale, 1e-2, 1e2)
        for node, w in zip(nodes, weights):
            inits[node.input[1]].CopyFrom(
                numpy_helper.from_array((w * scale[:, None]).astype(np.float32), node.input[1])
            )
        inv = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"smooth_inv_{k}")
        graph.initializer.append(inv)
        smoothed = f"{x}_smoothed"
        graph.node.append(onnx.helper.make_node("Mul", [x, inv.name], [smoothed], name=f"/smooth/Mul_{k}"))
        for node in nodes:
            node.input[0] = smoothed
    # Appended Muls must precede their readers: a stable topological order.
    _toposort(graph)
    onnx.save(model, str(out_path))
    return len(readers)


def _quantize_level(quantization: Any, smoothed: Path, out_path: Path, keep: str) -> None:
    quantization.quantize_dynamic(
        str(smoothed),
        str(out_path),
        weight_type=quantization.QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_exclude=_nodes(smoothed, keep),
    )


def _nodes(path: Path, pattern: str) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if re.search(pattern, n.name)]


def _own_weights(graph: Any) -> None:
    """Give every MatMul its own weight initializer.

    Where the export keeps both copies of the frozen bottom layers (engines/export.py shares them
    when it can), they are one initializer read by both (directly or through an Identity). The
    quantiser skips a weight it cannot see as a constant of its node, and smoothing scales a weight
    for one input only: copies make both apply."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    taken: set[str] = set()
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        source = aliases.get(node.input[1], node.input[1])
        if source not in inits:
            continue
        if source in taken:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[source]), f"{source}_{node.name}")
            graph.initializer.append(copy)
            source = copy.name
        taken.add(source)
        node.input[1] = source
    read = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Identity" and n.output[0] in aliases and n.output[0] not in read]
    for node in dead:
        graph.node.remove(node)


def _toposort(graph: Any) -> None:
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in produced for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an undefined input after smoothing")
        ready_ids = {id(n) for n in ready}
        for node in ready:
            ordered.append(node)
            produced.update(node.output)
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


class _NoPreprocessAdvice(logging.Filter):
    """onnxruntime's quantiser advises its shape-inference pre-processing on the root logger at
    every call; the graph here is smoothed and checked against fp32 instead (the gate), so the
    advice is noise in a user's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing before quantization")


def quantize_int8(fp32_path: Path, out_path: Path, model: DFMQMC, tokenizer: Any) -> dict[str, Any]:
    """Smooth and quantise the fp32 export, one level of `LEVELS` after the other until one clears the
    gate (the last level is kept when none does); returns what the sidecar records."""
    quantization = import_quantization()
    from engines.onnxruntime_engine import OnnxRuntimeEngine

    calibration, gate = gate_sentences()
    windows = text_windows(model, tokenizer, gate)
    reference = OnnxRuntimeEngine(Path(fp32_path)).infer(windows)
    tried: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        smoothed = Path(tmp) / "smoothed.onnx"
        count = smooth(Path(fp32_path), smoothed, text_windows(model, tokenizer, calibration), SMOOTH_ALPHA)
        quiet = _NoPreprocessAdvice()
        logging.getLogger().addFilter(quiet)
        try:
            for level, keep in LEVELS.items():
                _quantize_level(quantization, smoothed, out_path, keep)
                check = parity(reference, OnnxRuntimeEngine(out_path).infer(windows))
                tried.append({"level": level, "kept_fp32": keep, **check.to_dict()})
                if check.passed:
                    break
        finally:
            logging.getLogger().removeFilter(quiet)
    return {
        "quantization": {
            "method": "dynamic",
            "weights": "int8 per output channel",
            "activations": "uint8 per tensor, range per call",
            "ops": ["MatMul", "Gemm"],
            "smoothing_alpha": SMOOTH_ALPHA,
            "smoothed_inputs": count,
            "calibration_sentences": len(calibration),
            "level": tried[-1]["level"],
        },
        "parity": tried[-1],
        "levels_tried": tried,
    }
