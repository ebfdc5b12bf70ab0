"""Hardware video decoding (``--decode``, ``extract.hw_decode``) on a machine without one.

No GPU runs here: what is tested is what a machine without the device must do (``auto``
decodes in software, bit for bit as ``sw``; an explicit device is refused with one
``error:`` line; a device that does not open for a file falls back to software for that
file, said once). The device itself is opened for real each time (FFmpeg's
``av_hwdevice_ctx_create``), never mocked: on a machine where it does open, the tests
that need it to fail are skipped rather than faked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cache_schema import CacheReader, InvalidInput
from extract.backbones import load_audio_backbone, load_video_backbone
from extract.decode import decode_clip
from extract.decode_workers import Decoded
from extract.feature_extractor import FeatureExtractor, worker_transform
from extract.hw_decode import (HW_KINDS, HardwareDecoder, as_software_layout, decode_mode, device_error,
                               on_device, resolve_decode)
from tests.extract_harness import CLI_TINY, extract_here, make_dataset

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
CLIPS = ["video/video_features/v_GGSY1Qvo990.mp4", "video/moviepy/fire2.mp4", "video/decord/video_0.mov"]
NO_CUDA = device_error("cuda") is not None
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="a CUDA device opens here: the refusal cannot be seen")


def _clips() -> list[Path]:
    found = [REALDATA / c for c in CLIPS if (REALDATA / c).is_file()]
    if not found:
        pytest.skip(f"no real media under {REALDATA}")
    return found


@pytest.fixture(scope="module")
def tiny():
    return load_video_backbone("tiny", device="cpu", precision="fp32"), load_audio_backbone("tiny", device="cpu",
                                                                                            precision="fp32")


def _features(paths: list[Path], tiny, decoder: HardwareDecoder | None) -> tuple[list[np.ndarray], list[str]]:
    video, audio = tiny
    extractor = FeatureExtractor(video, audio, 4)
    clips = [decode_clip(p, 4, frame_transform=worker_transform(video), decoder=decoder) for p in paths]
    records = extractor.records([Decoded(str(p), clip=c) for p, c in zip(paths, clips)], isolate_failures=False)
    return [r.video for r in records], [c.stats.decoder for c in clips]


@pytest.fixture(scope="module")
def software(tiny) -> list[np.ndarray]:
    """The reference: every clip decoded in software."""
    ref, where = _features(_clips(), tiny, None)
    assert where == ["sw"] * len(ref)
    return ref


@needs_no_cuda
def test_auto_decodes_in_software_here_bit_for_bit(tiny, software) -> None:
    paths = _clips()
    auto = resolve_decode("auto")
    assert auto is None or auto.kind != "cuda"  # no CUDA here; a VA-API box would pick vaapi
    got, where = _features(paths, tiny, auto)
    ref = software
    if auto is None:
        assert where == ["sw"] * len(paths)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", HW_KINDS)
def test_an_explicit_device_that_does_not_open_is_refused(kind: str) -> None:
    why = device_error(kind)
    if why is None:
        pytest.skip(f"a {kind} device opens on this machine")
    with pytest.raises(InvalidInput, match=f"--decode {kind}: .*--decode sw"):
        resolve_decode(kind)


@needs_no_cuda
def test_extract_with_decode_cuda_here_is_one_error_line_exit_2(tmp_path: Path) -> None:
    from cli import main

    data = make_dataset(tmp_path / "data", n=2, bad=())
    out = tmp_path / "c.zarr"
    result = CliRunner().invoke(main, ["extract", "--dataset", "synth", "--root", str(data), "--out", str(out),
                                       *CLI_TINY, "--decode", "cuda"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--decode cuda" in errors[0] and "--decode sw" in errors[0], result.output
    assert not out.exists()  # refused before the cache was made (or a model loaded)


def test_a_device_that_does_not_open_falls_back_per_file_said_once(tiny, software,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """CUDA device 97 exists on no machine: FFmpeg's device open fails for every file, as
    it would where the driver refuses; each file then decodes in software, same frames."""
    paths = _clips()
    missing = HardwareDecoder("cuda", device="97")
    with caplog.at_level(logging.DEBUG, logger="extract.hw_decode"):
        got, where = _features(paths, tiny, missing)
    assert where == ["sw"] * len(paths)
    for a, b in zip(got, software):
        np.testing.assert_array_equal(a, b)
    said = [r for r in caplog.records if r.name == "extract.hw_decode" and r.levelno == logging.WARNING
            and "device did not open" in r.getMessage()]
    # once per reason and process: this test's files all fail alike (an earlier test in
    # this process may have said it already, then no warning comes here at all)
    assert len(said) <= 1
    quiet = [r for r in caplog.records if r.name == "extract.hw_decode" and r.levelno == logging.DEBUG
             and "device did not open" in r.getMessage()]
    assert len(said) + len(quiet) >= len(paths)  # every file fell back, each one logged


@needs_no_cuda
def test_the_cache_records_the_decode_mode_as_a_description(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n=2, bad=())
    sw, auto = tmp_path / "sw.zarr", tmp_path / "auto.zarr"
    extract_here(data, sw)
    extract_here(data, auto, decode="auto")
    with CacheReader(sw) as a, CacheReader(auto) as b:
        assert a.attrs["decode"] == "sw" and b.attrs["decode"] == decode_mode(resolve_decode("auto"))
        np.testing.assert_array_equal(a.read("video"), b.read("video"))
    from cache_schema.info import cache_info, format_cache_info

    assert "decode     sw (the last run's video decoder" in format_cache_info(cache_info(sw, clips=False))


def test_a_cuda_decoder_decodes_on_the_backbones_gpu_not_gpu_0() -> None:
    """Under torchrun each rank's backbones run on ``cuda:LOCAL_RANK``; FFmpeg's CUDA
    decoder given no device opens GPU 0, so every rank decoded there. ``on_device`` gives
    the decoder the backbones' index; an explicit device, another kind, software and a
    device without an index are left as they were."""
    import torch

    cuda = HardwareDecoder("cuda")
    assert on_device(cuda, "cuda:3") == HardwareDecoder("cuda", "3")
    assert on_device(cuda, torch.device("cuda", 1)) == HardwareDecoder("cuda", "1")
    assert on_device(HardwareDecoder("cuda", keep_on_device=True), "cuda:2") == HardwareDecoder("cuda", "2", True)
    assert on_device(HardwareDecoder("cuda", "0"), "cuda:3") == HardwareDecoder("cuda", "0")   # the user's own
    for device in ("cuda", "cpu", "auto", torch.device("cpu")):
        assert on_device(cuda, device) == cuda
    assert on_device(HardwareDecoder("vaapi"), "cuda:1") == HardwareDecoder("vaapi")
    assert on_device(None, "cuda:1") is None


def test_an_unknown_mode_is_invalid_input() -> None:
    from extract.extract_config import ExtractConfig

    with pytest.raises(InvalidInput, match="--decode 'gpu'"):
        ExtractConfig(decode="gpu")
    with pytest.raises(ValueError):
        HardwareDecoder("vaapi", keep_on_device=True)  # only CUDA frames can stay on the device


@needs_no_cuda
def test_bench_extract_has_a_decode_only_row_per_mode_available_here(tmp_path: Path) -> None:
    from extract.bench import measure_decode_modes
    from extract.extract_config import ExtractConfig

    data = make_dataset(tmp_path / "data", n=2, bad=())
    paths = sorted(data.rglob("*.mp4"))
    video = load_video_backbone("tiny", device="cpu", precision="fp32")
    modes = measure_decode_modes(paths, ExtractConfig(workers=0, progress=False), dict(video.transform.data_config))
    available = ["sw"] + [k for k in HW_KINDS if device_error(k) is None]
    assert list(modes["rows"]) == available
    assert "cuda" in modes["unavailable"]  # said, with why
    row = modes["rows"]["sw"]
    assert row["clips"] == 2 and row["failed"] == 0 and row["decode_only_clips_per_s"] > 0


def test_a_downloaded_nv12_frame_gives_the_software_paths_rgb() -> None:
    """NVDEC hands frames out as NV12; swscale's NV12 -> RGB differs from its YUV 4:2:0 ->
    RGB (chroma interpolated), so the engine reshuffles NV12 to planar first."""
    import av

    path = _clips()[0]
    with av.open(str(path)) as c:
        frames = [f for _, f in zip(range(3), c.decode(video=0))]
    for frame in frames:
        software = frame.to_ndarray(format="rgb24")
        downloaded = frame.reformat(format="nv12")  # what a frame downloaded from NVDEC looks like
        np.testing.assert_array_equal(as_software_layout(downloaded).to_ndarray(format="rgb24"), software)
        assert as_software_layout(frame) is frame


@needs_no_cuda
@pytest.mark.parametrize("command", ["predict", "watch"])
def test_predict_and_watch_refuse_decode_cuda_here_in_one_line(command: str, synthetic_run: Path) -> None:
    from cli import main

    video = _clips()[0]
    result = CliRunner().invoke(main, [command, str(synthetic_run), str(video), "--decode", "cuda"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--decode cuda" in errors[0], result.output
