"""YAMNet's frontend and the PyTorch port of its int8 TFLite file, against Google's test
vectors, LiteRT and real crying-baby clips (ESC-10).

The weights and test vectors are read from ``<repo>/../shared/weights/yamnet`` (or the
folder ``AVAR_YAMNET_DIR`` names); the tests that need them skip where they are absent.
LiteRT (``ai-edge-litert``, the ``test`` extra) is only the reference: the comparison skips
where it cannot be imported. Measured here (x86 CPU, fp32):

* frontend vs ``yamnet_test_spectra.bin``: that file is YAMNet's frontend with log offset
  0.01 (VGGish's) on the test audio peak-normalised to 1.0, not YAMNet's params.py (0.001,
  unscaled); with those two settings the port matches it to 7.9e-6 (max abs). With YAMNet's
  own settings the correlation is 0.99997 and the cells differ by log(4.06 m + 0.01) -
  log(m + 0.001): 1.41 on average, 1.71 at most;
* port vs LiteRT reference kernels: test spectra Speech 0.945 vs 0.941, embedding cosine
  0.9993; 400 ESC-10 patches: cosine >= 0.9973 (median 0.99973), top-1 equal on 389;
* ESC-10: "Baby cry, infant cry" in the file-mean top 3 for 34 of 40 files (LiteRT: 34).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.backbones import BackboneUnavailable
from extract.backbones.tflite_graph import read_tflite_graph
from extract.backbones.yamnet import (
    EMBEDDING_DIM,
    NUM_CLASSES,
    YAMNET_SHA256,
    YamNet,
    load_yamnet,
    state_dict_from_graph,
    yamnet_class_names,
)
from extract.backbones.yamnet_frontend import (
    YAMNET_FRONTEND,
    log_mel_spectrogram,
    mel_weight_matrix,
    padded_length,
    patch_layout,
    waveform_to_patches,
)

SHARED = Path(os.environ.get("AVAR_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
YAMNET_DIR = Path(os.environ.get("AVAR_YAMNET_DIR", SHARED / "weights" / "yamnet"))
TFLITE = YAMNET_DIR / "yamnet_spectra_in.tflite"
CLASS_MAP = YAMNET_DIR / "yamnet_class_map.csv"
ESC10_BABY = SHARED / "realdata" / "audio" / "esc10_crying_baby"
BABY_CRY = "Baby cry, infant cry"

needs_yamnet = pytest.mark.skipif(not TFLITE.is_file(), reason=f"YAMNet files not found at {YAMNET_DIR}")
needs_esc10 = pytest.mark.skipif(not ESC10_BABY.is_dir(), reason=f"ESC-10 crying-baby clips not found at {ESC10_BABY}")

# Measured values (see the module docstring) and the margins the tests allow.
TEST_SPECTRA_MAX_ABS = 1e-4  # measured 7.9e-6
LITERT_MIN_COSINE = 0.995  # measured 0.9973 (worst ESC-10 patch), 0.9993 (test spectra)
LITERT_MIN_TOP1_AGREEMENT = 0.9  # measured 389/400 patches
ESC10_MIN_TOP3 = 30  # measured 34 of 40


def test_audio() -> np.ndarray:
    return np.fromfile(YAMNET_DIR / "yamnet_test_audio.bin", dtype="<i2").astype(np.float32) / 32768.0


def test_spectra() -> np.ndarray:
    return np.fromfile(YAMNET_DIR / "yamnet_test_spectra.bin", dtype="<f4").reshape(96, 64)


test_audio.__test__ = False  # helpers, not tests
test_spectra.__test__ = False


@pytest.fixture(scope="module")
def model() -> YamNet:
    return load_yamnet(TFLITE)


@pytest.fixture(scope="module")
def names() -> list[str]:
    return yamnet_class_names(CLASS_MAP)


@pytest.fixture(scope="module")
def esc10_patches() -> list[torch.Tensor]:
    """Each crying-baby file decoded the way extraction decodes audio (PyAV, 16 kHz mono),
    then cut into YAMNet patches."""
    from extract.decode import decode_clip

    files = sorted(ESC10_BABY.glob("*.mp3"))
    assert len(files) == 40
    patches = []
    for path in files:
        clip = decode_clip(path, 1)
        assert clip.audio is not None, path
        patches.append(waveform_to_patches(torch.from_numpy(clip.audio)))
    return patches


# --- frontend -------------------------------------------------------------------------------


@pytest.mark.parametrize("n, count", [(0, 1), (1, 1), (15_600, 1), (15_601, 2), (23_280, 2), (23_281, 3),
                                      (80_000, 10)])
def test_patch_layout_follows_pad_waveform(n, count):
    got, starts = patch_layout(n)
    assert got == count and starts.tolist() == [k * 7680 for k in range(count)]
    assert padded_length(n) == 15_600 + (count - 1) * 7680


@pytest.mark.parametrize("n", [400, 15_600, 15_601, 40_000])
def test_patches_sit_where_patch_layout_says(n):
    """Patch k is exactly the frontend of samples [k*7680, k*7680 + 15600), zero-padded:
    what a caller needs to place patch embeddings in time."""
    wave = torch.from_numpy(np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1)
    patches = waveform_to_patches(wave)
    count, starts = patch_layout(n)
    assert patches.shape == (count, 96, 64) and patches.dtype == torch.float32
    padded = torch.nn.functional.pad(wave, (0, padded_length(n) - n))
    for k, start in enumerate(starts):
        alone = log_mel_spectrogram(padded[start:start + YAMNET_FRONTEND.patch_samples])
        torch.testing.assert_close(patches[k], alone, rtol=0, atol=1e-5)


def test_frontend_batches_without_changing_a_patch():
    waves = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 20_000)).astype(np.float32) * 0.1)
    batched = waveform_to_patches(waves)
    assert batched.shape == (3, 2, 96, 64)
    for i in range(3):
        torch.testing.assert_close(batched[i], waveform_to_patches(waves[i]), rtol=0, atol=1e-5)


def test_frontend_constants_are_yamnets_and_json_friendly():
    d = YAMNET_FRONTEND.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert (d["stft_window_samples"], d["stft_hop_samples"], d["fft_length"], d["mel_bands"]) == (400, 160, 512, 64)
    assert (d["mel_min_hz"], d["mel_max_hz"], d["log_offset"]) == (125.0, 7500.0, 0.001)
    assert (d["patch_frames"], d["patch_hop_frames"], d["patch_samples"], d["patch_hop_samples"]) == (96, 48, 15_600,
                                                                                                     7680)
    weights = mel_weight_matrix()
    assert weights.shape == (257, 64) and not weights[0].any()  # TF drops the DC bin
    assert (weights.max(0) > 0).all()  # every band has a triangle


@needs_yamnet
def test_frontend_reproduces_googles_test_spectra():
    """``yamnet_test_spectra.bin`` is this frontend with log offset 0.01 on the test audio
    peak-normalised to 1.0: every other step (window, FFT, mel matrix, framing) must
    match it to float32 round-off."""
    audio, ref = test_audio(), test_spectra()
    as_google = dataclasses.replace(YAMNET_FRONTEND, log_offset=0.01)
    got = waveform_to_patches(torch.from_numpy(audio / np.abs(audio).max()), as_google)
    assert got.shape == (1, 96, 64)
    assert float((got[0] - torch.from_numpy(ref)).abs().max()) <= TEST_SPECTRA_MAX_ABS

    # YAMNet's own settings (what extraction uses): the same picture, shifted by the gain
    # and the offset (README: correlation 0.99997, max abs 1.7).
    own = waveform_to_patches(torch.from_numpy(audio))[0].numpy()
    assert np.corrcoef(own.ravel(), ref.ravel())[0, 1] > 0.9999
    mel = np.exp(own.astype(np.float64)) - YAMNET_FRONTEND.log_offset
    np.testing.assert_allclose(np.log(mel / np.abs(audio).max() + 0.01), ref, atol=TEST_SPECTRA_MAX_ABS)


# --- the port -------------------------------------------------------------------------------


@needs_yamnet
def test_port_hears_speech_in_googles_test_spectra(model, names):
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert len(names) == NUM_CLASSES and names[0] == "Speech" and names[20] == BABY_CRY
    with torch.inference_mode():
        embeddings, scores = model(torch.from_numpy(test_spectra())[None])
    assert embeddings.shape == (1, EMBEDDING_DIM) and scores.shape == (1, NUM_CLASSES)
    assert names[int(scores[0].argmax())] == "Speech" and float(scores[0].max()) > 0.9  # measured 0.945
    assert (embeddings >= 0).all() and (embeddings <= 6).all()  # the mean of ReLU6 outputs


@needs_yamnet
@needs_esc10
def test_port_agrees_with_litert(model, esc10_patches):
    """LiteRT's reference int8 kernels against the port's float activations on the
    dequantized weights: the same top-1 class and close embeddings (LiteRT's embedding is
    the int8 MEAN output, dequantized)."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter",
                                             reason="ai-edge-litert (the LiteRT reference) is not installed")
    interpreter = interpreter_module.Interpreter(
        model_path=str(TFLITE), experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=interpreter_module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    details = {d["name"]: d for d in interpreter.get_tensor_details()}
    mean = details["tower0/network/layer28/reduce_mean"]
    scale, zero = mean["quantization"]

    def litert(patch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], patch[None].astype(np.float32))
        interpreter.invoke()
        scores = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0].copy()
        embedding = (interpreter.get_tensor(mean["index"]).reshape(-1).astype(np.float32) - zero) * scale
        return embedding, scores

    patches = torch.cat([torch.from_numpy(test_spectra())[None], *esc10_patches[:8]])
    with torch.inference_mode():
        embeddings, scores = (t.numpy() for t in model(patches))
    cosines, same_top1 = [], []
    for k, patch in enumerate(patches.numpy()):
        lite_embedding, lite_scores = litert(patch)
        cosines.append(float(embeddings[k] @ lite_embedding
                             / (np.linalg.norm(embeddings[k]) * np.linalg.norm(lite_embedding))))
        same_top1.append(int(scores[k].argmax()) == int(lite_scores.argmax()))
    assert same_top1[0] and cosines[0] >= LITERT_MIN_COSINE  # Google's test spectra
    assert min(cosines) >= LITERT_MIN_COSINE, min(cosines)
    assert np.mean(same_top1) >= LITERT_MIN_TOP1_AGREEMENT, np.mean(same_top1)


