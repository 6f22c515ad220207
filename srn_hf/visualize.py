"""Pictures of where SRN looked: the image, then one panel per predicted label with its attention map A and score.

```python
>>> tagger = pipeline("multi-label-image-classification", model="path/to/srn-model")
>>> predictions = tagger("street.jpg", return_attention_maps=True)
>>> srn_hf.visualize.save_attention_overlay("street.jpg", predictions, "street_attention.png")
```

Each heatmap is the label's attention map (a distribution over the image, bilinearly upsampled from the K x K map
of the stride-16 features), scaled to its own maximum and drawn over the image in a perceptually uniform colour
map; the panel's title gives the label and its sigmoid score. [`scenes_figure`] draws several labelled images, one per
row, beside their true labels (the demo's last step shows test scenes this way).
"""

import math
import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from .images import open_image

# Longest side, in pixels, of the image drawn in each panel: keeps the PNG small for photos of many megapixels.
DISPLAY_SIDE = 512


def attention_figure(
    image: str | os.PathLike | Image.Image | np.ndarray,
    predictions: list[dict],
    columns: int = 4,
    panel_inches: float = 3.0,
    title: str | None = None,
    colormap: str = "inferno",
    opacity: float = 0.8,
) -> Figure:
    """A matplotlib figure: the image, then one panel per prediction (its attention map over the image).

    Args:
        image: the image the predictions are for (a path, a PIL image or an array).
        predictions: the pipeline's output for this image with `return_attention_maps=True`: dicts with `"label"`,
            `"score"` and `"attention_map"` (an array over the image, any resolution: it is stretched over it).
        columns: panels per row. panel_inches: side of a panel. title: above the image panel (default: the file
            name, or "input"). colormap, opacity: of the heatmaps.
    """
    check_attention_maps(predictions)
    if title is None:
        title = Path(image).name if isinstance(image, (str, os.PathLike)) else "input"
    picture = open_image(image)
    picture.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))

    panels = 1 + len(predictions)
    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    aspect = picture.height / picture.width
    figure = Figure(figsize=(columns * panel_inches, rows * panel_inches * aspect + 0.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    axes[0].imshow(picture)
    axes[0].set_title(title if predictions else f"{title}: no label above its threshold", fontsize=10)
    for axis, prediction in zip(axes[1:], predictions):
        draw_attention_panel(axis, picture, prediction, colormap, opacity)
    for axis in axes:
        axis.set_axis_off()
    return figure


def check_attention_maps(predictions: list[dict]) -> None:
    """Raises a `ValueError` naming the predictions that carry no `"attention_map"`."""
    missing = [prediction.get("label", "?") for prediction in predictions if "attention_map" not in prediction]
    if missing:
        raise ValueError(
            f"predictions for {missing} have no attention map: call the pipeline with return_attention_maps=True"
        )


def draw_attention_panel(
    axis,
    picture: Image.Image,
    prediction: dict,
    colormap: str,
    opacity: float,
    scale: float = 1.0,
    title_colour: str = "black",
) -> None:
    """One panel: `picture` with the prediction's attention map over it, titled with its label and score.

    `scale` is the picture's size over the size the prediction's `"boxes"` (optional, (x0, y0, x1, y1) in pixels)
    are given in; they are drawn as outlines.
    """
    extent = (0, picture.width, picture.height, 0)  # maps of any resolution span the whole image
    axis.imshow(picture)
    axis.imshow(heatmap_rgba(prediction["attention_map"], colormap, opacity), extent=extent, interpolation="bilinear")
    for x0, y0, x1, y1 in prediction.get("boxes", ()):
        axis.add_patch(
            Rectangle(
                (x0 * scale, y0 * scale),
                (x1 - x0) * scale,
                (y1 - y0) * scale,
                fill=False,
                edgecolor="cyan",
                linewidth=1.2,
            )
        )
    axis.set_title(f"{prediction['label']}  {prediction['score']:.2f}", fontsize=10, color=title_colour)


def scenes_figure(
    scenes: list[dict],
    max_labels: int = 4,
    panel_inches: float = 2.4,
    colormap: str = "inferno",
    opacity: float = 0.8,
) -> Figure:
    """A matplotlib figure with one row per labelled image: the image titled with its true labels, then a panel per
    predicted label with its attention map; a predicted label that is true is titled in green, a false one in red.

    Args:
        scenes: dicts with `"image"`, `"predictions"` (the pipeline's output for it, `return_attention_maps=True`),
            `"true_labels"` (names) and optionally `"title"` and `"boxes"` (`{label name: [(x0, y0, x1, y1), ...]}`
            in the image's pixels, drawn on that label's panel: the test of where the map should be).
        max_labels: predicted labels drawn per image (the best ones). panel_inches, colormap, opacity: as in
            [`attention_figure`].
    """
    for scene in scenes:
        check_attention_maps(scene["predictions"])
    columns = 1 + max(1, min(max_labels, max((len(scene["predictions"]) for scene in scenes), default=1)))
    figure = Figure(figsize=(columns * panel_inches, len(scenes) * (panel_inches + 0.5)), layout="constrained")
    axes = figure.subplots(max(len(scenes), 1), columns, squeeze=False)
    for row, scene in zip(axes, scenes):
        picture = open_image(scene["image"])
        width = picture.width
        picture.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
        true_labels = list(scene["true_labels"])
        predicted = [prediction["label"] for prediction in scene["predictions"]]
        missed = [label for label in true_labels if label not in predicted]
        row[0].imshow(picture)
        lines = [scene.get("title", ""), "true: " + (", ".join(true_labels) or "none")]
        lines += ["missed: " + ", ".join(missed)] if missed else []
        row[0].set_title("\n".join(line for line in lines if line), fontsize=9)
        for axis, prediction in zip(row[1:], scene["predictions"][:max_labels]):
            boxes = (scene.get("boxes") or {}).get(prediction["label"], ())
            draw_attention_panel(
                axis,
                picture,
                {**prediction, "boxes": boxes},
                colormap,
                opacity,
                scale=picture.width / width,
                title_colour="tab:green" if prediction["label"] in true_labels else "tab:red",
            )
        for axis in row:
            axis.set_axis_off()
    return figure


def save_scenes_figure(scenes: list[dict], path: str | os.PathLike, dpi: int = 100, **figure_kwargs) -> Path:
    """Writes [`scenes_figure`] as a PNG to `path` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scenes_figure(scenes, **figure_kwargs).savefig(path, dpi=dpi, format="png")
    return path


def heatmap_rgba(attention_map: np.ndarray, colormap: str = "inferno", opacity: float = 0.55) -> np.ndarray:
    """An attention map as an RGBA heatmap: colour and opacity grow with the map's value (scaled to its maximum),
    so the image stays visible where the label's attention is low."""
    values = np.asarray(attention_map, dtype=np.float32)
    values = values / max(float(values.max()), 1e-12)
    rgba = matplotlib.colormaps[colormap](values)
    rgba[..., 3] = opacity * np.sqrt(np.clip(values, 0.0, 1.0))
    return rgba


def save_attention_overlay(
    image: str | os.PathLike | Image.Image | np.ndarray,
    predictions: list[dict],
    path: str | os.PathLike,
    dpi: int = 100,
    **figure_kwargs,
) -> Path:
    """Writes [`attention_figure`] as a PNG to `path` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attention_figure(image, predictions, **figure_kwargs).savefig(path, dpi=dpi, format="png")
    return path


__all__ = ["attention_figure", "save_attention_overlay", "save_scenes_figure", "scenes_figure"]
