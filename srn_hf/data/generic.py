"""Your own multi-label data: an image folder with `metadata.jsonl`, a CSV file, or an existing `datasets` dataset.

Image folder (the layout of `datasets`' imagefolder, with a list of labels per image):

    data_dir/metadata.jsonl             {"file_name": "a.jpg", "labels": ["dog", "sofa"]} one a line
    data_dir/a.jpg ...
or  data_dir/{train,validation,test}/metadata.jsonl  (+ images), one folder per split ("val" is accepted)

CSV: one file per split (`data_files="all.csv"` or `{"train": ..., "test": ...}`), a column with the image path
(relative to `images_dir`, default the CSV's folder) and a column with the labels joined by `label_separator`
(default `"|"`, so that class names may contain spaces); an empty cell means no label.

Existing dataset (`kind="hub"`): a Hub id or a local folder, read with `load_from_disk` when the folder was
written by `save_to_disk`, else with `load_dataset`. Its label column (`labels_column`) may hold class names,
integer indices, multi-hot vectors, a `List(ClassLabel)` or a single `ClassLabel`; it becomes `labels` as
`List(ClassLabel)`, and the image column becomes `image`.

A source without a validation or test split gets them held out of its train split, seeded and stratified per
label (`validation_fraction`, default 0.1; `test_fraction`, default 0: see `srn_hf.data.holdout`).

Class names are `label_names` when given (their order is the label order), else the sorted set of names
found in the train split. A label outside them (for instance one that only the test split has) raises
`AnnotationError` naming the label, the file and the line.
"""

from __future__ import annotations

import csv
import json
import os
from itertools import chain
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Image, List, Value, load_dataset, load_from_disk

from .common import AnnotationError, build_split, encode_labels, field
from .holdout import finish_splits

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}

Row = tuple[str, list, str]  # (image path, raw labels, where: "file, line n")


def split_name(name: str) -> str:
    """The standard split name (`train`, `validation`, `test`) for a source's split name."""
    return SPLIT_ALIASES.get(name.lower(), name)


def image_path_inside(data_dir: Path, folder: Path, file_name, where: str) -> str:
    """`folder / file_name`, refused (`AnnotationError` naming `where` and the value) unless `file_name` is a relative
    path that stays inside `data_dir` (no absolute path, no `..` out of it, no symbolic link inside the folder that
    leads out of it: the check is on the resolved path): an annotation file never makes the loader read files
    elsewhere. The data folder itself may be a link."""
    if not isinstance(file_name, str) or not file_name.strip():
        raise AnnotationError(f"{where}: file_name {file_name!r} must be a non-empty relative path")
    path = os.path.normpath(folder / file_name)
    if os.path.isabs(file_name) or not is_inside(path, data_dir):
        raise AnnotationError(f"{where}: file_name {file_name!r} is outside the data folder {data_dir}")
    if not is_inside(os.path.realpath(path), os.path.realpath(data_dir)):
        raise AnnotationError(
            f"{where}: file_name {file_name!r} leads out of the data folder {data_dir} through a symbolic link "
            f"(it resolves to {os.path.realpath(path)})"
        )
    return path


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when the normalised `path` is `folder` or under it (the text of the paths: resolve them first)."""
    root = os.path.normpath(folder)
    return os.path.commonpath([root, os.path.normpath(path)]) == root


def read_metadata_jsonl(path: Path, labels_column: str = "labels", data_dir: Path | None = None) -> list[Row]:
    """The rows of an imagefolder `metadata.jsonl`; image paths are relative to its folder and must stay inside
    `data_dir` (default: that folder)."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationError(f"cannot read {path}: {error}") from None
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise AnnotationError(f"{where}: malformed JSON: {error}") from None
        labels = field(record, labels_column, where)
        if not isinstance(labels, list):
            raise AnnotationError(f"{where}: {labels_column!r} must be a list, not {labels!r}")
        image = image_path_inside(data_dir or path.parent, path.parent, field(record, "file_name", where), where)
        rows.append((image, labels, where))
    if not rows:
        raise AnnotationError(
            f"{path} is empty: it lists no image (one JSON line per image, with file_name and labels)"
        )
    return rows