@needs_yamnet
@needs_esc10
def test_port_hears_babies_crying_in_esc10(model, names, esc10_patches):
    baby = names.index(BABY_CRY)
    with torch.inference_mode():  # one batch: many small calls cost several times more
        _, scores = model(torch.cat(esc10_patches))
    hits = 0
    for file_scores in scores.split([len(p) for p in esc10_patches]):
        hits += baby in file_scores.mean(0).argsort(descending=True)[:3].tolist()
    assert hits >= ESC10_MIN_TOP3, f"{BABY_CRY!r} in the top 3 for {hits} of 40 files"


# --- bad files ------------------------------------------------------------------------------


def assert_one_line_with_the_way_out(err: pytest.ExceptionInfo) -> None:
    message = str(err.value)
    assert "\n" not in message
    for needed in ("google-coral/coralmicro", YAMNET_SHA256, "--audio-model", "AVAR_YAMNET"):
        assert needed in message


def test_missing_file_is_unavailable(tmp_path):
    with pytest.raises(BackboneUnavailable) as err:
        load_yamnet(tmp_path / "nowhere.tflite")
    assert_one_line_with_the_way_out(err)
    assert "cannot be read" in str(err.value)


def test_another_file_is_unavailable(tmp_path):
    other = tmp_path / "other.tflite"
    other.write_bytes(b"\0\0\0\0TFL3" + bytes(100))
    with pytest.raises(BackboneUnavailable) as err:
        load_yamnet(other)
    assert_one_line_with_the_way_out(err)
    assert "sha256" in str(err.value)


