"""Pictures of where SRN looked: the image, then one panel per predicted label with its attention map A and score.

```python
>>> tagger = pipeline("multi-label-image-classification", model="path/to/srn-model")
>>> predictions = tagger("street.jpg", return_attention_maps=True)
>>> srn_hf.visualize.save_attention_overlay("street.jpg", predictions, "street_attention.png")
```

Each heatmap is the label's attention map (a distribution over the image, bilinearly upsampled from the K x K map
of the stride-16 features), scaled to its own maximum and drawn over the image in a perceptually uniform colour
map; the panel's title gives the label and its sigmoid score.
"""

import math
import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
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
    missing = [prediction.get("label", "?") for prediction in predictions if "attention_map" not in prediction]
    if missing:
        raise ValueError(
            f"predictions for {missing} have no attention map: call the pipeline with return_attention_maps=True"
        )
    if title is None:
        title = Path(image).name if isinstance(image, (str, os.PathLike)) else "input"
    picture = open_image(image)
    picture.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    extent = (0, picture.width, picture.height, 0)  # maps of any resolution span the whole image

    panels = 1 + len(predictions)
    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    aspect = picture.height / picture.width
    figure = Figure(figsize=(columns * panel_inches, rows * panel_inches * aspect + 0.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    axes[0].imshow(picture)
    axes[0].set_title(title if predictions else f"{title}: no label above its threshold", fontsize=10)
    for axis, prediction in zip(axes[1:], predictions):
        axis.imshow(picture)
        axis.imshow(heatmap_rgba(prediction["attention_map"], colormap, opacity), extent=extent, interpolation="bilinear")
        axis.set_title(f"{prediction['label']}  {prediction['score']:.2f}", fontsize=10)
    for axis in axes:
        axis.set_axis_off()
    return figure


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


__all__ = ["attention_figure", "save_attention_overlay"]
