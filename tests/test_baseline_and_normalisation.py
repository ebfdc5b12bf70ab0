"""The `linear` baseline head, and what makes stage 2 hold up on real features: input
normalisation fitted on the training split only and carried by the checkpoint, and the
best-on-validation epoch kept (issue 21, section 6)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from temporal.checkpoint import load_weights
from temporal.compare import compare
from temporal.data import load_cache
from temporal.evaluate import load_run, load_test_split, predict
from temporal.heads import BASELINE_HEAD, TABLE_HEADS, create_head
from temporal.model import AnomalyModel
from temporal.rundir import RunDir, RunMismatch
from temporal.train import TrainConfig, train
from tests.cache_factory import make_config, write_class_cache

CLASSES = ("normal", "crash", "fight", "siren")
QUICK = TrainConfig(epochs=3, progress=False)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("norm") / "c.zarr"
    write_class_cache(path, make_config(classes=CLASSES), 60)
    return path


def test_linear_head_is_one_linear_map_per_step_and_on_the_mean_step() -> None:
    """Clip logits = W * mean(valid steps) + b, step logits = W * x_t + b: the clip logits
    are exactly the mean of the valid step logits, so detection and live scoring read the
    model the clip accuracy measures."""
    torch.manual_seed(0)
    head = create_head("linear", 12, 4, 10).eval()
    assert not head.classifier.weight.any()  # logistic regression starts from zero
    torch.nn.init.normal_(head.classifier.weight)
    torch.nn.init.normal_(head.classifier.bias)
    x = torch.randn(3, 10, 12)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    out = head(x, mask)
    w, b = head.classifier.weight, head.classifier.bias
    torch.testing.assert_close(out.step_logits[0], x[0] @ w.T + b)
    torch.testing.assert_close(out.clip_logits[1], x[1, :6].mean(0) @ w.T + b)
    m = mask.unsqueeze(-1).float()
    torch.testing.assert_close(out.clip_logits, (out.step_logits * m).sum(1) / m.sum(1))
    assert sum(p.numel() for p in head.parameters()) == 12 * 4 + 4


def test_linear_head_trains_and_beats_chance(cache: Path, tmp_path: Path) -> None:
    # 36 training clips are 3 steps an epoch: a probe on 16 dimensions needs a larger step
    # than the default to converge in a test's few epochs
    result = train(cache, tmp_path / "run", replace(QUICK, head="linear", epochs=10, lr=1e-2))
    assert result.metrics["head"] == "linear"
    assert result.metrics["accuracy"] >= 0.75  # chance is 0.25 over four classes
    model, _ = load_run(tmp_path / "run")
    assert set(model.heads) == {"fused"} and model.parameter_count() == (8 + 6 + 2) * 4 + 4


def test_linear_is_listed_and_is_the_baseline_row_of_table2(cache: Path, tmp_path: Path) -> None:
    import cli

    listed = CliRunner().invoke(cli.main, ["train", "--list-heads"])
    assert listed.exit_code == 0 and "linear " in listed.output and "logistic regression" in listed.output
    assert TABLE_HEADS[-1] == BASELINE_HEAD == "linear" and TABLE_HEADS[:-1] == (
        "mtcn", "gru", "bigru", "lstm", "bilstm", "transformer")
    compare(cache, tmp_path / "rep", heads=("mtcn", "linear"), modalities=("audio", "fused"),
            base=replace(QUICK, epochs=2))
    md = (tmp_path / "rep" / "table2.md").read_text()
    assert "| linear (baseline) |" in md and "| mtcn |" in md
    assert "`linear` is the baseline row" in md
    assert "- Audio: mtcn " in md  # the gain over the baseline, per modality
    with (tmp_path / "rep" / "table2.csv").open() as f:
        assert [r["head"] for r in csv.DictReader(f)] == ["mtcn", "mtcn", "linear", "linear"]


def _fitted(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(RunDir(run).weights)).items() if k.startswith("standardize.")}


def test_normalisation_is_fitted_on_the_training_split_only(cache: Path, tmp_path: Path) -> None:
    """Changing the features of the validation and test clips leaves the fitted statistics
    exactly as they were; they are the mean and std of the training clips' valid steps."""
    data = load_cache(cache)
    train(cache, tmp_path / "a", replace(QUICK, epochs=1), data=data)
    split = RunDir(tmp_path / "a").read_split()
    before = _fitted(tmp_path / "a")
    held_out = data.clips.step_rows(data.rows_of(split.val + split.test))
    data.clips.video[held_out] = data.clips.video[held_out] * 100 + 7
    data.clips.audio[held_out] = -50.0
    train(cache, tmp_path / "b", replace(QUICK, epochs=1), data=data)
    after = _fitted(tmp_path / "b")
    assert set(before) == {"standardize.video_mean", "standardize.video_std", "standardize.audio_mean",
                           "standardize.audio_std"}
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    rows = data.clips.step_rows(data.rows_of(split.train))
    for name in ("video", "audio"):
        valid = getattr(data.clips, name)[rows][getattr(data.clips, f"{name}_mask")[rows]]
        torch.testing.assert_close(before[f"standardize.{name}_mean"], valid.mean(0))
        torch.testing.assert_close(before[f"standardize.{name}_std"], valid.std(0))


