"""The image processor saved beside every SRN model: transformers' standard `ViTImageProcessor`.

Configured from the backbone's timm pretrained config (mean, std, interpolation) and the model's `image_size`.
Its transform is the paper's test-time one: the whole image warped to the square input size, no crop, no flip.
It loads through `AutoImageProcessor` and the `image-classification` pipeline on any machine with transformers.
It is also the evaluation transform of training (`srn_hf.data.transforms`): validation and test figures are
computed on exactly the inputs that users' pipelines give the model.
"""

from collections.abc import Sequence

import timm
from transformers import ViTImageProcessor
from transformers.image_utils import PILImageResampling

from .configuration_srn import SRNConfig


def pil_resampling(interpolation: str | int) -> PILImageResampling:
    """PIL's resampling filter (transformers' `PILImageResampling`) from a name (`"bicubic"`) or a PIL number."""
    if isinstance(interpolation, str):
        return PILImageResampling[interpolation.upper()]
    return PILImageResampling(int(interpolation))


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


def warp_image_processor(
    image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float], interpolation: str | int = "bilinear"
) -> ViTImageProcessor:
    """A `ViTImageProcessor` that warps an image to `image_size` (an int: a square), rescales it to [0, 1] and
    normalises it with `mean` and `std`."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return ViTImageProcessor(
        do_resize=True,
        size={"height": height, "width": width},
        resample=pil_resampling(interpolation),
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
    )


def create_image_processor(config: SRNConfig) -> ViTImageProcessor:
    """A `ViTImageProcessor` that warps an image to `config.image_size` squared and normalises it for the backbone."""
    return warp_image_processor(config.image_size, **backbone_data_config(config))
