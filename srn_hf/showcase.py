"""The model's own example images: kept by its training run, published with it, shown on its card and demo page.

A training run (`examples/train_stages.py`) keeps the first `EXAMPLE_COUNT` images of its test split (validation
without one) beside its metrics.json:

    OUTPUT_DIR/examples/0-<image id>.jpg    each the bytes the data holds (no re-encoding), so that a page or a card
    OUTPUT_DIR/examples/1-<image id>.png    scores exactly the images the figures were measured on
    OUTPUT_DIR/examples.json                [{"file": "examples/0-....jpg", "split": "test", "image_id": ...,
                                              "labels": [true label names]}, ...]

`srn_hf.hub.write_hub_folder` publishes the same two (`examples.json` and `examples/`) in the model repository, so
that the model card's attention picture and the demo page of a folder or of a Hub id ([`model_examples`]) show
images of the model's own domain with their true labels, never an unrelated stock photo.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .images import IMAGE_EXTENSIONS, decode_image
from .storage import read_json_file, write_text_file

logger = logging.getLogger(__name__)

EXAMPLES_FILE = "examples.json"
EXAMPLES_FOLDER = "examples"
EXAMPLE_COUNT = 4


@dataclass(frozen=True)
class Example:
    """One example image of the model's data: its file, where it comes from, and its true labels."""

    path: Path
    split: str
    image_id: str
    labels: tuple[str, ...]

    def caption(self) -> str:
        return f"true: {', '.join(self.labels) or 'no label'}"


def image_cell_bytes(cell: dict) -> tuple[bytes, str]:
    """The file bytes of a `datasets.Image(decode=False)` cell (`{"path", "bytes"}`) and their file ending
    (`.jpg`, `.png`, ... from the image's own format); `ImageError` naming the file when it is not an image."""
    picture = decode_image(cell, draft=True)  # names a missing, empty or corrupt file
    data = cell.get("bytes") or Path(cell["path"]).read_bytes()
    suffix = {"JPEG": ".jpg", "TIFF": ".tif"}.get(picture.format, f".{(picture.format or 'png').lower()}")
    return data, suffix


def keep_examples(
    split, split_name: str, label_names: list[str], out_dir: str | os.PathLike, count: int = EXAMPLE_COUNT
) -> list[dict]:
    """Writes the first `count` images of `split` (a `datasets.Dataset` with `image`, `image_id` and `labels`
    columns) to `out_dir/examples/`, each the bytes the data holds, and their records to `out_dir/examples.json`.

    Returns the records (`file` relative to `out_dir`, `split`, `image_id`, `labels`: the true label names).
    """
    from datasets import Image as ImageFeature

    out_dir = Path(out_dir)
    rows = split.select(range(min(count, len(split)))).cast_column("image", ImageFeature(decode=False))
    (out_dir / EXAMPLES_FOLDER).mkdir(parents=True, exist_ok=True)
    records = []
    for index, row in enumerate(rows.with_format(None)):
        data, suffix = image_cell_bytes(row["image"])
        image_id = str(row["image_id"])
        file = f"{EXAMPLES_FOLDER}/{index}-{example_stem(image_id)}{suffix}"
        (out_dir / file).write_bytes(data)
        labels = [label_names[label] for label in row["labels"]]
        records.append({"file": file, "split": split_name, "image_id": image_id, "labels": labels})
    write_example_records(out_dir, records)
    return records


def example_stem(image_id: str) -> str:
    """`image_id` as the stem of a file name: characters other than letters, digits, `-`, `_` and `.` replaced by `_`,
    and an image file ending dropped (the file gets its own ending once: `photos/img_5.jpg` -> `photos_img_5`)."""
    safe_id = "".join(character if character.isalnum() or character in "-_." else "_" for character in image_id)
    stem, dot, ending = safe_id.rpartition(".")
    return stem if dot and stem and f".{ending.lower()}" in IMAGE_EXTENSIONS else safe_id


def check_entry_file(examples_file: Path, index: int, file) -> None:
    """Refuses (a `ValueError` naming `examples_file` and the entry) an entry's `file` that is not a relative path
    inside the folder of `examples_file`: an absolute path or one that climbs out with `..`."""
    inside = isinstance(file, str) and file and not os.path.isabs(file)
    if not inside or os.path.normpath(file).split(os.sep)[0] == os.pardir:
        raise ValueError(f"{examples_file}: entry {index}: file {file!r} is not inside {examples_file.parent}")


