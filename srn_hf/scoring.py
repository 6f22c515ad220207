"""Scoring a model on a dataset split: sigmoid scores and labels over every process (Accelerate), and the
thresholds of an exported model tuned on one split of any `srn_hf.data` dataset (`srn-hf calibrate`).

The threshold search itself, on numpy arrays, is `srn_hf.thresholds`.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from . import localization
from .configuration_srn import config_label_names
from .thresholds import (
    DEFAULT_MIN_POSITIVES,
    ThresholdCalibration,
    calibrate_thresholds,
    check_same_labels,
    parse_criterion,
    thresholded_metrics,
)


@torch.no_grad()
def predict_scores(
    accelerator, model, dataloader, predictions: tuple[str, ...], attention_peaks: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sigmoid scores of each of `predictions` (SRNOutput fields) and the labels, over the whole split.

    Each process scores its shard; `gather_for_metrics` collects them and drops the samples that the last batch
    repeats to fill every process, so each image counts exactly once. With `attention_peaks=True`, the scores also
    hold `"attention_peaks"`: where each label's attention map is largest, (N, C, 2) points (x, y) as fractions of
    the image ([`srn_hf.localization.attention_peaks`]), from the same forward passes.
    """
    model.eval()
    names = predictions + (("attention_peaks",) if attention_peaks else ())
    scores = {name: [] for name in names}
    labels = []
    for batch in dataloader:
        outputs = model(batch["pixel_values"])
        values = {name: torch.sigmoid(getattr(outputs, name).float()) for name in predictions}
        if attention_peaks:
            peaks = localization.attention_peaks(outputs.attention_maps)  # numpy; gathered as a tensor on the device
            values["attention_peaks"] = torch.from_numpy(peaks).to(outputs.attention_maps.device, torch.float32)
        gathered = accelerator.gather_for_metrics((values, batch["labels"]))
        for name in names:
            scores[name].append(gathered[0][name].cpu())
        labels.append(gathered[1].cpu())
    return {name: torch.cat(values) for name, values in scores.items()}, torch.cat(labels)