@needs_yamnet
def test_truncated_file_is_unavailable(tmp_path):
    truncated = tmp_path / "yamnet_spectra_in.tflite"
    truncated.write_bytes(TFLITE.read_bytes()[:1_000_000])
    with pytest.raises(BackboneUnavailable) as err:
        load_yamnet(truncated)
    assert_one_line_with_the_way_out(err)
    with pytest.raises(BackboneUnavailable) as err:  # past the checksum, the parse fails too
        load_yamnet(truncated, expected_sha256=None)
    assert_one_line_with_the_way_out(err)


@needs_yamnet
def test_a_graph_of_another_shape_fails_loudly():
    """A stride that differs from _YAMNET_LAYER_DEFS is named, not silently loaded."""
    graph = read_tflite_graph(TFLITE.read_bytes())
    ops = list(graph.operators)
    k = next(i for i, op in enumerate(ops) if op.op == "DEPTHWISE_CONV_2D" and op.options["StrideH"] == 2)
    ops[k] = dataclasses.replace(ops[k], options={**ops[k].options, "StrideH": 1, "StrideW": 1})
    with pytest.raises(ValueError, match=f"operator {k} .*stride 2"):
        state_dict_from_graph(dataclasses.replace(graph, operators=tuple(ops)))


def test_bad_class_map_is_unavailable(tmp_path):
    with pytest.raises(BackboneUnavailable):
        yamnet_class_names(tmp_path / "missing.csv")
    short = tmp_path / "short.csv"
    short.write_text("index,mid,display_name\n0,/m/09x0r,Speech\n")
    with pytest.raises(BackboneUnavailable, match="521 rows"):
        yamnet_class_names(short)