def read_example_records(examples_file: Path) -> list[dict]:
    """The entries of `examples_file` (an examples.json); a `ValueError` naming the file and the entry when it is not
    a list of entries with 'file', 'split', 'image_id' and 'labels'."""
    records = read_json_file(examples_file)
    if not isinstance(records, list):
        raise ValueError(f"{examples_file}: expected a list of examples")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not {"file", "split", "image_id", "labels"} <= set(record):
            raise ValueError(f"{examples_file}: entry {index} lacks one of 'file', 'split', 'image_id', 'labels'")
        check_entry_file(examples_file, index, record["file"])
    return records


def read_examples(examples_file: Path, records: list[dict] | None = None, root: Path | None = None) -> list[Example]:
    """The examples listed in `examples_file` (an examples.json; its `records` when already read), their files
    relative to it; a `ValueError` naming the file and the entry when an entry is malformed, its image is missing, or
    it lies outside the folder of `examples_file` once symlinks are followed (outside `root`, when given: a Hub
    cache snapshot's files are links into the repository's cache folder)."""
    if records is None:
        records = read_example_records(examples_file)
    root = (root or examples_file.parent).resolve()
    examples = []
    for index, record in enumerate(records):
        path = examples_file.parent / record["file"]
        if not path.resolve().is_relative_to(root):  # a symlink that points out: never show a file outside
            raise ValueError(f"{examples_file}: entry {index}: file {record['file']!r} leads outside {root}")
        if not path.is_file():
            raise ValueError(f"{examples_file}: entry {index}: no such file {path}")
        examples.append(Example(path, record["split"], str(record["image_id"]), tuple(record["labels"])))
    return examples


def local_examples(model_dir: str | os.PathLike) -> list[Example]:
    """The examples of a model folder: its own examples.json (a Hub folder), else its training run's (in its parent,
    beside metrics.json, as `examples/train_stages.py` leaves OUTPUT_DIR/final); none without either."""
    model_dir = Path(model_dir)
    for candidate in (model_dir / EXAMPLES_FILE, model_dir.parent / EXAMPLES_FILE):
        if candidate.is_file():
            return read_examples(candidate)
    return []


def hub_examples(repo_id: str, revision: str | None = None, token: str | None = None) -> list[Example]:
    """The examples of a Hub model repository (its examples.json and the files it lists, downloaded into the Hub
    cache); none when the repository has no examples.json or cannot be reached (logged). A malformed examples.json, or
    an entry whose file is not inside the repository, is refused ([`read_example_records`], [`read_examples`])."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        examples_file = Path(hf_hub_download(repo_id, EXAMPLES_FILE, revision=revision, token=token))
    except EntryNotFoundError:
        return []
    except Exception as error:  # noqa: BLE001 - offline, no such repository: the page goes on without examples
        return unreachable_examples(repo_id, error)
    records = read_example_records(examples_file)  # a malformed entry, or a file outside the repository: refused
    try:
        for record in records:
            hf_hub_download(repo_id, record["file"], revision=revision, token=token)
    except Exception as error:  # noqa: BLE001
        return unreachable_examples(repo_id, error)
    # The cache snapshot holds examples.json and the files beside it, links to the blobs of the repository's folder.
    return read_examples(examples_file, records, root=examples_file.parents[2])


def unreachable_examples(repo_id: str, error: Exception) -> list[Example]:
    """No examples, and a warning saying why (the Hub cannot be reached, the repository or a file is missing)."""
    logger.warning(f"{repo_id}: no example images ({type(error).__name__}: {str(error).strip().splitlines()[0]})")
    return []


def model_examples(model) -> list[Example]:
    """The example images of `model`: a model folder's ([`local_examples`]) or a Hub id's ([`hub_examples`]); none
    for a model object."""
    if not isinstance(model, (str, os.PathLike)):
        return []
    if os.path.isdir(model):
        return local_examples(model)
    return hub_examples(os.fspath(model))


def copy_examples(examples: list[Example], folder: Path) -> None:
    """Writes `examples` into `folder` as a Hub repository holds them: `examples/` and `examples.json`."""
    (folder / EXAMPLES_FOLDER).mkdir(exist_ok=True)
    records = []
    for example in examples:
        file = f"{EXAMPLES_FOLDER}/{example.path.name}"
        shutil.copyfile(example.path, folder / file)
        records.append(
            {"file": file, "split": example.split, "image_id": example.image_id, "labels": list(example.labels)}
        )
    write_example_records(folder, records)


def write_example_records(folder: Path, records: list[dict]) -> None:
    """`folder/examples.json`, written whole or not at all."""
    write_text_file(folder / EXAMPLES_FILE, json.dumps(records, indent=2) + "\n")


__all__ = ["EXAMPLE_COUNT", "Example", "keep_examples", "model_examples"]
