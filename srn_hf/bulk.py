"""Bulk tagging: `srn-hf predict` over folders, file lists or a `datasets` dataset, streamed to JSONL or parquet.

```bash
srn-hf predict MODEL photos/ --output tags.jsonl                        # one JSON record a line, written as it goes
srn-hf predict MODEL --file-list paths.txt --output tags.parquet --all-scores
srn-hf predict MODEL --data coco2014 --data-option root=coco --split validation --output coco.parquet
srn-hf predict MODEL photos/ --output tags.jsonl --resume               # after a kill: the images not yet written
srn-hf predict MODEL photos/ --output tags.jsonl --resume --retry-errors # and the images whose records hold an error
accelerate launch --multi_gpu --num_processes 4 -m srn_hf.cli predict MODEL photos/ --output tags.jsonl  # 4 shares
```

One record per image:

    image       the file's path (a byte that is not UTF-8 written `\\xNN`), or the dataset's `image_id`
    labels      [{"label", "score"}, ...], the labels whose sigmoid score exceeds their threshold, best first
    error       why the image could not be predicted (it names the file), else null; the run goes on
    scores      with `--all-scores`: every label's sigmoid score, in the order of the model's `id2label`
    attention   with `--save-attention DIR`: the PNG of the image's attention maps

How it runs: images are opened and preprocessed in `DataLoader` worker processes (`num_workers`); the model runs
on batches in the main process; records are written after each batch (JSONL, flushed) or every `part_rows`
records (parquet parts, each a complete file), so that memory does not grow with the number of images and a
killed run loses at most the records of its last batch (JSONL) or last part (parquet). A full disk stops the run
with `srn_hf.storage.StorageError` naming the file: a batch's JSONL records are appended whole or cut back off, parts,
the final merge and `OUTPUT.meta.json` are written under a temporary name and renamed, so `resume=True` completes it.

Beside the output, `OUTPUT.meta.json` says which model wrote it (the SHA-256 of its weights), with which labels,
thresholds and options: `resume=True` refuses an output of another model or label set, then skips every image the
output already holds, so that a killed run continued gives exactly one record per image; with `retry_errors=True` it
first drops the records that hold an error, whose images are then predicted again. Parquet parts, and the
records of the processes other than the first under `accelerate launch`, live in `OUTPUT.parts/` until the run
ends; the first process then merges them into OUTPUT. Records are in the order they were predicted (the input
order in a single process).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .configuration_srn import config_label_names
from .fast import autocast_context, use_channels_last
from .images import ImageError, decode_image, list_image_files, open_image
from .pipeline_srn import check_finite_logits, labels_above_thresholds
from .storage import append_bytes, remove_file, storage_error, write_text_file

OUTPUT_FORMATS = {".jsonl": "jsonl", ".parquet": "parquet"}
META_SUFFIX = ".meta.json"
PARTS_SUFFIX = ".parts"
# Settings an output's records depend on: a resumed run must use the same ones.
RECORD_SETTINGS = ("weights_sha256", "labels", "thresholds", "top_k", "all_scores", "save_attention")


class BulkError(ValueError):
    """A bulk run that cannot start: bad sources, an unwritable output, an output of another model."""


# ---------------------------------------------------------------------------------------------------------------
# Sources: files (from folders and file lists) or the rows of a datasets split


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

    from .data import load_multilabel_dataset

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
        key, error = self.sources.keys[position], None
        try:
            if self.sources.dataset is None:
                image = open_image(key)
            else:
                image = open_dataset_image(self.sources.dataset[position]["image"], key)
        except ImageError as bad_image:
            image, error = Image.new("RGB", (1, 1)), str(bad_image)
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {"position": position, "pixel_values": pixel_values, "size": (image.height, image.width), "error": error}


def collate_rows(items: list[dict]) -> dict:
    """A batch of `ImageRows` items: the pixel values stacked, the rest as lists."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        **{name: [item[name] for item in items] for name in ("position", "size", "error")},
    }


# ---------------------------------------------------------------------------------------------------------------
# Records