def read_labels_csv(
    path: Path,
    image_column: str = "image",
    labels_column: str = "labels",
    label_separator: str = "|",
    images_dir: str | os.PathLike | None = None,
) -> list[Row]:
    """The rows of a CSV file with an image-path column and a column of `label_separator`-joined labels."""
    images_dir = Path(images_dir) if images_dir is not None else path.parent
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for column in (image_column, labels_column):
                if column not in (reader.fieldnames or []):
                    raise AnnotationError(f"{path}: no column {column!r} (columns: {reader.fieldnames})")
            rows = []
            for line_number, record in enumerate(reader, start=2):
                if not record[image_column]:
                    raise AnnotationError(f"{path}, line {line_number}: empty {image_column!r}")
                cell = (record[labels_column] or "").strip()
                labels = [label.strip() for label in cell.split(label_separator)] if cell else []
                rows.append((str(images_dir / record[image_column]), labels, f"{path}, line {line_number}"))
            if not rows:
                raise AnnotationError(f"{path} is empty: it lists no image (a header line, then one line per image)")
    except FileNotFoundError:
        raise AnnotationError(f"annotation file not found: {path}") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise AnnotationError(f"malformed CSV {path}: {error}") from None
    return rows


def rows_to_splits(
    rows_by_split: dict[str, tuple[str, list[Row]]],
    label_names: list[str] | None,
    missing_images: str,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> DatasetDict:
    """Encode labels against the class names and build the splits from {split: (source file, rows)}.

    Without `label_names`, the class names are those of the train split (of every split when there is no train
    split), sorted: a label of another split that the train split lacks raises `AnnotationError` naming the label
    and the file and line, instead of becoming a class the model never trains on. The image id is the image path
    as given, so a file listed twice raises `AnnotationError`.
    """
    label_set = "label_names"
    if label_names is None:
        defining = [rows_by_split["train"]] if "train" in rows_by_split else list(rows_by_split.values())
        found = list(chain.from_iterable(labels for _, rows in defining for _, labels, _ in rows))
        if any(not isinstance(label, str) for label in found):
            raise AnnotationError("integer labels need label_names (the class name of each index)")
        label_names = sorted(set(found))
        label_set = (
            f"the labels of the train split ({rows_by_split['train'][0]})" if "train" in rows_by_split else label_set
        )
    splits = {
        split: build_split(
            image_paths=[path for path, _, _ in rows],
            labels=[encode_labels(labels, label_names, where, label_set) for _, labels, where in rows],
            image_ids=[path for path, _, _ in rows],
            names=label_names,
            source=source,
            missing_images=missing_images,
        )
        for split, (source, rows) in rows_by_split.items()
    }
    return finish_splits(splits, validation_fraction, seed, test_fraction)


def load_imagefolder(
    data_dir: str | os.PathLike,
    labels_column: str = "labels",
    label_names: list[str] | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    missing_images: str = "error",
) -> DatasetDict:
    """An image folder with `metadata.jsonl` (at the top, or in one sub-folder per split)."""
    data_dir = Path(data_dir)
    if (data_dir / "metadata.jsonl").is_file():
        folders = {"train": data_dir}
    else:
        folders = {
            split_name(sub.name): sub for sub in sorted(data_dir.iterdir()) if (sub / "metadata.jsonl").is_file()
        }
    if not folders:
        raise AnnotationError(f"{data_dir}: no metadata.jsonl, neither at the top nor in a split sub-folder")
    rows = {
        split: (str(folder / "metadata.jsonl"), read_metadata_jsonl(folder / "metadata.jsonl", labels_column, data_dir))
        for split, folder in folders.items()
    }
    return rows_to_splits(rows, label_names, missing_images, validation_fraction, test_fraction, seed)


def load_csv(
    data_files: str | os.PathLike | dict[str, str | os.PathLike],
    image_column: str = "image",
    labels_column: str = "labels",
    label_separator: str = "|",
    images_dir: str | os.PathLike | None = None,
    label_names: list[str] | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    missing_images: str = "error",
) -> DatasetDict:
    """CSV files of image paths and labels; `data_files` is one file (the train split) or {split: file}."""
    if not isinstance(data_files, dict):
        data_files = {"train": data_files}
    rows = {
        split_name(split): (
            str(path),
            read_labels_csv(Path(path), image_column, labels_column, label_separator, images_dir),
        )
        for split, path in data_files.items()
    }
    return rows_to_splits(rows, label_names, missing_images, validation_fraction, test_fraction, seed)


def labels_to_indices(
    values, labels_format: str, names: list[str], where: str, label_set: str = "the label set"
) -> list[int]:
    """One row's label cell as sorted class indices (`labels_format`: names, indices or multi_hot)."""
    if labels_format == "multi_hot":
        if len(values) != len(names):
            raise AnnotationError(f"{where}: multi-hot vector of length {len(values)}, expected {len(names)}")
        return [i for i, value in enumerate(values) if value > 0.5]
    if labels_format == "indices" and any(isinstance(value, str) for value in values):
        raise AnnotationError(f"{where}: expected integer indices, found {values!r}")
    return encode_labels(values, names, where, label_set)


def read_dataset_splits(path: str | os.PathLike, name: str | None, **load_dataset_kwargs) -> dict[str, Dataset]:
    """The splits of a `save_to_disk` folder, or else of `load_dataset(path, name)`, under srn_hf's split names."""
    if os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")):
        loaded = load_from_disk(str(path))
    else:
        loaded = load_dataset(str(path), name, **load_dataset_kwargs)
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({"train": loaded})
    return {split_name(split): dataset for split, dataset in loaded.items()}


def labels_feature_format(
    path, feature, label_names: list[str] | None, labels_format: str
) -> tuple[list[str] | None, str]:
    """The class names and the labels format that a labels column's feature implies.

    A ClassLabel feature gives the names (a different `label_names` is an error) and, for `"auto"`, `"indices"`;
    otherwise `"auto"` becomes `"names"` for strings, `"indices"` for integers and `"multi_hot"` for the rest.
    """
    element = feature.feature if isinstance(feature, List) else feature
    if isinstance(element, ClassLabel):
        if label_names is not None and list(label_names) != list(element.names):
            raise AnnotationError(f"{path}: label_names {label_names} differ from the ClassLabel names {element.names}")
        return list(element.names), "indices" if labels_format == "auto" else labels_format
    if labels_format == "auto":
        dtype = element.dtype if isinstance(element, Value) else ""
        labels_format = "names" if dtype == "string" else "indices" if "int" in dtype else "multi_hot"
    return label_names, labels_format


def cell_values(cell, feature) -> list:
    """The labels of one row's cell: the cell of a list column, or its one label in a single-label column."""
    return cell if isinstance(feature, List) else [cell]


def label_names_from_cells(
    path, splits: dict[str, Dataset], labels_column: str, feature, labels_format: str
) -> list[str]:
    """The sorted label names found in the train split (or, without one, in every split), as `rows_to_splits`."""
    if labels_format != "names":
        raise AnnotationError(f"{path}: {labels_format} labels need label_names (the class name of each index)")
    defining = {"train": splits["train"]} if "train" in splits else splits
    return sorted({v for d in defining.values() for cell in d[labels_column] for v in cell_values(cell, feature)})


def as_multilabel_split(
    dataset: Dataset, split: str, image_column: str, labels_column: str, label_names: list[str], convert
) -> Dataset:
    """One split with an `image` column (paths cast to images) and a `labels` column of class indices.

    `convert(batch, indices, split)` maps a batch of the labels column's cells to `{"labels": [indices per row]}`.
    """
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    if isinstance(dataset.features["image"], Value):
        dataset = dataset.cast_column("image", Image())
    features = dataset.features.copy()
    features["labels"] = List(ClassLabel(names=list(label_names)))
    if labels_column != "labels":
        del features[labels_column]
    return dataset.map(
        convert,
        batched=True,
        with_indices=True,
        fn_kwargs={"split": split},
        remove_columns=[labels_column],
        features=features,
        desc=f"labels of {split}",
    )


def load_hub(
    path: str | os.PathLike,
    labels_column: str = "labels",
    image_column: str = "image",
    name: str | None = None,
    label_names: list[str] | None = None,
    labels_format: str = "auto",
    validation_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    **load_dataset_kwargs,
) -> DatasetDict:
    """An existing `datasets` dataset (Hub id, `save_to_disk` folder, or any `load_dataset` path).

    Args:
        labels_column: the multi-label column, renamed to `labels`.
        image_column: the image column (images or paths), renamed to `image`.
        name: the `load_dataset` configuration name.
        label_names: the class names in index order; needed for integer indices and multi-hot vectors
            without a ClassLabel feature.
        labels_format: `"auto"` (from the feature: ClassLabel, strings -> names, integers -> indices,
            floats or bools -> multi_hot), or one of `"names"`, `"indices"`, `"multi_hot"`.
    """
    splits = read_dataset_splits(path, name, **load_dataset_kwargs)
    for split, dataset in splits.items():
        for column in (image_column, labels_column):
            if column not in dataset.column_names:
                raise AnnotationError(f"{path} [{split}]: no column {column!r} (columns: {dataset.column_names})")

    feature = next(iter(splits.values())).features[labels_column]
    label_names, labels_format = labels_feature_format(path, feature, label_names, labels_format)
    if label_names is None:
        label_names = label_names_from_cells(path, splits, labels_column, feature, labels_format)
        label_set = "the labels of the train split" if "train" in splits else "the label set"
    else:
        label_set = "label_names"

    def convert(batch, indices, split):
        return {
            "labels": [
                labels_to_indices(
                    cell_values(cell, feature), labels_format, label_names, f"{path} [{split}] row {i}", label_set
                )
                for cell, i in zip(batch[labels_column], indices)
            ]
        }

    converted = {
        split: as_multilabel_split(dataset, split, image_column, labels_column, label_names, convert)
        for split, dataset in splits.items()
    }
    return finish_splits(converted, validation_fraction, seed, test_fraction)
