"""Media whose facts would size the work absurdly: audio timestamps that jump by an hour or
a year halfway through a clip, and paths that are not regular files (a FIFO, a directory).

The jump is refused by the probe, before any buffer or step is sized by the clip's
duration, so every command sees the same error: ``decode_clip`` (extract and whole-clip
predict), ``decode_windows`` (predict --window) and the extraction pipeline. The predict
side (one bad file among good ones, through ``cli.py predict``) is in test_predict.py.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from extract.decode import DecodeError, decode_clip
from extract.probe import EMPTY_FLOOR_S, ImplausibleTimeline, open_container, probe
from extract.windows import decode_windows
from tests.media_factory import write_audio_jump_clip, write_clip

HOUR, YEAR = 3600.0, 365 * 86400.0


@pytest.mark.parametrize("name, jump, video", [
    ("hour.mkv", HOUR, True), ("hour.ts", HOUR, True), ("year.mkv", YEAR, True), ("year_audio.mkv", YEAR, False),
])
def test_an_audio_clock_jump_is_refused_by_the_probe(tmp_path: Path, name: str, jump: float, video: bool) -> None:
    path = write_audio_jump_clip(tmp_path / name, jump, video=video)
    with pytest.raises(ImplausibleTimeline, match=r"audio timestamps jump by \d+ s \(from 2\.0 s") as err:
        probe(path)
    message = str(err.value)
    assert str(path) in message and "re-time it" in message and "\n" not in message
    if name == "hour.mkv":
        assert "jump by 3600 s" in message and "would last 3604 s" in message


def test_every_decoder_refuses_the_jump_before_allocating(tmp_path: Path) -> None:
    """The year-long clip once asked numpy for 1.8 TiB of audio (a MemoryError in decode_clip,
    unbounded windows in decode_windows); now both stop at the probe with the same error."""
    path = write_audio_jump_clip(tmp_path / "year.mkv", YEAR)
    with pytest.raises(ImplausibleTimeline, match="timestamps jump"):
        decode_clip(path, 10)
    windows: list = []
    with pytest.raises(ImplausibleTimeline, match="timestamps jump"):
        decode_windows(path, 10, 4.0, 2.0, windows.append)
    assert windows == []


def test_plausible_gaps_are_still_decoded(tmp_path: Path) -> None:
    """A jump inside the check's allowance stays a (longer) clip, with silence in the gap."""
    small = EMPTY_FLOOR_S / 2
    path = write_audio_jump_clip(tmp_path / "small.mkv", small)
    clip = decode_clip(path, 4)
    assert clip.duration == pytest.approx(4.0 + small, abs=0.1)
    assert clip.audio is not None and clip.frames is not None
    # An ordinary clip is untouched by the check.
    ordinary = decode_clip(write_clip(tmp_path / "ok.mp4", duration=2.0), 4)
    assert ordinary.duration == pytest.approx(2.0, abs=0.1)


def test_extract_records_the_jump_as_that_clips_error(tmp_path: Path) -> None:
    from extract.datasets import Manifest, ManifestRow
    from extract.pipeline import ExtractConfig, run_extract
    from tests.extract_harness import one_thread

    good = write_clip(tmp_path / "media" / "a" / "good.mp4", duration=1.0)
    bad = write_audio_jump_clip(tmp_path / "media" / "a" / "year.mkv", YEAR)
    rows = (ManifestRow("a/year.mkv", bad, 0, "g1"), ManifestRow("a/good.mp4", good, 0, "g2"))
    cfg = ExtractConfig(video_model="tiny", audio_model="tiny", device="cpu", workers=0, progress=False, steps=4)
    with one_thread():
        summary = run_extract(Manifest("test", tmp_path / "media", ("a",), rows), tmp_path / "c.zarr", cfg)
    assert summary.done == 1
    assert list(summary.failed) == ["a/year.mkv"]
    assert "timestamps jump" in summary.failed["a/year.mkv"] and "MemoryError" not in summary.failed["a/year.mkv"]


def _opens_without_blocking(path: Path) -> BaseException | None:
    """Run ``open_container(path)`` in a thread that must finish promptly (a FIFO with no
    writer would block FFmpeg forever); returns what it raised."""
    raised: list[BaseException | None] = []

    def attempt() -> None:
        try:
            open_container(path).close()
            raised.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10.0)
    if worker.is_alive():  # unblock it so that the process can end, then fail
        with open(path, "wb"):
            pass
        pytest.fail(f"opening {path} blocked")
    return raised[0]


def test_a_fifo_is_named_as_such_and_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "live.mp4"
    os.mkfifo(fifo)
    exc = _opens_without_blocking(fifo)
    assert isinstance(exc, DecodeError)
    assert "FIFO" in str(exc) and "no such file" not in str(exc) and "live mode" in str(exc)
    with pytest.raises(DecodeError, match="FIFO"):
        decode_clip(fifo, 4)


def test_a_directory_and_a_missing_file_say_what_they_are(tmp_path: Path) -> None:
    folder = tmp_path / "clips.mp4"
    folder.mkdir()
    with pytest.raises(DecodeError, match="is a directory"):
        probe(folder)
    with pytest.raises(DecodeError, match="no such file"):
        probe(tmp_path / "missing.mp4")
    assert np.isfinite(probe(write_clip(tmp_path / "ok.mp4", duration=1.0)).duration)
