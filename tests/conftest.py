"""Shared by the tests: a small but real SRN (a timm resnet10t backbone, narrow SRN branches), a small real disk to
fill up (`small_disk`), a runner that pauses a script inside a checkpoint save (`checkpoint_pause_runner`), and the
only fake of the suite, the Hub's network edge (`hub_calls`, `hub_unreachable`)."""

import subprocess
from pathlib import Path

import pytest
import torch

import srn_hf
from srn_hf.processing import create_image_processor

# Narrow SRN branches: every part is real, and a CPU runs it in milliseconds.
SMALL_BRANCHES = {"attention_channels": 16, "regularization_channels": 16, "regularization_out_channels": 32}


def small_srn(id2label: dict, seed: int = 0, **config_fields) -> srn_hf.SRNForImageClassification:
    """A random-init SRN (resnet10t unless `backbone=` says otherwise), seeded, in eval mode."""
    config = srn_hf.SRNConfig(**{"backbone": "resnet10t", **SMALL_BRANCHES, "id2label": id2label, **config_fields})
    torch.manual_seed(seed)
    return srn_hf.SRNForImageClassification(config).eval()


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB file system (tmpfs) to fill up, or a skip when this user may not mount one."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


# The runner of `checkpoint_pause_runner`: `python RUNNER SCRIPT ARGS...` runs SCRIPT as `python SCRIPT ARGS...` does,
# with the rename that completes a checkpoint save (`srn_hf.checkpoints.commit_folder`) pausing around CHECKPOINT.
PAUSING_RUNNER = """
import runpy, sys, time
from srn_hf import checkpoints
CHECKPOINT, MOMENT, SECONDS = {checkpoint!r}, {moment!r}, {seconds!r}
rename = checkpoints.commit_folder
def commit_folder(partial, folder):
    if folder.name == CHECKPOINT and MOMENT == "written":
        time.sleep(SECONDS)
    rename(partial, folder)
    if folder.name == CHECKPOINT and MOMENT == "renamed":
        time.sleep(SECONDS)
checkpoints.commit_folder = commit_folder
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def checkpoint_pause_runner(folder: Path, checkpoint: str, moment: str, seconds: float) -> Path:
    """Writes into `folder` a script that runs another (`python RUNNER SCRIPT ARGS...`) with a pause of `seconds` in
    the save of `checkpoint`, so that a test can SIGKILL the run at that moment: `moment` "written" (every file of
    the checkpoint written under its temporary name, not yet renamed) or "renamed" (renamed, the older checkpoints
    not yet deleted). The library holds no hook for it: the runner replaces the rename in the run's process."""
    runner = Path(folder) / "pausing_runner" / "run.py"
    runner.parent.mkdir(parents=True, exist_ok=True)
    runner.write_text(PAUSING_RUNNER.format(checkpoint=checkpoint, moment=moment, seconds=seconds))
    return runner


def save_with_processor(model: srn_hf.SRNForImageClassification, folder) -> str:
    """`save_pretrained` of the model and its image processor: a folder the pipelines load."""
    model.save_pretrained(folder)
    create_image_processor(model.config).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def hub_calls(monkeypatch) -> list[tuple]:
    """The Hub's network edge, faked: `HfApi.create_repo` and `HfApi.create_commit` record their calls in the returned
    list instead of reaching the Hub; everything above them runs for real.

    Each call is `("create_repo", repo_id, kwargs, token)` or `("create_commit", repo_id, kwargs, uploaded)`, with
    `uploaded` the bytes of each uploaded file by its path in the repository.
    """
    from huggingface_hub import HfApi, RepoUrl

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs, self.token))
        return RepoUrl(f"https://huggingface.co/{repo_id}")  # a str with .repo_id, as the real call returns

    def create_commit(self, repo_id, operations, **kwargs):
        uploaded = {operation.path_in_repo: Path(operation.path_or_fileobj).read_bytes() for operation in operations}
        calls.append(("create_commit", repo_id, kwargs, uploaded))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0123abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


@pytest.fixture
def hub_unreachable(monkeypatch) -> None:
    """The Hub's network edge refuses every call: a test that must push nothing fails if `HfApi.create_repo` or
    `HfApi.create_commit` is called."""
    from huggingface_hub import HfApi

    def refuse(*args, **kwargs):
        raise AssertionError("nothing may reach the Hub")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    monkeypatch.setattr(HfApi, "create_commit", refuse)
