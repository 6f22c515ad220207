"""Decision thresholds tuned on validation data, not guessed: per label, and one global value.

A multi-label model is used through its thresholds: the labels it returns are those whose sigmoid score exceeds
them. [`calibrate_thresholds`] chooses them from the scores and labels of a validation split:

- per label, the threshold that maximises the label's F1 on the validation images (criterion `"f1"`), or the
  lowest threshold whose precision reaches P, i.e. the highest recall at precision >= P (`"precision:P"`);
- one global threshold, chosen the same way over all (image, label) pairs pooled: the maximum of OF1, or the
  highest OR at OP >= P;
- a label with fewer than `min_positives` positive validation images cannot be tuned: it gets the global
  threshold, and the result names it with the reason (as it does a label that never reaches the precision P).

The search is exact: every cut between two distinct validation scores is tried, for all labels at once (one
sort per label, the sorted labels merged for the pooled ranking, cumulative sums of the true positives; `numpy`
only). A threshold is the midpoint between the last score kept and the first score left out, so `score > t` (the
pipeline's rule) and `score >= t` (the standard convention of `srn_hf.metrics`) make the same predictions on the
validation scores. Among cuts of equal F1 the highest threshold (fewest predicted labels) is kept: the result is
deterministic and does not depend on the order of the images.

```python
>>> from srn_hf.thresholds import calibrate_thresholds
>>> calibration = calibrate_thresholds(validation_scores, validation_labels, label_names, split="validation")
>>> print(calibration.table())                       # threshold, validation P / R / F1, support of each label
>>> calibration.apply_to(model.config)               # config.threshold and config.label_thresholds
>>> model.save_pretrained(folder)                    # the pipeline and `srn-hf predict` now use them by default
```

Thresholds are tuned on one split and reported on another: `split="test"` is refused. The command
`srn-hf calibrate MODEL_DIR --data KIND ...` scores a dataset split with an exported model
(`srn_hf.scoring.calibrate_model_folder`) and, with `--write`, changes only the folder's `config.json`
([`write_thresholds`]). The report tables of a training run are `srn_hf.report`'s.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .configuration_srn import config_label_names
from .metrics import THRESHOLDED_FIGURES as FIGURES
from .metrics import as_numpy, harmonic_mean, multilabel_metrics

DEFAULT_MIN_POSITIVES = 5
# The `run_overlap` of thresholds tuned on the training run's own validation split: none of its images trained or
# tested the model.
RUN_VALIDATION = {"train": 0, "test": 0}


def parse_criterion(criterion: str) -> float | None:
    """`"f1"` -> None; `"precision:P"` -> P, a fraction in (0, 1]. Anything else raises a `ValueError` naming it."""
    if criterion == "f1":
        return None
    name, _, value = criterion.partition(":")
    try:
        target = float(value)
    except ValueError:
        target = None
    if name != "precision" or target is None or not 0.0 < target <= 1.0:
        raise ValueError(
            f"criterion {criterion!r} is neither 'f1' nor 'precision:P' with P a fraction in (0, 1], e.g. precision:0.9"
        )
    return target


def check_scores_and_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float64 scores in [0, 1] and (N, C) boolean labels; a `ValueError` names what is wrong otherwise."""
    scores, labels = as_numpy(scores), as_numpy(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must both be (N, C) arrays of one shape, got {scores.shape} and {labels.shape}"
        )
    if scores.shape[0] == 0:
        raise ValueError("scores and labels hold no image (shape (0, C)): nothing to tune thresholds on")
    bad = np.argwhere((labels != 0) & (labels != 1))
    if len(bad):
        row, column = bad[0]
        raise ValueError(
            f"labels must be 0 or 1, found {float(labels[row, column])!r} at image {row}, label {column} "
            f"({len(bad)} such values)"
        )
    bad = np.argwhere(~((scores >= 0) & (scores <= 1)))  # NaN fails both comparisons
    if len(bad):
        row, column = bad[0]
        raise ValueError(
            f"scores must be sigmoid probabilities in [0, 1], found {float(scores[row, column])!r} at image {row}, "
            f"label {column}: pass torch.sigmoid(logits), not the logits"
        )
    return scores, labels.astype(bool)