def weights_digest(model: torch.nn.Module, model_name: str) -> str:
    """The SHA-256 of every byte of the model's weights: which model wrote an output.

    For a model folder, of its weights files (`model.safetensors`, or the shards of its index, or `.bin`) read in
    chunks; else (a Hub id, a model in memory) of every tensor of its state dict, with its name, shape and dtype. A
    file hash costs about a second per 500 MB, little next to one forward pass per image.
    """
    from .model_folder import weights_files

    digest = hashlib.sha256()
    files = weights_files(Path(model_name)) if os.path.isdir(model_name) else []
    for file in files:
        digest.update(f"{file.name};".encode())
        with open(file, "rb") as weights:
            for chunk in iter(lambda: weights.read(1 << 22), b""):
                digest.update(chunk)
    if not files:
        for name, tensor in model.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# What an escaped record name may contain: a doubled backslash, `\xNN` (a byte) or `\uNNNN` (a lone surrogate).
ESCAPE_LIKE = re.compile(r"\\(?:\\|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})")


def record_text(text: str | None) -> str | None:
    """`text` as valid UTF-8 for a record, one record name per file name: a file name that is not UTF-8 (its bytes
    kept by Python as surrogates, `\\udcff`) gets each such byte written `\\xff` and each backslash doubled, so that
    JSONL and parquet can hold it, a resumed run recognises it, and a file literally named `caf\\xe9.png` (written
    `caf\\\\xe9.png`, as is every UTF-8 name that looks escaped) is not taken for the byte name `caf\\xe9.png`. Every
    other name is itself."""
    if text is None:
        return None
    if is_utf8(text) and not ESCAPE_LIKE.search(text):
        return text
    doubled = text.replace("\\", "\\\\")
    try:
        return doubled.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte (from a dataset's text): written \udXXX
        return doubled.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8(text: str) -> bool:
    """True when `text` holds no surrogate (it encodes as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class RecordMaker:
    """Turns a batch's sigmoid scores into records: the labels above their thresholds, best first, at most `top_k`.

    The rule of the `multi-label-image-classification` pipeline ([`srn_hf.pipeline_srn.labels_above_thresholds`]).
    """

    labels: list[str]
    thresholds: np.ndarray
    top_k: int | None = None
    all_scores: bool = False

    def record(self, key: str, scores: np.ndarray | None, error: str | None) -> dict:
        record = {"image": record_text(key), "labels": [], "error": record_text(error)}
        if scores is not None and error is None:
            predicted = labels_above_thresholds(scores, self.thresholds, self.top_k)
            record["labels"] = [
                {"label": self.labels[index], "score": round(float(scores[index]), 6)} for index in predicted
            ]
        if self.all_scores:
            record["scores"] = None if error is not None else [round(float(score), 6) for score in scores]
        return record


def parquet_schema(all_scores: bool, save_attention: bool):
    """The parquet columns of a record (see the module docstring)."""
    import pyarrow as pa

    columns = [
        ("image", pa.string()),
        ("labels", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
        ("error", pa.string()),
    ]
    if all_scores:
        columns.append(("scores", pa.list_(pa.float32())))
    if save_attention:
        columns.append(("attention", pa.string()))
    return pa.schema(columns)


# ---------------------------------------------------------------------------------------------------------------
# Output files: OUTPUT, OUTPUT.meta.json, OUTPUT.parts/


class Output:
    """The output of a bulk run and the files beside it; see the module docstring for the layout."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.format = OUTPUT_FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise BulkError(f"output={self.path}: the name must end in {' or '.join(OUTPUT_FORMATS)}")
        self.meta_path = self.path.with_name(self.path.name + META_SUFFIX)
        self.parts = self.path.with_name(self.path.name + PARTS_SUFFIX)

    def exists(self) -> bool:
        return self.path.exists() or self.meta_path.exists() or self.parts.exists()

    def check_writable(self) -> None:
        """Refuses, before any image, an output whose folder is missing or not writable, or that is not a file."""
        folder = self.path.parent
        if not folder.is_dir():
            raise BulkError(f"output={self.path}: the folder {folder} does not exist")
        if self.path.exists() and not self.path.is_file():
            raise BulkError(f"output={self.path}: is not a file")
        try:
            with open(folder / f".{self.path.name}.{os.getpid()}.write-test", "w") as probe:
                probe.write("")
            os.remove(probe.name)
            if self.path.exists():
                with open(self.path, "ab"):
                    pass
        except OSError as error:
            raise BulkError(f"output={self.path}: cannot be written ({error.strerror or error})") from error

    def check_meta(self, meta: dict) -> None:
        """Refuses to continue an output written by another model, for other labels, or with other settings."""
        try:
            saved = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise BulkError(
                f"resume=True with output={self.path}: {self.meta_path} is missing or unreadable ({error})"
            ) from error
        if saved.get("labels") != meta["labels"]:
            theirs = saved.get("labels") or []
            raise BulkError(
                f"resume=True with output={self.path}: its records are for another label set ({len(theirs)} labels: "
                f"{', '.join(map(str, theirs[:5]))}, ...) than the model's ({len(meta['labels'])} labels: "
                f"{', '.join(meta['labels'][:5])}, ...)"
            )
        if saved.get("weights_sha256") != meta["weights_sha256"]:
            raise BulkError(
                f"resume=True with output={self.path}: its records were written by another model "
                f"({saved.get('model')}, weights sha256 {saved.get('weights_sha256')}) than {meta['model']} "
                f"(weights sha256 {meta['weights_sha256']})"
            )
        for name in RECORD_SETTINGS:
            if saved.get(name) != meta[name]:
                raise BulkError(
                    f"resume=True with output={self.path}: its records were written with {name} {saved.get(name)!r} "
                    f"({self.meta_path.name}), this run has {meta[name]!r}; "
                    "pass the same options, or write another output"
                )

    def write_meta(self, meta: dict) -> None:
        write_text_file(self.meta_path, json.dumps(meta, indent=1) + "\n")  # atomic: --resume always reads it whole

    def part_files(self) -> list[Path]:
        return sorted(self.parts.glob(f"*.{self.format}")) if self.parts.is_dir() else []

    def written_records(self) -> dict[str, bool]:
        """`{image: whether its record holds an error}` of every complete record in OUTPUT and its parts."""
        files = ([self.path] if self.path.is_file() else []) + self.part_files()
        return {key: failed for file in files for key, failed in read_records(file)}

    def drop_error_records(self) -> int:
        """Before a run with `retry_errors` (first process only, after `consolidate`): OUTPUT and its parts rewritten
        without their records that hold an error, each file replaced in one rename (a kill leaves it whole, with or
        without them); returns how many were dropped. Their images are then predicted again."""
        return sum(drop_errors(file) for file in ([self.path] if self.path.is_file() else []) + self.part_files())

    def consolidate(self) -> None:
        """Before a resumed run (first process only): OUTPUT's and the parts' incomplete tails dropped, JSONL parts
        appended to OUTPUT (records already there skipped: a merge may have been cut short), stale files removed."""
        for stale in self.parts.glob("*.tmp") if self.parts.is_dir() else []:
            stale.unlink()
        if self.format == "parquet":
            merged = set(read_keys(self.path)) if self.path.is_file() else set()
            for part in self.part_files():
                if merged and set(read_keys(part)) <= merged:  # merged into OUTPUT before the kill
                    part.unlink()
            return
        truncate_incomplete_line(self.path) if self.path.is_file() else None
        if self.part_files():
            self.merge_jsonl_parts(skip=set(read_keys(self.path)) if self.path.is_file() else set())

    def merge_jsonl_parts(self, skip: set[str] = frozenset(), chunk_bytes: int = 1 << 20) -> None:
        """Appends each part's records to OUTPUT, then deletes the part: a merge cut short (a kill, a full disk)
        leaves the part, and `consolidate` skips its records that OUTPUT already holds."""
        with open(self.path, "ab", buffering=0) as merged:
            for part in self.part_files():
                chunk = bytearray()
                for line in complete_lines(part):
                    if json.loads(line)["image"] not in skip:
                        chunk += line.encode("utf-8")
                    if len(chunk) >= chunk_bytes:
                        append_bytes(merged, bytes(chunk), self.path)
                        chunk.clear()
                append_bytes(merged, bytes(chunk), self.path)
                part.unlink()
        self.remove_parts_folder()

    def merge_parquet_parts(self, schema) -> None:
        """OUTPUT rewritten as OUTPUT's rows then every part's, batch by batch (memory: one batch of rows)."""
        import pyarrow.parquet as pq

        sources = ([self.path] if self.path.is_file() else []) + self.part_files()
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with pq.ParquetWriter(temporary, schema) as writer:
                for source in sources:
                    for batch in pq.ParquetFile(source).iter_batches(batch_size=8192):
                        writer.write_batch(batch)
            os.replace(temporary, self.path)
        except OSError as error:  # OUTPUT and the parts stay as they were: --resume merges them again
            remove_file(temporary)
            raise storage_error(self.path, error) from error
        for part in self.part_files():
            part.unlink()
        self.remove_parts_folder()

    def finish(self, schema) -> None:
        """After every process has written its share (first process only): the parts merged into OUTPUT."""
        if self.format == "parquet":
            self.merge_parquet_parts(schema)
        elif self.part_files():
            self.merge_jsonl_parts()
        else:
            self.path.touch()  # an empty share list still leaves an (empty) output
            self.remove_parts_folder()

    def remove_parts_folder(self) -> None:
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            self.parts.rmdir()

    def writer(self, process_index: int, schema, part_rows: int) -> JsonlWriter | ParquetPartWriter:
        """Where this process writes: OUTPUT itself (JSONL, first process), else a file of OUTPUT.parts/."""
        if self.format == "jsonl" and process_index == 0:
            return JsonlWriter(self.path)
        self.parts.mkdir(exist_ok=True)
        stem = f"process{process_index:03d}-{os.getpid()}-{time.time_ns()}"
        if self.format == "jsonl":
            return JsonlWriter(self.parts / f"{stem}.jsonl")
        return ParquetPartWriter(self.parts, stem, schema, part_rows)


def complete_lines(path: Path) -> Iterator[str]:
    """The lines of a JSONL file that end in a newline (a kill may leave the last one cut)."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.endswith("\n") and line.strip():
                yield line


def truncate_incomplete_line(path: Path) -> None:
    """Cuts a JSONL file after its last newline: the record a kill interrupted is predicted again."""
    with open(path, "rb+") as file:
        size = file.seek(0, os.SEEK_END)
        position = size
        while position > 0:
            step = min(65536, position)
            file.seek(position - step)
            chunk = file.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                position = position - step + newline + 1
                break
            position -= step
        if position != size:
            file.truncate(position)


def read_records(path: Path) -> Iterator[tuple[str, bool]]:
    """`(image, whether the record holds an error)` of each complete record of a JSONL or parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["image", "error"])
        yield from zip(table.column("image").to_pylist(), table.column("error").is_valid().to_pylist())
    else:
        for line in complete_lines(path):
            record = json.loads(line)
            yield record["image"], record["error"] is not None


