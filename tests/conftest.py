"""Suite-wide pytest options."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from temporal.train import torch_threads

# The test session is an entry point like cli.main: flush denormal floats once, at start-up
# (untrained MobileViT is about ten times slower on CPU without it).
torch.set_flush_denormal(True)

# Under pytest-xdist (``make test`` runs two workers) the workers share the cores: each
# takes its share of intra-op threads instead of every worker spinning one per core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // _WORKERS))


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors on a shared 2-core machine: one intra-op thread is 10-400x faster
    than two that fight other processes for the cores (and exactly reproducible).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Media, a tiny-backbone cache and a trained MTCN (tests/test_predict.py), built once
    per session and shared by every module that predicts or draws from a real run."""
    from tests.test_predict import build_synthetic_run

    with torch_threads(1):
        return build_synthetic_run(tmp_path_factory.getbasetemp() / "synthetic_run")


# The stand-in's test set: long untrimmed videos (18-36 s, 2-4 s events), a little shorter
# than the generator's default 20-60 s so that two extractions fit the suite's budget.
STANDIN_LENGTHS = (18.0, 36.0)


@pytest.fixture(scope="session")
def xd_standin(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The generated XD-Violence stand-in (``cli.py synth-xd``) extracted through the
    documented command (``cli.py extract --dataset xd-violence --root R/videos --lists
    R/lists --steps 12``), once per session."""
    from click.testing import CliRunner

    from cli import main
    from synth.xd_standin import StandinConfig, plan

    tmp = tmp_path_factory.mktemp("xd")
    root = tmp / "XD-Violence"
    lengths = "-".join(f"{s:g}" for s in STANDIN_LENGTHS)
    with torch_threads(1):
        # the documented command (docs/xd_violence.md), default counts and events
        made = CliRunner().invoke(main, ["synth-xd", "--out", str(root), "--lengths", lengths, "--workers", "1"])
        assert made.exit_code == 0, made.output
        videos = plan(StandinConfig(lengths=STANDIN_LENGTHS))
        cache = tmp / "cache" / "xd.zarr"
        result = CliRunner().invoke(main, ["extract", "--dataset", "xd-violence", "--root", str(root / "videos"),
                                           "--lists", str(root / "lists"), "--out", str(cache),
                                           "--backbones", "tiny", "--workers", "0", "--steps", "12"])
    assert result.exit_code == 0, result.output
    return {"root": root, "cache": cache, "videos": videos, "output": result.output, "synth_output": made.output,
            "split": cache.with_name(cache.name + ".official_split.json")}


@pytest.fixture(scope="session")
def xd_standin_grid(xd_standin: dict) -> dict:
    """The same stand-in videos extracted on XD-Violence's snippet grid (``--step-seconds
    0.6667``: 16 frames at 24 fps), once per session: a ragged (v2) cache."""
    from click.testing import CliRunner

    from cli import main

    cache = xd_standin["cache"].with_name("xd-grid.zarr")
    with torch_threads(1):
        result = CliRunner().invoke(main, ["extract", "--dataset", "xd-violence", "--root",
                                           str(xd_standin["root"] / "videos"), "--lists",
                                           str(xd_standin["root"] / "lists"), "--out", str(cache),
                                           "--backbones", "tiny", "--workers", "0", "--step-seconds", "0.6667"])
    assert result.exit_code == 0, result.output
    return {**xd_standin, "cache": cache, "output": result.output,
            "split": cache.with_name(cache.name + ".official_split.json")}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-long", action="store_true", default=False,
        help="Fuzz stage 1 with many more mutations of every small real file (minutes instead of seconds).",
    )


@pytest.fixture(scope="session")
def xd_grid_run(xd_standin_grid: dict) -> Path:
    """An MTCN trained with the multiple-instance objective on the stand-in's snippet grid,
    video features (its MIL defaults; the run test_xd_standin proves localises), once per
    session: the run live mode's tests watch streams with."""
    from temporal import SplitConfig, TrainConfig, load_cache
    from temporal.train import train
    from temporal.xd_tasks import apply_task

    rundir = xd_standin_grid["cache"].parent.parent / "runs" / "grid-mil-video"
    data = apply_task(load_cache(xd_standin_grid["cache"]), "xd-detection")
    with torch_threads(1):
        train(xd_standin_grid["cache"], rundir, TrainConfig(head="mtcn", modality="video", objective="mil",
                                                            split=SplitConfig(split_file=str(xd_standin_grid["split"])),
                                                            progress=False), data=data)
    return rundir


@pytest.fixture(scope="session")
def xd_grid_fused_run(xd_standin_grid: dict) -> Path:
    """The same MIL run on fused video + audio features (causal per-step audio windows, the
    grid cache's default), for live mode's parity with audio."""
    from temporal import SplitConfig, TrainConfig, load_cache
    from temporal.train import train
    from temporal.xd_tasks import apply_task

    rundir = xd_standin_grid["cache"].parent.parent / "runs" / "grid-mil-fused"
    data = apply_task(load_cache(xd_standin_grid["cache"]), "xd-detection")
    with torch_threads(1):
        train(xd_standin_grid["cache"], rundir, TrainConfig(head="mtcn", modality="fused", objective="mil", epochs=5,
                                                            split=SplitConfig(split_file=str(xd_standin_grid["split"])),
                                                            progress=False), data=data)
    return rundir


@pytest.hookimpl(optionalhook=True)   # pytest-xdist's hook: unknown in a run without it
def pytest_testnodedown(node, error) -> None:  # noqa: ANN001 - pytest-xdist's hook
    """When an xdist worker dies, say how: its exit status (a negative one is the signal
    that killed it), which xdist itself does not report ("node down: Not properly
    terminated")."""
    if not error:
        return
    popen = getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)
    if popen is None:
        return
    try:
        code = popen.wait(timeout=10)
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not fail the session
        code = repr(exc)
    if isinstance(code, int) and code < 0:
        import signal
        try:
            code = f"{code} ({signal.Signals(-code).name})"
        except ValueError:    # a signal without a name (a real-time one)
            pass
    reporter = node.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[{node.gateway.id}] worker pid {popen.pid} exited with status {code}")

