"""Training checkpoints that survive kills, full disks and corruption: Accelerate's `save_state`, written atomically.

    OUTPUT_DIR/checkpoints/checkpoint_0/        model.safetensors, optimizer.bin, scheduler.bin, sampler.bin,
    OUTPUT_DIR/checkpoints/checkpoint_1/        random_states_<process>.pkl (Accelerate) and progress.json
    OUTPUT_DIR/checkpoints/.checkpoint_2.partial    a save in progress (or killed): never resumed from

[`save_checkpoint`] writes each checkpoint under a temporary name and renames it when every file in it is written
(`srn_hf.storage.atomic_folder`); only then are the checkpoints beyond `total_limit` deleted, oldest first. So a
kill at any moment of a save loses at most the work since the previous checkpoint. (Accelerate's own
`ProjectConfiguration(total_limit=...)` deletes the oldest checkpoint before it writes the new one: do not use it
together with these functions.)

[`find_resumable_checkpoint`] gives the newest checkpoint whose files are all complete (safetensors headers,
`torch.save` archives, a `progress.json` that parses), and why each newer one was skipped.

[`hold_output_dir`] keeps a second run out of an output folder while one runs in it: an exclusive lock on
`OUTPUT_DIR/.run.lock` (`flock`, through `filelock`), which the kernel releases when its process ends, killed or not.
A run that ends (finished, refused or failed) deletes the file; a killed one leaves it, unlocked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from safetensors.torch import save_file

from .storage import (
    PARTIAL_SUFFIX,
    IncompleteFileError,
    begin_folder,
    check_weights_file,
    commit_folder,
    partial_path,
    raise_storage_error,
    remove_folder,
)

CHECKPOINT_PREFIX = "checkpoint_"
LOCK_FILE = ".run.lock"
PROGRESS_FILE = "progress.json"


class CheckpointError(ValueError):
    """No checkpoint can be resumed from; the message names every checkpoint tried and why it was skipped."""


class OutputDirInUse(ValueError):
    """Another run holds the output folder's lock."""


@contextmanager
def hold_output_dir(output_dir: str | os.PathLike, holder: bool = True) -> Iterator[None]:
    """Holds `OUTPUT_DIR/.run.lock` exclusively while the block runs (`holder`: the process that takes it, the main
    one of a multi-process run), creating the folder; raises [`OutputDirInUse`] at once if another process holds it.

    The lock is a `flock` of an open file, so the kernel releases it when the process ends in any way (a SIGKILL
    too): a killed run never leaves a folder locked (its file stays, unlocked). When the block ends, in any way
    but a kill, the file is deleted while still locked (a run that opened it meanwhile finds it deleted and does not
    take it: filelock checks), then unlocked; and the folder, if this call created it and nothing was written in it
    (a run refused before writing anything), is removed too.
    """
    from filelock import FileLock, Timeout

    if not holder:
        yield
        return
    output_dir = Path(output_dir)
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise_storage_error(output_dir, error)
        raise
    lock_file = output_dir / LOCK_FILE
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OutputDirInUse(
            f"{output_dir} is in use by another training run (it holds {lock_file}): wait for it to end, "
            "or use another output_dir=..."
        ) from None
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            lock_file.unlink()
        lock.release()
        if created:
            with suppress(OSError):  # not empty (the run wrote something), or already gone
                output_dir.rmdir()


