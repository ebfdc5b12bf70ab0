"""Every command the README and docs/*.md show, run through the CLI itself (``cli.main``
through click's runner, ``cli.py`` as a process for the entry point), end to end, on tiny
generated data: each test checks the exit status and a key piece of the output.

``make`` targets are expanded with ``make -n`` (tiny settings as make variables) and the
``cli.py`` line of the recipe is what runs, so a recipe that drifts from the CLI fails here.
``test_every_documented_command_has_a_test`` parses the docs' code blocks and inline code
and fails when a documented ``cli.py`` subcommand or ``make`` target has no test below
(``@documents(...)``) and no named exemption, so a new documented command cannot go untested.

The data come from the session fixtures (``tests/conftest.py``): ``synthetic_run`` (media,
a tiny-backbone cache and a trained MTCN) and ``xd_standin`` (the XD-Violence stand-in,
extracted through the documented ``extract --dataset xd-violence`` command).
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

pytestmark = pytest.mark.usefixtures("one_thread")

COVERED: set[str] = set()   # documented commands a test below runs

# Documented commands that are not run here, each with its reason.
EXEMPT = {
    "make demo": "the whole demo (minutes); its commands are run here one by one on tiny data",
    "make test": "the test suite itself",
    "make xd-standin-check": "the stand-in and a held-out set through the grid route (minutes); its commands "
                             "(synth-xd, extract, train, evaluate --detection) are run here one by one",
    "make install": "installs the virtual environment the tests already run in",
    "make install-lite": "installs the lite extra, which `make install` already put in the tests' environment "
                         "(tests/test_pretrained_backbones.py uses it)",
    "make bench": "benchmarks at full size; `bench train` runs here with tiny settings",
    "make bench-extract": "a benchmark of full-size backbones (minutes)",
    "cli.py bench extract": "a benchmark of full-size backbones (minutes)",
    "cli.py bench efficiency": "Table 4 with full-size backbones (minutes)",
}


def documents(*commands: str):
    """Mark a test as running the documented ``commands`` (``"cli.py predict"``, ``"make train"``)."""
    COVERED.update(commands)
    return lambda f: f


def cli(*args: str, input: str | None = None):
    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def ok(result, *expected: str) -> str:
    """The output of a command that must have succeeded and printed each of ``expected``."""
    assert result.exit_code == 0, (result.output, result.exception)
    for text in expected:
        assert text in result.output, (text, result.output)
    return result.output


def make_command(target: str, **variables: str | Path) -> list[str]:
    """The arguments after ``cli.py`` of each ``cli.py`` line of ``make -n TARGET VARS``."""
    args = ["make", "-s", "-n", "-C", str(ROOT), target, *(f"{k}={v}" for k, v in variables.items())]
    text = subprocess.run(args, capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
    lines = [shlex.split(line)[2:] for line in text.splitlines() if " cli.py " in f" {line} "]
    assert lines, f"`make {target}` runs no cli.py command:\n{text}"
    return lines


# --------------------------------------------------------------------------- the guard


def documented_commands() -> set[str]:
    """``cli.py SUB [SUBSUB]`` and ``make TARGET`` as shown in code blocks and inline code."""
    from cli import main

    found: set[str] = set()
    for doc in DOCS:
        text = doc.read_text()
        chunks = re.findall(r"```[^\n]*\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
        for chunk in chunks:
            for m in re.finditer(r"cli\.py\s+([a-z][\w-]*)(?:\s+([a-z][\w-]*))?", chunk):
                sub, subsub = m.groups()
                command = main.commands.get(sub)
                assert command is not None, f"{doc.name} shows `cli.py {sub}`, which is no command of cli.py"
                name = f"cli.py {sub}"
                if hasattr(command, "commands") and subsub in command.commands:
                    name += f" {subsub}"
                found.add(name)
            for m in re.finditer(r"(?:^|\n|#\s*or:\s*)\s*make\s+([a-z][\w-]*)", chunk):
                found.add(f"make {m.group(1)}")
    return found


def test_every_documented_command_has_a_test() -> None:
    documented = documented_commands()
    assert {"cli.py predict", "cli.py evaluate", "make train", "cli.py cache validate"} <= documented
    untested = sorted(documented - COVERED - set(EXEMPT))
    assert not untested, f"documented but run by no test in {Path(__file__).name}: {untested}"
    stale = sorted(set(EXEMPT) - documented)
    assert not stale, f"exempted but no longer documented: {stale}"


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def runs(synthetic_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A folder to work in, the shared run's cache, and a small feature cache for tables."""
    from tests.cache_factory import make_config, write_class_cache

    work = tmp_path_factory.mktemp("documented")
    table_cache = work / "cache" / "tbl-tiny-s10.zarr"
    for steps in (5, 10, 15):  # Table 3 wants one cache per step count (make ablate-steps' names)
        write_class_cache(work / "cache" / f"tbl-tiny-s{steps}.zarr", make_config(steps=steps), 40)
    return {"work": work, "run": synthetic_run, "cache": synthetic_run.parent / "cache.zarr",
            "media": synthetic_run.parent / "media", "table_cache": table_cache}


