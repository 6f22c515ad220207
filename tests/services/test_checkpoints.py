"""Checkpoints and exports under faults: real SIGKILLs inside a save, real truncated files, a real full disk."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from helpers import checkpoint_pause_runner, small_srn

from srn_hf.checkpoints import (
    CheckpointError,
    choose_checkpoint,
    find_resumable_checkpoint,
    list_checkpoints,
    save_checkpoint,
)
from srn_hf.model_folder import ModelFolderError, check_model_folder
from srn_hf.storage import StorageError, atomic_folder, partial_path

ROOT = Path(__file__).resolve().parents[2]

# A run that trains a linear layer and saves a checkpoint (total_limit 1) after each of 3 steps.
TRAINER = """
import sys, torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from srn_hf.checkpoints import save_checkpoint
accelerator = Accelerator(project_config=ProjectConfiguration(project_dir=sys.argv[1]))
torch.manual_seed(0)
model = torch.nn.Linear(64, 64)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
model, optimizer = accelerator.prepare(model, optimizer)
for step in range(3):
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    save_checkpoint(
        accelerator, sys.argv[1] + "/checkpoints", {"stage": 1, "epoch": 0, "step": step + 1}, total_limit=1
    )
"""


def linear_accelerator(project_dir, size=64):
    accelerator = Accelerator(project_config=ProjectConfiguration(project_dir=str(project_dir)))
    model = torch.nn.Linear(size, size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(2, size)).sum().backward()
    optimizer.step()  # momentum buffers: the optimizer state has tensors
    return accelerator


def wait_for(condition, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the save window was never reached"
        time.sleep(0.02)


def kill_inside_save(tmp_path, moment, condition):
    """Runs TRAINER with a pause at `moment` of the save of checkpoint_1 and SIGKILLs it once `condition` holds."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    trainer = tmp_path / "trainer.py"
    trainer.write_text(TRAINER)
    runner = checkpoint_pause_runner(tmp_path, "checkpoint_1", moment, 60)
    process = subprocess.Popen(
        [sys.executable, str(runner), str(trainer), str(tmp_path)], env=environment, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: condition(tmp_path / "checkpoints"), process)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return tmp_path / "checkpoints"


def test_kill_while_the_new_checkpoint_is_written_keeps_the_previous_one(tmp_path):
    # checkpoint_0 complete; checkpoint_1 written under its temporary name, not yet renamed: kill.
    checkpoints = kill_inside_save(
        tmp_path, "written", lambda folder: (partial_path(folder / "checkpoint_1") / "progress.json").exists()
    )
    checkpoint, skipped = find_resumable_checkpoint(checkpoints)
    assert checkpoint == checkpoints / "checkpoint_0"
    assert json.loads((checkpoint / "progress.json").read_text())["step"] == 1
    assert skipped == [
        (partial_path(checkpoints / "checkpoint_1"), "an unfinished save (the run stopped while writing it)")
    ]


def test_kill_after_the_rename_keeps_both_until_the_old_one_is_deleted(tmp_path):
    # total_limit 1: the old checkpoint is deleted only once the new one is complete; kill in between.
    checkpoints = kill_inside_save(tmp_path, "renamed", lambda folder: (folder / "checkpoint_1").is_dir())
    assert [path.name for path in list_checkpoints(checkpoints)] == ["checkpoint_0", "checkpoint_1"]
    checkpoint, skipped = find_resumable_checkpoint(checkpoints)
    assert checkpoint == checkpoints / "checkpoint_1" and skipped == []


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_resume_falls_back_past_truncated_and_broken_checkpoints(tmp_path):
    accelerator = linear_accelerator(tmp_path)
    for step in range(4):
        save_checkpoint(accelerator, tmp_path / "checkpoints", {"stage": 1, "epoch": 0, "step": step}, total_limit=None)
    checkpoints = tmp_path / "checkpoints"
    truncate(checkpoints / "checkpoint_3" / "model.safetensors")
    truncate(checkpoints / "checkpoint_2" / "optimizer.bin")
    (checkpoints / "checkpoint_1" / "progress.json").write_text('{"stage": 1, "epo')
    checkpoint, skipped = find_resumable_checkpoint(checkpoints)
    assert checkpoint == checkpoints / "checkpoint_0"
    reasons = {folder.name: reason for folder, reason in skipped}
    assert list(reasons) == ["checkpoint_3", "checkpoint_2", "checkpoint_1"]
    assert "checkpoint_3/model.safetensors: truncated or corrupt safetensors file" in reasons["checkpoint_3"]
    assert "checkpoint_2/optimizer.bin: truncated or corrupt torch.save file" in reasons["checkpoint_2"]
    assert "checkpoint_1/progress.json is unreadable or not valid JSON" in reasons["checkpoint_1"]
    accelerator.load_state(str(checkpoint))  # the one chosen really loads
    chosen, progress, message = choose_checkpoint(checkpoints)
    assert chosen == checkpoint and progress["step"] == 0
    assert message.splitlines()[0].startswith(f"skipped {checkpoints / 'checkpoint_3'}: ")
    assert message.splitlines()[-1] == f"resuming from {checkpoint}"
    with pytest.raises(
        CheckpointError, match=r"^resume=.*checkpoint_2: cannot resume from it: .*optimizer.bin: truncated"
    ):
        choose_checkpoint(checkpoints, str(checkpoints / "checkpoint_2"))

    (checkpoints / "checkpoint_0" / "model.safetensors").write_bytes(b"")
    assert find_resumable_checkpoint(checkpoints)[0] is None
    with pytest.raises(
        CheckpointError,
        match=(
            r"no checkpoint under .* can be resumed from: checkpoint_3: .*checkpoint_0: "
            r".*model.safetensors: empty file"
        ),
    ):
        choose_checkpoint(checkpoints)  # never a silent fresh start
    assert choose_checkpoint(tmp_path / "elsewhere")[0] is None


