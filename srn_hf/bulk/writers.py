"""The writers of bulk tagging: OUTPUT (JSONL or parquet), `OUTPUT.meta.json` beside it, `OUTPUT.parts/` while a run
goes, and the text or JSON list on stdout; reading back what an output holds, for `resume=True`."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..storage import append_bytes, remove_file, storage_error, write_text_file
from .records import META_SUFFIX, OUTPUT_FORMATS, PARTS_SUFFIX, RECORD_SETTINGS, BulkError


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


def prepare_output(output: Output, meta: dict, state=None, retry_errors: bool = False) -> tuple[dict[str, bool], int]:
    """Checks a resumed OUTPUT against this run, tidies it after a kill and, with `retry_errors`, drops its error
    records (first process of accelerate's `state`; None: one process); returns `{image: failed}` of the records it
    holds and how many were dropped."""
    if output.exists():
        output.check_meta(meta)
    if state is not None:
        state.wait_for_everyone()  # every process has checked OUTPUT before the first one changes it
    retried = 0
    if state is None or state.is_main_process:
        if output.exists():
            output.consolidate()
            retried = output.drop_error_records() if retry_errors else 0
        output.write_meta(meta)
    if state is not None:
        state.wait_for_everyone()
    return output.written_records(), retried


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


class ParquetFolderOutput(Output):
    """The output of the Ray engine: OUTPUT.parquet, a folder of parquet files written by Ray (one per block of rows,
    each complete once written; pyarrow, pandas, `datasets` and Ray read the folder whole), `OUTPUT.meta.json` beside
    it. A driver killed mid-write may leave a file cut short: `consolidate` removes it, and --resume predicts its
    rows again."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        if self.format != "parquet":
            raise BulkError(f"output={self.path}: the ray engine writes a folder of parquet files: name it *.parquet")

    def exists(self) -> bool:
        return self.path.exists() or self.meta_path.exists()

    def check_writable(self) -> None:
        """Refuses, before any image, an output whose folder is missing or not writable, or that is a file."""
        if self.path.exists() and not self.path.is_dir():
            raise BulkError(
                f"output={self.path}: is a file (the one-process engine's output); the ray engine writes a folder"
            )
        folder = self.path.parent
        if not folder.is_dir():
            raise BulkError(f"output={self.path}: the folder {folder} does not exist")
        target = self.path if self.path.is_dir() else folder
        if not os.access(target, os.W_OK | os.X_OK):
            raise BulkError(f"output={self.path}: cannot be written (no permission to write in {target})")

    def part_files(self) -> list[Path]:
        return sorted(self.path.glob("*.parquet")) if self.path.is_dir() else []

    def consolidate(self) -> None:
        """Before a resumed run: the files a killed run left unreadable (cut short) and temporary files removed."""
        import pyarrow.parquet as pq

        for stale in self.path.glob("*.tmp") if self.path.is_dir() else []:
            stale.unlink()
        for file in self.part_files():
            try:
                pq.read_metadata(file)
            except (OSError, ValueError):  # pyarrow.ArrowInvalid is a ValueError: no footer, a cut file
                file.unlink()

    def drop_error_records(self) -> int:
        return sum(drop_errors(file) for file in self.part_files())

    def written_records(self) -> dict[str, bool]:
        return {key: failed for file in self.part_files() for key, failed in read_records(file)}


def check_output(
    output: str | os.PathLike, resume: bool, retry_errors: bool = False, kind: type[Output] = Output
) -> Output:
    """The run's output (`kind`: an `Output` file of the one-process engine, a `ParquetFolderOutput` of Ray's),
    refused (`BulkError`) when it cannot be written, or exists and `resume` is not set, or `retry_errors` is set
    without `resume`."""
    if retry_errors and not resume:
        raise BulkError("retry_errors=True predicts again the failed images of a resumed run: pass resume=True with it")
    destination = kind(output)
    destination.check_writable()
    if destination.exists() and not resume:
        raise BulkError(f"output={output} exists: pass resume=True to continue it, or choose another file")
    return destination