# --------------------------------------------------------------------------- stage 1


@documents("cli.py synth", "make extract", "cli.py extract", "cli.py cache info", "make cache-info",
           "cli.py cache validate")
def test_help_synth_extract_and_cache_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import synth

    # the script itself, as a user runs it
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0 and all(c in proc.stdout for c in ("extract", "predict", "ablate-steps"))
    ok(cli("extract", "--help"), "--dataset")
    ok(cli("train", "--list-heads"), "mtcn")
    # python cli.py synth --out DIR [--clips-per-class N] [--seed S], with short clips
    monkeypatch.setattr(synth, "SynthConfig", functools.partial(
        synth.SynthConfig, duration_range=(1.0, 1.4), long_share=0.0))
    data = tmp_path / "VAAR"
    ok(cli("synth", "--out", data, "--clips-per-class", "1", "--seed", "3"), "wrote 10 clips")
    # make extract DATASET=vaar DATA_ROOT=/path/to/VAAR (README), tiny and in-process
    cache = tmp_path / "vaar.zarr"
    (argv,) = make_command("extract", DATASET="vaar", DATA_ROOT=data, CACHE=cache, BACKBONES="tiny", WORKERS=0)
    assert argv[:3] == ["extract", "--dataset", "vaar"]
    ok(cli(*argv), "0 failed")
    (argv,) = make_command("cache-info", CACHE=cache)
    ok(cli(*argv), "complete")
    ok(cli("cache", "info", cache, "--json"), '"counts"')
    ok(cli("cache", "validate", cache), "ok: 10 clips")


# --------------------------------------------------------------------------- stage 2


@documents("cli.py train", "make train", "cli.py evaluate", "make evaluate")
def test_train_resume_and_evaluate(runs: dict) -> None:
    run = runs["work"] / "runs" / "mtcn"
    (argv,) = make_command("train", CACHE=runs["cache"], EPOCHS=2, RUN=run)
    assert argv[:2] == ["train", "--cache"] and "--head" in argv and "--fusion" in argv
    first = ok(cli(*argv), "test: accuracy", f"run -> {run}")
    # train ... --out RUNDIR --resume: continue (here: an already finished run) to the same metrics
    again = ok(cli(*argv, "--resume"), "test: accuracy")
    def accuracy(text: str) -> str:
        return next(line for line in text.splitlines() if line.startswith("test: accuracy"))
    assert accuracy(again) == accuracy(first)
    (argv,) = make_command("evaluate", RUN=run)
    out = ok(cli(*argv), "test: accuracy", "AP(anomaly)")
    assert json.loads((run / "metrics.json").read_text())["n_test"] > 0 and "on " in out


@documents("cli.py compare", "make compare", "make ablate-steps", "cli.py ablate-steps", "make ablate-fusion",
           "cli.py ablate-fusion")