def test_rotation_keeps_the_newest_and_deletes_only_after_the_save(tmp_path):
    accelerator = linear_accelerator(tmp_path)
    for step in range(3):
        save_checkpoint(accelerator, tmp_path / "checkpoints", {"stage": 1, "epoch": step, "step": 0}, total_limit=2)
    assert [path.name for path in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint_1", "checkpoint_2"]
    assert not any(path.name.endswith(".partial") for path in (tmp_path / "checkpoints").iterdir())


def test_disk_full_during_a_checkpoint_names_the_path_and_the_free_space(small_disk):
    # One checkpoint of a 400 x 400 layer (1.3 MB with its momentum) fits on the 2 MB disk, two do not.
    accelerator = linear_accelerator(small_disk, size=400)
    first = save_checkpoint(accelerator, small_disk / "checkpoints", {"stage": 1, "epoch": 0, "step": 1}, total_limit=1)
    with pytest.raises(
        StorageError, match=r"^cannot write .*checkpoint_1: no space left on the device \(.* free of 2\.1 MB\)"
    ):
        save_checkpoint(accelerator, small_disk / "checkpoints", {"stage": 1, "epoch": 0, "step": 2}, total_limit=1)
    assert find_resumable_checkpoint(small_disk / "checkpoints") == (first, [])  # intact, and no partial left


def test_failed_export_leaves_no_half_folder(small_disk, tmp_path):
    model = small_srn({0: "cat", 1: "dog"})  # about 20 MB of weights: more than the disk
    with pytest.raises(
        StorageError, match=r"^cannot write .*final: no space left on the device \(.* free of 2\.1 MB\)"
    ):
        with atomic_folder(small_disk / "final") as folder:
            model.save_pretrained(folder)
    assert list(small_disk.iterdir()) == []
    with pytest.raises(ModelFolderError, match="does not exist"):
        check_model_folder(small_disk / "final")

    # An error in the middle of an export (not the disk): the previous export stays, whole.
    with atomic_folder(tmp_path / "stage-1") as folder:
        model.save_pretrained(folder)
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(tmp_path / "stage-1") as folder:
            (folder / "config.json").write_text("{")
            raise KeyboardInterrupt
    assert check_model_folder(tmp_path / "stage-1").num_labels == 2
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []


def test_write_refused_by_the_file_system_names_the_path_and_the_free_space(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: a read-only file system refuses it
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)]).returncode:
            pytest.skip("cannot mount a read-only tmpfs")
        cause = "read-only file system"
    else:
        locked.chmod(0o555)
        cause = "permission denied"
    try:
        with pytest.raises(StorageError, match=rf"^cannot write {locked / 'final'}: {cause} \(.* free of .*\)"):
            with atomic_folder(locked / "final") as folder:
                (folder / "config.json").write_text("{}")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], check=True)


def test_a_file_rewritten_on_a_full_disk_stays_whole(small_disk):
    """`write_text_file` (metrics.json, calibrate --write's config.json, a bulk run's meta file): a real full disk
    names the file and leaves the previous content whole, with no partial file."""
    from srn_hf.storage import write_text_file

    config = write_text_file(small_disk / "config.json", json.dumps({"threshold": 0.5}))
    (small_disk / "ballast").write_bytes(b"\0" * (os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize))
    with pytest.raises(StorageError, match=r"^cannot write .*config.json: no space left on the device \(0 bytes free"):
        write_text_file(config, json.dumps({"threshold": 0.3, "label_thresholds": {"cat": 0.2}}) * 1000)
    assert json.loads(config.read_text()) == {"threshold": 0.5}
    assert sorted(path.name for path in small_disk.iterdir()) == ["ballast", "config.json"]