def read_keys(path: Path) -> Iterator[str]:
    """The `image` of each complete record of a JSONL or parquet file."""
    return (key for key, _ in read_records(path))


def drop_errors(path: Path) -> int:
    """Rewrites the JSONL or parquet file `path` without its records that hold an error (to `PATH.tmp`, renamed over
    `path` in one step); returns how many it dropped (0: the file is left untouched)."""
    failed = sum(failed for _, failed in read_records(path))
    if not failed:
        return 0
    temporary = path.with_name(path.name + ".tmp")
    try:
        if path.suffix == ".parquet":
            import pyarrow.compute as pc
            import pyarrow.parquet as pq

            source = pq.ParquetFile(path)
            with pq.ParquetWriter(temporary, source.schema_arrow) as writer:
                for batch in source.iter_batches(batch_size=8192):
                    writer.write_batch(batch.filter(pc.is_null(batch.column("error"))))
        else:
            with open(temporary, "w", encoding="utf-8") as kept:
                kept.writelines(line for line in complete_lines(path) if json.loads(line)["error"] is None)
        os.replace(temporary, path)
    except OSError as error:
        remove_file(temporary)
        raise storage_error(path, error) from error
    return failed


class JsonlWriter:
    """Appends each batch's records as JSON lines, unbuffered, whole or not at all (`srn_hf.storage.append_bytes`)."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "ab", buffering=0)

    def write(self, records: list[dict]) -> None:
        lines = "".join(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n" for record in records)
        append_bytes(self.file, lines.encode("utf-8"), self.path)

    def close(self) -> None:
        self.file.close()


class ParquetPartWriter:
    """Writes records as parquet files of `part_rows` rows in `folder`, each complete (written, then renamed)."""

    def __init__(self, folder: Path, stem: str, schema, part_rows: int):
        self.folder, self.stem, self.schema, self.part_rows = folder, stem, schema, part_rows
        self.buffer, self.count = [], 0

    def write(self, records: list[dict]) -> None:
        self.buffer += records
        if len(self.buffer) >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.buffer:
            return
        part = self.folder / f"{self.stem}-{self.count:06d}.parquet"
        temporary = part.with_suffix(".tmp")
        records, self.buffer = self.buffer, []  # a failed part is not retried at close: --resume predicts it again
        try:
            pq.write_table(pa.Table.from_pylist(records, schema=self.schema), temporary)
            os.replace(temporary, part)
        except OSError as error:
            remove_file(temporary)
            raise storage_error(part, error) from error
        self.count += 1

    def close(self) -> None:
        self.flush()


class StdoutWriter:
    """Records on stdout: `file<TAB>label (score), ...` lines, or (`as_json`) one JSON list, printed as it goes."""

    def __init__(self, as_json: bool):
        self.as_json, self.count = as_json, 0

    def write(self, records: list[dict]) -> None:
        from tqdm.auto import tqdm

        for record in records:
            if self.as_json:
                sys.stdout.write(("[\n" if self.count == 0 else ",\n") + json.dumps(record, allow_nan=False))
            elif record["error"] is None:
                labels = ", ".join(f"{item['label']} ({item['score']:.3f})" for item in record["labels"])
                tqdm.write(f"{record['image']}\t{labels or '-'}", file=sys.stdout)
            self.count += 1
        sys.stdout.flush()

    def close(self) -> None:
        if self.as_json:
            sys.stdout.write(("[" if self.count == 0 else "") + "\n]\n")
            sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Summary:
    """What a bulk run did, over every process: images predicted, of them failed, images skipped (already written),
    records kept from earlier runs that hold an error, and error records dropped to be retried (`retry_errors`)."""

    predicted: int = 0
    failed: int = 0
    skipped: int = 0
    earlier_errors: int = 0
    retried: int = 0

    @property
    def output_errors(self) -> int:
        """Records of the output that hold an error once the run is over: this run's failures and the kept ones."""
        return self.failed + self.earlier_errors


