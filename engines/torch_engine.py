"""Eager PyTorch engine (CPU, or CUDA when present): the reference every other backend matches."""

from __future__ import annotations

import copy

import numpy as np
import torch

from engines.base import EngineOutput, WindowBatch
from model.dfmq import DFMQMC


class TorchEngine:
    def __init__(self, model: DFMQMC, device: str = "cpu", fp16: bool = False) -> None:
        self.device = torch.device(device)
        self.dtype = torch.float16 if fp16 else torch.float32
        # A half-precision copy, so that the caller's model (shared with exports and other
        # engines) keeps its fp32 weights.
        self.model = (copy.deepcopy(model).half() if fp16 else model).to(self.device).eval()
        self.name = f"torch-{self.device.type}" + ("-fp16" if fp16 else "")

    @torch.inference_mode()
    def infer(self, batch: WindowBatch) -> EngineOutput:
        def tensor(array: np.ndarray, float_dtype: bool = False) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)
            return t.to(self.dtype) if float_dtype else t

        outputs = self.model(
            tensor(batch.input_ids),
            tensor(batch.attention_mask),
            tensor(batch.audio, True),
            tensor(batch.audio_mask),
            tensor(batch.video, True),
            tensor(batch.video_mask),
            tensor(batch.quality, True),
        )
        return EngineOutput(*(out.float().cpu().numpy() for out in outputs))
