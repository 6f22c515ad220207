"""Multi-label datasets for SRN: one entry point, `load_multilabel_dataset(kind, **options)`.

Every kind returns a `datasets.DatasetDict` with splits `train`, `validation`, `test` (where the source has
them; a validation split is held out of train, seeded, when the source has none: option
`validation_fraction`) and the columns `image` (`datasets.Image`), `labels` (`List(ClassLabel)`) and
`image_id`. `label_names(dataset)` gives the class names in label order; `check_images(dataset)` decodes every
image before training and stops on (or skips) the bad ones (`srn_hf.data.verify`).

| kind | loader | main options |
|---|---|---|
| `"coco2014"` | `load_coco2014` | `root` |
| `"voc2007"` | `load_voc2007` | `root`, `difficult`, `train_on_trainval` |
| `"nuswide"` | `load_nuswide` | `root`, `images_dir` |
| `"imagefolder"` | `load_imagefolder` | `data_dir` (with `metadata.jsonl`) |
| `"csv"` | `load_csv` | `data_files`, `image_column`, `labels_column`, `label_separator` |
| `"hub"` | `load_hub` | `path` (Hub id or local folder), `labels_column`, `image_column` |
| `"stamp_scenes"` | `load_stamp_scenes` | `path`, `generate` (generate there if absent), `variant`, generator options |
"""

import inspect

from .coco import load_coco2014
from .common import AnnotationError, DataWarning, label_names
from .generic import load_csv, load_hub, load_imagefolder
from .nuswide import load_nuswide
from .stamp_scenes import generate_stamp_scenes, load_stamp_scenes
from .transforms import MultiLabelTransform, collate_multilabel, image_transform, with_multilabel_transforms
from .verify import BadImagesError, check_images
from .voc import VOC_CLASSES, load_voc2007

LOADERS = {
    "coco2014": load_coco2014,
    "voc2007": load_voc2007,
    "nuswide": load_nuswide,
    "imagefolder": load_imagefolder,
    "csv": load_csv,
    "hub": load_hub,
    "stamp_scenes": load_stamp_scenes,
}


def load_multilabel_dataset(kind: str, **options):
    """Load a multi-label dataset of the given kind as a `DatasetDict` (see the table in this module's doc)."""
    if kind not in LOADERS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {sorted(LOADERS)}")
    parameters = inspect.signature(LOADERS[kind]).parameters
    if not any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        unknown = sorted(set(options) - set(parameters))
        if unknown:
            raise ValueError(
                f"dataset kind {kind!r} has no option {unknown[0]!r} (its options: {', '.join(parameters)})"
            )
    return LOADERS[kind](**options)


__all__ = [
    "LOADERS",
    "VOC_CLASSES",
    "AnnotationError",
    "BadImagesError",
    "DataWarning",
    "MultiLabelTransform",
    "check_images",
    "collate_multilabel",
    "generate_stamp_scenes",
    "image_transform",
    "label_names",
    "load_coco2014",
    "load_csv",
    "load_hub",
    "load_imagefolder",
    "load_multilabel_dataset",
    "load_nuswide",
    "load_stamp_scenes",
    "load_voc2007",
    "with_multilabel_transforms",
]
