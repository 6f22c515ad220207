"""Attention maps land where the object is, and the PNG overlay is written.

The model is an SRN whose backbone holds the packaged ImageNet EfficientNet-Lite0 weights and whose attention
branch f_att is set by hand: conv1 splits X into its positive and negative parts, conv2 passes them on, and conv3
applies a ridge-regression probe, fitted on X of a few synthetic scenes, that predicts where each label's object
covers the map. So A for "red disc" peaks on red discs and A for "blue square" on blue squares, and the test fails if
the maps are misplaced on the way to the picture (flipped, transposed, stretched, or taken from the wrong label).
"""

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as nnf
from PIL import Image, ImageDraw
from transformers import pipeline

import srn_hf
from srn_hf.pretrained import packaged_efficientnet_lite0_weights
from srn_hf.processing import create_image_processor
from srn_hf.visualize import attention_figure, save_attention_overlay, save_scenes_figure, scenes_figure

SHAPES = {"red disc": ("ellipse", (220, 30, 30)), "blue square": ("rectangle", (30, 60, 220))}


def scene(background: np.ndarray, size: tuple[int, int], boxes: dict) -> tuple[Image.Image, np.ndarray]:
    """The background photo resized to `size` with each label's shape drawn in its box; and the shapes' masks."""
    image = Image.fromarray(background).convert("RGB").resize(size)
    masks = []
    for label, box in boxes.items():
        shape, colour = SHAPES[label]
        getattr(ImageDraw.Draw(image), shape)(box, fill=colour)
        mask = Image.new("L", size, 0)
        getattr(ImageDraw.Draw(mask), shape)(box, fill=255)
        masks.append(np.asarray(mask, dtype=np.float32) / 255)
    return image, np.stack(masks)


