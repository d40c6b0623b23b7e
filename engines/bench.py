"""`dfmq bench`: throughput, latency, memory and parity of every engine, side by side in one run."""

from __future__ import annotations

import gc
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine
from engines.export import example_batch
from engines.select import INT8, EngineChoice, load_engine, split_engine_name, torch_cuda_available
from model.dfmq import DFMQMC
from model.errors import DfmqError

# DFMQ-MC as the paper reports it (RTX 4090, MIntRec test set).
PAPER_ROW = {"params_m": 263.85, "gpu_mem_mb": 7917.29, "samples_per_s": 29.10, "ms_per_sample": 7.5}


@dataclass
class BenchShape:
    text_len: int = 30
    audio_len: int = 480
    video_len: int = 230
    iters: int = 30
    warmup: int = 3
    max_seconds_per_size: float = 20.0


class _RssSampler:
    """Peak resident memory while a block runs (sampled every 5 ms)."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _time_engine(engine: Engine, model: DFMQMC, batch_sizes: list[int], shape: BenchShape) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for b in batch_sizes:
        batch = example_batch(model, b, shape.text_len, shape.audio_len, shape.video_len, seed=b)
        for _ in range(shape.warmup):
            engine.infer(batch)
        latencies: list[float] = []
        started = time.perf_counter()
        while len(latencies) < shape.iters and time.perf_counter() - started < shape.max_seconds_per_size:
            t0 = time.perf_counter()
            engine.infer(batch)
            latencies.append(time.perf_counter() - t0)
        ms = np.array(latencies) * 1000.0
        out[str(b)] = {
            "windows_per_s": round(b * len(ms) / (ms.sum() / 1000.0), 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "iters": len(ms),
        }
    return out


def run_bench(
    model: DFMQMC,
    engines: list[str],
    batch_sizes: list[int],
    shape: BenchShape,
    device: str | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """`tokenizer`: the model's, which the int8 export's calibration and gate need."""
    import torch

    cuda = torch_cuda_available() and device != "cpu"
    dev = "cuda" if cuda else "cpu"
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "params": int(sum(p.numel() for p in model.parameters())),
        "shape": {"text_len": shape.text_len, "audio_len": shape.audio_len, "video_len": shape.video_len},
        "engines": {},
        "parity": {},
        "memory": {},
        "errors": {},
        "paper": PAPER_ROW,
    }
    reference_batch = example_batch(model, 4, shape.text_len, shape.audio_len, shape.video_len, seed=99)
    reference = None
    for name in engines:
        backend, precision = split_engine_name(name)
        if precision == "int8":
            choice = EngineChoice(INT8, "cpu", "bench")
        else:
            choice = EngineChoice(backend, "cuda" if backend == "tensorrt" else dev, "bench")
        try:
            engine = load_engine(model, choice, precision, tokenizer=tokenizer)
        except DfmqError as exc:
            report["errors"][name] = str(exc)
            print(f"bench: {name} skipped: {exc}")
            continue
        label = engine.name
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with _RssSampler() as rss:
            report["engines"][label] = _time_engine(engine, model, batch_sizes, shape)
        report["memory"][label] = {"peak_rss_mb": round(rss.peak / 2**20, 1)}
        if cuda and backend == "torch":
            report["memory"][label]["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        logits = engine.infer(reference_batch).logits
        if reference is None and backend == "torch" and precision == "fp32":
            reference = logits
        if reference is not None:
            report["parity"][label] = float(np.abs(logits - reference).max())
        del engine
        gc.collect()
    return report


def format_report(report: dict[str, Any], batch_sizes: list[int]) -> str:
    lines = [
        f"device: {report['device']}  params: {report['params'] / 1e6:.2f} M  window: "
        f"text {report['shape']['text_len']} tok, audio {report['shape']['audio_len']} fr, "
        f"video {report['shape']['video_len']} fr",
        f"{'engine':<22}{'batch':>6}{'windows/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'parity':>12}",
    ]
    base = None
    for label, sizes in report["engines"].items():
        for b in batch_sizes:
            row = sizes.get(str(b))
            if row is None:
                continue
            parity = report["parity"].get(label)
            lines.append(
                f"{label:<22}{b:>6}{row['windows_per_s']:>12.1f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
                + (f"{parity:>12.2e}" if parity is not None else f"{'-':>12}")
            )
        if base is None:
            base = sizes
        elif "1" in sizes and "1" in base:
            ratio = sizes["1"]["windows_per_s"] / base["1"]["windows_per_s"]
            first = next(iter(report["engines"]))
            lines.append(f"  {label} vs {first} at batch 1: {ratio:.2f}x windows/s")
    for label, mem in report["memory"].items():
        lines.append(f"memory {label}: " + ", ".join(f"{k} {v}" for k, v in mem.items()))
    for label, err in report["errors"].items():
        lines.append(f"not run {label}: {err}")
    paper = report["paper"]
    lines.append(
        f"paper (RTX 4090): {paper['params_m']} M params, {paper['gpu_mem_mb']} MB GPU, "
        f"{paper['samples_per_s']} samples/s, ~{paper['ms_per_sample']} ms/sample"
    )
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
