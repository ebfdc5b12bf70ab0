"""Training and evaluation on the cache only: overfitting, determinism, run directory
contents, missing modalities, checkpoints, and no media or backbone anywhere."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cache_schema import AvarError
from cache_schema import replace_atomically, write_json
from temporal.checkpoint import load_train_state, save_train_state
from temporal.data import has_modality, load_cache
from temporal.evaluate import evaluate_run, load_run
from temporal.heads import HEADS
from temporal.losses import LossConfig
from temporal.model import AnomalyModel
from temporal.rundir import MissingRunFile, RunDir, RunMismatch
from temporal.train import TrainConfig, make_optimizer, train, train_epoch, validate
from tests.cache_factory import make_config, write_class_cache

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("normal", "crash", "fight", "siren")
QUICK = TrainConfig(epochs=3, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 learnable clips, 2 per source; clips 5 and 9 have no audio, 6 no video, 3 failed."""
    path = tmp_path_factory.mktemp("train") / "c.zarr"
    write_class_cache(path, make_config(classes=CLASSES), 80, clips_per_group=2, no_audio=(5, 9), no_video=(6,),
                      errors=(3,))
    return path


@pytest.mark.parametrize("head", [h for h in HEADS if h != "linear"])
def test_every_head_overfits_a_tiny_cache(tmp_path: Path, head: str) -> None:
    """Random features (no class structure): only memorising gives 100% train accuracy.
    The ``linear`` baseline is left out: a linear map of the 14-d mean feature cannot
    shatter 16 random clips into 4 classes, and is not meant to (its own test is in
    test_baseline_and_normalisation.py)."""
    write_class_cache(tmp_path / "tiny.zarr", make_config(classes=CLASSES), 16, separation=0.0)
    data = load_cache(tmp_path / "tiny.zarr")
    torch.manual_seed(0)
    model = AnomalyModel(head, "fused", "early", 8, 6, 4, 10)
    model.standardize.fit(data.clips)
    cfg = TrainConfig(lr=3e-3, weight_decay=0.0, batch_size=8)
    optimizer = make_optimizer(model, cfg)
    with torch.no_grad():
        inputs = model.head_inputs(data.clips)
    g = torch.Generator().manual_seed(0)
    accuracy = 0.0
    for _ in range(40):
        train_epoch(model, inputs, optimizer, cfg, g)
        _, accuracy = validate(model, inputs, LossConfig(), None)
        if accuracy == 1.0:
            break
    assert accuracy == 1.0