def test_table_commands(runs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    work = runs["work"]
    monkeypatch.chdir(work)  # the make recipes write to reports/$(DATASET) and read cache/...
    # python cli.py compare --cache CACHE --out reports/NAME [--seeds 3]  (two heads, one modality)
    ok(cli("compare", "--cache", runs["table_cache"], "--out", "reports/readme", "--seeds", "2", "--epochs", "1",
           "--heads", "pool", "--modalities", "fused"), "pool")
    assert (work / "reports" / "readme" / "table2.csv").is_file()
    tiny = dict(DATASET="tbl", BACKBONES="tiny", CACHE=runs["table_cache"], EPOCHS=1, SEEDS=1, JOBS=1)
    (argv,) = make_command("compare", **tiny)
    ok(cli(*argv, "--heads", "pool", "--modalities", "video"), "pool")   # make compare, narrowed to one run
    (argv,) = make_command("ablate-steps", **tiny)
    assert argv.count("--cache") == 3
    ok(cli(*argv, "--head", "pool"), "Table 3")
    (argv,) = make_command("ablate-fusion", **tiny)
    ok(cli(*argv, "--heads", "pool"), "late")
    assert (work / "reports" / "tbl" / "table3.md").is_file()


@documents("cli.py bench train", "make bench-train")
def test_bench_train_with_tiny_settings(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    (argv,) = make_command("bench-train")
    assert argv[:2] == ["bench", "train"]
    text = ok(cli(*argv, "--out", out, "--clips", "20", "--epochs", "1", "--batch-sizes", "16", "--threads", "1"),
              "seconds_per_epoch")
    assert json.loads(out.read_text())["cpu_count"] >= 1 and text.strip().endswith("}")


# --------------------------------------------------------------------------- apply


@documents("cli.py predict", "make predict")
def test_predict_forms(runs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, media = runs["run"], runs["media"]
    monkeypatch.chdir(tmp_path)
    shutil.copy(media / "explosion" / "clip_01.mp4", "a.mp4")
    shutil.copy(media / "normal" / "clip_02.mp4", "b.mkv")  # the container is probed, not guessed
    shutil.copy(media / "explosion" / "clip_02.mp4", "cam.mp4")
    # predict RUNDIR a.mp4 b.mkv: a table
    out = ok(cli("predict", run, "a.mp4", "b.mkv"), "a.mp4", "b.mkv", "peak at")
    assert "ERROR" not in out
    # predict RUNDIR cam.mp4 --window 10 --hop 5 --plot cam.png (README); --window 10 --plot (docs)
    ok(cli("predict", run, "cam.mp4", "--window", "10", "--hop", "5", "--plot", "cam.png"), "timeline -> cam.png")
    assert Path("cam.png").stat().st_size > 10_000
    ok(cli("predict", run, "cam.mp4", "--window", "10", "--hop", "5"), "cam.mp4")
    ok(cli("predict", run, "cam.mp4", "--window", "10", "--plot", "cam3.png"), "cam3.png")
    # predict RUNDIR *.mp4 --json (> predictions.jsonl)
    result = cli("predict", run, *sorted(str(p) for p in Path(".").glob("*.mp4")), "--json")
    lines = [json.loads(x) for x in ok(result).strip().splitlines()]
    assert [x["video"] for x in lines] == ["a.mp4", "cam.mp4"] and all(x["error"] is None for x in lines)
    # make predict RUN=... VIDEO="a.mp4 b.mp4" [WINDOW=10 HOP=5 PLOT=out.png JSON=1]
    (argv,) = make_command("predict", RUN=run, VIDEO="a.mp4 cam.mp4", WINDOW=10, HOP=5, PLOT="out.png", JSON=1)
    result = cli(*argv)
    assert [json.loads(x)["label"] is not None for x in ok(result).splitlines() if x.startswith("{")] == [True] * 2
    assert Path("out-a.png").is_file() and Path("out-cam.png").is_file()


@documents("cli.py figures", "make figures")
def test_figures_forms(runs: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    # make figures RUN=... = figures RUNDIR (into RUNDIR/figures), two clips in the strip view
    (argv,) = make_command("figures", RUN=run)
    ok(cli(*argv, "--clips", "2"), "confusion_counts", "training_curves", "clip_strips")
    assert (run / "figures" / "clip_strips.png").is_file()
    # figures RUNDIR [--out DIR] [--compare TABLE2.CSV] [--media-root DIR] [--clips 8]
    table = runs["work"] / "reports" / "readme" / "table2.csv"
    extra = ["--compare", table] if table.is_file() else []
    ok(cli("figures", run, "--out", tmp_path / "figs", *extra, "--media-root", runs["media"], "--clips", "1"),
       "f1_per_class", "clip_strips")


# --------------------------------------------------------------------------- XD-Violence


@documents("make extract", "cli.py synth-xd")
def test_xd_violence_extract_and_detection(xd_standin: dict, tmp_path: Path) -> None:
    """docs/xd_violence.md: extract (the session fixture ran that command), train the
    detection view on the official split, ``evaluate RUNDIR --detection``: the frame AP is
    printed and stored, exit status 0 (issue 16, fault 0: it was a KeyError traceback)."""
    assert "violent (6 classes)" in xd_standin["output"]
    # cli.py synth-xd --out DIR --lengths 18-36 (the session fixture ran it)
    assert "wrote 27 videos (28 listed)" in xd_standin["synth_output"]
    # make extract DATASET=xd-violence DATA_ROOT=...: into the same cache, nothing left to do
    (argv,) = make_command("extract", DATASET="xd-violence", DATA_ROOT=xd_standin["root"] / "videos",
                           LISTS=xd_standin["root"] / "lists", CACHE=xd_standin["cache"], STEPS=12,
                           BACKBONES="tiny", WORKERS=0)
    assert argv[:3] == ["extract", "--dataset", "xd-violence"] and "--lists" in argv
    ok(cli(*argv), "official split ->")
    run = tmp_path / "det"
    ok(cli("train", "--cache", xd_standin["cache"], "--task", "xd-detection", "--head", "pool", "--modality", "video",
           "--epochs", "3", "--batch-size", "8", "--out", run), "test: accuracy")
    result = cli("evaluate", run, "--detection")
    out = ok(result, "frame AP (official PR-AUC)", "test: accuracy")
    stored = json.loads((run / "metrics.json").read_text())
    assert f"{stored['ap_frame_pr_auc']:.4f}" in out and "accuracy" in stored
    # the documented options
    ok(cli("evaluate", run, "--detection", "--annotations", xd_standin["root"] / "lists" / "annotations.txt",
           "--fps", "24", "--gt-frames", "official"), "frame AP")


@documents("cli.py synth-stream")
def test_synth_stream_to_a_file(tmp_path: Path) -> None:
    """docs/synthetic.md, "Live streams": the file form (as fast as possible), its truth;
    a non-loopback udp target is refused with exit status 2 (tests/test_live_stream.py
    streams in real time)."""
    out, truth = tmp_path / "cam.ts", tmp_path / "cam.truth.json"
    result = cli("synth-stream", "--out", out, "--seconds", "2", "--event-at", "0.5", "--event-seconds", "1",
                 "--pause-at", "1.5", "--pause-seconds", "0.2", "--truth", truth)
    ok(result, "stream complete: 43 frames")
    assert out.stat().st_size > 0
    assert json.loads(truth.read_text())["events"][0]["start"] == 0.5
    refused = cli("synth-stream", "--out", "udp://192.0.2.1:5000")
    assert refused.exit_code == 2 and "loopback only" in refused.output


@documents("cli.py import-features")
def test_import_released_features(tmp_path: Path) -> None:
    """docs/xd_violence.md, "From the released features": both formats as documented, on
    generated files in the authors' layouts (tests/test_import_features.py)."""
    from tests.test_import_features import write_vadclip, write_xdviodet

    root, lists, _ = write_xdviodet(tmp_path / "i3d")
    ok(cli("import-features", "--format", "xdviodet", "--root", root, "--lists", lists,
           "--out", tmp_path / "xd-i3d.zarr"), "imported 9 videos", "official split ->")
    root, lists, _ = write_vadclip(tmp_path / "clip")
    ok(cli("import-features", "--format", "vadclip", "--root", root, "--lists", lists,
           "--out", tmp_path / "xd-clip.zarr", "--crop", "0"), "imported 8 videos", "official split ->")
    ok(cli("cache", "validate", tmp_path / "xd-clip.zarr"), "ok: 8 clips")
