"""What every multi-label loader shares: the features, the checks on bad data, the validation hold-out.

Every loader returns the same layout, one row per image:

- `image`: `datasets.Image()` (the file is read when the row is read);
- `labels`: `List(ClassLabel(names=...))`, the indices of the classes present, sorted, possibly empty;
- `image_id`: the source's own id of the image, as a string (COCO id, VOC id, NUS-WIDE path, file name).

Bad data is never dropped silently. A malformed annotation file, a label outside the label set or a
duplicated image id raises `AnnotationError` naming the file, the field and the value. A missing image file
raises too, unless `missing_images="skip"`: then the image is left out and a `DataWarning` gives the count and
the first names. Images without any label are kept (a valid multi-label case: none of the classes is
present) and counted in a `DataWarning`.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterable, Sequence

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value

SPLITS = ("train", "validation", "test")


class AnnotationError(ValueError):
    """An annotation file that cannot be used as it is: unreadable, malformed, or inconsistent."""


class DataWarning(UserWarning):
    """A counted problem in the data that the loader handled (skipped missing images, images without labels)."""


PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # srn_hf/


def warn_data(message: str) -> None:
    """A `DataWarning` attributed to the first caller outside srn_hf (the user's line that loaded the data, as
    Python 3.12's `skip_file_prefixes` does), not to a line inside the loaders."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DataWarning, stacklevel=level)


def multilabel_features(label_names: Sequence[str]) -> Features:
    """The features of every loaded split: `image`, `labels` as `List(ClassLabel)`, `image_id`."""
    return Features(
        {
            "image": Image(),
            "labels": List(ClassLabel(names=list(label_names))),
            "image_id": Value("string"),
        }
    )


def label_names(dataset: Dataset | DatasetDict) -> list[str]:
    """The class names of a multi-label dataset, in label-index order (from its `labels` ClassLabel feature)."""
    if isinstance(dataset, DatasetDict):
        dataset = next(iter(dataset.values()))
    feature = dataset.features.get("labels")
    if not isinstance(feature, List) or not isinstance(feature.feature, ClassLabel):
        raise ValueError(f"the dataset has no `labels` column of List(ClassLabel): {feature!r}")
    return list(feature.feature.names)


def read_json(path: str | os.PathLike) -> object:
    """Parse a JSON file; a missing or malformed file raises `AnnotationError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise AnnotationError(f"annotation file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"malformed JSON in {path}: {error}") from None


def read_lines(path: str | os.PathLike) -> list[str]:
    """The non-empty, stripped lines of a text file; a missing file raises `AnnotationError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise AnnotationError(f"annotation file not found: {path}") from None
    except UnicodeDecodeError as error:
        raise AnnotationError(f"{path} is not a UTF-8 text file: {error}") from None


def field(record: dict, key: str, where: str) -> object:
    """`record[key]`, or an `AnnotationError` naming the file/record (`where`) and the missing field."""
    if not isinstance(record, dict) or key not in record:
        raise AnnotationError(f"{where}: missing field {key!r} in {str(record)[:200]}")
    return record[key]


def encode_labels(
    raw_labels: Iterable, names: Sequence[str], where: str, label_set: str = "the label set"
) -> list[int]:
    """Map label names (or integer indices) to sorted unique indices into `names`.

    A name not in `names`, an empty name or one with spaces around it (`""`, `"bird "`: never a class of its own),
    or an index out of range, raises `AnnotationError` naming `where` and the value;
    `label_set` says in that message where `names` come from (e.g. "the train split's labels").
    """
    index = {name: i for i, name in enumerate(names)}
    encoded = set()
    for label in raw_labels:
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise AnnotationError(f"{where}: label {label!r} is neither a class name nor an integer index")
        if isinstance(label, str) and (not label.strip() or label != label.strip()):
            problem = "an empty name" if not label.strip() else "spaces around the name"
            raise AnnotationError(f"{where}: label {label!r} has {problem} (it would become a class of its own)")
        if isinstance(label, int):
            if not 0 <= label < len(names):
                raise AnnotationError(f"{where}: label index {label} is outside the {len(names)} classes")
            encoded.add(label)
        elif label in index:
            encoded.add(index[label])
        else:
            shown = ", ".join(map(repr, list(names)[:10])) + (", ..." if len(names) > 10 else "")
            raise AnnotationError(f"{where}: label {label!r} is not in {label_set} [{shown}]")
    return sorted(encoded)


def build_split(
    image_paths: Sequence[str],
    labels: Sequence[list[int]],
    image_ids: Sequence[str],
    names: Sequence[str],
    source: str,
    missing_images: str = "error",
) -> Dataset:
    """One split as a `Dataset`, after the checks every source gets.

    Args:
        image_paths: path of each image file.
        labels: sorted class indices of each image.
        image_ids: the source's id of each image; a repeated id raises `AnnotationError`.
        names: the class names.
        source: the annotation file or folder, named in errors and warnings.
        missing_images: `"error"` (default) raises on the first missing image file; `"skip"` leaves such
            images out and warns with their count.
    """
    if missing_images not in ("error", "skip"):
        raise ValueError(f"missing_images must be 'error' or 'skip', not {missing_images!r}")
    seen = set()
    for image_id in image_ids:
        if image_id in seen:
            raise AnnotationError(f"{source}: duplicated image id {image_id!r}")
        seen.add(image_id)

    keep = [os.path.isfile(path) for path in image_paths]
    missing = [path for path, ok in zip(image_paths, keep) if not ok]
    if missing and missing_images == "error":
        raise FileNotFoundError(
            f"{source}: {len(missing)} image file(s) not found, first: {missing[0]} "
            "(pass missing_images='skip' to leave them out)"
        )
    if missing:
        warn_data(
            f"{source}: skipped {len(missing)} of {len(image_paths)} images whose file is missing, e.g. {missing[:3]}"
        )
    columns = {
        "image": [path for path, ok in zip(image_paths, keep) if ok],
        "labels": [list(label) for label, ok in zip(labels, keep) if ok],
        "image_id": [str(image_id) for image_id, ok in zip(image_ids, keep) if ok],
    }
    unlabeled = sum(1 for label in columns["labels"] if not label)
    if unlabeled:
        warn_data(f"{source}: {unlabeled} of {len(columns['labels'])} images have no label (kept)")
    return Dataset.from_dict(columns, features=multilabel_features(names))
