"""NUS-WIDE (81 concepts) as a multi-label dataset, from the official list files.

Expected layout (the official NUS-WIDE "Groundtruth" and "ImageList" archives, and the images):

    root/Concepts81.txt                          81 concept names, one a line
    root/ImageList/TrainImagelist.txt            161,789 lines such as  actor\\0001_2124494179.jpg
    root/ImageList/TestImagelist.txt             107,859 lines
    root/TrainTestLabels/Labels_<concept>_Train.txt   one 0/1 a line, aligned with TrainImagelist.txt
    root/TrainTestLabels/Labels_<concept>_Test.txt
    root/Flickr/actor/0001_2124494179.jpg ...    the images (`images_dir`, default root/Flickr)

Image-list lines use Windows separators; a full path such as `C:\\ImageData\\Flickr\\actor\\x.jpg` is cut
after `Flickr`. Many NUS-WIDE images are no longer obtainable: pass `missing_images="skip"` to evaluate on
the images you have (counted in a warning). Images tagged with none of the 81 concepts are kept (and
counted); the official split has no validation set, so `validation` is a seeded hold-out of train.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, DatasetDict

from .common import AnnotationError, build_split, read_lines
from .holdout import finish_splits


def image_list_path(line: str) -> str:
    """An image-list line as a relative path with forward slashes (`actor/0001_2124494179.jpg`)."""
    path = line.strip().replace("\\", "/")
    if "Flickr/" in path:
        path = path.rsplit("Flickr/", 1)[1]
    return path


def load_nuswide_split(
    root: str | os.PathLike,
    split: str,
    images_dir: str | os.PathLike | None = None,
    missing_images: str = "error",
) -> Dataset:
    """The official `Train` or `Test` half of NUS-WIDE-81 as a multi-label `Dataset`."""
    root = Path(root)
    images_dir = Path(images_dir) if images_dir is not None else root / "Flickr"
    concepts = read_lines(root / "Concepts81.txt")
    list_file = root / "ImageList" / f"{split}Imagelist.txt"
    paths = [image_list_path(line) for line in read_lines(list_file)]
    labels: list[list[int]] = [[] for _ in paths]
    for index, concept in enumerate(concepts):
        label_file = root / "TrainTestLabels" / f"Labels_{concept}_{split}.txt"
        flags = read_lines(label_file)
        if len(flags) != len(paths):
            raise AnnotationError(f"{label_file}: {len(flags)} lines, but {list_file} lists {len(paths)} images")
        for line_number, (flag, image_labels) in enumerate(zip(flags, labels), start=1):
            if flag not in ("0", "1"):
                raise AnnotationError(f"{label_file}, line {line_number}: value {flag!r}, expected 0 or 1")
            if flag == "1":
                image_labels.append(index)
    return build_split(
        image_paths=[str(images_dir / path) for path in paths],
        labels=labels,
        image_ids=[path.rsplit(".", 1)[0] for path in paths],
        names=concepts,
        source=str(list_file),
        missing_images=missing_images,
    )


def load_nuswide(
    root: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    missing_images: str = "error",
) -> DatasetDict:
    """NUS-WIDE-81: `train` (official Train minus the hold-out), `validation` (hold-out), `test` (official Test)."""
    splits = {
        "train": load_nuswide_split(root, "Train", images_dir, missing_images),
        "test": load_nuswide_split(root, "Test", images_dir, missing_images),
    }
    return finish_splits(splits, validation_fraction, seed)
