"""Frozen timm image backbone (MobileViT by default): per-frame pooled features.

Preprocessing is taken from the model's own pretrained_cfg through timm
(`resolve_data_config` + `create_transform`) rather than re-implemented, so the frames
reach the network exactly as timm's evaluation pipeline would feed them. For the cvnets
MobileViT weights that config says: bicubic resize of the short side to size/0.9, centre
crop to 256x256, values in [0, 1] with mean 0 and std 1 (i.e. no mean/std normalisation),
channels in timm's RGB order. timm's pretrained_cfg has no channel-order field; note that
the transformers port of the same Apple checkpoints (apple/mobilevit-*) flips RGB to BGR,
because the original cvnets models were trained on BGR, so whether timm's converted
weights expect RGB cannot be checked without them; we follow timm's pipeline.

The cache records this preprocessing as ``cache_schema.VideoPreprocessing`` fields
(resize, crop, mean, std, channel order, input scale), derived from the same data config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn

from cache_schema import VideoPreprocessing

from .frozen import (
    BackboneUnavailable,
    DescribedBackbone,
    WeightsProvenance,
    file_sha256,
    seeded_rng,
    variance_preserving_init_,
)
from .runtimes.export_cache import ExportSpec

logger = logging.getLogger(__name__)

DEFAULT_VIDEO_MODEL = "mobilevit_s.cvnets_in1k"
DEFAULT_VIDEO_ARCH = "mobilevit_s"
"""Architecture assumed for a bare checkpoint file with no sibling config.json."""

TINY_VIDEO_ARCH = "mobilevit_xxs"
TINY_VIDEO_SIZE = 64
"""mobilevit_xxs at 64x64: same family and code path as mobilevit_s, ~1 ms per frame on CPU."""

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


class VideoTransform:
    """PIL image (or HxWx3 uint8 array) -> float tensor [3, H, W], exactly timm's eval transform.

    A small class rather than the timm Compose itself so that it pickles as its data config
    alone (DataLoader workers rebuild it), independent of how timm's transform objects pickle.
    """

    def __init__(self, data_config: dict[str, Any]) -> None:
        self.data_config = dict(data_config)
        self._transform = create_transform(**self.data_config)
        # timm's eval pipeline is PIL geometry (resize, crop), then ToTensor, then tensor
        # ops (normalise). Split there, so that a decode worker can hold a long clip's
        # frames as cropped uint8 (a quarter of the float tensor's size) and the float
        # conversion runs per mini-batch where the backbone runs (``geometry`` + ``finish``
        # is exactly ``__call__``).
        steps = list(getattr(self._transform, "transforms", [self._transform]))
        cut = next((i for i, t in enumerate(steps) if type(t).__name__ in ("ToTensor", "MaybeToTensor")), None)
        self._pil_steps = steps[:cut] if cut is not None else None
        self._tensor_steps = steps[cut + 1:] if cut is not None else None

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        return self._transform(_rgb(image))

    @property
    def splits(self) -> bool:
        """Whether ``geometry`` + ``finish`` are available (timm's pipeline has a ToTensor)."""
        return self._pil_steps is not None

    def geometry(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """The PIL half of the transform: the resized, cropped frame as uint8 ``[H, W, 3]``."""
        if self._pil_steps is None:
            raise ValueError(f"{self!r} has no ToTensor step to split at")
        image = _rgb(image)
        for step in self._pil_steps:
            image = step(image)
        return np.asarray(image, dtype=np.uint8)

    def finish(self, frames: np.ndarray) -> torch.Tensor:
        """The tensor half for a batch of ``geometry`` outputs ``[N, H, W, 3]`` uint8 ->
        ``[N, 3, H, W]`` float, the same values as ``__call__`` of each frame (ToTensor's
        ``/ 255``, then timm's tensor steps, which broadcast over the batch)."""
        if self._tensor_steps is None:
            raise ValueError(f"{self!r} has no ToTensor step to split at")
        x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
        x = x.permute(0, 3, 1, 2).contiguous()  # a tensor stays on its device (the GPU feed's copies)
        x = x.to(dtype=torch.get_default_dtype()).div(255)
        for step in self._tensor_steps:
            x = step(x)
        return x

    def __getstate__(self) -> dict[str, Any]:
        return {"data_config": self.data_config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["data_config"])

    def __repr__(self) -> str:
        return f"VideoTransform({self.data_config})"


def _rgb(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode != "RGB":
        # timm's ToTensor keeps the channel count; grey or RGBA frames must become RGB
        image = image.convert("RGB")
    return image


class VideoBackbone(DescribedBackbone):
    """A frozen timm model with num_classes=0, so model(x) is the pooled feature [N, D]."""

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        pretrained: bool,
        device: str = "cpu",
        precision: str = "fp32",
        batch_size: int = 32,
        channels_last: bool | None = None,
        weights: dict | None = None,
        pretrained_tag: str | None = None,
    ) -> None:
        """``weights``: where the weights came from (``WeightsProvenance.to_dict()``);
        ``pretrained_tag``: timm's name of the weight set, only where the weights are timm's
        own (a hub name with a tag), never for a file that merely has timm's architecture."""
        self.hold(model, name=name, pretrained=pretrained, weights=weights, device=device, precision=precision,
                  batch_size=batch_size)
        self.channels_last = torch.device(device).type == "cuda" if channels_last is None else channels_last
        self.arch = str(self.model.pretrained_cfg.get("architecture", type(self.model).__name__))
        self.dim = int(self.model.num_features)
        data_config = resolve_data_config({}, model=self.model)
        self.transform = VideoTransform(data_config)
        self.preprocessing = VideoPreprocessing.from_timm_data_config(
            data_config,
            library=f"timm {timm.__version__}",
            pretrained_tag=pretrained_tag,
            channel_order="RGB",  # VideoTransform feeds PIL's RGB as it is (see the module doc)
        ).to_dict()
        self.model.to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def export_spec(self) -> ExportSpec:
        """Frames ``[N, 3, H, W]`` at the model's input size, any number of them."""
        _, height, width = (int(d) for d in self.transform.data_config["input_size"])
        return ExportSpec(self.arch, self.checksum, (2, 3, height, width), ((0, 1),),
                          (min(self.batch_size, 8), 3, height, width))

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Transformed frames [N, 3, H, W] -> pooled features [N, D], float32 on CPU."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [N, 3, H, W], got {tuple(images.shape)}")
        outputs = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device, torch.float32, non_blocking=True)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            outputs.append(self.frozen_forward(batch).float().cpu())
        if not outputs:
            return torch.empty(0, self.dim)
        return torch.cat(outputs)


