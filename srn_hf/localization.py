"""Do the attention maps point at the objects? The pointing game (Zhang et al., ECCV 2016) on labelled boxes.

For every test image and every label present in it, the label's attention map A is upsampled to the image (as
the pipeline and [`srn_hf.visualize`] draw it) and its maximum is a *hit* when it falls inside one of that label's
boxes. The score is the share of hits, per label and over all (image, present label) pairs, beside two
baselines that look at no pixel:

- `centre`: always points at the centre of the image;
- `mean_box_centre`: points, for each label, at the mean centre of that label's boxes on the training split
  (where the label usually is: aircraft high, fruit on the table).

A model whose maps beat both baselines looks at the objects, not at where objects of that label tend to be.

```python
>>> peaks = attention_peaks(outputs.attention_maps)            # (N, C, 2): (x, y) as fractions of the image
>>> report = pointing_game(peaks, labels, label_boxes(dataset["test"]), label_boxes(dataset["train"]), names)
>>> print(pointing_game_table(report))
```

Boxes come from a dataset with a `boxes` column of `{"label", "bbox": (x0, y0, x1, y1) in pixels, ...}` rows, as
the stamp scenes (`srn_hf.data.stamp_scenes`) record them.
"""

from __future__ import annotations

import io

import numpy as np
from datasets import Image as ImageFeature
from PIL import Image

from .metrics import as_numpy

BASELINES = ("centre", "mean_box_centre")


def attention_peaks(attention_maps) -> np.ndarray:
    """Where each upsampled attention map is largest: (N, C, 2) points (x, y) as fractions of the image's width and
    height.

    Bilinear upsampling (the pipeline's `upsample_attention_map`) blends neighbouring cells, so the upsampled map
    is largest at the centre of the map's largest cell; cell (i, j) of an h x w map covers rows i / h ... (i + 1) / h
    and columns j / w ... (j + 1) / w of the image (the image processor warps the whole image to the input). That
    centre is returned. `attention_maps`: (N, C, h, w), numpy or torch (e.g. `SRNModelOutput.attention_maps`).
    """
    maps = as_numpy(attention_maps)
    if maps.ndim != 4:
        raise ValueError(f"attention_maps must be (N, C, h, w), got shape {maps.shape}")
    height, width = maps.shape[-2:]
    rows, columns = np.unravel_index(maps.reshape(*maps.shape[:2], -1).argmax(axis=-1), (height, width))
    return np.stack([(columns + 0.5) / width, (rows + 0.5) / height], axis=-1)


def image_size(image) -> tuple[int, int]:
    """(width, height) of a `datasets` image, decoded (PIL) or not (`{"bytes", "path"}`: the header only is read)."""
    if isinstance(image, Image.Image):
        return image.size
    source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    with Image.open(source) as opened:
        return opened.size


def label_boxes(dataset, num_labels: int | None = None) -> list[list[np.ndarray]]:
    """Every image's boxes per label, as fractions of the image: `boxes[n][c]` is a (k, 4) array (x0, y0, x1, y1).

    `dataset`: a `datasets.Dataset` with `image` and `boxes` columns (the stamp scenes). Every recorded box of the
    label counts, also of instances too hidden to make the label present (they are still that object).
    """
    if "boxes" not in dataset.column_names:
        raise ValueError(f"the dataset has no 'boxes' column (columns: {dataset.column_names}): no pointing game")
    if num_labels is None:
        num_labels = dataset.features["labels"].feature.num_classes
    images = dataset.with_format(None).cast_column("image", ImageFeature(decode=False))
    result = []
    for row in images.select_columns(["image", "boxes"]):
        width, height = image_size(row["image"])
        per_label = [[] for _ in range(num_labels)]
        for box in row["boxes"]:
            x0, y0, x1, y1 = box["bbox"]
            per_label[box["label"]].append((x0 / width, y0 / height, x1 / width, y1 / height))
        result.append([np.asarray(boxes, dtype=np.float64).reshape(-1, 4) for boxes in per_label])
    return result


def mean_box_centres(boxes: list[list[np.ndarray]], num_labels: int) -> np.ndarray:
    """(C, 2): each label's mean box centre (x, y) over `boxes` (of [`label_boxes`]); the image centre for a label
    without any box."""
    centres = np.full((num_labels, 2), 0.5)
    for label in range(num_labels):
        found = [image_boxes[label] for image_boxes in boxes if len(image_boxes[label])]
        if found:
            stacked = np.concatenate(found)
            centres[label] = ((stacked[:, 0] + stacked[:, 2]) / 2).mean(), ((stacked[:, 1] + stacked[:, 3]) / 2).mean()
    return centres