def fit_attention_probe(model, processor, scale: float = 25.0) -> None:
    """Sets f_att of `model` so that Z_c = scale * (w_c . X + b_c), w_c fitted to the coverage of label c's shape."""
    rng = np.random.default_rng(0)
    images, masks = [], []
    for index in range(16):
        boxes = {}
        for label in SHAPES:
            side = int(rng.integers(40, 72))
            left, top = (int(value) for value in rng.integers(0, 224 - side, size=2))
            boxes[label] = (left, top, left + side, top + side)
        background = (skimage.data.brick(), skimage.data.grass())[index % 2]
        image, mask = scene(background, (224, 224), boxes)
        images.append(image)
        masks.append(mask)
    with torch.no_grad():
        features, _ = model.srn.forward_backbone(processor(images=images, return_tensors="pt")["pixel_values"])
    coverage = nnf.avg_pool2d(torch.from_numpy(np.stack(masks)), 224 // features.shape[-1])  # N x C x 14 x 14
    channels = features.shape[1]
    inputs = torch.cat([features.permute(0, 2, 3, 1).reshape(-1, channels), torch.ones(features[:, 0].numel(), 1)], 1)
    targets = coverage.permute(0, 2, 3, 1).reshape(-1, len(SHAPES))
    probe = torch.linalg.solve(inputs.T @ inputs + torch.eye(channels + 1), inputs.T @ targets)  # (channels + 1) x C

    attention = model.srn.attention
    with torch.no_grad():
        for layer in (attention.conv1[0], attention.conv2[0], attention.conv3):
            layer.weight.zero_()
            layer.bias.zero_()
        identity = torch.eye(channels)
        attention.conv1[0].weight[:channels, :, 0, 0] = identity  # relu(X)
        attention.conv1[0].weight[channels:, :, 0, 0] = -identity  # relu(-X)
        attention.conv2[0].weight[:, :, 1, 1] = torch.eye(2 * channels)  # centre tap of the 3x3: pass through
        attention.conv3.weight[:, :channels, 0, 0] = scale * probe[:channels].T  # relu(X) - relu(-X) = X
        attention.conv3.weight[:, channels:, 0, 0] = -scale * probe[:channels].T
        attention.conv3.bias.copy_(scale * probe[channels])


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    config = srn_hf.SRNConfig(
        backbone="tf_efficientnet_lite0",
        id2label=dict(enumerate(SHAPES)),
        use_batch_norm=False,  # so that conv1 and conv2 pass X through exactly
        attention_channels=2 * 112,  # Lite0's stride-16 map X has 112 channels: its positive and negative parts
        regularization_channels=16,
        regularization_out_channels=32,
    )
    torch.manual_seed(0)
    model = srn_hf.SRNForImageClassification(config).eval()
    model.load_backbone_weights(packaged_efficientnet_lite0_weights(tmp_path_factory.mktemp("weights")))
    processor = create_image_processor(config)
    fit_attention_probe(model, processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return pipeline("multi-label-image-classification", model=str(folder))


def test_attention_mass_sits_on_the_pasted_object(tagger, tmp_path):
    boxes = {"red disc": (230, 20, 290, 80), "blue square": (30, 110, 90, 170)}  # top right, bottom left
    image, _ = scene(skimage.data.gravel(), (320, 192), boxes)  # an unseen background, not square
    predictions = tagger(image, threshold=0.0, return_attention_maps=True)
    assert sorted(item["label"] for item in predictions) == sorted(SHAPES)
    for item in predictions:
        attention_map = item["attention_map"]
        assert attention_map.shape == (192, 320)
        left, top, right, bottom = boxes[item["label"]]
        assert attention_map[top:bottom, left:right].sum() > 0.6, item["label"]
        row, column = np.unravel_index(attention_map.argmax(), attention_map.shape)
        assert left <= column < right and top <= row < bottom, item["label"]

    path = save_attention_overlay(image, predictions, tmp_path / "pictures" / "scene.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    picture = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert picture.shape[1] > 2.5 * picture.shape[0]  # image + 2 panels side by side
    assert picture.std() > 20  # something is drawn


def test_figure_layout_and_titles(tagger):
    image = Image.fromarray(skimage.data.chelsea())
    predictions = tagger(image, threshold=0.0, return_attention_maps=True)
    figure = attention_figure(image, predictions * 3, columns=4, title="chelsea")
    axes = figure.get_axes()
    assert len(axes) == 8  # 1 + 6 panels on two rows of 4
    titles = [axis.get_title() for axis in axes[:7]]
    assert titles[0] == "chelsea"
    assert titles[1] == f"{predictions[0]['label']}  {predictions[0]['score']:.2f}"
    empty = attention_figure(image, [], title="chelsea")
    assert "no label" in empty.get_axes()[0].get_title()


def test_predictions_without_maps_are_refused(tagger):
    image = Image.fromarray(skimage.data.coffee())
    with pytest.raises(ValueError, match="return_attention_maps=True"):
        attention_figure(image, tagger(image, threshold=0.0))


def test_scenes_figure_shows_true_predicted_and_missed_labels_with_boxes(tagger, tmp_path):
    boxes = {"red disc": (130, 20, 190, 80), "blue square": (30, 110, 90, 170)}
    image, _ = scene(skimage.data.gravel(), (224, 224), boxes)
    predictions = tagger(image, threshold=0.0, return_attention_maps=True)  # both labels predicted
    scenes = [
        {
            "image": image,
            "predictions": predictions,
            "true_labels": ["red disc"],
            "title": "scene-0",
            "boxes": {"red disc": [boxes["red disc"]]},
        },
        {"image": image, "predictions": predictions[:0], "true_labels": ["blue square"]},
    ]
    figure = scenes_figure(scenes)
    axes = figure.get_axes()
    assert len(axes) == 2 * 3  # a row per scene: the image, then at most its 2 predictions
    assert axes[0].get_title() == "scene-0\ntrue: red disc"
    assert axes[3].get_title() == "true: blue square\nmissed: blue square"
    colours = {axis.get_title().split()[0]: axis.title.get_color() for axis in axes[1:3]}
    assert colours == {"red": "tab:green", "blue": "tab:red"}  # the true label in green, the false one in red
    disc_axis = next(axis for axis in axes[1:3] if axis.get_title().startswith("red disc"))
    (outline,) = disc_axis.patches
    assert outline.get_xy() == (130, 20) and (outline.get_width(), outline.get_height()) == (60, 60)

    path = save_scenes_figure(scenes, tmp_path / "scenes.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="return_attention_maps=True"):
        scenes_figure([{**scenes[0], "predictions": tagger(image, threshold=0.0)}])
