"""Training and evaluation transforms, RGB conversion, the collate function, DataLoader workers."""

import pickle

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List
from PIL import Image as PILImage
from torch.utils.data import DataLoader
from transformers import ViTImageProcessor

from srn_hf import SRNConfig
from srn_hf.data import MultiLabelTransform, collate_multilabel, image_transform, with_multilabel_transforms
from srn_hf.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SCALE_RATIOS,
    MultiScaleCrop,
    preprocessing_from_image_processor,
)
from srn_hf.processing import create_image_processor, pil_resampling


def two_halves(width=40, height=20):
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return PILImage.fromarray(pixels)


@pytest.mark.parametrize(
    "image, expected",
    [
        (PILImage.new("L", (4, 4), 100), (100, 100, 100)),
        (PILImage.new("1", (4, 4), 1), (255, 255, 255)),
        (PILImage.new("RGBA", (4, 4), (10, 20, 30, 0)), (255, 255, 255)),  # fully transparent: white
        (PILImage.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
        (PILImage.new("LA", (4, 4), (0, 0)), (255, 255, 255)),
        (PILImage.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (PILImage.new("I;16", (4, 4), 65535), (255, 255, 255)),
    ],
)
def test_any_image_mode_becomes_rgb_pixel_values(image, expected):
    transform = MultiLabelTransform(2, image_size=4, mean=(0, 0, 0), std=(1, 1, 1))
    pixels = transform({"image": [image], "labels": [[1]]})["pixel_values"][0]
    assert pixels.shape == (3, 4, 4)
    assert torch.allclose(pixels[:, 1, 1], torch.tensor(expected) / 255, atol=1 / 255)


def test_palette_with_and_without_transparency():
    transform = MultiLabelTransform(2, image_size=4, mean=(0, 0, 0), std=(1, 1, 1))
    palette = PILImage.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pixels = transform({"image": [palette], "labels": [[]]})["pixel_values"][0]
    assert torch.allclose(pixels[:, 0, 0] * 255, torch.tensor([200.0, 10, 10]), atol=0.5)
    palette.info["transparency"] = 1
    pixels = transform({"image": [palette], "labels": [[]]})["pixel_values"][0]
    assert torch.allclose(pixels[:, 0, 0], torch.ones(3))


def test_evaluation_warps_the_whole_image_without_crop_or_flip():
    transform = image_transform(train=False, image_size=32)
    pixels = transform(two_halves())
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    red = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    blue = (1 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    assert torch.allclose(pixels[0, :, :15], torch.full((32, 15), red), atol=1e-5)  # left half stays red
    assert torch.allclose(pixels[2, :, 17:], torch.full((32, 15), blue), atol=1e-5)  # right half stays blue
    assert torch.equal(transform(two_halves()), pixels)  # deterministic


def test_multiscale_crop_uses_the_paper_scale_ratios():
    crop = MultiScaleCrop((64, 64))
    assert all(abs(SCALE_RATIOS.index(w) - SCALE_RATIOS.index(h)) <= 1 for w, h in crop.ratio_pairs)
    ramp = PILImage.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1)))  # pixel value = x
    torch.manual_seed(0)
    fractions = set()
    for _ in range(40):
        out = np.asarray(crop(ramp), dtype=np.float64)
        assert out.shape == (64, 64)
        fraction = (out[:, -1].mean() - out[:, 0].mean() + 255 / 64) / 255  # crop width / image width
        nearest = min(SCALE_RATIOS, key=lambda r: abs(r - fraction))
        assert abs(nearest - fraction) < 0.03
        fractions.add(nearest)
    assert len(fractions) >= 3


@pytest.mark.parametrize("augment", ["multiscale", "randaugment", "trivialaugment", "flip", "none"])
def test_training_transforms(augment):
    torch.manual_seed(0)
    transform = image_transform(train=True, image_size=(24, 32), augment=augment, interpolation="bicubic")
    outputs = [transform(two_halves()) for _ in range(12)]
    assert all(out.shape == (3, 24, 32) for out in outputs)
    flipped = [out[0, 0, 0] < 0 for out in outputs]  # top-left pixel blue: mirrored
    if augment in ("none",):
        assert not any(flipped)
    elif augment in ("multiscale", "flip"):
        assert any(flipped) and not all(flipped)


