"""The sources of bulk tagging: image files (from folders and file lists) or the rows of a `datasets` split, and
the `DataLoader` dataset that opens and preprocesses them in its workers (the one-process engine)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..images import ImageError, decode_image, list_image_files, open_image
from .records import BulkError


@dataclass
class Sources:
    """The images of a run: `keys[i]` names image i in its record; `dataset` holds the rows, else keys are paths."""

    keys: list[str]
    dataset: object | None = None
    unreadable: list[str] = field(default_factory=list)  # folders or lists that could not be read


def file_sources(images: Iterable[str] = (), file_list: str | None = None) -> Sources:
    """Image paths: each folder's images (recursively, sorted), files as given, then the lines of `file_list`."""
    keys, unreadable = [], []
    for given in images:
        if os.path.isdir(given):
            try:
                keys += [os.fspath(path) for path in list_image_files(given)]
            except OSError as error:
                unreadable.append(f"{given}: {error}")
        else:
            keys.append(given)
    if file_list is not None:
        try:
            with open(file_list, encoding="utf-8") as lines:
                keys += [line.strip() for line in lines if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise BulkError(f"file_list={file_list}: cannot be read ({error})") from error
    return Sources(keys, unreadable=unreadable)


def parse_data_options(items: Iterable[str]) -> dict:
    """`KEY=VALUE` pairs of `--data-option` (of every `srn-hf` command), each value parsed as YAML (`0.1`, `true`,
    `[dog, cat]`, `{train: a.csv}`; a plain word stays a string), as the recipe's `--set` values are."""
    import yaml

    options = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise BulkError(f"data_options item {item!r} is not KEY=VALUE")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise BulkError(
                f"data_options item {item!r}: the value is not YAML ({' '.join(str(error).split())})"
            ) from None
    return options


def dataset_sources(kind: str, options: dict, split: str | None = None) -> Sources:
    """The rows of one split of `srn_hf.data.load_multilabel_dataset(kind, **options)`, keyed by `image_id`.

    `split` defaults to the only split, else `test`. Images are decoded in the workers, from the files or bytes.
    """
    import datasets

    from ..data import load_multilabel_dataset

    try:
        splits = load_multilabel_dataset(kind, **options)
    except TypeError as error:  # an option the loader does not take
        raise BulkError(f"data={kind!r}: {error}") from error
    if split is None:
        split = next(iter(splits)) if len(splits) == 1 else "test"
    if split not in splits:
        raise BulkError(f"data={kind!r} has no split {split!r}; its splits: {', '.join(splits)} (pass split=...)")
    dataset = splits[split].cast_column("image", datasets.Image(decode=False))
    return Sources([str(key) for key in dataset["image_id"]], dataset)


def given_sources(
    images: list[str], file_list: str | None, data: str | None, data_options: list[str], split: str | None
) -> Sources:
    """The sources `srn-hf predict` names: IMAGE_OR_DIR and `--file-list`, or `--data` with its options and split."""
    if data is None:
        return file_sources(images, file_list)
    if images or file_list:
        raise BulkError("data=... names the images: pass no images=... and no file_list=... with it")
    return dataset_sources(data, parse_data_options(data_options), split)


def open_dataset_image(value: dict, key: str) -> Image.Image:
    """A `datasets.Image(decode=False)` value (`{"bytes", "path"}`) as an RGB image, or an `ImageError` naming its file,
    or `key` for bytes ([`srn_hf.images.decode_image`]). A file is opened by `open_image`, whose decompression-bomb
    guard refuses it before any pixel is decoded."""
    if value.get("bytes") is None:
        return open_image(value["path"])
    return open_image(decode_image(value, name=key))


def preprocessed_image(open_source, image_processor) -> dict:
    """`{"pixel_values", "size": (height, width), "error"}` of the image `open_source()` opens: a bad image (an
    `ImageError`, naming its file) gives a blank input and the error's message, so that the rest of its batch still
    runs. Every engine prepares its images with it."""
    error = None
    try:
        image = open_source()
    except ImageError as bad_image:
        image, error = Image.new("RGB", (1, 1)), str(bad_image)
    pixel_values = image_processor(images=image, return_tensors="pt")["pixel_values"][0]
    return {"pixel_values": pixel_values, "size": (image.height, image.width), "error": error}


class ImageRows(torch.utils.data.Dataset):
    """Images `positions` of `sources`, opened and preprocessed where the `DataLoader` calls it (its workers).

    Each item: `{"position", "pixel_values", "size": (height, width), "error"}`; a bad image gives a blank input
    and the error's message, so that the rest of its batch still runs.
    """

    def __init__(self, sources: Sources, positions: list[int], image_processor):
        self.sources = sources
        self.positions = positions
        self.image_processor = image_processor

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> dict:
        position = self.positions[index]
        key = self.sources.keys[position]
        if self.sources.dataset is None:
            item = preprocessed_image(lambda: open_image(key), self.image_processor)
        else:
            item = preprocessed_image(
                lambda: open_dataset_image(self.sources.dataset[position]["image"], key), self.image_processor
            )
        return {"position": position, **item}


def collate_rows(items: list[dict]) -> dict:
    """A batch of `ImageRows` items: the pixel values stacked, the rest as lists.

    The pixel values are stacked by `default_collate`, which in a `DataLoader` worker writes them to shared memory
    here, in the worker's own thread: a failure (a file size limit, `ulimit -f`; a full /dev/shm) is then an error the
    loader passes on to the main process, where sending the batch later would fail unseen and leave it waiting.
    """
    return {
        "pixel_values": torch.utils.data.default_collate([item["pixel_values"] for item in items]),
        **{name: [item[name] for item in items] for name in ("position", "size", "error")},
    }