def checkpoint_number(folder: Path) -> int | None:
    """`7` for `checkpoint_7`, None for anything else (a partial save, another file)."""
    suffix = folder.name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if folder.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def list_checkpoints(checkpoints_dir: str | os.PathLike) -> list[Path]:
    """The complete (renamed) checkpoint folders of `checkpoints_dir`, oldest first."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    folders = [path for path in checkpoints_dir.iterdir() if path.is_dir() and checkpoint_number(path) is not None]
    return sorted(folders, key=checkpoint_number)


def save_checkpoint(
    accelerator,
    checkpoints_dir: str | os.PathLike,
    progress: dict,
    total_limit: int | None = None,
    weights: dict[str, dict] | None = None,
) -> Path:
    """`accelerator.save_state` plus `progress.json` into a new checkpoint folder, atomically; call on every process.
    `weights` (`{name: state dict}`, the main process's) adds weights Accelerate does not hold, each as
    `<name>.safetensors` (e.g. a model's moving average).

    The folder is `checkpoint_<n>` (n one more than the newest) and appears only once complete. Then the oldest
    checkpoints beyond `total_limit` (None: keep all) are deleted. A failed write raises
    `srn_hf.storage.StorageError` naming the path and the free space, and leaves the previous checkpoints intact.

    Returns:
        the path of the new checkpoint.
    """
    if accelerator.project_configuration.automatic_checkpoint_naming:
        raise ValueError(
            "save_checkpoint names the checkpoints itself: use ProjectConfiguration(automatic_checkpoint_naming=False)"
        )
    checkpoints_dir = Path(checkpoints_dir)
    existing = list_checkpoints(checkpoints_dir)
    folder = checkpoints_dir / f"{CHECKPOINT_PREFIX}{checkpoint_number(existing[-1]) + 1 if existing else 0}"
    partial = begin_folder(folder) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    partial = partial_path(folder)
    try:
        accelerator.save_state(str(partial))
        if accelerator.is_main_process:
            (partial / PROGRESS_FILE).write_text(json.dumps(progress, indent=2, default=float))
            for name, state in (weights or {}).items():
                save_file({key: value.contiguous() for key, value in state.items()}, partial / f"{name}.safetensors")
    except BaseException as error:
        remove_folder(partial)
        raise_storage_error(folder, error)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        commit_folder(partial, folder)
        for old in list_checkpoints(checkpoints_dir)[: -total_limit if total_limit else 0]:
            remove_folder(old)
    accelerator.wait_for_everyone()
    return folder


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from (a missing, truncated or unparsable file, named), or None if it can."""
    progress_file = folder / PROGRESS_FILE
    try:
        progress = json.loads(progress_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{progress_file} is missing"
    except (OSError, ValueError) as error:
        return f"{progress_file} is unreadable or not valid JSON ({error})"
    missing = [key for key in ("stage", "epoch", "step") if not isinstance(progress, dict) or key not in progress]
    if missing:
        return f"{progress_file} lacks {', '.join(missing)}"
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.name != PROGRESS_FILE)
    if not any(path.suffix == ".safetensors" or path.name.startswith("pytorch_model") for path in files):
        return f"{folder} holds no model weights"
    for path in files:
        try:
            check_weights_file(path)
        except IncompleteFileError as error:
            return str(error)
    return None


def find_resumable_checkpoint(checkpoints_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint of `checkpoints_dir` that can be resumed from, and the newer ones skipped.

    Returns:
        `(checkpoint or None, [(skipped folder, reason), ...])`, the skipped ones newest first; an unfinished save
        (a `.checkpoint_<n>.partial` folder left by a kill) is among them.
    """
    checkpoints_dir = Path(checkpoints_dir)
    skipped = []
    if checkpoints_dir.is_dir():
        skipped = [
            (path, "an unfinished save (the run stopped while writing it)")
            for path in sorted(checkpoints_dir.glob(f".{CHECKPOINT_PREFIX}*{PARTIAL_SUFFIX}"))
        ]
    for folder in reversed(list_checkpoints(checkpoints_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append((folder, problem))
    return None, skipped


def choose_checkpoint(
    checkpoints_dir: str | os.PathLike, resume: str = "latest"
) -> tuple[Path | None, dict | None, str]:
    """The checkpoint `--resume` continues from, its `progress.json`, and what to tell the user.

    `resume="latest"`: the newest checkpoint of `checkpoints_dir` that loads ([`find_resumable_checkpoint`]); the
    message names each newer one skipped and why. None when the folder holds no checkpoint at all (the message says
    the run starts afresh). Raises [`CheckpointError`] when there are checkpoints but none loads, or when the named
    checkpoint `resume` does not.
    """
    if resume != "latest":
        folder = Path(resume)
        problem = checkpoint_problem(folder) if folder.is_dir() else f"{folder} is not a folder"
        if problem:
            raise CheckpointError(f"resume={folder}: cannot resume from it: {problem}")
        return folder, json.loads((folder / PROGRESS_FILE).read_text(encoding="utf-8")), f"resuming from {folder}"
    checkpoint, skipped = find_resumable_checkpoint(checkpoints_dir)
    if checkpoint is None and skipped:
        raise CheckpointError(
            f"no checkpoint under {checkpoints_dir} can be resumed from: "
            + "; ".join(f"{folder.name}: {reason}" for folder, reason in skipped)
            + ". Pass overwrite=True to start afresh"
        )
    if checkpoint is None:
        return None, None, f"no checkpoint under {checkpoints_dir}: starting afresh"
    message = "\n".join([*(f"skipped {folder}: {reason}" for folder, reason in skipped), f"resuming from {checkpoint}"])
    return checkpoint, json.loads((checkpoint / PROGRESS_FILE).read_text(encoding="utf-8")), message


__all__ = [
    "CheckpointError",
    "OutputDirInUse",
    "hold_output_dir",
    "choose_checkpoint",
    "find_resumable_checkpoint",
    "list_checkpoints",
    "save_checkpoint",
]
