"""Image transforms for multi-label training and evaluation, applied lazily with `Dataset.with_transform`.

Evaluation (the paper's test protocol): the whole image warped to the square input size, no crop, no flip. It
is done by the model's image processor itself (`srn_hf.processing`, a `ViTImageProcessor`), so validation and
test figures are computed on exactly the inputs that the pipeline gives the model.

Training, `augment=`:
- `"multiscale"` (default, the official Caffe data layer): a crop whose width and height are each one of the
  scale ratios 1, .875, .75, .66 of the warped square image (the two ratios at most one step apart), at a
  random position, resized to the input size; then a horizontal flip with probability 0.5;
- `"randaugment"` / `"trivialaugment"`: the same, followed by torchvision's `RandAugment` (2 operations,
  magnitude 9) or `TrivialAugmentWide`: a stronger recipe for modern backbones;
- `"flip"`: warp and horizontal flip only; `"none"`: warp only.

The size, mean, std and interpolation come from the arguments or from a transformers image processor
(`image_mean`, `image_std`, `size`, `resample`). Every image is first converted to RGB by `srn_hf.images.to_rgb`
(transparency composited on white, 16-bit images rescaled, grayscale, CMYK and palette converted). EXIF
orientation is not applied: annotations such as COCO's refer to the stored pixel orientation.

Every object here is a top-level class or function, so a `DataLoader` with worker processes can pickle it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from datasets import DatasetDict
from datasets import Image as ImageFeature
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from ..images import decode_image, to_rgb
from ..processing import pil_resampling, warp_image_processor
from .common import label_names

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALE_RATIOS = (1.0, 0.875, 0.75, 0.66)
AUGMENTATIONS = ("multiscale", "randaugment", "trivialaugment", "flip", "none")


def interpolation_mode(interpolation: str | int | InterpolationMode) -> InterpolationMode:
    """A torchvision `InterpolationMode` from a name (`"bicubic"`), a PIL resampling number or a mode."""
    if isinstance(interpolation, InterpolationMode):
        return interpolation
    if isinstance(interpolation, str):
        return InterpolationMode(interpolation.lower())
    return InterpolationMode(pil_resampling(interpolation).name.lower())


class MultiScaleCrop:
    """The Caffe data layer's multi-scale crop, resized to the input size (the warp to a square included).

    Width and height of the crop are each a fraction `scale_ratios[i]`, `scale_ratios[j]` (|i - j| <=
    `max_distort`) of the image's width and height, which in the warped square image is the usual square
    crop of side ratio 1 ... 0.66; the position is uniform at random.
    """

    def __init__(
        self,
        size: tuple[int, int],
        scale_ratios: Sequence[float] = SCALE_RATIOS,
        max_distort: int = 1,
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    ):
        self.size = list(size)
        self.ratio_pairs = [
            (rw, rh)
            for i, rw in enumerate(scale_ratios)
            for j, rh in enumerate(scale_ratios)
            if abs(i - j) <= max_distort
        ]
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = F.get_size(image)
        rw, rh = self.ratio_pairs[int(torch.randint(len(self.ratio_pairs), ()))]
        crop_w, crop_h = max(1, round(rw * width)), max(1, round(rh * height))
        top = int(torch.randint(height - crop_h + 1, ()))
        left = int(torch.randint(width - crop_w + 1, ()))
        return F.resized_crop(image, top, left, crop_h, crop_w, self.size, self.interpolation, antialias=True)


class ImageProcessorTransform:
    """A PIL image to `pixel_values` (3 x H x W float) by a transformers image processor: the evaluation transform."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        # A PIL image is always height x width x channels (a 3-pixel-high image would otherwise read as channels first).
        inputs = self.image_processor(image, return_tensors="pt", input_data_format="channels_last")
        return inputs["pixel_values"][0]