def run_meta(tagger, model: str, maker: RecordMaker, fast: bool, save_attention: bool) -> dict:
    """`OUTPUT.meta.json`: the model and settings the records depend on (`RECORD_SETTINGS`), and the precision."""
    return {
        "model": model,
        "weights_sha256": weights_digest(tagger.model, model),
        "labels": maker.labels,
        "thresholds": [float(value) for value in maker.thresholds],
        "top_k": maker.top_k,
        "all_scores": maker.all_scores,
        "save_attention": save_attention,
        "precision": "bf16 autocast, channels-last" if fast else str(tagger.model.dtype).removeprefix("torch."),
    }


def prepare_output(output: Output, meta: dict, state, retry_errors: bool = False) -> tuple[dict[str, bool], int]:
    """Checks a resumed OUTPUT against this run, tidies it after a kill and, with `retry_errors`, drops its error
    records (first process); returns `{image: failed}` of the records it holds and how many were dropped."""
    if output.exists():
        output.check_meta(meta)
    state.wait_for_everyone()  # every process has checked OUTPUT before the first one changes it
    retried = 0
    if state.is_main_process:
        if output.exists():
            output.consolidate()
            retried = output.drop_error_records() if retry_errors else 0
        output.write_meta(meta)
    state.wait_for_everyone()
    return output.written_records(), retried


