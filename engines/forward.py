"""An engine in place of the model's forward, so that `dfmq eval --engine NAME` scores what `dfmq run` would run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from engines.base import OUTPUT_NAMES, Engine, WindowBatch
from engines.select import choose_engine, int8_gate, load_engine
from model.dfmq import DFMQMC
from model.train import ModelForward

# ONNX graphs take exactly the dtypes they were exported with; the data loader's may differ.
_INPUT_DTYPES = (np.int64, np.int64, np.float32, np.bool_, np.float32, np.bool_, np.float32)


def engine_forward(engine: Engine) -> ModelForward:
    def forward(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arrays: list[np.ndarray] = [
            t.detach().cpu().numpy().astype(dtype, copy=False) for t, dtype in zip(tensors, _INPUT_DTYPES)
        ]
        out = engine.infer(WindowBatch(*arrays))
        return tuple(torch.from_numpy(np.ascontiguousarray(getattr(out, name))) for name in OUTPUT_NAMES)

    return forward


def forward_for(preference: str, device: str | None) -> Callable[[DFMQMC, Any], tuple[str, ModelForward]]:
    """What `model.train.evaluate` calls once the checkpoint is loaded: (engine name, forward)."""

    def build(model: DFMQMC, tokenizer: Any) -> tuple[str, ModelForward]:
        choice = choose_engine(preference, device, int8_gate(model))
        engine = load_engine(model, choice, tokenizer=tokenizer)
        return engine.name, engine_forward(engine)

    return build
