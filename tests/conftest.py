"""Shared by the tests: a small but real SRN (a timm resnet10t backbone, narrow SRN branches), and a small real disk
to fill up."""

import subprocess

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


def save_with_processor(model: srn_hf.SRNForImageClassification, folder) -> str:
    """`save_pretrained` of the model and its image processor: a folder the pipelines load."""
    model.save_pretrained(folder)
    create_image_processor(model.config).save_pretrained(folder)
    return str(folder)
