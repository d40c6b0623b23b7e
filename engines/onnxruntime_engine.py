"""ONNX Runtime engine: CPU, or the CUDA execution provider when onnxruntime-gpu is installed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import INPUT_NAMES, EngineOutput, WindowBatch
from model.errors import BackendUnavailableError


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime", str(exc), "Install it with `pip install onnxruntime` (or onnxruntime-gpu for CUDA)."
        ) from exc
    return onnxruntime


def cuda_provider_available() -> bool:
    try:
        return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()
    except BackendUnavailableError:
        return False


def _precision(onnx_path: Path) -> str:
    sidecar = onnx_path.with_suffix(".json")
    if not sidecar.is_file():
        return "fp32"
    return str(json.loads(sidecar.read_text()).get("precision", "fp32"))


class OnnxRuntimeEngine:
    def __init__(self, onnx_path: Path, device: str = "cpu", threads: int | None = None) -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        # Idle intra-op threads would otherwise spin between calls and burn the cores that ASR
        # and capture need; a live stream calls the engine a few times a second, not back to back.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if device == "cuda":
            if not cuda_provider_available():
                raise BackendUnavailableError(
                    "onnxruntime CUDA provider",
                    f"this onnxruntime offers {ort.get_available_providers()}",
                    "Install onnxruntime-gpu matching your CUDA version.",
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.float_type = np.float16 if "float16" in self.session.get_inputs()[2].type else np.float32
        self.name = f"onnxruntime-{device}" + ("-fp16" if self.float_type == np.float16 else "")
        if _precision(Path(onnx_path)) == "int8":
            # The name `--engine` takes for it, so that bench rows and events say which graph ran.
            self.name = f"onnxruntime-int8-{device}"

    def infer(self, batch: WindowBatch) -> EngineOutput:
        feeds = {}
        for name in INPUT_NAMES:
            array = getattr(batch, name)
            feeds[name] = array.astype(self.float_type) if array.dtype == np.float32 else array
        outputs = self.session.run(None, feeds)
        return EngineOutput(*(out.astype(np.float32) for out in outputs))
