"""Inference engines for DFMQ-MC (torch, ONNX Runtime, TensorRT)."""
