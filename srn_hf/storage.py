"""Files on disk: folders that appear complete or not at all, files checked before they are read, write errors that
name the path and the free space.

[`atomic_folder`] writes a folder (a model export, a checkpoint) under a temporary name beside it and renames it into
place only once everything in it is written: a run killed or failing half-way leaves no half folder that a later
stage, `--resume` or the pipeline would load, only a hidden `.NAME.partial` folder that the next write replaces.

[`write_text_file`] does the same for one file (a JSON record, a config), and [`append_bytes`] appends to a file
whole or not at all (the records of a bulk run).

[`read_json_file`] reads a JSON file, naming the file when it is not valid JSON.

[`check_weights_file`] tells whether a safetensors or `torch.save` file is complete (its header and index are read,
never its tensors), naming the file when it is not.

A failed write (a full disk, a read-only or foreign folder) raises [`StorageError`], whose message names the path,
what went wrong and the space left on its file system, instead of torch's `unexpected pos` or safetensors' I/O error:

    cannot write outputs/srn/checkpoints/checkpoint_3: no space left on the device (1.2 MB free of 2.0 MB)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError, safe_open

PARTIAL_SUFFIX = ".partial"

# What torch.save (its zip writer) and safetensors say when a write fails half-way; errno then is often lost.
WRITE_FAILURE_MARKERS = ("unexpected pos", "file write failed", "no space left", "os error 28", "i/o error")


class StorageError(OSError):
    """A file or folder that could not be written; the message names the path, the cause and the free space."""


class IncompleteFileError(ValueError):
    """A weights, optimizer or state file that is truncated or not what its name says; the message names it."""


def format_bytes(size: float) -> str:
    """`1536` -> `"1.5 kB"`: a size for people (powers of 1000)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def free_space(path: str | os.PathLike) -> str:
    """`"1.2 MB free of 2.0 MB"` for the file system holding `path` (or its nearest existing parent folder)."""
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return "free space unknown"
    return f"{format_bytes(usage.free)} free of {format_bytes(usage.total)}"


def is_write_failure(error: BaseException) -> bool:
    """True for an OSError, or the RuntimeError / SafetensorError that torch.save and safetensors raise on a failed
    write (a full disk gives torch's `unexpected pos`)."""
    if isinstance(error, OSError):
        return True
    if isinstance(error, (RuntimeError, SafetensorError)):
        return any(marker in str(error).lower() for marker in WRITE_FAILURE_MARKERS)
    return False


def storage_error(path: str | os.PathLike, error: BaseException) -> StorageError:
    """The [`StorageError`] for a failed write of `path`: the cause in words, and the free space."""
    code = getattr(error, "errno", None)
    text = str(error).lower()
    if code == errno.ENOSPC or "no space left" in text or "os error 28" in text or "unexpected pos" in text:
        cause = "no space left on the device"
    elif code == errno.EDQUOT:
        cause = "disk quota exceeded"
    elif code in (errno.EACCES, errno.EPERM) or "permission denied" in text:
        cause = "permission denied"
    elif code == errno.EROFS:
        cause = "read-only file system"
    else:
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    error = StorageError(f"cannot write {path}: {cause} ({free_space(path)})")
    error.errno = code  # the message stays plain ("[Errno 28] ..." otherwise)
    return error


def partial_path(folder: str | os.PathLike) -> Path:
    """Where [`atomic_folder`] writes `folder` before renaming it: `PARENT/.NAME.partial`."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}{PARTIAL_SUFFIX}"


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def begin_folder(folder: str | os.PathLike) -> Path:
    """Creates the empty temporary folder of `folder` (`PARENT/.NAME.partial`), replacing what a killed write left."""
    partial = partial_path(folder)
    try:
        remove_folder(partial)
        partial.mkdir(parents=True)
    except OSError as error:
        raise storage_error(folder, error) from error
    return partial


def commit_folder(partial: Path, folder: str | os.PathLike) -> None:
    """Renames the complete temporary folder `partial` to `folder`, replacing an existing `folder`.

    The files are flushed to the disk first. An existing `folder` is moved aside and deleted only after the rename,
    so that it is never gone before the new one is complete.
    """
    folder = Path(folder)
    previous = folder.parent / f".{folder.name}.old"
    try:
        sync_folder(partial)
        if folder.exists():
            remove_folder(previous)
            folder.rename(previous)
        partial.rename(folder)
        sync_path(folder.parent)  # the rename itself, not the parent's other files
    except OSError as error:
        raise storage_error(folder, error) from error
    remove_folder(previous)


@contextmanager
def atomic_folder(folder: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yields a temporary folder to write `folder` into; renames it to `folder` when the block ends without error.

    An error in the block (or a kill) leaves `folder` as it was: the temporary folder is removed (a kill leaves it
    behind, hidden, and the next write to `folder` replaces it). A write that fails for lack of space or permission
    raises [`StorageError`] naming the path and the free space. With `replace`, an existing `folder` is replaced
    by the new one (see [`commit_folder`]); else an existing `folder` raises `FileExistsError`.

    Example:

    ```python
    >>> with atomic_folder("outputs/srn/final") as folder:
    ...     model.save_pretrained(folder)
    ...     image_processor.save_pretrained(folder)
    ```
    """
    folder = Path(folder)
    if folder.exists() and not replace:
        raise FileExistsError(f"{folder} already exists")
    partial = begin_folder(folder)
    try:
        yield partial
    except BaseException as error:
        remove_folder(partial)  # frees the space of a failed write at once
        raise_storage_error(folder, error)
        raise
    commit_folder(partial, folder)


