"""Multi-label classification metrics: mAP, CP / CR / CF1, OP / OR / OF1, and their top-k variants.

`multilabel_metrics(scores, labels)` takes (N, C) arrays (numpy or torch) of probabilities and multi-hot
labels and returns the figures in percent. Papers rarely say which convention they used, and the two in use
give different numbers on the same predictions, so both are here:

| | `"standard"` (ML-GCN / ASL code) | `"paper"` (official SRN evaluation script) |
|---|---|---|
| positive prediction | score >= threshold | score > threshold |
| CF1 | 2 CP CR / (CP + CR) | mean over classes of the per-class F1 |
| precision of a never-predicted class | 0 | 1 |
| AP | sklearn `average_precision_score` (ties grouped) | area under the precision envelope at the recall change points (VOC 2010+), ties ranked in the given order |

In both, OF1 = 2 OP OR / (OP + OR), OP and OR pool all (image, class) pairs, and with `top_k=k` an image's
predicted labels are its k highest scores that also pass the threshold (the paper's top-3 figures).

A class without any positive image has no AP and no recall: it is left out of mAP, CP, CR and CF1 (its
false positives still count in OP), listed in `classes_without_positives`, and a `UserWarning` says so.
No figure is ever NaN; a figure that cannot be computed at all is None.

The same computation is available as an `evaluate` module: `evaluate.load(EVALUATE_MODULE_PATH)`.
"""  # noqa: E501 - Markdown table rows cannot be wrapped

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import sparse
from scipy.stats import bootstrap
from sklearn.metrics import average_precision_score

CONVENTIONS = ("standard", "paper")
# The figures of `multilabel_metrics`, in this order, with their names on the Hub (the model card's tables and
# `model-index`, `srn_hf.hub`).
METRIC_NAMES = {
    "mAP": "mean average precision over labels",
    "CP": "precision averaged over labels",
    "CR": "recall averaged over labels",
    "CF1": "per-label F1",
    "OP": "overall precision",
    "OR": "overall recall",
    "OF1": "overall F1",
}
THRESHOLDED_FIGURES = ("CP", "CR", "CF1", "OP", "OR", "OF1")  # the figures that depend on thresholds (not mAP)
EVALUATE_MODULE_PATH = str(Path(__file__).parent / "multilabel_metric")


def as_numpy(array) -> np.ndarray:
    """A numpy float64 array from a numpy array, a list or a torch tensor (any device or dtype)."""
    if hasattr(array, "detach"):
        array = array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float64)


