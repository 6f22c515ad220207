"""Shared by the tests: a small but real SRN (a timm resnet10t backbone, narrow SRN branches), a small real disk to
fill up (`small_disk`), a runner that pauses a script inside a checkpoint save (`checkpoint_pause_runner`), and the
only fake of the suite, the Hub's network edge (`hub_calls`, `hub_unreachable`)."""

import subprocess
from pathlib import Path

import pytest


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


@pytest.fixture(scope="module")
def script():
    """examples/train_stages.py loaded as a module, once per test module (a test module may patch its functions)."""
    from helpers import load_script

    return load_script()