def test_run_directory_metrics_and_evaluate(cache: Path, tmp_path: Path) -> None:
    result = train(cache, tmp_path / "run", QUICK)
    run = tmp_path / "run"
    for name in ("config.json", "split.json", "model.safetensors", "train_state.safetensors",
                 "history.csv", "training.json", "curves.png", "metrics.json", "per_class.md", "confusion.png"):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted", "recall_weighted",
                "f1_weighted", "ap_anomaly", "n_test", "per_class", "params", "pretrained_backbones",
                "confusion_matrix", "split"):
        assert key in m, key
    assert m["pretrained_backbones"] == {"video": False, "audio": False, "both": False, "video_backbone": "tiny",
                                         "audio_backbone": "tiny", "untrained": ["video tiny", "audio tiny"],
                                         "weights": {}}
    assert m["params"] == sum(p.numel() for p in load_run(run)[0].parameters())
    assert set(m["per_class"]) == set(CLASSES) and m["n_test"] == sum(c["support"] for c in m["per_class"].values())
    assert m["split"]["kind"] == "stratified-group" and m["split"]["seed"] == 0 and m["split"]["groups_source"] == "cache"
    assert m["left_out"]["error"] == 1 and isinstance(m["ap_anomaly"], float)
    assert m["batch_size"] == 16
    assert "UNTRAINED" in (run / "per_class.md").read_text()
    with (run / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"} <= set(rows[0])
    again = evaluate_run(run, write=False)  # from the run directory alone
    assert again["accuracy"] == result.metrics["accuracy"] and again["confusion_matrix"] == m["confusion_matrix"]
    # config.json reads back as a RunConfig that writes the same bytes; no temporary is left behind
    text = (run / "config.json").read_text()
    config = RunDir(run).read_config()
    assert json.dumps(config.to_json(), indent=1) == text and config.train == replace(QUICK, objective="step")
    assert RunDir(run).is_run() and RunDir(run).is_finished() and not list(run.glob(".*.tmp"))


def _config_as_train_wrote_it(**drop: bool) -> dict:
    """config.json as `train` wrote it before RunDir existed (keys and order)."""
    doc = {"cache": "/data/c.zarr", "cache_identity": {"steps": 10, "class_names": list(CLASSES)},
           "class_names": list(CLASSES), "steps": 10, "video_dim": 8, "audio_dim": 6, "streams": ["video", "audio"],
           "params": 1234, "train": replace(QUICK, fusion="late").to_json()}
    return {k: v for k, v in doc.items() if not drop.get(k)}


def test_run_config_reads_run_directories_of_the_previous_layout(tmp_path: Path) -> None:
    doc = _config_as_train_wrote_it()
    (tmp_path / "config.json").write_text(json.dumps(doc, indent=1))
    config = RunDir(tmp_path).read_config()
    assert config.train == replace(QUICK, fusion="late") and config.class_names == CLASSES
    assert (config.steps, config.video_dim, config.audio_dim, config.params) == (10, 8, 6, 1234)
    assert config.task is None and config.label == "mtcn / fused (late)"
    assert json.dumps(config.to_json(), indent=1) == (tmp_path / "config.json").read_text()
    # older runs without streams or cache identity still read
    (tmp_path / "config.json").write_text(json.dumps(_config_as_train_wrote_it(streams=True, cache_identity=True)))
    config = RunDir(tmp_path).read_config()
    assert config.streams == ("video", "audio") and config.cache_identity == {}


def test_a_missing_or_damaged_run_is_an_expected_error(tmp_path: Path) -> None:
    with pytest.raises(MissingRunFile, match="not a run directory.*cli.py train") as info:
        load_run(tmp_path / "nothing")
    assert isinstance(info.value, AvarError) and isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "nothing") in str(info.value)
    (tmp_path / "config.json").write_text("")  # what a full disk left behind before writes were atomic
    with pytest.raises(RunMismatch, match="config.json is damaged") as info:
        load_run(tmp_path)
    assert isinstance(info.value, AvarError) and str(tmp_path) in str(info.value)
    (tmp_path / "config.json").write_text(json.dumps(_config_as_train_wrote_it(params=True)))
    with pytest.raises(RunMismatch, match="no 'params'"):
        RunDir(tmp_path).read_config()
    (tmp_path / "config.json").write_text(json.dumps(_config_as_train_wrote_it()))
    with pytest.raises(MissingRunFile, match="model.safetensors"):
        load_run(tmp_path)  # a run stopped before its first checkpoint
    with pytest.raises(MissingRunFile, match="no metrics.json"):
        RunDir(tmp_path).read_metrics()


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_json(path, {"accuracy": 0.5})

    def full_disk(tmp: Path) -> None:
        tmp.write_text('{"accu')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        replace_atomically(path, full_disk)
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_same_seed_same_run(cache: Path, tmp_path: Path) -> None:
    a = train(cache, tmp_path / "a", replace(QUICK, head="gru", seed=7))
    b = train(cache, tmp_path / "b", replace(QUICK, head="gru", seed=7))
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    for key in ("accuracy", "f1_macro", "confusion_matrix", "ap_anomaly"):
        assert a.metrics[key] == b.metrics[key]


def test_single_modality_runs_train_without_and_score_with_the_prior_clips_without_it(cache: Path,
                                                                                      tmp_path: Path) -> None:
    """Training leaves out the clips without audio; the test still scores every test clip
    (those without audio with the training prior), so modalities compare on the same clips."""
    data = load_cache(cache)
    r = train(cache, tmp_path / "audio", replace(QUICK, modality="audio"), data=data)
    split = json.loads((tmp_path / "audio" / "split.json").read_text())
    no_audio = {k for k, m in zip(data.keys.tolist(), has_modality(data.clips, "audio").tolist()) if not m}
    assert len(no_audio) == 2
    left = r.metrics["left_out"]
    for part in ("train", "val", "test"):
        assert left[f"no_audio_{part}"] == len(no_audio & set(split[part]))
    assert r.metrics["n_train"] == len(set(split["train"]) - no_audio)
    assert r.metrics["n_test"] == len(split["test"]) and set(r.metrics["test_keys"]) == set(split["test"])
    assert set(r.metrics["test_keys_without_stream"]) == no_audio & set(split["test"])
    assert r.metrics["n_test_without_stream"] == len(no_audio & set(split["test"]))


def test_late_fusion_run(cache: Path, tmp_path: Path) -> None:
    r = train(cache, tmp_path / "late", replace(QUICK, fusion="late"))
    model, config = load_run(tmp_path / "late")
    assert config.streams == ("video", "audio") and set(model.heads) == {"video", "audio"}
    assert 0.0 <= r.metrics["accuracy"] <= 1.0 and r.metrics["fusion"] == "late"