def attention_png_path(folder: str, image_file: str, used_names: set) -> str:
    """FOLDER/<image stem>_attention.png, numbered when two images share a stem."""
    stem = os.path.splitext(os.path.basename(image_file))[0]
    name, number = f"{stem}_attention.png", 1
    while name in used_names:
        name, number = f"{stem}_{number}_attention.png", number + 1
    used_names.add(name)
    return os.path.join(folder, name)


def save_attention(
    record: dict, image_file: str, attention_maps: torch.Tensor, size: tuple, label2id: dict, folder: str, used: set
) -> None:
    """Draws the image's attention maps A of its predicted labels (`srn_hf.visualize`) and names the PNG in `record`."""
    from .pipeline_srn import upsample_attention_map
    from .visualize import save_attention_overlay

    predictions = [
        {**item, "attention_map": upsample_attention_map(attention_maps[label2id[item["label"]]], *size)}
        for item in record["labels"]
    ]
    path = attention_png_path(folder, image_file, used)
    try:
        record["attention"] = record_text(os.fspath(save_attention_overlay(image_file, predictions, path)))
    except OSError as error:  # a full disk: the batch's records are not written, --resume draws them again
        remove_file(Path(path))
        raise storage_error(path, error) from error


def predicted_batches(tagger, loader, fast: bool, attention: bool) -> Iterator[tuple[dict, np.ndarray, torch.Tensor]]:
    """`(batch, sigmoid scores B x C, attention maps A or None)` for each batch of the loader."""
    model, device = tagger.model, tagger.device
    if fast:
        use_channels_last(model)
    for batch in loader:
        with torch.inference_mode(), autocast_context(enabled=fast, device_type=device.type):
            outputs = model(pixel_values=batch["pixel_values"].to(device, tagger.dtype))
        check_finite_logits(outputs.logits, model)  # NaN is above no threshold: refused, not written as no labels
        scores = torch.sigmoid(outputs.logits.float()).cpu().numpy()
        yield batch, scores, outputs.attention_maps.float().cpu() if attention else None


