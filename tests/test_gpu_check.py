"""tools/gpu_check.sh: it parses, and without a GPU it refuses at once (one line, a
non-zero exit, nothing run or written). Its GPU rows are run on a GPU machine only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.sh"


def test_the_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_without_a_gpu_it_refuses_in_one_line_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PY": sys.executable, "OUT": str(out), "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 3, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU"), done.stderr
    assert done.stdout == "" and not out.exists() and list(tmp_path.iterdir()) == []  # nothing generated
    assert time.monotonic() - t0 < 60


def test_a_missing_venv_is_named(tmp_path: Path) -> None:
    env = {**os.environ, "PY": str(tmp_path / "no-venv" / "python")}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 2 and "make install" in done.stderr and len(done.stderr.strip().splitlines()) == 1
