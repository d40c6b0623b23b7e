"""`--engine auto|torch|onnxruntime|onnxruntime-int8|tensorrt`: pick a backend, say why, and load it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.base import Engine
from engines.export import GRAPH_FORM, export_onnx, model_fingerprint, read_meta
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
ENGINE_NAMES = ("auto", "torch", "onnxruntime", "onnxruntime-int8", "tensorrt")
INT8 = "onnxruntime-int8"


@dataclass
class EngineChoice:
    backend: str  # torch | onnxruntime | onnxruntime-int8 | tensorrt
    device: str  # cpu | cuda
    reason: str
    skipped: list[str] = field(default_factory=list)


def split_engine_name(name: str) -> tuple[str, str]:
    """'onnxruntime-int8' -> ('onnxruntime', 'int8'); 'torch:fp16' -> ('torch', 'fp16') (bench's spelling)."""
    if name == INT8:
        return "onnxruntime", "int8"
    backend, _, precision = name.partition(":")
    return backend, precision or "fp32"


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


def choose_engine(
    preference: str = "auto", device: str | None = None, int8_gate: Callable[[], tuple[bool, str]] | None = None
) -> EngineChoice:
    """Fastest available in the order TensorRT, ORT CUDA, torch CUDA, ORT int8 CPU, ORT CPU, torch CPU.

    `int8_gate()` says whether the model's int8 export is in the cache and clears its accuracy gate
    (engines/int8.py); without it auto does not consider int8."""
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
    if preference == INT8:
        if not ort_ok:
            raise BackendUnavailableError("onnxruntime", ort_note, "pip install onnxruntime")
        if device == "cuda":
            raise ConfigError(
                "--device", "'cpu' (the int8 engine's MatMulInteger kernels are ONNX Runtime's CPU ones)", device
            )
        return EngineChoice(INT8, "cpu", "asked for onnxruntime-int8")
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
    if ort_ok and int8_gate is not None:
        int8_ok, int8_note = int8_gate()
    else:
        int8_ok, int8_note = False, ort_note if not ort_ok else "not considered (no model to look it up for)"
    candidates.append((INT8, "cpu", int8_ok, int8_note))
    candidates.append(("onnxruntime", "cpu", ort_ok, ort_note))
    candidates.append(("torch", "cpu", True, "ok"))
    for backend, dev, ok, note in candidates:
        if ok:
            choice = EngineChoice(backend, dev, f"fastest available; skipped: {'; '.join(skipped) or 'none'}", skipped)
            log.info("engine auto -> %s on %s (%s)", backend, dev, choice.reason)
            return choice
        skipped.append(f"{backend}-{dev}: {note}")
    raise AssertionError("torch on CPU is always available")


def onnx_for(
    model: DFMQMC,
    precision: str,
    cache_dir: Path = CACHE_DIR,
    fingerprint: str | None = None,
    tokenizer: Any = None,
) -> Path:
    """The model's ONNX export, reused from the cache when the weights are unchanged (int8: quantised
    from the cached fp32 one, with `tokenizer` for its calibration and gate)."""
    # Hashing every weight takes a moment: callers that already hold the fingerprint pass it.
    fingerprint = fingerprint or model_fingerprint(model)
    path = Path(cache_dir) / f"dfmq-{fingerprint}-{precision}.onnx"
    if not _current(path):
        fp32 = onnx_for(model, "fp32", cache_dir, fingerprint) if precision == "int8" else None
        export_onnx(model, path, precision, fingerprint, tokenizer, fp32)
    return path


def _current(path: Path) -> bool:
    """An export of this graph form is in the cache (an older form is correct but slower, and an
    unreadable sidecar says nothing: made again)."""
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        return False
    try:
        return bool(read_meta(path).get("graph_form") == GRAPH_FORM)
    except (OSError, ValueError):
        return False


def int8_gate(model: DFMQMC, cache_dir: Path = CACHE_DIR) -> Callable[[], tuple[bool, str]]:
    """For `choose_engine`: (the model's int8 export is in the cache and clears its gate, why not).

    Auto never builds one: quantising and checking takes about a minute here, for a gain that is
    small on this model (README "Engines"); `dfmq export --precision int8` or one run with
    `--engine onnxruntime-int8` puts it in the cache."""

    def check() -> tuple[bool, str]:
        path = Path(cache_dir) / f"dfmq-{model_fingerprint(model)}-int8.onnx"
        if not _current(path):
            return False, (
                "no int8 export of the current graph form in the cache (dfmq export --precision int8 makes one)"
            )
        parity = read_meta(path)["parity"]
        if parity["passed"]:
            return True, "ok"
        return False, (
            f"int8 export misses its accuracy gate (argmax agreement {parity['argmax_agreement']:.3f}, "
            f"min cosine {min(parity['min_cosine_embedding'], parity['min_cosine_sentence']):.3f}; "
            f"needs {parity['gate']})"
        )

    return check


def load_engine(
    model: DFMQMC,
    choice: EngineChoice,
    precision: str = "fp32",
    cache_dir: Path = CACHE_DIR,
    tokenizer: Any = None,
) -> Engine:
    if choice.backend == "torch":
        from engines.torch_engine import TorchEngine

        return TorchEngine(model, choice.device, fp16=precision == "fp16")
    if choice.backend == INT8:
        from engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(onnx_for(model, "int8", cache_dir, tokenizer=tokenizer), "cpu")
    if choice.backend == "onnxruntime":
        from engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(onnx_for(model, precision, cache_dir, tokenizer=tokenizer), choice.device)
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