def test_evaluate_refuses_features_of_another_cache(cache: Path, tmp_path: Path) -> None:
    train(cache, tmp_path / "run", replace(QUICK, epochs=1))
    other = tmp_path / "other.zarr"
    write_class_cache(other, make_config(classes=CLASSES, steps=5), 20)
    with pytest.raises(ValueError, match="not the cache this run was trained on"):
        evaluate_run(tmp_path / "run", cache=other)


def test_train_state_roundtrip_without_pickle(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AnomalyModel("mtcn", "fused", "early", 8, 6, 3, 10)
    opt = make_optimizer(model, TrainConfig())
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    model(_clips()).clip_logits.sum().backward()
    opt.step()
    sched.step(1.0)
    sched.step(2.0)  # one bad epoch: the LR is cut
    g = torch.Generator().manual_seed(5)
    save_train_state(tmp_path, model, opt, sched, g, {"epoch": 2})
    model2 = AnomalyModel("mtcn", "fused", "early", 8, 6, 3, 10)
    opt2 = make_optimizer(model2, TrainConfig())
    sched2 = torch.optim.lr_scheduler.ReduceLROnPlateau(opt2, patience=0)
    g2 = torch.Generator()
    assert load_train_state(tmp_path, model2, opt2, sched2, g2) == {"epoch": 2}
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] < 1e-3
    st1, st2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert st1.keys() == st2.keys()
    for i in st1:
        torch.testing.assert_close(st1[i]["exp_avg"], st2[i]["exp_avg"])
    assert sched2.best == sched.best and torch.equal(g.get_state(), g2.get_state())


def _clips():
    from temporal.data import Clips

    b, t = 3, 10
    return Clips(torch.randn(b, t, 8), torch.randn(b, t, 6), torch.ones(b, t, dtype=torch.bool),
                 torch.ones(b, t, dtype=torch.bool), torch.tensor([0, 1, 2]))


def test_training_never_opens_media_or_loads_a_backbone(cache: Path, tmp_path: Path) -> None:
    """In a fresh interpreter where av, timm, transformers and extract cannot even be
    imported, a full train + evaluate still works."""
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"av", "timm", "transformers", "extract", "torchvision"}}:
                    raise ImportError("stage 2 must not import " + name)
        sys.meta_path.insert(0, Block())
        import torch
        torch.set_num_threads(1)
        import temporal
        from temporal import TrainConfig, evaluate_run
        from temporal.train import train
        r = train({str(cache)!r}, {str(tmp_path / "iso")!r}, TrainConfig(epochs=1, progress=False))
        evaluate_run({str(tmp_path / "iso")!r})
        bad = [m for m in sys.modules if m.split(".")[0] in {{"av", "timm", "transformers", "extract"}}]
        assert not bad, bad
        print("ok", r.metrics["n_test"])
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


@pytest.mark.parametrize("extra", [{}, {"fusion": "late", "modality_dropout": 0.5}])
def test_resume_after_interruption_matches_uninterrupted(tmp_path: Path, extra: dict) -> None:
    """Training killed after some epochs and resumed ends exactly where an
    uninterrupted run of the same seed ends (weights and metrics), augmentations'
    random draws included."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from temporal.train import TrainConfig, train

    cache = tmp_path / "c.zarr"
    write_class_cache(cache, make_config(classes=("normal", "crash", "pain")), n=36, seed=0, separation=0.6)
    cfg = TrainConfig(head="mtcn", epochs=6, seed=3, progress=False, **extra)
    full = train(cache, tmp_path / "full", cfg)
    # The interrupted run: a process that dies (os._exit) right after epoch 3 is saved.
    script = (
        "import os, sys\n"
        "import temporal.checkpoint as ck, temporal.train as tr\n"
        "real = ck.save_train_state\n"
        "def save(rundir, model, opt, sched, gen, loop):\n"
        "    real(rundir, model, opt, sched, gen, loop)\n"
        "    if loop['epoch'] == 3: os._exit(9)\n"
        "tr.save_train_state = save\n"
        f"tr.train({str(cache)!r}, {str(tmp_path / 'resumed')!r}, "
        f"tr.TrainConfig(head='mtcn', epochs=6, seed=3, progress=False, **{extra!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    resumed = train(cache, tmp_path / "resumed", cfg, resume=True)
    assert [h["epoch"] for h in resumed.history] == list(range(1, 7))
    for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro"):
        assert resumed.metrics[key] == full.metrics[key], key
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="another configuration"):
        train(cache, tmp_path / "resumed", TrainConfig(head="gru", epochs=6, seed=3, progress=False), resume=True)