def predict_share(
    tagger, sources: Sources, positions: list[int], maker: RecordMaker, writer, settings: dict
) -> Summary:
    """Predicts images `positions` of `sources` in batches, writing each batch's records; returns the counts."""
    from tqdm.auto import tqdm

    rows = ImageRows(sources, positions, tagger.image_processor)
    batches = -(-len(rows) // settings["batch_size"])
    loader = torch.utils.data.DataLoader(
        rows,
        batch_size=settings["batch_size"],
        num_workers=min(settings["num_workers"], batches),
        collate_fn=collate_rows,
    )
    label2id = {label: index for index, label in enumerate(maker.labels)}
    summary, used_names = Summary(), set()
    progress = tqdm(
        total=len(rows), desc="predict", unit="image", disable=not settings["show_progress"] or len(rows) < 2
    )
    attention_folder = settings["save_attention"]
    with progress:  # closed on an error too, so that the error's line is not glued to the bar
        predicted = predicted_batches(tagger, loader, settings["fast"], attention_folder is not None)
        for batch, scores, attention_maps in predicted:
            records = []
            for row, (position, size, error) in enumerate(zip(batch["position"], batch["size"], batch["error"])):
                record = maker.record(sources.keys[position], scores[row], error)
                if error is not None:
                    summary.failed += 1
                    if settings["report_errors"]:
                        tqdm.write(f"srn-hf predict: error: {record['error']}", file=sys.stderr)
                elif attention_folder is not None:
                    save_attention(
                        record,
                        sources.keys[position],
                        attention_maps[row],
                        size,
                        label2id,
                        attention_folder,
                        used_names,
                    )
                records.append(record)
            writer.write(records)
            summary.predicted += len(records)
            progress.update(len(records))
    return summary


def total_over_processes(summary: Summary, state) -> Summary:
    """The counts summed over the processes of an `accelerate launch` run."""
    if state.num_processes == 1:
        return summary
    from accelerate.utils import reduce

    counts = torch.tensor(
        [summary.predicted, summary.failed, summary.skipped, summary.earlier_errors, summary.retried],
        device=state.device,
    )
    return Summary(*(int(value) for value in reduce(counts, reduction="sum")))


def check_output(output: str | os.PathLike, resume: bool, retry_errors: bool = False) -> Output:
    """The run's `Output`, refused (`BulkError`) when it cannot be written, or exists and `resume` is not set, or
    `retry_errors` is set without `resume`."""
    if retry_errors and not resume:
        raise BulkError("retry_errors=True predicts again the failed images of a resumed run: pass resume=True with it")
    destination = Output(output)
    destination.check_writable()
    if destination.exists() and not resume:
        raise BulkError(f"output={output} exists: pass resume=True to continue it, or choose another file")
    return destination


def run_state(device: str | torch.device | None = None):
    """accelerate's `PartialState` of this run: its processes under `accelerate launch`, else one process.

    On a CPU (`device` cpu, or none and no GPU) the processes of `accelerate launch --multi_gpu --num_processes N`
    join over gloo; accelerate's state is created once per process, so the first call decides.
    """
    from accelerate import PartialState

    cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def check_run(
    sources: Sources, output, resume: bool, save_attention, num_processes: int, retry_errors: bool = False
) -> Output | None:
    """Refuses (`BulkError`) a run that could not give its records: no images, nowhere to write them."""
    if not sources.keys:
        raise BulkError("no images to predict")
    if num_processes > 1 and output is None:
        raise BulkError(f"{num_processes} processes need output=...: each writes its share there")
    if save_attention is not None and sources.dataset is not None:
        raise BulkError("save_attention=... draws image files: it does not apply to the rows of data=...")
    if output is None and (resume or retry_errors):
        raise BulkError("resume=True and retry_errors=True continue an output=... file: pass output=...")
    return check_output(output, resume, retry_errors) if output is not None else None


def tag_images(
    tagger,
    sources: Sources,
    model: str,
    output: str | None = None,
    resume: bool = False,
    as_json: bool = False,
    batch_size: int = 8,
    num_workers: int = 2,
    fast: bool = False,
    threshold: float | None = None,
    label_thresholds: dict | None = None,
    top_k: int | None = None,
    all_scores: bool = False,
    save_attention: str | None = None,
    part_rows: int = 1024,
    retry_errors: bool = False,
) -> Summary:
    """Predicts every image of `sources` with the pipeline `tagger`'s model and writes one record per image.

    Args:
        tagger: a `multi-label-image-classification` pipeline (its model, image processor, device and thresholds).
        sources: from [`file_sources`] or [`dataset_sources`].
        model: the model's name or folder, kept in `OUTPUT.meta.json`.
        output: a `.jsonl` or `.parquet` file, written as the run goes; None prints to stdout (text, or a JSON
            list with `as_json`), in a single process only.
        resume: continue OUTPUT: skip the images it holds (it must come from the same model and settings).
        retry_errors: with `resume`, predict again the images whose records in OUTPUT hold an error (those records
            are dropped first); without it they are kept and counted in `Summary.earlier_errors`.
        batch_size, num_workers, fast: images per forward pass, `DataLoader` workers that open and preprocess
            the images, and the fast path of `srn_hf.fast`.
        threshold, label_thresholds, top_k: the pipeline's (see `MultiLabelImageClassificationPipeline`).
        all_scores: add every label's score to each record.
        save_attention: a folder for a PNG of each image's attention maps (image files only).
        part_rows: records per parquet part.

    Under `accelerate launch`, each process takes every N-th remaining image and the first merges the shares.
    Raises `BulkError` before the first image for an unusable output or sources.
    """
    state = run_state(tagger.device)
    destination = check_run(sources, output, resume, save_attention, state.num_processes, retry_errors)
    config = tagger.model.config
    labels = config_label_names(config)
    maker = RecordMaker(labels, tagger.thresholds(threshold, label_thresholds), top_k, all_scores)
    done, retried = {}, 0
    if destination is not None:
        meta = run_meta(tagger, model, maker, fast, save_attention is not None)
        done, retried = prepare_output(destination, meta, state, retry_errors)
    remaining = [position for position, key in enumerate(sources.keys) if record_text(key) not in done]
    schema = parquet_schema(all_scores, save_attention is not None)
    if destination is not None:
        writer = destination.writer(state.process_index, schema, part_rows)
    else:
        writer = StdoutWriter(as_json)
    settings = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "fast": fast,
        "save_attention": save_attention,
        "show_progress": state.is_main_process,
        "report_errors": not as_json,
    }
    try:
        summary = predict_share(
            tagger, sources, remaining[state.process_index :: state.num_processes], maker, writer, settings
        )
    finally:
        writer.close()
    if state.is_main_process:  # counted once, over the whole output
        summary.skipped, summary.earlier_errors, summary.retried = (
            len(sources.keys) - len(remaining),
            sum(done.values()),
            retried,
        )
    state.wait_for_everyone()
    if destination is not None and state.is_main_process:
        destination.finish(schema)
    return total_over_processes(summary, state)


__all__ = [
    "BulkError",
    "check_output",
    "ImageRows",
    "Output",
    "RecordMaker",
    "Sources",
    "dataset_sources",
    "file_sources",
    "given_sources",
    "weights_digest",
    "parse_data_options",
    "run_state",
    "tag_images",
]
