"""TensorRT engine: a strongly typed network built from the ONNX export, cached by plan metadata.

Written against NVIDIA's documented TensorRT 10/11 Python API. TensorRT 11 dropped weak typing
(`BuilderFlag.FP16` and friends), so precision comes from the ONNX itself: export fp16 to get an
fp16 engine; the network is created STRONGLY_TYPED, which TensorRT 10 supports as well.

What runs where: the cache keys, metadata checks and stale-plan errors are plain Python and are
tested everywhere; building and executing need `tensorrt` and a CUDA GPU and were not exercised on
the development machines (see README).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import INPUT_NAMES, OUTPUT_NAMES, EngineOutput, WindowBatch
from engines.export import GRAPH_FORM
from model.errors import BackendUnavailableError, DfmqError
from model.paths import cache_dir

CACHE_DIR = cache_dir()


class EngineCacheError(DfmqError):
    """A serialized plan does not belong to this model, TensorRT version, GPU or precision."""

    def __init__(self, plan: Path, field: str, expected: str, got: str) -> None:
        self.plan, self.field, self.expected, self.got = plan, field, expected, got
        super().__init__(
            f"engine file {plan} is stale or mismatched: {field} is {got!r}, this setup needs {expected!r}; "
            "delete it or rebuild with `dfmq export --format tensorrt`"
        )


@dataclass(frozen=True)
class PlanKey:
    """Everything a serialized plan depends on; any change means a rebuild."""

    model_fingerprint: str
    tensorrt_version: str
    gpu_name: str
    precision: str
    max_batch: int
    graph_form: int = GRAPH_FORM  # of the ONNX export the plan was built from

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]

    def plan_path(self, cache_dir: Path = CACHE_DIR) -> Path:
        return Path(cache_dir) / f"dfmq-{self.digest()}.plan"


def write_plan(plan_bytes: bytes, key: PlanKey, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".plan.tmp")
    tmp.write_bytes(plan_bytes)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(asdict(key), indent=2))


def check_plan(path: Path, key: PlanKey) -> None:
    """Raise EngineCacheError naming the first field in which the plan's metadata differs."""
    meta_path = Path(path).with_suffix(".json")
    if not Path(path).is_file() or not meta_path.is_file():
        raise EngineCacheError(Path(path), "metadata", "a .plan with its .json beside it", "missing")
    try:
        saved = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise EngineCacheError(Path(path), "metadata", "valid JSON", str(exc)) from exc
    for field, expected in asdict(key).items():
        if saved.get(field) != expected:
            raise EngineCacheError(Path(path), field, str(expected), str(saved.get(field)))


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            "tensorrt",
            str(exc),
            "Install it from NVIDIA's index (`pip install tensorrt` on a machine that reaches "
            "pypi.nvidia.com) together with `pip install dfmq-stream[tensorrt]`, on a CUDA GPU.",
        ) from exc
    return tensorrt


@dataclass(frozen=True)
class ShapeProfile:
    """Optimisation profile: min / opt / max of the batch and sequence axes."""

    max_batch: int = 32
    opt_batch: int = 8
    text_len: int = 30
    audio_len: int = 480
    video_len: int = 230

    def shapes(self, audio_dim: int, video_dim: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        b0, bo, bm = 1, self.opt_batch, self.max_batch
        t, a, v = self.text_len, self.audio_len, self.video_len
        return {
            "input_ids": ((b0, 1), (bo, t), (bm, t)),
            "attention_mask": ((b0, 1), (bo, t), (bm, t)),
            "audio": ((b0, 1, audio_dim), (bo, a // 2, audio_dim), (bm, a, audio_dim)),
            "audio_mask": ((b0, 1), (bo, a // 2), (bm, a)),
            "video": ((b0, 1, video_dim), (bo, v // 2, video_dim), (bm, v, video_dim)),
            "video_mask": ((b0, 1), (bo, v // 2), (bm, v)),
            "quality": ((b0, 3), (bo, 3), (bm, 3)),
        }


def build_plan(onnx_path: Path, profile: ShapeProfile, audio_dim: int, video_dim: int) -> bytes:
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DfmqError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes(audio_dim, video_dim).items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DfmqError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(plan)


class TensorRTEngine:
    """Runs a plan with named I/O tensors, preallocated device buffers and one CUDA stream."""

    def __init__(
        self,
        plan_path: Path,
        key: PlanKey,
        profile: ShapeProfile,
        num_labels: int,
        audio_dim: int,
        video_dim: int,
        embedding_width: int,
    ) -> None:
        import torch

        check_plan(plan_path, key)
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailableError("tensorrt", "no CUDA device", "Run on a machine with an NVIDIA GPU.")
        self.trt = trt
        self.torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.float_dtype = torch.float16 if key.precision == "fp16" else torch.float32
        self.profile = profile
        maxima = {name: shapes[2] for name, shapes in profile.shapes(audio_dim, video_dim).items()}
        in_dtypes = {
            "input_ids": torch.int64,
            "attention_mask": torch.int64,
            "audio_mask": torch.bool,
            "video_mask": torch.bool,
        }
        self.inputs = {
            name: torch.empty(maxima[name], dtype=in_dtypes.get(name, self.float_dtype), device="cuda")
            for name in INPUT_NAMES
        }
        out_shapes = {
            "logits": (profile.max_batch, num_labels),
            "probs": (profile.max_batch, num_labels),
            "weights": (profile.max_batch, 2),
            "embedding": (profile.max_batch, embedding_width),
            "sentence": (profile.max_batch, embedding_width),
        }
        self.outputs = {
            name: torch.empty(out_shapes[name], dtype=self.float_dtype, device="cuda") for name in OUTPUT_NAMES
        }
        for name, buf in {**self.inputs, **self.outputs}.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        self.name = f"tensorrt-{key.precision}"

    def infer(self, batch: WindowBatch) -> EngineOutput:
        torch = self.torch
        if batch.size > self.profile.max_batch:
            raise DfmqError(f"batch of {batch.size} exceeds the engine's max_batch {self.profile.max_batch}")
        with torch.cuda.stream(self.stream):
            for name, array in batch.arrays().items():
                src = torch.from_numpy(np.ascontiguousarray(array))
                view = self.inputs[name].view(-1)[: src.numel()].view(src.shape)
                view.copy_(src.to(view.dtype), non_blocking=True)
                self.context.set_input_shape(name, tuple(src.shape))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise DfmqError("TensorRT execution failed")
            b = batch.size
            result = [
                self.outputs[n].view(-1)[: b * self.outputs[n].shape[1]].view(b, -1).float().cpu() for n in OUTPUT_NAMES
            ]
        self.stream.synchronize()
        return EngineOutput(*(t.numpy() for t in result))