def test_unknown_augmentation():
    with pytest.raises(ValueError, match="augment must be one of"):
        image_transform(train=True, augment="mixup")


def make_dataset(tmp_path, modes=("RGB", "L", "RGBA", "P")):
    names = ["cat", "dog", "sofa"]
    paths = []
    for i, mode in enumerate(modes):
        path = tmp_path / f"{i}.png"
        PILImage.new(mode, (30 + 5 * i, 20), 90).save(path)
        paths.append(str(path))
    labels = [[0, 2], [], [1], [0, 1, 2]][: len(modes)]
    features = Features({"image": Image(), "labels": List(ClassLabel(names=names))})
    return DatasetDict(
        {
            "train": Dataset.from_dict({"image": paths, "labels": labels}, features=features),
            "test": Dataset.from_dict({"image": paths, "labels": labels}, features=features),
        }
    )


def textured(width, height, seed=0):
    """Noise over a diagonal ramp: every resize filter changes it, and each one differently."""
    rng = np.random.default_rng(seed)
    ramp = (np.add.outer(np.arange(height), np.arange(width)) * 255 // (height + width))[..., None]
    return PILImage.fromarray(np.clip(ramp + rng.integers(-60, 60, (height, width, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("source_size", [(97, 61), (23, 30)])  # downscaled and upscaled, not square
def test_training_warp_agrees_with_the_image_processor_on_textured_images(interpolation, source_size):
    """The model trains on what users feed it: augment="none" (torchvision) gives the image processor's pixels.

    Tolerance: at most one 8-bit grey level, on at most 1 % of the values (both resize with PIL; they round
    differently), while the other filter differs by many levels.
    """
    processor = create_image_processor(SRNConfig(backbone="resnet10t", image_size=48))
    processor.resample = pil_resampling(interpolation)
    preprocessing = preprocessing_from_image_processor(processor)
    warp = MultiLabelTransform(3, train=True, augment="none", **preprocessing)
    image = textured(*source_size)
    std = torch.tensor(preprocessing["std"])[:, None, None]

    def grey_levels(pixel_values):  # normalised pixel values back to 0 .. 255
        return pixel_values * std * 255

    got = grey_levels(warp({"image": [image], "labels": [[0]]})["pixel_values"][0])
    expected = grey_levels(torch.from_numpy(processor(image, return_tensors="np")["pixel_values"][0]))
    assert got.shape == expected.shape == (3, 48, 48)
    difference = (got - expected).abs()
    assert difference.max() < 1.01 and (difference > 0.5).float().mean() <= 0.01
    processor.resample = pil_resampling("bicubic" if interpolation == "bilinear" else "bilinear")
    other = grey_levels(torch.from_numpy(processor(image, return_tensors="np")["pixel_values"][0]))
    assert (got - other).abs().max() > 5


def test_evaluation_splits_run_the_image_processor_itself(tmp_path):
    processor = ViTImageProcessor(
        size={"height": 48, "width": 48}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=3
    )
    dataset = make_dataset(tmp_path)
    textured(37, 29).save(tmp_path / "0.png")
    dataset = with_multilabel_transforms(dataset, image_processor=processor)
    row = dataset["test"][0]
    assert set(row) == {"pixel_values", "labels"}
    assert torch.equal(row["labels"], torch.tensor([1.0, 0.0, 1.0]))
    raw = PILImage.open(tmp_path / "0.png").convert("RGB")
    expected = torch.from_numpy(processor(raw, return_tensors="np")["pixel_values"][0])
    assert torch.equal(row["pixel_values"], expected)
    assert dataset["train"][0]["pixel_values"].shape == (3, 48, 48)


def test_dataloader_with_workers_and_collate(tmp_path):
    dataset = with_multilabel_transforms(make_dataset(tmp_path), image_size=16, augment="randaugment")
    pickle.dumps(MultiLabelTransform(3, train=True, image_size=16))  # workers need picklable transforms
    loader = DataLoader(dataset["train"], batch_size=4, num_workers=2, collate_fn=collate_multilabel)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert torch.equal(batch["labels"], torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]]))
