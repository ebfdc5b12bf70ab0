"""A run directory: its files, and the typed content of each, written and read here only.

A run directory holds, from training, ``config.json`` (what was asked: a
:class:`RunConfig`), ``split.json`` (the clips of each part), ``model.safetensors`` (the
best weights), ``train_state.safetensors`` (for a later ``--resume``), ``history.csv``
(one row per epoch), ``training.json`` (what happened) and ``curves.png``; and, from the
evaluation that ends every run, ``metrics.json``, ``per_class.md`` and ``confusion.png``.
``figures/`` is where ``cli.py figures`` puts the paper's figures by default.

One process writes a run at a time: :meth:`RunDir.claim` creates the folder and holds an
advisory ``flock`` on its ``.lock`` file for as long as training writes it (the kernel
releases it when the process exits, even by ``kill -9``, so it never goes stale), and it
refuses a folder that already holds a run unless the run is resumed or explicitly
overwritten. Two ``train`` commands into one ``--out`` would otherwise interleave their
files and each report a mixture as its own.

Other modules reach these files through :class:`RunDir`'s properties and read/write
methods, never by name, so the layout is defined once and a reader of a run (evaluation,
figures, the predictor) gets typed values instead of indexing a JSON dict by hand. Every
write goes through :mod:`cache_schema.atomic`: a full disk or a killed run leaves the previous
file, never a torn one. The JSON files keep the layout the code wrote before this module
existed (same keys, same order, ``indent=1``), so older run directories still read.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from cache_schema import (AvarError, BackboneInfo, FileLock, InvalidInput, MissingInput, StepLayout, write_json,
                          write_text)

from .data import streams_for
from .run_bounds import run_bounds_problem
from .split import Split, split_from_json
from .train_config import TrainConfig
from .xd_tasks import task_of_identity

logger = logging.getLogger(__name__)


class RunError(AvarError):
    """A run directory cannot be used as asked; the message names the path and the fix."""


class MissingRunFile(RunError, MissingInput):
    """The path is not a run directory, or lacks a file the command needs (an unfinished run)."""


class RunMismatch(RunError, InvalidInput):
    """A run's file is unreadable, or the run does not match what was asked (another cache,
    another configuration to resume)."""


class RunBusy(RunError):
    """Another process is writing this run directory right now."""


class RunExists(RunError, InvalidInput):
    """The folder already holds a run, and neither resuming nor overwriting it was asked."""


class RunLock(FileLock):
    """The exclusive, non-blocking ``flock`` of one run directory, held while a run writes
    it (see :meth:`RunDir.claim`); ``cache_schema.FileLock`` does the locking (released by
    the kernel when the holder dies, never held by a forked child)."""

    def __init__(self, run: "RunDir") -> None:
        self.run = run
        super().__init__(run.lock_file)

    def busy(self, holder: str) -> Exception:
        return RunBusy(f"run directory {self.run.path} is being written by another process, {holder}; wait for it "
                       f"to finish or choose another --out (the lock {self.path} is released when that process exits)")

    def unavailable(self, exc: OSError, opening: bool) -> Exception:
        return RunError(f"cannot lock {self.path} ({exc.strerror or exc}); the filesystem may not support flock: "
                        "choose an --out on a local disk")


@dataclass(frozen=True)
class RunConfig:
    """``config.json``: what a run was trained on and how, enough to rebuild its model."""

    cache: str                        # the cache's resolved path at training time
    cache_identity: dict[str, Any]    # the cache's identity (backbones, steps, classes, task view)
    class_names: tuple[str, ...]
    steps: int
    video_dim: int
    audio_dim: int
    streams: tuple[str, ...]          # one head per stream
    params: int
    train: TrainConfig
    # Where the cache's steps lie in time (fixed T, or a grid of S-second steps): recorded
    # so that apply/ and figures can place step scores without the cache. None: from
    # ``cache_identity`` (``StepLayout.from_attrs``), or ``steps`` for the oldest runs.
    layout: StepLayout | None = None

    def __post_init__(self) -> None:
        if self.layout is None:
            ident = self.cache_identity or {}
            layout = StepLayout.from_attrs(ident) if (ident.get("steps") or ident.get("step_seconds")) \
                else StepLayout(steps=max(1, int(self.steps)))
            object.__setattr__(self, "layout", layout)

    @property
    def task(self) -> str | None:
        """The task view (XD-Violence) the run was trained on; None: the plain cache."""
        return task_of_identity(self.cache_identity)

    @property
    def label(self) -> str:
        """``head / modality (fusion)``, as figure and report titles name a run."""
        t = self.train
        return f"{t.head} / {t.modality} ({t.fusion})"

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` document (its keys in the order they have always been written)."""
        doc = {"cache": self.cache, "cache_identity": self.cache_identity, "class_names": list(self.class_names),
               "steps": self.steps, "video_dim": self.video_dim, "audio_dim": self.audio_dim,
               "streams": list(self.streams), "params": self.params, "train": self.train.to_json()}
        if self.layout is not None and self.layout.grid:  # fixed-step runs keep the file they always had
            doc.update(step_seconds=self.layout.step_seconds, frames_per_step=self.layout.frames_per_step)
        return doc

    @staticmethod
    def from_json(doc: dict[str, Any], source: str | Path = "config.json") -> "RunConfig":
        """Read a ``config.json`` document; ``source`` names it in the error. Runs from
        before ``streams`` and ``cache_identity`` were recorded still read (streams follow
        from modality and fusion; an empty identity makes its users say what is missing)."""
        fix = "train the run again into a new --out"
        if not isinstance(doc, dict):
            raise RunMismatch(f"{source} is not a run configuration (a JSON {type(doc).__name__}, not an object); {fix}")
        try:
            if not isinstance(doc["train"], dict):
                raise TypeError(f"'train' is a {type(doc['train']).__name__}, not an object")
            train = TrainConfig.from_json(doc["train"])
            identity = doc.get("cache_identity") or {}
            if not isinstance(identity, dict):
                raise TypeError(f"'cache_identity' is a {type(identity).__name__}, not an object")
            for key in ("video_backbone", "audio_backbone"):  # recorded backbones must be complete
                if identity.get(key) is not None:
                    try:
                        BackboneInfo.from_dict(identity[key])
                    except KeyError as exc:
                        raise ValueError(f"cache_identity.{key} has no {exc}") from None
                    except (TypeError, ValueError, AttributeError) as exc:
                        raise ValueError(f"cache_identity.{key} is malformed: {exc}") from None
            names = doc["class_names"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise TypeError("'class_names' is not a list of names")
            config = RunConfig(cache=str(doc["cache"]), cache_identity=dict(identity),
                             class_names=tuple(names), steps=int(doc["steps"]),
                             video_dim=int(doc["video_dim"]), audio_dim=int(doc["audio_dim"]),
                             streams=tuple(doc.get("streams") or streams_for(train.modality, train.fusion)),
                             params=int(doc["params"]), train=train,
                             layout=StepLayout(step_seconds=float(doc["step_seconds"]),
                                               frames_per_step=int(doc.get("frames_per_step") or 1))
                             if doc.get("step_seconds") else None)
            problem = run_bounds_problem(train.head, train.head_options or {}, config.steps, config.video_dim,
                                         config.audio_dim, config.class_names, config.streams)
            if problem is not None:  # checked before anything is built (temporal/run_bounds.py)
                raise ValueError(problem)
            return config
        except (KeyError, TypeError, ValueError, AttributeError, AvarError) as exc:
            detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise RunMismatch(f"{source} is not a run configuration this version can read ({detail}); {fix}") from None


METRIC_NUMBERS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
                  "recall_weighted", "f1_weighted", "n_test")