def raise_storage_error(path: str | os.PathLike, error: BaseException) -> None:
    """Raises the [`StorageError`] of `path` if `error` is a failed write (see [`is_write_failure`]); else returns."""
    if isinstance(error, Exception) and is_write_failure(error) and not isinstance(error, StorageError):
        raise storage_error(path, error) from error


def write_text_file(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically: to `PATH.partial`, then renamed, so that a kill or a full disk
    never leaves half a file, and the previous `path` stays whole until the new one is complete. A failed write
    raises [`StorageError`] naming `path` and the free space."""
    path = Path(path)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as error:
        remove_file(partial)
        raise storage_error(path, error) from error
    return path


def read_json_file(path: str | os.PathLike):
    """The JSON value in `path` (UTF-8); a `ValueError` naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def remove_file(path: Path) -> None:
    """Deletes `path` if it exists; a file system that refuses (read-only: even a missing file's unlink fails) is
    left as it is, so that the caller reports its own write error."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def check_folder_writable(folder: str | os.PathLike) -> None:
    """Raises [`StorageError`] naming `folder`, the cause and the free space if no file can be created in it (a
    read-only file system, no permission): checked by creating and deleting an empty hidden file, before work whose
    result would then have nowhere to go."""
    probe = Path(folder) / f".write-test.{os.getpid()}"
    try:
        probe.touch()
    except OSError as error:
        raise storage_error(folder, error) from error
    remove_file(probe)


def append_bytes(file, data: bytes, path: str | os.PathLike) -> None:
    """Appends `data` to `file` (opened unbuffered, `open(path, "ab", buffering=0)`) whole or not at all: a write
    that fails half-way (a full disk) is cut back off the file, which keeps its earlier content whole, and raises
    [`StorageError`] naming `path` and the free space."""
    start = os.fstat(file.fileno()).st_size
    view = memoryview(data)
    try:
        while view:
            view = view[file.write(view) :]
    except OSError as error:
        os.ftruncate(file.fileno(), start)  # frees what was written: no space is needed
        raise storage_error(path, error) from error


def sync_folder(folder: Path) -> None:
    """Flushes the files under `folder` and the folder itself to the disk (a rename never exposes unwritten data)."""
    for path in [Path(root) / name for root, _, names in os.walk(folder) for name in names] + [Path(folder)]:
        sync_path(path)


def sync_path(path: Path) -> None:
    """Flushes one file or folder (its entries, not the files under it) to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def check_weights_file(path: str | os.PathLike) -> None:
    """Raises [`IncompleteFileError`] naming `path` if it is not a complete safetensors or `torch.save` file.

    A safetensors file must hold its header and every byte its header announces; a `torch.save` file (`.bin`,
    `.pt`, `.pth`, `.pkl` of Accelerate's `save_state`) must end with its zip index. No tensor is read.
    """
    path = Path(path)
    if not path.is_file():
        raise IncompleteFileError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise IncompleteFileError(f"{path}: empty file (0 bytes)")
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as error:
            raise IncompleteFileError(
                f"{path}: truncated or corrupt safetensors file ({size} bytes; {error})"
            ) from None
    elif path.suffix in (".bin", ".pt", ".pth", ".pkl"):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as error:
            raise IncompleteFileError(f"{path}: truncated or corrupt torch.save file ({size} bytes; {error})") from None


__all__ = [
    "IncompleteFileError",
    "StorageError",
    "append_bytes",
    "atomic_folder",
    "begin_folder",
    "commit_folder",
    "check_folder_writable",
    "check_weights_file",
    "free_space",
    "partial_path",
    "read_json_file",
    "storage_error",
    "write_text_file",
]