def average_precision_voc(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP as the official SRN script computes it (VOC 2010+): the precision envelope summed at recall changes.

    Images are ranked by decreasing score; equal scores keep their given order (a stable sort, as MATLAB's).
    """
    hits = positives[np.argsort(-scores, kind="stable")]
    true_positives = np.cumsum(hits)
    recall = true_positives / hits.sum()
    precision = true_positives / np.arange(1, len(hits) + 1)
    recall = np.concatenate([[0.0], recall, [1.0]])
    envelope = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    changes = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[changes] - recall[changes - 1]) * envelope[changes]))


def average_precision(scores: np.ndarray, positives: np.ndarray, convention: str = "standard") -> float:
    """AP of one class (1-d scores, 1-d booleans) as a fraction, in the given convention."""
    if convention == "paper":
        return average_precision_voc(scores, positives)
    return float(average_precision_score(positives, scores))


def predicted_labels(scores: np.ndarray, threshold: float | np.ndarray, strict: bool, top_k: int | None) -> np.ndarray:
    """Boolean (N, C) predictions: above the threshold and, with `top_k`, among the image's k best scores.

    The definition of the figures, kept apart from the decision rule of a deployed model
    ([`srn_hf.pipeline_srn.labels_above_thresholds`]: `score > threshold`, then the k best): `"standard"` predicts at
    `score >= threshold` (`strict=False`), and `top_k` keeps the labels among the k best scores that also pass their
    threshold, which differs from the k best labels above the thresholds when the thresholds differ per label.
    """
    predicted = scores > threshold if strict else scores >= threshold
    if top_k is not None:
        best = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
        in_top_k = np.zeros_like(predicted)
        np.put_along_axis(in_top_k, best, True, axis=1)
        predicted &= in_top_k
    return predicted


def harmonic_mean(precision, recall):
    """2 P R / (P + R), 0 where both are 0 (works on numbers and arrays)."""
    precision, recall = np.asarray(precision, dtype=np.float64), np.asarray(recall, dtype=np.float64)
    total = precision + recall
    return np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1.0), 0.0)


def percent(value) -> float | None:
    """A fraction as a percentage (float), None stays None."""
    return None if value is None else float(100 * value)


def multilabel_metrics(
    scores,
    labels,
    threshold: float | np.ndarray = 0.5,
    convention: str = "standard",
    top_k: int | None = None,
    label_names: list[str] | None = None,
) -> dict:
    """mAP, CP, CR, CF1, OP, OR, OF1 (percent) of (N, C) probabilities against (N, C) multi-hot labels.

    Args:
        scores: probabilities (sigmoid of the logits), shape (N, C).
        labels: multi-hot ground truth, shape (N, C); a value above 0.5 is a positive.
        threshold: the probability above which a class is predicted: one for all classes, or one per class (an
            array of C, e.g. the thresholds tuned by `srn_hf.thresholds.calibrate_thresholds`).
        convention: `"standard"` or `"paper"` (see the module docstring).
        top_k: if set, predict at most the k highest-scoring classes of each image.
        label_names: the C class names, in column order: the warning about classes without positives names them.

    Returns:
        a dict with `mAP`, `CP`, `CR`, `CF1`, `OP`, `OR`, `OF1` (floats in percent, or None), `per_class_AP`
        (a list over classes, None for a class without positives) and `classes_without_positives`
        (class indices).
    """
    scores, positives = checked_inputs(scores, labels, convention, label_names)
    paper = convention == "paper"
    predicted = predicted_labels(scores, threshold, strict=paper, top_k=top_k)
    true_positives = (predicted & positives).sum(axis=0)
    num_predicted, num_positives = predicted.sum(axis=0), positives.sum(axis=0)
    evaluated = num_positives > 0
    without_positives = np.flatnonzero(~evaluated).tolist()
    warn_classes_without_positives(without_positives, label_names)
    per_class_ap = [
        average_precision(scores[:, c], positives[:, c], convention) if evaluated[c] else None
        for c in range(scores.shape[1])
    ]
    figures = {"mAP": float(np.mean([per_class_ap[c] for c in np.flatnonzero(evaluated)])) if evaluated.any() else None}
    figures.update(per_class_figures(true_positives, num_predicted, num_positives, paper))
    figures.update(overall_figures(true_positives, num_predicted, num_positives, paper))
    return {
        **{name: percent(value) for name, value in figures.items()},
        "per_class_AP": [percent(ap) for ap in per_class_ap],
        "classes_without_positives": without_positives,
    }


def checked_inputs(scores, labels, convention: str, label_names: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """`multilabel_metrics`' scores as an (N, C) array and labels as (N, C) booleans, or a `ValueError` naming the
    convention, the shapes or the number of names that do not fit."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, not {convention!r}")
    scores, positives = as_numpy(scores), as_numpy(labels) > 0.5
    if scores.ndim != 2 or scores.shape != positives.shape:
        raise ValueError(f"scores and labels must both be (N, C) arrays, got {scores.shape} and {positives.shape}")
    if label_names is not None and len(label_names) != scores.shape[1]:
        raise ValueError(f"label_names has {len(label_names)} names for {scores.shape[1]} classes")
    return scores, positives


def warn_classes_without_positives(without_positives: list[int], label_names: list[str] | None) -> None:
    """A `UserWarning` naming the classes (by name when known) that are left out of mAP, CP, CR and CF1."""
    if not without_positives:
        return
    named = [label_names[c] for c in without_positives] if label_names is not None else without_positives
    warnings.warn(
        f"{len(without_positives)} class(es) without any positive image are left out of mAP, CP, CR "
        f"and CF1: {named[:20]}{' ...' if len(named) > 20 else ''}"
        + ("" if label_names is not None else " (class indices; pass label_names to name them)"),
        UserWarning,
        stacklevel=3,  # the caller of multilabel_metrics
    )


# The precision of a class (or of all) that is never predicted: 0 (sklearn), or 1 in the official SRN script.
NEVER_PREDICTED_PRECISION = {False: 0.0, True: 1.0}  # keyed by convention == "paper"


def per_class_figures(true_positives, num_predicted, num_positives, paper: bool) -> dict:
    """CP, CR and CF1 (fractions, or None without any positive): per-class precision and recall averaged over the
    classes with a positive; CF1 is the harmonic mean of CP and CR (`"standard"`) or the mean of the per-class F1
    (`"paper"`, where a class never predicted has precision 1)."""
    evaluated = num_positives > 0
    if not evaluated.any():
        return {"CP": None, "CR": None, "CF1": None}
    never_predicted_precision = NEVER_PREDICTED_PRECISION[paper]
    precision = np.where(num_predicted > 0, true_positives / np.maximum(num_predicted, 1), never_predicted_precision)
    recall = true_positives / np.maximum(num_positives, 1)
    class_precision, class_recall = float(precision[evaluated].mean()), float(recall[evaluated].mean())
    if paper:
        class_f1 = float(harmonic_mean(precision, recall)[evaluated].mean())
    else:
        class_f1 = float(harmonic_mean(class_precision, class_recall))
    return {"CP": class_precision, "CR": class_recall, "CF1": class_f1}


def overall_figures(true_positives, num_predicted, num_positives, paper: bool) -> dict:
    """OP, OR and OF1 (fractions): precision and recall over all (image, class) pairs at once."""
    total_predicted, total_positives = num_predicted.sum(), num_positives.sum()
    never_predicted_precision = NEVER_PREDICTED_PRECISION[paper]
    overall_precision = true_positives.sum() / total_predicted if total_predicted else never_predicted_precision
    overall_recall = true_positives.sum() / total_positives if total_positives else None
    overall_f1 = None if overall_recall is None else float(harmonic_mean(overall_precision, overall_recall))
    return {"OP": overall_precision, "OR": overall_recall, "OF1": overall_f1}


# Resamples x images handled by one call of the vectorised bootstrap statistic: about 30 bytes each at the peak
# (scipy's index draws, the image counts, one class's segment sums), so about 60 MB whatever the input size.
BOOTSTRAP_BATCH_ELEMENTS = 2**21


class TieGroupSegments(NamedTuple):
    """One class's images ranked by decreasing score and cut into the segments that a tie-grouped AP sums over.

    Segment k ends with the k-th tie group (the images of one distinct score) that holds a positive: groups
    without a positive add no recall and no AP term, so they only count in the next segment's number of images.

    Attributes:
        matrix: a (2 K, N) sparse matrix of ones: row k picks segment k's images, row K + k its positive images.
        num_segments: K.
    """

    matrix: sparse.csr_array
    num_segments: int


def tie_group_segments(scores: np.ndarray, positives: np.ndarray, dtype=np.float32) -> TieGroupSegments:
    """The `TieGroupSegments` of one class (1-d scores, 1-d booleans): its scores sorted once for all resamples."""
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_hits = scores[order], positives[order]
    group = np.concatenate([[0], np.cumsum(ranked_scores[1:] != ranked_scores[:-1])])
    positive_group = group[ranked_hits]
    groups_with_positive = np.unique(positive_group)
    segment_ends = np.searchsorted(group, groups_with_positive, side="right")  # one past each segment's last image
    positive_ends = np.searchsorted(positive_group, groups_with_positive, side="right")
    last = segment_ends[-1] if len(segment_ends) else 0
    row_starts = np.concatenate([[0], segment_ends, last + positive_ends])
    columns = np.concatenate([order[:last], order[ranked_hits]])
    matrix = sparse.csr_array(
        (np.ones(len(columns), dtype=dtype), columns, row_starts), shape=(2 * len(segment_ends), len(scores))
    )
    return TieGroupSegments(matrix, len(segment_ends))


def weighted_average_precision(segments: TieGroupSegments, image_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP of one class in R resamples at once, each image counted as often as the resample holds it.

    This is sklearn's `average_precision_score(positives, scores, sample_weight=counts)`, which equals the AP of
    the resample with its repeated images (ties grouped at distinct scores): the sum over tie groups k of
    (R_k - R_{k-1}) * P_k, with P_k and R_k the precision and recall of the images scoring at least group k's score.

    Args:
        segments: the class's `tie_group_segments`.
        image_counts: (N, R) counts of each image in each resample (integers, in the dtype of `segments.matrix`).

    Returns:
        the R APs (fractions; 0 where a resample has no positive) and the R numbers of positives.
    """
    if segments.num_segments == 0:  # no positive at all
        return np.zeros(image_counts.shape[1]), np.zeros(image_counts.shape[1])
    segment_sums = segments.matrix @ image_counts  # (2 K, R): images, then positives, of each segment
    new_positives = segment_sums[segments.num_segments :]
    images_so_far = np.cumsum(segment_sums[: segments.num_segments], axis=0).astype(np.float64)  # exact integers
    positives_so_far = np.cumsum(new_positives, axis=0).astype(np.float64)
    precision = positives_so_far / np.maximum(images_so_far, 1)  # 0 images so far means 0 positives so far
    total_positives = positives_so_far[-1]
    return np.sum(new_positives * precision, axis=0) / np.maximum(total_positives, 1), total_positives


def image_counts_of(resamples: np.ndarray, num_images: int, dtype=np.float32) -> np.ndarray:
    """(N, R) counts of each image in each of the R resamples of image indices (an (R, N) array)."""
    image_counts = np.empty((num_images, len(resamples)), dtype=dtype)
    for index, resample in enumerate(resamples):
        image_counts[:, index] = np.bincount(resample, minlength=num_images)
    return image_counts


def resampled_map_difference(
    scores_a: np.ndarray, scores_b: np.ndarray, positives: np.ndarray, images: np.ndarray, convention: str
) -> float:
    """100 * (mAP(b) - mAP(a)) on one resample `images` (row indices, repeats allowed), computed on the resampled rows.

    The mean is over the classes with a positive in the resample (as in `multilabel_metrics`); AP is sklearn's
    `average_precision_score` (`"standard"`) or `average_precision_voc` (`"paper"`), class by class.
    """
    rows = positives[images]
    classes = np.flatnonzero(rows.any(axis=0))
    rows = rows[:, classes]

    def mean_ap(scores: np.ndarray) -> float:
        scores = scores[images][:, classes]
        if convention == "paper":
            return float(np.mean([average_precision_voc(scores[:, c], rows[:, c]) for c in range(rows.shape[1])]))
        return float(np.mean(average_precision_score(rows, scores, average=None)))  # all classes in one call

    return 100 * (mean_ap(scores_b) - mean_ap(scores_a))


def tie_grouped_map_difference(scores_a: np.ndarray, scores_b: np.ndarray, positives: np.ndarray):
    """The `"standard"` `resampled_map_difference` as a vectorised statistic of many resamples at once.

    Each class's images are ranked once; a call with an (R, N) array of resamples (the images along the last axis,
    as `scipy.stats.bootstrap` passes them with `vectorized=True`) returns the R differences in mAP points.
    """
    dtype = np.float32 if len(positives) < 2**24 else np.float64  # counts and their sums stay exact integers
    class_segments = [
        [tie_group_segments(scores[:, c], positives[:, c], dtype) for scores in (scores_a, scores_b)]
        for c in range(positives.shape[1])
    ]

    def statistic(resamples: np.ndarray, axis: int = -1) -> np.ndarray:
        image_counts = image_counts_of(np.moveaxis(resamples, axis, -1), len(positives), dtype)
        sum_difference = np.zeros(image_counts.shape[1])
        classes_with_positive = np.zeros(image_counts.shape[1])
        for segments_a, segments_b in class_segments:
            ap_a, total_positives = weighted_average_precision(segments_a, image_counts)
            ap_b, _ = weighted_average_precision(segments_b, image_counts)
            sum_difference += np.where(total_positives > 0, ap_b - ap_a, 0.0)
            classes_with_positive += total_positives > 0
        return 100 * sum_difference / classes_with_positive

    return statistic


def map_difference(
    scores_a,
    scores_b,
    labels,
    convention: str = "standard",
    confidence_level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """How much better `scores_b` ranks than `scores_a` on the same images: mAP(b) - mAP(a) in points, with a
    paired bootstrap interval over the images (`scipy.stats.bootstrap`, percentile method).

    Both predictions are resampled together, image by image, so the interval is the spread that the choice of
    test images alone causes. Other sources of spread (which object instances a dataset holds, the training
    seed) are not in it. Each resample's mAP is over the classes with a positive in that resample.

    With `"standard"` the statistic is vectorised: a resample is a count of each image, and each class's AP in
    all resamples comes from one ranking of its scores (`weighted_average_precision`), in batches of at most
    `BOOTSTRAP_BATCH_ELEMENTS` resamples x images. The resamples are the same draws as one resample at a time,
    and the result equals sklearn's `average_precision_score` on every resample (to float precision). With
    `"paper"` each resample is still evaluated on its own rows (`resampled_map_difference`, slow): VOC AP ranks
    tied scores in the given order, which in a resample is the draw order, so image counts do not determine it.

    Returns:
        {"difference", "low", "high"} in mAP points, plus `confidence_level`, `n_resamples` and `images`.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, not {convention!r}")
    first, second, positives = as_numpy(scores_a), as_numpy(scores_b), as_numpy(labels) > 0.5
    if not first.shape == second.shape == positives.shape or first.ndim != 2:
        raise ValueError(
            f"scores_a, scores_b and labels must be (N, C) arrays of one shape, got "
            f"{first.shape}, {second.shape} and {positives.shape}"
        )
    for name, scores in (("scores_a", first), ("scores_b", second)):
        if not np.isfinite(scores).all():
            raise ValueError(f"{name} holds {np.sum(~np.isfinite(scores))} NaN or infinite score(s)")

    images = np.arange(len(positives))
    if convention == "paper":
        statistic = partial(resampled_map_difference, first, second, positives, convention=convention)
        difference, batch = statistic(images), None
    else:
        statistic = tie_grouped_map_difference(first, second, positives)
        difference, batch = float(statistic(images[None])[0]), max(1, BOOTSTRAP_BATCH_ELEMENTS // len(images))
    interval = bootstrap(
        (images,),
        statistic,
        vectorized=convention != "paper",
        batch=batch,
        n_resamples=n_resamples,
        confidence_level=confidence_level,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return {
        "difference": difference,
        "low": float(interval.low),
        "high": float(interval.high),
        "confidence_level": confidence_level,
        "n_resamples": n_resamples,
        "images": len(images),
    }
