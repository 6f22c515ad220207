"""Validation and test splits held out of a train split: seeded and stratified per label.

A source with only a train split (one image folder, one CSV file, a Hub dataset with a single split) gets its
`validation` (`validation_fraction`) and `test` (`test_fraction`) splits carved out of it by iterative
stratification (Sechidis, Tsoumakas and Vlahavas, "On the stratification of multi-label data", ECML PKDD 2011):
the rarest label's images are dealt first, each to the split that still wants most of that label, so every label
keeps its positives in each split as far as its count allows (a label with 10 images and fractions 0.1 / 0.1 gets
one in validation and one in test). The images are dealt in an order drawn by a generator seeded with `seed`: the
same source and options give the same splits on every machine.

`finish_splits(splits, ...)` orders a source's splits and holds out the ones it lacks (every loader calls it);
`split_summary(dataset)` is the table printed before training: each split's size and each label's positives;
`split_record(dataset, kind, options)` is which images a training run put in each split (its `splits.json`), so
that thresholds tuned later are tuned on the run's validation images, not on images it trained or tested on.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
from collections.abc import Sequence

import numpy as np
from datasets import Dataset, DatasetDict, Image

from .common import SPLITS, label_names


def stratified_holdout(
    labels: Sequence[Sequence[int]], num_labels: int, fractions: dict[str, float], seed: int
) -> dict[str, list[int]]:
    """The row indices of each held-out split (`fractions`: {split: fraction of the rows}); the rest are `"train"`.

    Each held-out split gets `ceil(fraction * rows)` rows (as `Dataset.train_test_split`), dealt by iterative
    stratification: take the label with the fewest positives still undealt; give each of its rows (in a seeded
    order) to the split that wants most of that label, then most rows, then the earliest; rows without a label go
    to the split that wants most rows.
    """
    rows = len(labels)
    wanted_rows = {split: math.ceil(fraction * rows) for split, fraction in fractions.items() if fraction > 0}
    if sum(wanted_rows.values()) >= rows:
        raise ValueError(f"held-out fractions {fractions} leave no training image of the {rows}")
    wanted_rows = {"train": rows - sum(wanted_rows.values()), **wanted_rows}
    positives = np.zeros(num_labels)
    for row in labels:
        positives[list(row)] += 1
    wanted_labels = {split: positives * count / rows for split, count in wanted_rows.items()}
    order = np.random.default_rng(seed).permutation(rows)
    undealt = {int(row) for row in order}
    dealt: dict[str, list[int]] = {split: [] for split in wanted_rows}

    def deal(row: int, split: str) -> None:
        dealt[split].append(row)
        undealt.discard(row)
        wanted_rows[split] -= 1
        wanted_labels[split][list(labels[row])] -= 1

    remaining = positives.copy()
    while remaining.any():
        label = min((count, index) for index, count in enumerate(remaining) if count > 0)[1]
        for row in (int(row) for row in order if row in undealt and label in labels[row]):
            open_splits = [split for split in wanted_rows if wanted_rows[split] > 0] or list(wanted_rows)
            split = max(open_splits, key=lambda name: (wanted_labels[name][label], wanted_rows[name]))
            deal(row, split)
            remaining[list(labels[row])] -= 1
    for row in [int(row) for row in order if row in undealt]:
        deal(row, max(wanted_rows, key=wanted_rows.get))
    return {split: sorted(indices) for split, indices in dealt.items() if split != "train"}


def hold_out(train: Dataset, fractions: dict[str, float], seed: int) -> dict[str, Dataset]:
    """`train` split into `"train"` and the held-out splits of `fractions` ({split: fraction}), stratified per label."""
    held_out = stratified_holdout(train["labels"], len(label_names(train)), fractions, seed)
    taken = set().union(*held_out.values())
    splits = {"train": train.select([row for row in range(len(train)) if row not in taken])}
    splits.update({split: train.select(indices) for split, indices in held_out.items()})
    return splits


def split_labels(split) -> list[list[int]]:
    """The class indices of each image of one split, read from its `labels` column alone: no image is decoded, and
    the transforms of `with_multilabel_transforms` (which turn them into multi-hot vectors) are not applied."""
    return list(split.with_format(None).select_columns(["labels"])["labels"])


def split_summary(dataset) -> str:
    """Each split's size and each label's positive images per split, as a table (printed before training); from the
    labels columns only ([`split_labels`])."""
    names = label_names(dataset)
    splits = list(dataset)
    counts = {}
    for split in splits:
        indices = [index for row in split_labels(dataset[split]) for index in row]
        counts[split] = np.bincount(np.array(indices, dtype=np.int64), minlength=len(names))
    width = max([len("images"), *map(len, names)])
    lines = [f"{'':<{width}}" + "".join(f"{split:>12}" for split in splits)]
    lines.append(f"{'images':<{width}}" + "".join(f"{dataset[split].num_rows:>12}" for split in splits))
    for index, name in enumerate(names):
        lines.append(f"{name:<{width}}" + "".join(f"{int(counts[split][index]):>12}" for split in splits))
    return "positive images per label and split:\n" + "\n".join(lines)


def data_folder(options: dict) -> str | None:
    """The folder a dataset's image paths are recorded relative to: the loader's `data_dir`, `root`, `path` or
    `images_dir` option, else the folder of its (first) CSV file; None when the options name none."""
    for key in ("data_dir", "root", "path", "images_dir"):
        if options.get(key):
            return os.fspath(options[key])
    files = options.get("data_files")
    if isinstance(files, dict):
        files = next(iter(files.values()), None)
    return os.path.dirname(os.path.abspath(files)) if files else None


def image_keys(split: Dataset, folder: str | os.PathLike | None = None) -> list[str]:
    """How a run's split record names each image of one split: its `image_id`, made relative to `folder` when it is
    the path of a file inside it (so that the record still holds when the folder moves); without an `image_id`
    column, the image's file path, else the SHA-256 of its bytes. No image is decoded."""
    plain = split.with_format(None)
    if "image_id" in plain.column_names:
        keys = [str(key) for key in plain.select_columns(["image_id"])["image_id"]]
    else:
        images = plain.select_columns(["image"]).cast_column("image", Image(decode=False))["image"]
        keys = [image["path"] or hashlib.sha256(image["bytes"]).hexdigest() for image in images]
    if folder is None:
        return keys
    root = os.path.abspath(folder)
    inside = [os.path.isfile(key) and os.path.abspath(key).startswith(root + os.sep) for key in keys]
    return [os.path.relpath(os.path.abspath(key), root) if ok else key for key, ok in zip(keys, inside)]