def score_split(model, image_processor, split_dataset, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores of the model's prediction (`logits`: the fused y of an SRN) and the multi-hot labels of one
    split of a `srn_hf.data` dataset, with the evaluation transform (whole image warped, no augmentation)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    accelerator = Accelerator()
    model, loader = accelerator.prepare(model, evaluation_loader(image_processor, split_dataset, batch_size))
    batches = tqdm(loader, desc="score", unit="batch", disable=not accelerator.is_local_main_process)
    scores, labels = predict_scores(accelerator, model, batches, ("logits",))
    return scores["logits"].numpy(), labels.numpy()


def evaluation_loader(image_processor, split_dataset, batch_size: int):
    """A `DataLoader` of `{"pixel_values", "labels"}` batches of one split, with the evaluation transform."""
    from datasets import DatasetDict
    from torch.utils.data import DataLoader

    from .data.transforms import collate_multilabel, with_multilabel_transforms

    data = with_multilabel_transforms(
        DatasetDict({"split": split_dataset}), image_processor=image_processor, train_splits=()
    )
    return DataLoader(data["split"], batch_size=batch_size, collate_fn=collate_multilabel)


def score_split_exported(tagger, split_dataset, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """[`score_split`] for an export folder's graph (a `srn_hf.export.ExportedTagger`: ONNX Runtime, float32 or
    INT8, or a `torch.export` program), with the folder's own image processor."""
    from tqdm.auto import tqdm

    scores, labels = [], []
    for batch in tqdm(evaluation_loader(tagger.image_processor, split_dataset, batch_size), desc="score", unit="batch"):
        logits = tagger.logits(batch["pixel_values"].numpy()).astype(np.float64)
        scores.append(1.0 / (1.0 + np.exp(-logits)))
        labels.append(batch["labels"].numpy())
    return np.concatenate(scores), np.concatenate(labels)


def calibrate_model_folder(
    model_dir: str | os.PathLike,
    kind: str,
    options: dict | None = None,
    split: str = "validation",
    criterion: str = "f1",
    min_positives: int = DEFAULT_MIN_POSITIVES,
    batch_size: int = 32,
    allow_overlap: bool = False,
) -> tuple[ThresholdCalibration, dict]:
    """Thresholds of a saved SRN (a `save_pretrained` folder, or an `srn-hf export` folder scored by its own graph,
    float32 or INT8), tuned on a split of any `srn_hf.data` dataset.

    A folder of `examples/train_stages.py` records which images its run trained, validated and tested on
    (`splits.json`, [`srn_hf.model_folder.read_splits_file`]): on data that holds the run's validation images (the
    run's own folder, whatever it would hold out by itself), the thresholds are tuned on those; another `split`
    with images the run trained or tested on is refused unless `allow_overlap=True`. Either way the thresholds'
    provenance (`run_overlap`) says how many such images they were tuned on; None without a `splits.json`.

    Args:
        model_dir: the model folder (config.json, weights, and preferably preprocessor_config.json), or an export
            folder (`srn_hf.export.ExportedTagger` scores it).
        kind, options: the dataset, as `srn_hf.data.load_multilabel_dataset(kind, **options)` reads it. Its label
            set must be the model's (in any order).
        split: the split to tune on (never `"test"`).
        criterion, min_positives: see [`calibrate_thresholds`].
        allow_overlap: tune on images the training run trained or tested on (optimistic thresholds), when asked.

    Returns:
        the [`ThresholdCalibration`] and [`thresholded_metrics`] on the same images (the calibrated figures are then
        optimistic: they were tuned there).
    """
    from .data import label_names, load_multilabel_dataset
    from .export import ExportedTagger, is_export_folder
    from .model_folder import load_image_processor, load_model, read_splits_file

    if split == "test":
        raise ValueError(
            "split='test': thresholds are tuned on a validation split, never on the test split they are reported on"
        )
    parse_criterion(criterion)  # a bad criterion fails before the dataset is read
    run_splits = read_splits_file(model_dir)
    options = options or {}
    dataset = load_multilabel_dataset(kind, **options)
    if split not in dataset:
        raise ValueError(f"the {kind} dataset has no {split!r} split (its splits: {list(dataset)})")
    images, run_overlap = images_to_tune_on(dataset, split, run_splits, options, allow_overlap)
    if is_export_folder(model_dir):  # scored by its own graph (an INT8 one's scores differ from the float model's)
        model = ExportedTagger(model_dir)
        names = model.labels
    else:
        model = load_model(model_dir)
        names = config_label_names(model.config)
    dataset_names = label_names(dataset)
    if set(dataset_names) != set(names):
        check_same_labels(dataset_names, names, f"the {kind} dataset", f"the model in {model_dir}")
    if isinstance(model, ExportedTagger):
        scores, labels = score_split_exported(model, images, batch_size)
    else:
        scores, labels = score_split(model, load_image_processor(model_dir, model.config), images, batch_size)
    labels = labels[:, [dataset_names.index(name) for name in names]]  # the dataset's label order -> the model's
    calibration = calibrate_thresholds(
        scores, labels, names, criterion, min_positives, split=split, dataset=kind, run_overlap=run_overlap
    )
    return calibration, thresholded_metrics(scores, labels, calibration, default_threshold=0.5)


def images_to_tune_on(dataset, split: str, run_splits: dict | None, options: dict, allow_overlap: bool):
    """The images to tune thresholds on and how many of them the training run trained and tested on (None without its
    split record `run_splits`): the run's validation images when the dataset holds them all and `split` is
    `"validation"`, else the dataset's `split` (which it has), refused (`ValueError`, one line) when the run trained
    or tested on some of its images, unless `allow_overlap`."""
    from datasets import concatenate_datasets

    from .data.holdout import data_folder, image_keys

    if run_splits is None:
        return dataset[split], None
    run = {name: set(keys) for name, keys in run_splits["splits"].items()}
    folder = data_folder(options)
    keys = {name: image_keys(dataset[name], folder) for name in dataset}
    validation = run.get("validation", set())
    if split == "validation" and validation:
        rows = {name: [row for row, key in enumerate(keys[name]) if key in validation] for name in dataset}
        if sum(map(len, rows.values())) == len(validation):  # the run's data: tune on the run's validation images
            return concatenate_datasets([dataset[name].select(rows[name]) for name in dataset if rows[name]]), {
                "train": 0,
                "test": 0,
            }
    overlap = {name: sum(key in run.get(name, ()) for key in keys[split]) for name in ("train", "test")}
    if any(overlap.values()) and not allow_overlap:
        counts = " and ".join(f"{count} in its {name} split" for name, count in overlap.items() if count)
        raise ValueError(
            f"{sum(overlap.values())} of the {len(keys[split])} images of the {split!r} split were used by the model's "
            f"training run (splits.json): {counts}; thresholds tuned on them would be optimistic: calibrate on images "
            "the run did not use, or pass allow_overlap=True"
        )
    return dataset[split], overlap


__all__ = ["calibrate_model_folder", "predict_scores", "score_split", "score_split_exported"]