def pointing_hits(points: np.ndarray, labels, boxes: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Hits of the pointing game: `(hits, counted)`, both boolean (N, C).

    `counted[n, c]`: label c is present in image n (`labels` multi-hot, (N, C)) and has a box there; `hits[n, c]`:
    the point `points[n, c]` ((x, y) fractions, (N, C, 2)) lies inside one of those boxes (edges included).
    """
    points, present = np.asarray(points, dtype=np.float64), as_numpy(labels) > 0.5
    if points.shape != (*present.shape, 2) or len(boxes) != len(present):
        raise ValueError(
            f"points must be (N, C, 2) for labels (N, C) and boxes of N images; got points "
            f"{points.shape}, labels {present.shape}, boxes of {len(boxes)} images"
        )
    hits, counted = np.zeros_like(present), np.zeros_like(present)
    for n, c in zip(*np.nonzero(present)):
        label_boxes_nc = boxes[n][c]
        if not len(label_boxes_nc):
            continue
        x, y = points[n, c]
        counted[n, c] = True
        inside = (
            (label_boxes_nc[:, 0] <= x)
            & (x <= label_boxes_nc[:, 2])
            & (label_boxes_nc[:, 1] <= y)
            & (y <= label_boxes_nc[:, 3])
        )
        hits[n, c] = inside.any()
    return hits, counted


def hit_rates(hits: np.ndarray, counted: np.ndarray, names: list[str]) -> dict:
    """`{"overall", "mean_over_labels", "per_label": {name: percent or None}}`, in percent of the counted pairs."""
    per_label = {
        name: float(100 * hits[:, c].sum() / counted[:, c].sum()) if counted[:, c].any() else None
        for c, name in enumerate(names)
    }
    rates = [rate for rate in per_label.values() if rate is not None]
    return {
        "overall": float(100 * hits.sum() / counted.sum()) if counted.any() else None,
        "mean_over_labels": float(np.mean(rates)) if rates else None,
        "per_label": per_label,
    }


def pointing_game(
    peaks: np.ndarray,
    labels,
    boxes: list[list[np.ndarray]],
    train_boxes: list[list[np.ndarray]],
    names: list[str],
) -> dict:
    """The pointing game of attention maps against the centre and mean-box-centre baselines.

    Args:
        peaks: (N, C, 2) points of the attention maps ([`attention_peaks`]).
        labels: (N, C) multi-hot labels of the N images.
        boxes: the N images' boxes ([`label_boxes`]); train_boxes: the training split's, for `mean_box_centre`.
        names: the C label names.

    Returns:
        `{"pairs": counted (image, label) pairs, "attention": rates, "centre": rates, "mean_box_centre": rates}`,
        each `rates` as [`hit_rates`] gives it (percent).
    """
    peaks = np.asarray(peaks, dtype=np.float64)
    candidates = {
        "attention": peaks,
        "centre": np.full_like(peaks, 0.5),
        "mean_box_centre": np.broadcast_to(mean_box_centres(train_boxes, len(names)), peaks.shape),
    }
    report = {}
    for name, points in candidates.items():
        hits, counted = pointing_hits(points, labels, boxes)
        report[name] = hit_rates(hits, counted, names)
    report["pairs"] = int(counted.sum())
    return report


def pointing_game_table(report: dict) -> str:
    """A text table of [`pointing_game`]: one row per label, then the overall figures, attention and baselines."""
    columns = ("attention", *BASELINES)
    header = f"{'label':<16}" + "".join(f"{column:>17}" for column in columns)
    rows = [
        f"pointing game (% of {report['pairs']} present (image, label) pairs whose point is in a box)",
        header,
        "-" * len(header),
    ]
    names = list(report["attention"]["per_label"])
    for name in [*names, "overall", "mean_over_labels"]:
        values = [report[column]["per_label"][name] if name in names else report[column][name] for column in columns]
        rows.append(f"{name:<16}" + "".join(f"{'-' if v is None else f'{v:.1f}':>17}" for v in values))
    return "\n".join(rows)


__all__ = [
    "attention_peaks",
    "hit_rates",
    "label_boxes",
    "mean_box_centres",
    "pointing_game",
    "pointing_game_table",
    "pointing_hits",
]