"""Keys of ``metrics.json`` that must be numbers when present (readers format and draw them)."""


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def metrics_problem(doc: dict[str, Any]) -> str | None:
    """What makes a ``metrics.json`` document unusable by its readers, or None. Keys that
    are absent are not checked (a detection run adds its own); present ones must have the
    type ``evaluate`` writes."""
    bad = [k for k in METRIC_NUMBERS if k in doc and doc[k] is not None and not _is_number(doc[k])]
    if bad:
        return f"{', '.join(repr(k) for k in bad)} not numbers"
    names = doc.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        return "'class_names' is not a list of names"
    cm = doc.get("confusion_matrix")
    if cm is not None:
        n = len(names) if isinstance(names, list) else None
        if not (isinstance(cm, list) and all(isinstance(r, list) and all(_is_number(v) for v in r) for r in cm)
                and (n is None or (len(cm) == n and all(len(r) == n for r in cm)))):
            return "'confusion_matrix' is not a square table of counts, one row per class"
    per_class = doc.get("per_class")
    if per_class is not None:
        if not isinstance(per_class, dict) or not all(
                isinstance(v, dict) and all(_is_number(x) for x in v.values()) for v in per_class.values()):
            return "'per_class' is not a table of numbers per class"
    return None


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory. ``RunDir(path)`` touches nothing on disk; the
    ``read_*`` methods raise :class:`MissingRunFile` or :class:`RunMismatch` with a
    one-line message naming the file and the fix."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ the files
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def train_state(self) -> Path:
        return self.path / "train_state.safetensors"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def training(self) -> Path:
        return self.path / "training.json"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def per_class(self) -> Path:
        return self.path / "per_class.md"

    @property
    def confusion(self) -> Path:
        return self.path / "confusion.png"

    @property
    def figures(self) -> Path:
        """The default folder of ``cli.py figures``' PNGs."""
        return self.path / "figures"

    @property
    def lock_file(self) -> Path:
        """Held (``flock``) by the process writing this run; see :meth:`claim`."""
        return self.path / ".lock"

    def run_files(self) -> tuple[Path, ...]:
        """Every file training and evaluation write here (what ``overwrite`` removes)."""
        return (self.config, self.split, self.weights, self.train_state, self.history, self.training, self.curves,
                self.metrics, self.per_class, self.confusion)

    # ------------------------------------------------------------------ state
    def is_run(self) -> bool:
        """Training has started here (``config.json`` exists)."""
        return self.config.is_file()

    def is_finished(self) -> bool:
        """Training and its evaluation have ended here (``metrics.json`` exists)."""
        return self.metrics.is_file()

    def has_history(self) -> bool:
        return self.history.is_file()

    def can_resume(self) -> bool:
        return self.is_run() and self.train_state.is_file()

    def require_run(self) -> "RunDir":
        if not self.is_run():
            raise MissingRunFile(f"{self.path} is not a run directory (no {self.config.name}); "
                                 "train one with `cli.py train`")
        return self

    def create(self) -> "RunDir":
        """Make the folder (parents too); a path that cannot be a folder is a :class:`RunError`."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"--out {self.path} is an existing file, not a run directory; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if isinstance(exc, (FileExistsError, NotADirectoryError)):
                why = f"a part of {self.path.parent} is a file, not a folder"
            raise RunError(f"cannot create the run directory {self.path}: {why}; "
                           "choose an --out inside a folder you can write to") from None
        return self

    def claim(self, resume: bool = False, overwrite: bool = False) -> RunLock:
        """Create the folder and lock it for one writing process; the returned lock is held
        (release it, or use it as a context manager, when the run is written).

        Refused: another process holds the lock (:class:`RunBusy`); the folder holds a run
        already (:class:`RunExists`) unless ``resume`` (continue it; whether it can be
        resumed is the caller's check) or ``overwrite`` (its files are removed first, so an
        overwriting run that fails leaves no mixture of two runs)."""
        if resume and overwrite:
            raise InvalidInput(f"--resume continues the run in {self.path} and --overwrite replaces it; pass one")
        if resume and not self.path.is_dir():
            raise MissingRunFile(f"{self.path} holds no run to resume; train without --resume")
        if self.path.is_dir():  # a run owns its folder: never scatter one among other files
            ours = {p.name for p in self.run_files()} | {self.lock_file.name, self.figures.name}
            other = sorted(p.name for p in self.path.iterdir()
                           if p.name not in ours and not (p.name.startswith(".") and p.name.endswith(".tmp")))
            if other:
                raise RunExists(f"--out {self.path} is a folder holding other files ({', '.join(other[:3])}"
                                f"{', ...' if len(other) > 3 else ''}), not a run directory; choose a new or empty "
                                "folder for the run")
        lock = RunLock(self.create()).acquire()
        try:
            existing = [p for p in self.run_files() if p.exists()]
            if existing and not resume:
                if not overwrite:
                    state = "a finished" if self.is_finished() else "an unfinished"
                    raise RunExists(f"{self.path} already holds {state} run ({existing[0].name}); pass --overwrite "
                                    "to replace it" + ("" if self.is_finished() else ", --resume to continue it")
                                    + ", or choose another --out")
                for p in existing:
                    p.unlink()
                if self.figures.is_dir():
                    shutil.rmtree(self.figures)
                logger.info("overwriting the run in %s", self.path)
        except BaseException:
            lock.release()
            raise
        return lock

    @contextlib.contextmanager
    def writing(self, resume: bool = False, overwrite: bool = False) -> Iterator["RunDir"]:
        """:meth:`claim` for the duration of a ``with`` block."""
        with self.claim(resume, overwrite):
            yield self

    # ------------------------------------------------------------------ config.json
    def read_config(self) -> RunConfig:
        return RunConfig.from_json(self._read_json(self.require_run().config), self.config)

    def write_config(self, config: RunConfig) -> None:
        write_json(self.config, config.to_json())

    # ------------------------------------------------------------------ split.json
    def read_split(self) -> Split:
        doc = self._read_json(self._require(self.split, "train it again"))
        try:
            return split_from_json(doc)
        except ValueError as exc:
            raise RunMismatch(f"{self.split} is not a split file ({exc}); train the run again") from None

    def write_split(self, split: Split) -> None:
        write_json(self.split, split.to_json())

    # ------------------------------------------------------------------ history.csv
    def read_history(self) -> list[dict[str, float]]:
        path = self._require(self.history, "train it again")
        try:
            with path.open(newline="") as f:
                return [{str(k): float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:  # TypeError: a short row (None)
            raise RunMismatch(f"{path} is not a training history of numbers ({exc}); train the run again "
                              "into a new --out") from None

    def write_history(self, history: Sequence[dict[str, float]]) -> None:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
        write_text(self.history, buf.getvalue())

    # ------------------------------------------------------------------ training.json
    def read_training(self) -> dict[str, Any]:
        """What training recorded (best epoch, timings, clips left out); ``{}`` if absent."""
        return self._read_json(self.training) if self.training.is_file() else {}

    def write_training(self, doc: dict[str, Any]) -> None:
        write_json(self.training, doc)

    # ------------------------------------------------------------------ metrics.json, per_class.md
    def read_metrics(self, required: Sequence[str] = ()) -> dict[str, Any]:
        """``metrics.json``, checked (:func:`metrics_problem`); ``required`` keys must be there."""
        path = self._require(self.metrics, "evaluate it with `cli.py evaluate`")
        doc = self._read_json(path)
        missing = [k for k in required if k not in doc]
        problem = f"no {', '.join(repr(k) for k in missing)}" if missing else metrics_problem(doc)
        if problem:
            raise RunMismatch(f"{path} is damaged ({problem}); evaluate the run again with `cli.py evaluate {self.path}`")
        return doc

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.metrics, metrics)

    def update_metrics(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Merge ``extra`` into ``metrics.json`` (created if absent); the merged document."""
        merged = {**(self._read_json(self.metrics) if self.metrics.is_file() else {}), **extra}
        self.write_metrics(merged)
        return merged

    def write_per_class(self, text: str) -> None:
        write_text(self.per_class, text)

    # ------------------------------------------------------------------ helpers
    def _require(self, path: Path, fix: str) -> Path:
        if not path.is_file():
            raise MissingRunFile(f"{self.path} has no {path.name} (an unfinished run?); {fix}")
        return path

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        """A run file's JSON object; anything else (empty, torn, not JSON, a list) is a
        :class:`RunMismatch` naming the file."""
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:  # an empty or torn file, e.g. written by an older version on a full disk
            raise RunMismatch(f"{path} is damaged ({exc}); train the run again into a new --out") from None
        if not isinstance(doc, dict):
            raise RunMismatch(f"{path} is damaged (a JSON {type(doc).__name__}, not an object); "
                              "train the run again into a new --out")
        return doc


__all__ = ["METRIC_NUMBERS", "MissingRunFile", "RunBusy", "RunConfig", "RunDir", "RunError", "RunExists", "RunLock",
           "RunMismatch", "metrics_problem"]
