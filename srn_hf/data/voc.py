"""Pascal VOC 2007 as a multi-label dataset, from its XML annotations and image-set lists.

Expected layout (VOCtrainval_06-Nov-2007 and VOCtest_06-Nov-2007 unpacked into the same place):

    root/Annotations/000005.xml ...
    root/ImageSets/Main/{train,val,trainval,test}.txt
    root/JPEGImages/000005.jpg ...

`root` may also be the `VOCdevkit` folder that holds `VOC2007/`.

Objects marked difficult: by default (`difficult="ignore"`) they are ignored when labelling, as in the VOC
classification protocol, so an image whose only instances of a class are difficult does not get that label.
`difficult="positive"` counts them like any other object.

Splits: `train`, `validation` (VOC's `val`) and `test`, as in the source. Papers train on trainval and
report on test: pass `train_on_trainval=True` to get `train` = trainval (then no validation split unless
`validation_fraction > 0` holds one out of trainval). A missing `test.txt` (test set not unpacked) gives no
test split.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from datasets import Dataset, DatasetDict

from .common import AnnotationError, build_split, read_lines
from .holdout import finish_splits

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def read_voc_labels(annotation_file: str | os.PathLike, difficult: str = "ignore") -> list[int]:
    """The sorted class indices of the objects in one VOC XML annotation file."""
    if difficult not in ("ignore", "positive"):
        raise ValueError(f"difficult must be 'ignore' or 'positive', not {difficult!r}")
    try:
        root = ET.parse(annotation_file).getroot()
    except FileNotFoundError:
        raise AnnotationError(f"annotation file not found: {annotation_file}") from None
    except ET.ParseError as error:
        raise AnnotationError(f"malformed XML in {annotation_file}: {error}") from None
    labels = set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise AnnotationError(f"{annotation_file}: object <name> {name!r} is not a VOC class")
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise AnnotationError(f"{annotation_file}: object <difficult> is {flag!r}, expected 0 or 1")
        if flag == "1" and difficult == "ignore":
            continue
        labels.add(VOC_CLASSES.index(name))
    return sorted(labels)


def load_voc_split(
    root: str | os.PathLike, image_set: str, difficult: str = "ignore", missing_images: str = "error"
) -> Dataset:
    """One VOC image set (`train`, `val`, `trainval`, `test`) as a multi-label `Dataset`."""
    root = Path(root)
    list_file = root / "ImageSets" / "Main" / f"{image_set}.txt"
    image_ids = [line.split()[0] for line in read_lines(list_file)]
    return build_split(
        image_paths=[str(root / "JPEGImages" / f"{image_id}.jpg") for image_id in image_ids],
        labels=[read_voc_labels(root / "Annotations" / f"{image_id}.xml", difficult) for image_id in image_ids],
        image_ids=image_ids,
        names=VOC_CLASSES,
        source=str(list_file),
        missing_images=missing_images,
    )


def load_voc2007(
    root: str | os.PathLike,
    difficult: str = "ignore",
    train_on_trainval: bool = False,
    validation_fraction: float = 0.0,
    seed: int = 0,
    missing_images: str = "error",
) -> DatasetDict:
    """Pascal VOC 2007: `train`, `validation` (val), `test`; or `train` = trainval (see the module doc)."""
    root = Path(root)
    if (root / "VOC2007").is_dir():
        root = root / "VOC2007"
    if train_on_trainval:
        splits = {"train": load_voc_split(root, "trainval", difficult, missing_images)}
    else:
        splits = {
            "train": load_voc_split(root, "train", difficult, missing_images),
            "validation": load_voc_split(root, "val", difficult, missing_images),
        }
    if (root / "ImageSets" / "Main" / "test.txt").is_file():
        splits["test"] = load_voc_split(root, "test", difficult, missing_images)
    return finish_splits(splits, validation_fraction, seed)
