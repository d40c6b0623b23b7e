"""The wheel works outside the repository: `pip wheel .`, installed into a fresh virtual
environment, then `dfmq demo` and `dfmq classify` run from another directory, with caches under
the user's cache directory and nothing written into the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_installed_elsewhere_runs_the_demo_from_another_directory(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
    )
    wheel = next(wheels.glob("dfmq_stream-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = Path(
        sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)})  # the new venv's
    )
    # The dependencies (torch, CTranslate2, ...) are this test environment's, put on the path by a
    # .pth line; the project itself only from the wheel. A plain path line does not run the
    # editable install's finder that lives there, so `stream` cannot come from the checkout.
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        timeout=300,
    )
    python = env_dir / "bin" / "python"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DFMQ_CACHE_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import stream, model.paths as p; print(stream.__file__); print(p.config_file('live.yaml'))",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert all(path.startswith(str(site)) for path in where), where  # not the checkout
    before = sorted(p.relative_to(site) for p in site.rglob("*") if "__pycache__" not in p.parts)
    dfmq = [str(python), "-m", "stream.cli"]
    demo = subprocess.run(
        [*dfmq, "demo", "--pace", "fast"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "[demo] 9 intent events" in demo.stdout
    classify = subprocess.run(
        [*dfmq, "classify", "--intents", str(Path(where[1]).parent / "intents" / "kiosk.yaml"), "Can I pay by card?"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert classify.returncode == 0 and "Pay" in classify.stdout, classify.stderr[-2000:]
    after = sorted(p.relative_to(site) for p in site.rglob("*") if "__pycache__" not in p.parts)
    assert after == before  # no cache or export inside the installed package
    assert list((tmp_path / "cache" / "dfmq").glob("dfmq-*.onnx"))  # the engine's export went here
