"""MS-COCO 2014 as a multi-label dataset: image-level labels from the instance annotations.

Expected layout (the official download, unzipped):

    root/annotations/instances_train2014.json
    root/annotations/instances_val2014.json
    root/train2014/COCO_train2014_000000000009.jpg ...
    root/val2014/COCO_val2014_000000000042.jpg ...

An image's labels are the categories of all its instance annotations (crowd annotations included: they
mark the class as present). The 80 classes are COCO's categories sorted by category id, with COCO's names.
SRN and the papers after it train on train2014 and report on val2014, so val2014 is the `test` split here;
`validation` is a seeded hold-out of train2014 (see `srn_hf.data.holdout.finish_splits`).
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, DatasetDict

from .common import AnnotationError, build_split, field, read_json
from .holdout import finish_splits


def read_coco_instances(annotation_file: str | os.PathLike) -> tuple[list[str], list[dict], dict[int, set[int]]]:
    """Parse a COCO instances file.

    Returns:
        the category names sorted by category id, the image records (in file order), and for each image id
        the set of class indices of its annotations.
    """
    where = str(annotation_file)
    data = read_json(annotation_file)
    if not isinstance(data, dict):
        raise AnnotationError(f"{where}: expected a JSON object with images, annotations, categories")
    categories = sorted(field(data, "categories", where), key=lambda c: field(c, "id", f"{where} categories"))
    names = [field(c, "name", f"{where} categories") for c in categories]
    class_of_category = {c["id"]: i for i, c in enumerate(categories)}

    images = field(data, "images", where)
    image_ids = {field(image, "id", f"{where} images") for image in images}
    labels: dict[int, set[int]] = {image_id: set() for image_id in image_ids}
    for annotation in field(data, "annotations", where):
        image_id = field(annotation, "image_id", f"{where} annotations")
        category_id = field(annotation, "category_id", f"{where} annotations")
        if category_id not in class_of_category:
            raise AnnotationError(
                f"{where}: annotation {annotation.get('id')} has category_id {category_id}, "
                f"which is not among the {len(categories)} categories"
            )
        if image_id not in labels:
            raise AnnotationError(
                f"{where}: annotation {annotation.get('id')} refers to image_id {image_id}, which is not in images"
            )
        labels[image_id].add(class_of_category[category_id])
    return names, images, labels


def load_coco_split(
    annotation_file: str | os.PathLike, images_dir: str | os.PathLike, missing_images: str = "error"
) -> Dataset:
    """One COCO split (e.g. `instances_val2014.json` with the `val2014/` folder) as a multi-label `Dataset`."""
    names, images, labels = read_coco_instances(annotation_file)
    where = str(annotation_file)
    return build_split(
        image_paths=[os.path.join(images_dir, field(image, "file_name", f"{where} images")) for image in images],
        labels=[sorted(labels[image["id"]]) for image in images],
        image_ids=[str(image["id"]) for image in images],
        names=names,
        source=where,
        missing_images=missing_images,
    )


def load_coco2014(
    root: str | os.PathLike,
    validation_fraction: float = 0.1,
    seed: int = 0,
    missing_images: str = "error",
) -> DatasetDict:
    """MS-COCO 2014: `train` (train2014 minus the hold-out), `validation` (hold-out), `test` (val2014)."""
    root = Path(root)
    splits = {
        "train": load_coco_split(root / "annotations" / "instances_train2014.json", root / "train2014", missing_images),
        "test": load_coco_split(root / "annotations" / "instances_val2014.json", root / "val2014", missing_images),
    }
    train_names = splits["train"].features["labels"].feature.names
    test_names = splits["test"].features["labels"].feature.names
    if train_names != test_names:
        raise AnnotationError(f"{root / 'annotations'}: train2014 and val2014 list different categories")
    return finish_splits(splits, validation_fraction, seed)