def rank_by_label(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each label's scores sorted in decreasing order and its positives in that order: two (C, N) arrays, one label
    per row (sorting contiguous rows is faster than sorting columns). The order of equal scores is left to the
    sort: only cuts between distinct scores are ever used, so it cannot change a result."""
    by_label = np.ascontiguousarray(scores.T)
    order = np.argsort(-by_label, axis=1)
    return np.take_along_axis(by_label, order, axis=1), np.take_along_axis(
        np.ascontiguousarray(positives.T), order, axis=1
    )


def pool_ranked(ranked: np.ndarray, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (image, label) pairs as one ranking, (1, C * N): the rows merged (a stable sort, timsort, merges the
    already sorted rows much faster than sorting the pairs afresh)."""
    order = np.argsort(-ranked.ravel(), kind="stable")
    return ranked.ravel()[order][None], hits.ravel()[order][None]


def best_cuts(ranked: np.ndarray, hits: np.ndarray, target_precision: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a ranking, the threshold of the best cut and whether the criterion could be met.

    Cut `k` of a row predicts its `k + 1` best-scored images; its threshold is the midpoint between the score kept
    last and the next one (half the lowest score for the cut that keeps all). A cut between two equal scores is
    never taken. F1: the cut of highest F1 = 2 TP / (kept + positives), the highest threshold among equals.
    Precision P: among the cuts of precision >= P, the one with most true positives (highest recall), the fewest
    kept among equals.
    """
    true_positives = np.cumsum(hits, axis=1)
    following = np.concatenate([ranked[:, 1:], np.zeros((len(ranked), 1))], axis=1)
    allowed = ranked != following
    allowed[:, -1] = True
    kept = np.arange(1, ranked.shape[1] + 1)
    if target_precision is None:
        value = np.where(allowed, 2 * true_positives / (kept + true_positives[:, -1:]), -1.0)
    else:
        reached = allowed & (true_positives >= target_precision * kept - 1e-9)  # TP / kept >= P, rounding aside
        value = np.where(reached, true_positives * (ranked.shape[1] + 1.0) - kept, -1.0)
    best = np.argmax(value, axis=1)  # the first maximum: the highest threshold among equals
    rows = np.arange(len(best))
    return (ranked[rows, best] + following[rows, best]) / 2, value[rows, best] > 0


def label_figures(scores: np.ndarray, positives: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 (fractions) and support of each label at `thresholds` (score >= threshold predicts)."""
    predicted = scores >= thresholds
    true_positives = (predicted & positives).sum(axis=0)
    num_predicted, support = predicted.sum(axis=0), positives.sum(axis=0)
    precision = true_positives / np.maximum(num_predicted, 1)
    recall = true_positives / np.maximum(support, 1)
    return {"precision": precision, "recall": recall, "f1": harmonic_mean(precision, recall), "support": support}


@dataclass
class ThresholdCalibration:
    r"""
    Thresholds tuned on validation data by [`calibrate_thresholds`], with what they give on that data.

    Attributes:
        label_names (`list[str]`): the labels, in the order of the score columns.
        thresholds (`np.ndarray` of shape `(C,)`): the threshold of each label (the global one for a fallback label).
        threshold (`float`): the global threshold (maximum OF1, or highest OR at OP >= P).
        fallback_labels (`dict[str, str]`): the labels that got the global threshold, each with the reason.
        criterion (`str`): `"f1"` or `"precision:P"`.
        min_positives (`int`): the fewest positive images a label needs to be tuned on its own.
        precision, recall, f1 (`np.ndarray` of shape `(C,)`): each label's figures (fractions) at its threshold,
            on the calibration data.
        support (`np.ndarray` of shape `(C,)`): each label's positive images in the calibration data.
        images (`int`): the number of calibration images.
        split, dataset (`str`, *optional*): where the calibration data came from, as the caller named it.
        run_overlap (`dict[str, int]`, *optional*): how many calibration images the model's training run trained
            (`"train"`) and tested (`"test"`) on, from its split record (`splits.json`); None when not known.
    """

    label_names: list[str]
    thresholds: np.ndarray
    threshold: float
    fallback_labels: dict[str, str]
    criterion: str
    min_positives: int
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    images: int
    split: str | None = None
    dataset: str | None = None
    run_overlap: dict[str, int] | None = None

    @property
    def label_thresholds(self) -> dict[str, float]:
        """The tuned labels' thresholds, by name (fallback labels are left out: they use `threshold`)."""
        return {
            name: float(value)
            for name, value in zip(self.label_names, self.thresholds)
            if name not in self.fallback_labels
        }

    def provenance(self) -> dict:
        """How the thresholds were chosen: the `threshold_calibration` field of `SRNConfig`."""
        return {
            "criterion": self.criterion,
            "split": self.split,
            "dataset": self.dataset,
            "images": self.images,
            "run_overlap": self.run_overlap,
            "min_positives": self.min_positives,
            "fallback_labels": sorted(self.fallback_labels),
        }

    def config_fields(self) -> dict:
        """The `SRNConfig` fields that carry the thresholds: `threshold`, `label_thresholds`,
        `threshold_calibration`."""
        return {
            "threshold": float(self.threshold),
            "label_thresholds": self.label_thresholds or None,
            "threshold_calibration": self.provenance(),
        }

    def apply_to(self, config):
        """Writes the thresholds into a model config (its `id2label` must name the same labels) and returns it."""
        check_same_labels(self.label_names, config_label_names(config), "the calibration", "the config")
        for name, value in self.config_fields().items():
            setattr(config, name, value)
        return config

    def to_dict(self) -> dict:
        """A JSON-ready summary: the config fields, and each label's threshold and figures (percent)."""
        return {
            **self.config_fields(),
            "fallback_labels": dict(self.fallback_labels),
            "per_label": [
                {
                    "label": name,
                    "threshold": float(self.thresholds[index]),
                    "precision": 100 * float(self.precision[index]),
                    "recall": 100 * float(self.recall[index]),
                    "f1": 100 * float(self.f1[index]),
                    "support": int(self.support[index]),
                }
                for index, name in enumerate(self.label_names)
            ],
        }

    @classmethod
    def from_dict(cls, values: dict) -> ThresholdCalibration:
        """The calibration that [`to_dict`] summarised (e.g. read back from a run's metrics.json)."""
        rows, provenance = values["per_label"], values["threshold_calibration"]

        def column(key: str, scale: float = 1.0) -> np.ndarray:
            return np.array([row[key] / scale for row in rows])

        return cls(
            label_names=[row["label"] for row in rows],
            thresholds=column("threshold"),
            threshold=values["threshold"],
            fallback_labels=dict(values["fallback_labels"]),
            criterion=provenance["criterion"],
            min_positives=provenance["min_positives"],
            precision=column("precision", 100),
            recall=column("recall", 100),
            f1=column("f1", 100),
            support=column("support").astype(int),
            images=provenance["images"],
            split=provenance["split"],
            dataset=provenance["dataset"],
            run_overlap=provenance.get("run_overlap"),
        )

    def table(self) -> str:
        """The per-label table: threshold, P / R / F1 (percent) on the calibration data, support."""
        split = self.split or "calibration"
        width = max(12, *(len(name) for name in self.label_names)) + 3
        header = f"{'label':<{width}}{'threshold':>10}{'P':>7}{'R':>7}{'F1':>7}{'support':>9}"
        title = f"thresholds by {self.criterion}; P, R, F1 (%) and support on the {split} split ({self.images} images)"
        rows = [title, header, "-" * len(header)]
        for index, name in enumerate(self.label_names):
            mark = " *" if name in self.fallback_labels else ""
            rows.append(
                f"{name + mark:<{width}}{self.thresholds[index]:>10.4f}{100 * self.precision[index]:>7.1f}"
                f"{100 * self.recall[index]:>7.1f}{100 * self.f1[index]:>7.1f}{int(self.support[index]):>9}"
            )
        rows.append(f"global threshold: {self.threshold:.4f}")
        for name, reason in self.fallback_labels.items():
            rows.append(f"* {name}: global threshold ({reason})")
        return "\n".join(rows)


def tuned_on(provenance: dict) -> str:
    """Which images thresholds were tuned on, in words, from their provenance (`threshold_calibration`): the split,
    its size, and whether the model's training run trained or tested on them (`run_overlap`)."""
    source = f" of {provenance['dataset']}" if provenance.get("dataset") else ""
    split = f"the {provenance['split']} split{source} ({provenance['images']} images)"
    overlap = provenance.get("run_overlap")
    if overlap is None:
        return (
            f"{split}; the model folder records no split of its training run (splits.json), so whether the run "
            "trained or tested on these images is not known"
        )
    if not any(overlap.values()):
        return f"{split}, none of which the model's training run trained or tested on"
    verbs = {"train": "trained", "test": "tested"}
    used = " and ".join(f"{overlap[name]} of which it {verb} on" for name, verb in verbs.items() if overlap.get(name))
    return (
        f"{split}, which the model's training run used ({used}; allowed with --allow-overlap): these thresholds, and "
        "the figures at them, are optimistic"
    )


def check_same_labels(names: list[str], expected: list[str], source: str, target: str) -> None:
    """Refuses two label lists that differ, naming the labels only one of them has (or saying the order differs)."""
    if list(names) == list(expected):
        return
    only_source, only_target = sorted(set(names) - set(expected)), sorted(set(expected) - set(names))
    if not only_source and not only_target:
        raise ValueError(
            f"the labels of {source} are those of {target} in another order: "
            f"{list(names)[:8]} against {list(expected)[:8]}"
        )
    raise ValueError(
        f"the labels of {source} are not those of {target}: "
        f"only in {source}: {only_source}; only in {target}: {only_target}"
    )


def calibrate_thresholds(
    scores,
    labels,
    label_names: list[str] | None = None,
    criterion: str = "f1",
    min_positives: int = DEFAULT_MIN_POSITIVES,
    split: str | None = "validation",
    dataset: str | None = None,
    run_overlap: dict[str, int] | None = None,
) -> ThresholdCalibration:
    """Per-label and global thresholds from validation scores and labels.

    Args:
        scores: (N, C) sigmoid probabilities (numpy, list or torch) of the calibration images.
        labels: (N, C) multi-hot ground truth, 0 or 1.
        label_names: the name of each column (default `"0"`, `"1"`, ...).
        criterion: `"f1"` (each label's F1, and OF1 for the global threshold) or `"precision:P"` (the highest
            recall at precision >= P, P a fraction).
        min_positives: a label with fewer positive images gets the global threshold (it is named in the result).
        split: the split the data comes from; `"test"` is refused (thresholds tuned on test would make the test
            figures optimistic).
        dataset: the dataset's name, kept in the result's provenance.
        run_overlap: how many of these images the model's training run trained and tested on (`{"train": n,
            "test": n}`, [`RUN_VALIDATION`] for the run's own validation split), kept in the provenance; None when not
            known.

    Returns:
        a [`ThresholdCalibration`].
    """
    if split == "test":
        raise ValueError("thresholds are tuned on a validation split, never on the test split they are reported on")
    target_precision = parse_criterion(criterion)
    scores, positives = check_scores_and_labels(scores, labels)
    names = (
        [str(index) for index in range(scores.shape[1])] if label_names is None else [str(name) for name in label_names]
    )
    if len(names) != scores.shape[1]:
        raise ValueError(f"{len(names)} label names for {scores.shape[1]} score columns")
    if min_positives < 1:
        raise ValueError(f"min_positives={min_positives} must be at least 1")

    ranked, hits = rank_by_label(scores, positives)
    (global_threshold,), (global_met,) = best_cuts(*pool_ranked(ranked, hits), target_precision)
    if not global_met:
        if not positives.any():
            raise ValueError(
                f"the labels of these {len(scores)} images hold no positive: nothing to tune thresholds on"
            )
        raise ValueError(
            f"criterion {criterion!r}: no threshold reaches that overall precision on these {len(scores)} images"
        )
    thresholds, met = best_cuts(ranked, hits, target_precision)
    support = positives.sum(axis=0)
    fallback = {}
    for index, name in enumerate(names):
        if support[index] < min_positives:
            fallback[name] = (
                f"{support[index]} positive image(s) in {split or 'the calibration data'}, fewer than {min_positives}"
            )
        elif not met[index]:
            fallback[name] = f"precision {target_precision} is never reached"
    is_fallback = np.array([name in fallback for name in names])
    thresholds = np.where(is_fallback, global_threshold, thresholds)
    figures = label_figures(scores, positives, thresholds)
    return ThresholdCalibration(
        label_names=names,
        thresholds=thresholds,
        threshold=float(global_threshold),
        fallback_labels=fallback,
        criterion=criterion,
        min_positives=min_positives,
        images=len(scores),
        split=split,
        dataset=dataset,
        run_overlap=run_overlap,
        **figures,
    )


def thresholded_metrics(scores, labels, calibration: ThresholdCalibration, default_threshold: float = 0.5) -> dict:
    """CP / CR / CF1 / OP / OR / OF1 (percent) of predictions at `default_threshold` and at the calibrated thresholds.

    Returns `{"default": {...}, "calibrated": {...}, "default_threshold": ...}`, both from
    `srn_hf.metrics.multilabel_metrics` (standard convention); apply it to the split the thresholds were NOT tuned on.
    """
    figures = {}
    for name, threshold in (("default", default_threshold), ("calibrated", calibration.thresholds)):
        metrics = multilabel_metrics(scores, labels, threshold=threshold)
        figures[name] = {key: metrics[key] for key in FIGURES}
    return {**figures, "default_threshold": default_threshold}


def write_thresholds(model_dir: str | os.PathLike, calibration: ThresholdCalibration) -> Path:
    """Stores the thresholds in the folder's config.json (and changes nothing else in the folder); returns its path.

    The config is checked by `SRNConfig` (the labels must be the calibration's) before the file is replaced, in one
    atomic rename.
    """
    from .configuration_srn import SRNConfig
    from .storage import write_text_file

    config_file = Path(model_dir) / "config.json"
    try:
        values = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_file}: cannot read the model config: {error}") from None
    values.update(calibration.config_fields())
    config = SRNConfig.from_dict(values)  # validates the new fields, e.g. label names of label_thresholds
    check_same_labels(calibration.label_names, config_label_names(config), "the calibration", str(config_file))
    return write_text_file(config_file, json.dumps(values, indent=2, sort_keys=True) + "\n")


def calibrate_stage(validation_scores, validation_labels, test_scores, test_labels, label_names, dataset=None):
    """What a training run records for one stage's prediction: thresholds tuned on the validation split, and the
    test split's CP / CR / CF1 / OP / OR / OF1 at them (the figures at 0.5 are the stage's `test` metrics).

    Returns:
        the [`ThresholdCalibration`] and the record's new entries: `{"thresholds": calibration.to_dict(),
        "test_calibrated": {...}}`.
    """
    calibration = calibrate_thresholds(
        validation_scores,
        validation_labels,
        label_names,
        split="validation",
        dataset=dataset,
        run_overlap=RUN_VALIDATION,
    )
    figures = thresholded_metrics(test_scores, test_labels, calibration)
    return calibration, {"thresholds": calibration.to_dict(), "test_calibrated": figures["calibrated"]}