def split_record(dataset: DatasetDict, kind: str, options: dict) -> dict:
    """Which images a training run put in each split, as its `splits.json` holds it ([`image_keys`] of each split,
    relative to the data folder): `{"kind": kind, "splits": {"train": [...], "validation": [...], ...}}`."""
    folder = data_folder(options)
    return {"kind": kind, "splits": {name: image_keys(split, folder) for name, split in dataset.items()}}


def check_fraction(option: str, value) -> None:
    """Refuses (`ValueError` naming the option and the value) a held-out fraction that is not a number in [0, 1): a
    negative or NaN fraction would hold nothing out without a word, a string would fail deep in the comparison."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{option}={value!r} must be a fraction of the train images in [0, 1), e.g. 0.1")


def finish_splits(
    splits: dict[str, Dataset], validation_fraction: float = 0.1, seed: int = 0, test_fraction: float = 0.0
) -> DatasetDict:
    """Order the splits as train, validation, test; hold out the validation and test splits the source lacks.

    A source with a train split but no validation split (COCO 2014, NUS-WIDE, a single CSV...) gets one of
    `validation_fraction` of `train`, and one without a test split (a single folder or CSV, a Hub dataset with only a
    train split) a test split of `test_fraction` of it: seeded and stratified per label (`srn_hf.data.holdout`); the
    rest stays `train`. A fraction of 0 holds nothing out (then there is no such split).
    """
    check_fraction("validation_fraction", validation_fraction)
    check_fraction("test_fraction", test_fraction)
    fractions = {}
    if "train" in splits and "validation" not in splits and validation_fraction > 0:
        fractions["validation"] = validation_fraction
    if "train" in splits and "test" not in splits and test_fraction > 0:
        fractions["test"] = test_fraction
    if fractions:
        splits = {**splits, **hold_out(splits["train"], fractions, seed)}
    ordered = {name: splits[name] for name in SPLITS if name in splits}
    ordered.update({name: split for name, split in splits.items() if name not in ordered})
    return DatasetDict(ordered)
