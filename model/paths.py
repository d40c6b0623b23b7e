"""Where the installed package finds its own files and writes its caches.

Configs (`configs/`, installed as the package `dfmq_configs`) and the demo clip (`data/demo/`,
installed as `dfmq_demo`) are package data read through `importlib.resources`, so a wheel works
from any directory. Caches (ONNX exports, TensorRT plans) go under the user's cache directory,
never inside the installed package, which may be read-only."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def config_file(*parts: str) -> Path:
    """A file shipped under configs/, e.g. `config_file("intents", "mintrec.yaml")`."""
    return Path(str(resources.files("dfmq_configs").joinpath(*parts)))


def demo_file(name: str) -> Path:
    return Path(str(resources.files("dfmq_demo").joinpath(name)))


def cache_dir() -> Path:
    """`$DFMQ_CACHE_DIR`, else `$XDG_CACHE_HOME/dfmq`, else `~/.cache/dfmq` (created on first write)."""
    if os.environ.get("DFMQ_CACHE_DIR"):
        return Path(os.environ["DFMQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dfmq"
