"""Every image of a dataset checked before training starts: a bad file stops the run in minute one, not hour three.

[`check_images`] decodes each image of each split, in worker processes, with a progress bar, and applies a policy
to the bad ones (a missing, empty, truncated or corrupt file, or one that is not an image):

- `"stop"` (the default): raises [`BadImagesError`], which names the bad files (all of them in `report_file`);
- `"skip"`: leaves the bad images out of their split and says how many, in a `DataWarning` and in the returned
  report (which `examples/train_stages.py` puts in `metrics.json`).

The check is a full decode: a JPEG whose data stops early still has an intact header, so reading headers alone
would let the truncated files through that crash a training run when their batch comes up. JPEGs are decoded at
1/8 scale (libjpeg's DCT scaling, Pillow's `draft`): every byte of the compressed data is still read and
entropy-decoded, at a fraction of the cost of a full-size decode (see `benchmarks/benchmark_verify.py`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature
from tqdm.auto import tqdm

from ..images import (
    ImageError,
    decode_image,
)  # decode_image moved to srn_hf.images; importable from here for one release
from .common import warn_data

BAD_IMAGE_POLICIES = ("stop", "skip")
BATCH = 1024  # rows handed to the worker processes at a time (the images of a Hub dataset may be held as bytes)
SHOWN = 10  # bad files named in an error message; all of them go to the report file


class BadImagesError(ValueError):
    """Images that cannot be decoded, found before training; `bad_images` holds `(split, file, reason)` of each."""

    def __init__(self, message: str, bad_images: list[tuple[str, str, str]]):
        super().__init__(message)
        self.bad_images = bad_images


def image_problem(image: dict) -> str | None:
    """Why an image (a `datasets.Image(decode=False)` cell) cannot be decoded, or None (runs in the workers)."""
    try:
        decode_image(image, draft=True).close()
    except ImageError as error:
        return error.reason
    return None


def describe_row(image: dict, split: str, index: int, image_id: str | None) -> str:
    """The file of a row, or `train[12] (image_id 42)` for an image held as bytes."""
    if image.get("path") and not image.get("bytes"):
        return image["path"]
    return (
        f"{split}[{index}]"
        + (f" (image_id {image_id})" if image_id is not None else "")
        + (f" from {image['path']}" if image.get("path") else "")
    )


def find_bad_images(split: Dataset, name: str, pool) -> list[tuple[int, str, str]]:
    """`(row index, file, reason)` of the bad images of one split, with a progress bar."""
    raw = split.cast_column("image", ImageFeature(decode=False))
    columns = ["image"] + (["image_id"] if "image_id" in raw.column_names else [])
    bad = []
    with tqdm(total=len(raw), desc=f"checking {name} images", unit="image") as bar:
        for start in range(0, len(raw), BATCH):
            rows = raw.select_columns(columns)[start : start + BATCH]
            images = rows["image"]
            problems = pool.map(image_problem, images, chunksize=16) if pool else map(image_problem, images)
            for offset, problem in enumerate(problems):
                if problem is not None:
                    index = start + offset
                    image_id = rows["image_id"][offset] if "image_id" in rows else None
                    bad.append((index, describe_row(rows["image"][offset], name, index, image_id), problem))
            bar.update(len(rows["image"]))
    return bad


def find_bad_images_of_splits(
    dataset: DatasetDict, splits: list[str], num_workers: int, main_process: bool, accelerator=None
) -> dict[str, list[tuple[int, str, str]]]:
    """`find_bad_images` of each split, decoded on `num_workers` processes (0: in this one) by the main process;
    in a multi-process run the other processes receive its findings (`broadcast_object_list`)."""
    bad = None
    if main_process and num_workers > 0:
        with multiprocessing.Pool(num_workers) as pool:
            bad = {split: find_bad_images(dataset[split], split, pool) for split in splits}
    elif main_process:
        bad = {split: find_bad_images(dataset[split], split, None) for split in splits}
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        bad = broadcast_object_list([bad])[0]
    return bad


def bad_files_summary(listed: list[tuple[str, str, str]], report_file: str | os.PathLike | None) -> str:
    """` (all listed in REPORT): file: reason; ... and N more`: the first `SHOWN` bad files, and where all are."""
    summary = "; ".join(f"{file}: {reason}" for _, file, reason in listed[:SHOWN])
    more = f" and {len(listed) - SHOWN} more" if len(listed) > SHOWN else ""
    where = f" (all listed in {report_file})" if report_file is not None else ""
    return f"{where}: {summary}{more}"


def drop_bad_images(dataset: DatasetDict, bad: dict[str, list[tuple[int, str, str]]]) -> DatasetDict:
    """The dataset without the rows of `bad` (a split without bad rows is kept as it is)."""
    kept = {}
    for split, data in dataset.items():
        dropped = {index for index, _, _ in bad.get(split, [])}
        kept[split] = data.select([index for index in range(len(data)) if index not in dropped]) if dropped else data
    return DatasetDict(kept)


def check_images(
    dataset: DatasetDict,
    policy: str = "stop",
    num_workers: int | None = None,
    report_file: str | os.PathLike | None = None,
    splits: Sequence[str] | None = None,
    accelerator=None,
) -> tuple[DatasetDict, dict]:
    """Decodes every image of `splits` (default: all) of `dataset` and applies `policy` to the bad ones.

    Args:
        dataset: a multi-label `DatasetDict` (an `image` column of `datasets.Image`), before any `with_transform`.
        policy: `"stop"` raises [`BadImagesError`] naming the bad files; `"skip"` leaves them out, with a warning.
        num_workers: worker processes that decode (default: one per CPU core; 0 decodes in this process).
        report_file: where to write the list of bad files, one `split<TAB>file<TAB>reason` a line (only written when
            there are bad files).
        splits: the splits to check.
        accelerator: in a multi-process run, the `accelerate.Accelerator`: the main process checks, the others get
            its findings (`broadcast_object_list`) and every process applies the same policy.

    Returns:
        `(dataset, report)`: the dataset (without the bad images under `"skip"`), and `{"policy", "checked":
        {split: n}, "bad": {split: n}, "skipped": total skipped, "files": [first bad files]}`.
    """
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_images must be one of {list(BAD_IMAGE_POLICIES)}, not {policy!r}")
    splits = list(dataset) if splits is None else list(splits)
    num_workers = os.cpu_count() or 1 if num_workers is None else num_workers
    main_process = accelerator is None or accelerator.is_main_process
    bad = find_bad_images_of_splits(dataset, splits, num_workers, main_process, accelerator)
    listed = [(split, file, reason) for split in splits for _, file, reason in bad[split]]
    report = {
        "policy": policy,
        "checked": {split: len(dataset[split]) for split in splits},
        "bad": {split: len(bad[split]) for split in splits},
        "skipped": len(listed) if policy == "skip" else 0,
        "files": [file for _, file, _ in listed[:SHOWN]],
    }
    if listed and report_file is not None and main_process:
        Path(report_file).write_text("".join(f"{split}\t{file}\t{reason}\n" for split, file, reason in listed))
    if not listed:
        return dataset, report
    files = bad_files_summary(listed, report_file)
    if policy == "stop":
        raise BadImagesError(
            f"{len(listed)} image(s) cannot be decoded{files}. "
            "Fix or remove them, or set data.bad_images: skip to train without them",
            listed,
        )
    message = f"skipped {len(listed)} image(s) that cannot be decoded{files}"
    warn_data(message)
    return drop_bad_images(dataset, bad), report


__all__ = ["BAD_IMAGE_POLICIES", "BadImagesError", "check_images", "decode_image", "image_problem"]
