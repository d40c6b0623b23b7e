"""`--engine auto|torch|onnxruntime|tensorrt`: pick a backend, say why, and load it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from engines.base import Engine
from engines.export import export_onnx, model_fingerprint
from engines.tensorrt_engine import (
    CACHE_DIR,
    EngineCacheError,
    PlanKey,
    ShapeProfile,
    build_plan,
    check_plan,
    import_tensorrt,
    write_plan,
)
from model.dfmq import DFMQMC
from model.errors import BackendUnavailableError, ConfigError

log = logging.getLogger("dfmq.engines")
ENGINE_NAMES = ("auto", "torch", "onnxruntime", "tensorrt")


@dataclass
class EngineChoice:
    backend: str  # torch | onnxruntime | tensorrt
    device: str  # cpu | cuda
    reason: str
    skipped: list[str] = field(default_factory=list)


def torch_cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def onnxruntime_status() -> tuple[bool, bool, str]:
    """(importable, has the CUDA provider, note)."""
    from engines.onnxruntime_engine import cuda_provider_available, import_onnxruntime

    try:
        import_onnxruntime()
    except BackendUnavailableError as exc:
        return False, False, str(exc)
    return True, cuda_provider_available(), "ok"


def tensorrt_status() -> tuple[bool, str]:
    from engines.tensorrt_engine import import_tensorrt

    try:
        import_tensorrt()
    except BackendUnavailableError as exc:
        return False, f"tensorrt not importable ({exc.reason})"
    if not torch_cuda_available():
        return False, "tensorrt is installed but there is no CUDA device"
    return True, "ok"


def choose_engine(preference: str = "auto", device: str | None = None) -> EngineChoice:
    """Fastest available in the order TensorRT, ORT CUDA, torch CUDA, ORT CPU, torch CPU."""
    if preference not in ENGINE_NAMES:
        raise ConfigError("--engine", f"one of {ENGINE_NAMES}", preference)
    cuda = torch_cuda_available()
    if device == "cuda" and not cuda:
        raise ConfigError("--device", "'cpu' (no CUDA device is visible)", device)
    ort_ok, ort_cuda, ort_note = onnxruntime_status()
    if preference == "torch":
        dev = device or ("cuda" if cuda else "cpu")
        return EngineChoice("torch", dev, "asked for torch")
    if preference == "onnxruntime":
        if not ort_ok:
            raise BackendUnavailableError("onnxruntime", ort_note, "pip install onnxruntime")
        dev = device or ("cuda" if ort_cuda else "cpu")
        return EngineChoice("onnxruntime", dev, "asked for onnxruntime")
    if preference == "tensorrt":
        trt_ok, trt_note = tensorrt_status()
        if not trt_ok:
            raise BackendUnavailableError("tensorrt", trt_note, "Use --engine auto or install TensorRT on a GPU host.")
        return EngineChoice("tensorrt", "cuda", "asked for tensorrt")

    skipped: list[str] = []
    candidates: list[tuple[str, str, bool, str]] = []
    trt_ok, trt_note = tensorrt_status()
    candidates.append(("tensorrt", "cuda", trt_ok and device != "cpu", trt_note))
    candidates.append(("onnxruntime", "cuda", ort_cuda and device != "cpu", "no CUDAExecutionProvider"))
    candidates.append(("torch", "cuda", cuda and device != "cpu", "no CUDA device"))
    candidates.append(("onnxruntime", "cpu", ort_ok, ort_note))
    candidates.append(("torch", "cpu", True, "ok"))
    for backend, dev, ok, note in candidates:
        if ok:
            choice = EngineChoice(backend, dev, f"fastest available; skipped: {'; '.join(skipped) or 'none'}", skipped)
            log.info("engine auto -> %s on %s (%s)", backend, dev, choice.reason)
            return choice
        skipped.append(f"{backend}-{dev}: {note}")
    raise AssertionError("torch on CPU is always available")


def onnx_for(model: DFMQMC, precision: str, cache_dir: Path = CACHE_DIR, fingerprint: str | None = None) -> Path:
    """The model's ONNX export, reused from the cache when the weights are unchanged."""
    # Hashing every weight takes a moment: callers that already hold the fingerprint pass it.
    fingerprint = fingerprint or model_fingerprint(model)
    path = Path(cache_dir) / f"dfmq-{fingerprint}-{precision}.onnx"
    if not path.is_file():
        export_onnx(model, path, precision, fingerprint)
    return path


def load_engine(model: DFMQMC, choice: EngineChoice, precision: str = "fp32", cache_dir: Path = CACHE_DIR) -> Engine:
    if choice.backend == "torch":
        from engines.torch_engine import TorchEngine

        return TorchEngine(model, choice.device, fp16=precision == "fp16")
    if choice.backend == "onnxruntime":
        from engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(onnx_for(model, precision, cache_dir), choice.device)
    plan, key, profile = ensure_plan(model, precision, cache_dir=cache_dir)
    from engines.tensorrt_engine import TensorRTEngine

    cfg = model.config
    return TensorRTEngine(plan, key, profile, cfg.num_labels, cfg.audio_dim, cfg.video_dim, cfg.text_width)


def ensure_plan(
    model: DFMQMC, precision: str, plan_path: Path | None = None, cache_dir: Path = CACHE_DIR
) -> tuple[Path, PlanKey, ShapeProfile]:
    """The model's TensorRT plan: reused when its metadata matches, rebuilt when any key changed."""
    import torch

    trt = import_tensorrt()
    cfg = model.config
    profile = ShapeProfile(text_len=cfg.text_max_len, audio_len=cfg.audio_max_len, video_len=cfg.video_max_len)
    key = PlanKey(model_fingerprint(model), trt.__version__, torch.cuda.get_device_name(), precision, profile.max_batch)
    plan = Path(plan_path) if plan_path is not None else key.plan_path(cache_dir)
    try:
        check_plan(plan, key)
    except EngineCacheError as stale:
        log.info("building TensorRT plan %s (%s)", plan, stale.field)
        onnx_path = onnx_for(model, precision, cache_dir, key.model_fingerprint)
        write_plan(build_plan(onnx_path, profile, cfg.audio_dim, cfg.video_dim), key, plan)
    return plan, key, profile
