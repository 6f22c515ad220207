"""The image processor saved beside every SRN model: transformers' standard `ViTImageProcessor`.

Configured from the backbone's timm pretrained config (mean, std, interpolation) and the model's `image_size`.
Its transform is the paper's test-time one: the whole image warped to the square input size, no crop, no flip.
It loads through `AutoImageProcessor` and the `image-classification` pipeline on any machine with transformers.
"""

import timm
from transformers import ViTImageProcessor
from transformers.image_utils import PILImageResampling

from .configuration_srn import SRNConfig

RESAMPLING = {
    "nearest": PILImageResampling.NEAREST,
    "bilinear": PILImageResampling.BILINEAR,
    "bicubic": PILImageResampling.BICUBIC,
    "lanczos": PILImageResampling.LANCZOS,
}


def backbone_data_config(config: SRNConfig) -> dict:
    """The backbone's preprocessing from timm: `mean`, `std` (tuples of floats) and `interpolation` (a name)."""
    pretrained_cfg = timm.get_pretrained_cfg(config.backbone)
    if pretrained_cfg is None:
        raise ValueError(f"timm has no pretrained config for backbone {config.backbone!r}")
    return {
        "mean": tuple(pretrained_cfg.mean),
        "std": tuple(pretrained_cfg.std),
        "interpolation": pretrained_cfg.interpolation or "bilinear",
    }


def create_image_processor(config: SRNConfig) -> ViTImageProcessor:
    """A `ViTImageProcessor` that warps an image to `config.image_size` squared and normalises it for the backbone."""
    data_config = backbone_data_config(config)
    return ViTImageProcessor(
        do_resize=True,
        size={"height": config.image_size, "width": config.image_size},
        resample=RESAMPLING[data_config["interpolation"]],
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(data_config["mean"]),
        image_std=list(data_config["std"]),
    )
