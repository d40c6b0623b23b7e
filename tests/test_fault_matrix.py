"""The fault matrix (tools/fault_matrix.py) without its slow, real-time cases: every fault of the
real `dfmq run` and `dfmq broker` commands against real Mosquitto brokers is handled as specified."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.broker
def test_fault_matrix_passes_every_fast_case(tmp_path: Path) -> None:
    for binary, package in (("mosquitto", "mosquitto"), ("openssl", "openssl"), ("espeak-ng", "espeak-ng")):
        require_binary(binary, package)
    report = tmp_path / "fault_matrix.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fault_matrix.py"), "--json", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    cases = json.loads(report.read_text())["cases"]
    failed = [f"{c['case']}: {c['observed']}" for c in cases if c["verdict"] != "pass"]
    assert failed == [], done.stdout[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(cases) >= 30 and not any(c["slow"] for c in cases)
