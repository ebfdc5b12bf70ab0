"""The real files in ../shared/realdata are a test suite: every row of MANIFEST.tsv must
hold in the cache (features for the streams that exist, masks for those that do not, a
readable error for the corrupt file, and every other clip written)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from cache_schema import CacheReader, validate
from extract.datasets import build_manifest
from extract.pipeline import ExtractConfig, run_extract

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
pytestmark = pytest.mark.skipif(not (REALDATA / "MANIFEST.tsv").exists(), reason="../shared/realdata not present")


def _manifest_rows() -> list[dict[str, str]]:
    with (REALDATA / "MANIFEST.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("realdata") / "real.zarr"
    cfg = ExtractConfig(video_model="tiny", audio_model="tiny", batch_size=8, workers=2, progress=False)
    run_extract(build_manifest("folder", REALDATA), out, cfg)
    return out


def test_every_manifest_row_holds(cache: Path) -> None:
    rep = validate(cache)
    assert rep.ok, rep.problems
    with CacheReader(cache) as r:
        clips = {c["key"]: c for c in r.clips()}
        silent = dict(zip(r.keys, r.read("audio_silent")))
    rows = _manifest_rows()
    assert len(rows) >= 50
    failures = []
    for row in rows:
        c = clips.get(row["path"])
        if c is None:
            failures.append(f"{row['path']}: not in the cache")
            continue
        expect = row["expect"]
        got = (
            "error" if c["status"] == "error"
            else "audio+video" if c["has_video"] and c["has_audio"]
            else "video-only" if c["has_video"]
            else "audio-only" if c["has_audio"] else "nothing"
        )
        if got != expect:
            failures.append(f"{row['path']}: expected {expect}, got {got} ({c['error']})")
        if expect == "error" and not c["error"]:
            failures.append(f"{row['path']}: error without a reason")
        if expect != "error" and row["duration_s"]:
            if abs(c["duration"] - float(row["duration_s"])) > max(0.15, 0.05 * float(row["duration_s"])):
                failures.append(f"{row['path']}: duration {c['duration']:.3f} vs manifest {row['duration_s']}")
        if "digital silence" in row["notes"] and not silent[row["path"]]:
            failures.append(f"{row['path']}: silent audio not flagged")
        if expect == "audio+video" and "digital silence" not in row["notes"] and silent[row["path"]]:
            failures.append(f"{row['path']}: audible audio flagged silent")
    assert not failures, "\n".join(failures)


def test_no_duration_webm_gets_a_duration(cache: Path) -> None:
    with CacheReader(cache) as r:
        clips = {c["key"]: c for c in r.clips()}
        row = list(r.keys).index("video/moviepy/no_duration.webm")
        st = r.read("step_time")[row]
    c = clips["video/moviepy/no_duration.webm"]
    assert c["status"] == "ok" and c["duration"] > 0.5
    assert np.all(np.diff(st) > 0) and st[-1] < c["duration"]