def build_random_video_model() -> nn.Module:
    """The full default architecture, untrained, reproducible."""
    with seeded_rng():
        model = timm.create_model(DEFAULT_VIDEO_ARCH, pretrained=False, num_classes=0)
        return variance_preserving_init_(model)


def build_tiny_video_model() -> nn.Module:
    """A small member of the same family for quick CPU runs and tests."""
    with seeded_rng():
        model = timm.create_model(
            TINY_VIDEO_ARCH,
            pretrained=False,
            num_classes=0,
            pretrained_cfg_overlay={"input_size": (3, TINY_VIDEO_SIZE, TINY_VIDEO_SIZE)},
        )
        return variance_preserving_init_(model)


def _unavailable_message(name: str, err: BaseException) -> str:
    return (
        f"Pretrained weights for video model {name!r} could not be loaded "
        f"({type(err).__name__}: {err}).\n"
        "Provide them in one of these ways:\n"
        f"  * on a machine with network, run once: python -c \"import timm; timm.create_model('{name}', "
        "pretrained=True)\" to download them into the Hugging Face cache ($HF_HOME, default "
        "~/.cache/huggingface), then copy that cache to this machine;\n"
        "  * pass a local checkpoint as --video-model: a .safetensors/.pth file (with a sibling "
        "config.json naming its 'architecture', else mobilevit_s is assumed) or a timm model "
        "directory (config.json + model.safetensors);\n"
        "  * or use --video-model tiny / random for an untrained test run (no pretrained semantics)."
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, never unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    elif path.suffix in CHECKPOINT_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types
            raise BackboneUnavailable(
                f"Could not read {path} as a plain tensor checkpoint ({err}). Only weights-only "
                "checkpoints are accepted; convert it to .safetensors."
            ) from err
    else:
        raise BackboneUnavailable(
            f"Unknown checkpoint type {path.suffix!r} for {path}: use one of {', '.join(CHECKPOINT_SUFFIXES)}."
        )
    for wrapper_key in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(wrapper_key), dict):
            state = state[wrapper_key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneUnavailable(f"{path} does not hold a state_dict of tensors.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _architecture_beside(path: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, pretrained_cfg overlay for preprocessing, model args) from a sibling config.json.

    Reads timm's hub layout ({"architecture", "pretrained_cfg": {...}, "model_args"}) and
    the legacy flat layout; falls back to the default architecture when there is no file.
    """
    config_path = path.with_name("config.json")
    if not config_path.is_file():
        logger.info("no config.json beside %s: assuming architecture %s", path, DEFAULT_VIDEO_ARCH)
        return DEFAULT_VIDEO_ARCH, {}, {}
    config = json.loads(config_path.read_text())
    architecture = config.get("architecture")
    if not architecture:
        raise BackboneUnavailable(f"{config_path} has no 'architecture' field naming a timm model.")
    pretrained_cfg = config.get("pretrained_cfg", config)
    overlay = {k: pretrained_cfg[k] for k in _DATA_CONFIG_KEYS if k in pretrained_cfg}
    if "input_size" in overlay:
        overlay["input_size"] = tuple(overlay["input_size"])
    model_args = {k: v for k, v in config.get("model_args", {}).items() if k != "num_classes"}
    return architecture, overlay, model_args


def load_checkpoint_file(path: Path) -> nn.Module:
    architecture, overlay, model_args = _architecture_beside(path)
    if not timm.is_model(architecture):
        raise BackboneUnavailable(f"Architecture {architecture!r} (for {path}) is not a timm model.")
    model = timm.create_model(
        architecture, pretrained=False, num_classes=0, pretrained_cfg_overlay=overlay, **model_args
    )
    state = read_state_dict(path)
    expected = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier") or "head.fc"
    classifier_keys = [classifier] if isinstance(classifier, str) else list(classifier)
    # a checkpoint with a classification head loads into the headless (num_classes=0) model
    state = {
        k: v
        for k, v in state.items()
        if k in expected or not any(k.startswith(c + ".") for c in classifier_keys)
    }
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    reshaped = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        raise BackboneUnavailable(
            f"{path} does not match timm architecture {architecture!r}: "
            f"{len(missing)} missing keys (e.g. {sorted(missing)[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {sorted(unexpected)[:3]}), "
            f"{len(reshaped)} keys of another shape (e.g. {reshaped[:3]}). "
            "Put a config.json with the right 'architecture' next to the checkpoint."
        )
    model.load_state_dict(state, strict=True)
    return model


def file_provenance(path: Path) -> WeightsProvenance:
    """A checkpoint file's provenance: the file, its sha256, and what a sibling config.json
    says of its source and licence (``provenance``, or timm's ``license``)."""
    config_path = path.with_name("config.json")
    recorded: dict[str, Any] = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError):
            config = {}
        recorded = config.get("provenance") or {}
        recorded.setdefault("licence", (config.get("pretrained_cfg") or {}).get("license") or config.get("license"))
    return WeightsProvenance(source=str(recorded.get("source") or "file"), pretrained=True,
                             licence=str(recorded.get("licence") or "unknown"), file=str(path), sha256=file_sha256(path))


def load_pretrained_video_model(name: str, cache_dir: str | Path | None = None,
                                ) -> tuple[nn.Module, WeightsProvenance, str | None]:
    """A timm model name (hub weights), an hf-hub:/local-dir: name, a checkpoint file or a
    directory -> (model, where its weights came from, timm's tag of the weights or None)."""
    path = Path(name).expanduser()
    if path.is_file():
        return load_checkpoint_file(path), file_provenance(path), None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneUnavailable(
                f"{path} is a directory without config.json: use timm's hub layout "
                "(config.json + model.safetensors, as written by timm.models.save_for_hf) "
                "or pass the checkpoint file itself."
            )
        source = f"local-dir:{path}"
    elif name.startswith(("hf-hub:", "local-dir:")):
        source = name
    else:
        if not timm.is_model(name):
            raise BackboneUnavailable(
                f"{name!r} is neither an existing file/directory, a preset (tiny, random) nor a timm "
                "model name; list names with timm.list_models('mobilevit*')."
            )
        source = name
    try:
        model = timm.create_model(source, pretrained=True, num_classes=0, cache_dir=cache_dir)
    except (OSError, RuntimeError, ValueError) as err:
        raise BackboneUnavailable(_unavailable_message(name, err)) from err
    cfg = model.pretrained_cfg
    hub_named = source == name  # a timm name, not a local folder: timm's own weights and tag
    provenance = WeightsProvenance(source=f"timm {'hub' if hub_named else 'folder'} {source}", pretrained=True,
                                   licence=str(cfg.get("license") or "unknown"))
    return model, provenance, (cfg.get("tag") or None) if hub_named else None