def image_transform(
    train: bool,
    image_size: int | tuple[int, int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str | int | InterpolationMode = "bilinear",
    augment: str = "multiscale",
):
    """The PIL-image-to-normalised-tensor transform (3 x H x W float), for training or evaluation.

    Evaluation (`train=False`) is an [`ImageProcessorTransform`] of `srn_hf.processing.warp_image_processor`;
    training is a torchvision `v2.Compose` whose `augment="none"` gives the same warp.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, not {augment!r}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    mode = interpolation_mode(interpolation)
    if not train:
        return ImageProcessorTransform(warp_image_processor(size, mean, std, mode.value))
    warp = v2.Resize(size, interpolation=mode, antialias=True)
    if augment == "none":
        steps = [warp]
    elif augment == "flip":
        steps = [warp, v2.RandomHorizontalFlip()]
    else:
        steps = [MultiScaleCrop(size, interpolation=mode), v2.RandomHorizontalFlip()]
        if augment == "randaugment":
            steps.append(v2.RandAugment(num_ops=2, magnitude=9, interpolation=mode))
        elif augment == "trivialaugment":
            steps.append(v2.TrivialAugmentWide(interpolation=mode))
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def preprocessing_from_image_processor(image_processor) -> dict:
    """`image_size`, `mean`, `std`, `interpolation` of a transformers image processor (e.g. ViTImageProcessor)."""
    size = image_processor.size
    if "height" in size and "width" in size:
        image_size = (size["height"], size["width"])
    elif "shortest_edge" in size:
        image_size = size["shortest_edge"]
    else:
        raise ValueError(f"cannot read an input size from the image processor's size {size}")
    return {
        "image_size": image_size,
        "mean": tuple(image_processor.image_mean),
        "std": tuple(image_processor.image_std),
        "interpolation": int(image_processor.resample),
    }


def multi_hot(labels: Sequence[int], num_labels: int) -> torch.Tensor:
    """Class indices as a float multi-hot vector of length `num_labels`."""
    target = torch.zeros(num_labels)
    target[list(labels)] = 1.0
    return target


class MultiLabelTransform:
    """The `with_transform` function: a batch of rows to `pixel_values` (3 x H x W) and multi-hot `labels` (C).

    For evaluation with an `image_processor` (and no `preprocessing` override), the image processor itself.
    """

    def __init__(self, num_labels: int, train: bool = False, image_processor=None, **preprocessing):
        self.num_labels = num_labels
        augment_only = set(preprocessing) <= {"augment"}
        if image_processor is not None and not train and augment_only:
            self.transform = ImageProcessorTransform(image_processor)
        else:
            if image_processor is not None:
                preprocessing = {**preprocessing_from_image_processor(image_processor), **preprocessing}
            self.transform = image_transform(train, **preprocessing)

    def __call__(self, batch: dict) -> dict:
        # Images arrive undecoded (see `with_multilabel_transforms`): a file that turned bad is named when it fails.
        images = [decode_image(image) if isinstance(image, dict) else image for image in batch["image"]]
        return {
            "pixel_values": [self.transform(to_rgb(image)) for image in images],
            "labels": [multi_hot(labels, self.num_labels) for labels in batch["labels"]],
        }


def with_multilabel_transforms(
    dataset: DatasetDict,
    image_processor=None,
    augment: str = "multiscale",
    train_splits: Sequence[str] = ("train",),
    **preprocessing,
) -> DatasetDict:
    """The dataset with lazy transforms: training ones on `train_splits`, evaluation ones on the others.

    Evaluation runs `image_processor` itself. `preprocessing` (`image_size`, `mean`, `std`, `interpolation`)
    overrides what `image_processor` gives (evaluation then uses an image processor with these settings).
    The transforms decode the images themselves (`srn_hf.images.decode_image`), so that an image that cannot be
    decoded raises `srn_hf.images.ImageError` naming its file, not Pillow's bare "image file is truncated".
    """
    num_labels = len(label_names(dataset))
    return DatasetDict(
        {
            split: data.cast_column("image", ImageFeature(decode=False)).with_transform(
                MultiLabelTransform(
                    num_labels,
                    train=split in train_splits,
                    image_processor=image_processor,
                    augment=augment,
                    **preprocessing,
                )
            )
            for split, data in dataset.items()
        }
    )


def collate_multilabel(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack transformed rows: `pixel_values` B x 3 x H x W (float), `labels` B x C (multi-hot float)."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.stack([example["labels"] for example in examples]),
    }