@pytest.mark.parametrize("head", ["mtcn", "linear"])
def test_a_run_on_features_1000_times_larger_predicts_the_same(tmp_path: Path, head: str) -> None:
    """The same clips on another scale and offset (as a real backbone's features are) give
    the same run: the normalisation fitted at training time travels in model.safetensors
    and is applied by evaluate and by predict (the path `apply` and `live` score through)."""
    config = make_config(classes=CLASSES)
    write_class_cache(tmp_path / "unit.zarr", config, 60)
    write_class_cache(tmp_path / "big.zarr", config, 60, scale=1000.0, offset=50.0)
    cfg = replace(QUICK, head=head, lr=1e-2 if head == "linear" else QUICK.lr)
    unit = train(tmp_path / "unit.zarr", tmp_path / "run-unit", cfg)
    big = train(tmp_path / "big.zarr", tmp_path / "run-big", cfg)
    assert big.metrics["accuracy"] == unit.metrics["accuracy"] > 0.4  # chance: 0.25
    assert big.metrics["confusion_matrix"] == unit.metrics["confusion_matrix"]
    stats_unit, stats_big = _fitted(tmp_path / "run-unit"), _fitted(tmp_path / "run-big")
    torch.testing.assert_close(stats_big["standardize.video_mean"], stats_unit["standardize.video_mean"] * 1000 + 50,
                               rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(stats_big["standardize.audio_std"], stats_unit["standardize.audio_std"] * 1000,
                               rtol=1e-4, atol=1e-2)
    # reloaded from the run directory alone, on each run's own test clips
    probs = {}
    for name in ("unit", "big"):
        test = load_test_split(tmp_path / f"run-{name}")
        probs[name] = predict(test.model, test.clips)
    assert probs["big"].clip_probs.max() > 0.3  # not a degenerate uniform answer
    torch.testing.assert_close(torch.from_numpy(probs["big"].clip_probs), torch.from_numpy(probs["unit"].clip_probs),
                               rtol=0, atol=1e-3)
    torch.testing.assert_close(torch.from_numpy(probs["big"].step_probs), torch.from_numpy(probs["unit"].step_probs),
                               rtol=0, atol=1e-3)


def test_a_checkpoint_without_its_normalisation_is_refused(cache: Path, tmp_path: Path) -> None:
    train(cache, tmp_path / "run", replace(QUICK, epochs=1, head="linear"))
    weights = RunDir(tmp_path / "run").weights
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("standardize.")}
    save_file(state, str(weights))
    with pytest.raises(RunMismatch, match=r"no input normalisation \(standardize\.video_mean.*train the run again"):
        load_run(tmp_path / "run")
    # another head's weights: the refusal names what does not fit
    train(cache, tmp_path / "gru", replace(QUICK, epochs=1, head="gru"), overwrite=True)
    with pytest.raises(RunMismatch, match=r"another model .*unexpected heads\.fused\.rnn\."):
        load_weights(AnomalyModel("linear", "fused", "early", 8, 6, 4, 10), RunDir(tmp_path / "gru").weights)


def test_the_kept_weights_are_those_of_the_best_validation_epoch(cache: Path, tmp_path: Path) -> None:
    """model.safetensors holds the epoch with the best validation accuracy (ties: lower
    validation loss), not the last one; metrics.json says which epoch it was."""
    result = train(cache, tmp_path / "run", replace(QUICK, head="gru", epochs=8, lr=0.05, seed=1))
    history = result.history
    best = max(history, key=lambda h: (h["val_accuracy"], -h["val_loss"]))
    assert result.metrics["best_epoch"] == best["epoch"] < len(history)  # this seed's best is not its last
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_epoch"] == best["epoch"] and metrics["epochs_run"] == 8
    # the kept weights reproduce the best epoch's validation score, not the last epoch's
    data = load_cache(cache)
    model, _ = load_run(tmp_path / "run")
    split = RunDir(tmp_path / "run").read_split()
    val = data.clips.take(data.rows_of(split.val))
    accuracy = float((torch.from_numpy(predict(model, val).clip_probs).argmax(1) == val.label).float().mean())
    assert accuracy == pytest.approx(best["val_accuracy"])
    assert accuracy != pytest.approx(history[-1]["val_accuracy"]) or best["val_loss"] < history[-1]["val_loss"]


def test_the_std_floor_keeps_near_constant_dimensions_from_blowing_up() -> None:
    """Real backbones have near-constant dimensions (YAMNet: about half of its 1,024); the
    floor scales them like the stream instead of dividing by their tiny std, and leaves
    dimensions with an ordinary spread exactly as they were."""
    from temporal.data import Clips
    from temporal.model import FeatureStandardizer

    torch.manual_seed(0)
    n, t = 40, 5
    video = torch.randn(n, t, 3)
    video[..., 1] = 1e-4 * torch.randn(n, t)   # near-constant
    video[..., 2] = 0.0                         # constant
    audio = torch.randn(n, t, 2) * 10
    mask = torch.ones(n, t, dtype=torch.bool)
    clips = Clips(video, audio, mask, mask, torch.zeros(n, dtype=torch.long))
    plain, floored = FeatureStandardizer(3, 2), FeatureStandardizer(3, 2)
    plain.fit(clips)
    floored.fit(clips, std_floor=0.1)
    std = video.reshape(-1, 3).std(0)
    rms = float(std.square().mean().sqrt())
    assert float(plain.video_std[1]) == pytest.approx(float(std[1])) and float(plain.video_std[2]) == 1.0
    torch.testing.assert_close(floored.video_std, torch.tensor([float(std[0]), 0.1 * rms, 0.1 * rms]))
    torch.testing.assert_close(floored.audio_std, plain.audio_std)  # every audio dimension is above the floor
    # a test clip holding 0.01 where training saw ~1e-4: a z-score in the hundreds without the floor
    probe = Clips(torch.full((1, t, 3), 0.01), torch.zeros(1, t, 2), mask[:1], mask[:1], torch.zeros(1, dtype=torch.long))
    assert float(plain(probe).video[0, 0, 1].abs()) > 50
    assert float(floored(probe).video[0, 0, 1].abs()) < 1
