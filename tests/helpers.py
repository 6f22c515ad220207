"""Helpers shared by the tests (plain functions and constants; the fixtures are in conftest.py): a small but real
SRN and its saved folder, image folders of coloured squares, the training script and its tiny recipe, a runner that
pauses a script inside a checkpoint save, and a Hub cache laid out as huggingface_hub stores a download."""

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import srn_hf
from srn_hf.hub import hub_folder_files
from srn_hf.processing import create_image_processor

REPOSITORY = Path(__file__).resolve().parents[1]


# Narrow SRN branches: every part is real, and a CPU runs it in milliseconds.
SMALL_BRANCHES = {"attention_channels": 16, "regularization_channels": 16, "regularization_out_channels": 32}


def small_srn(id2label: dict, seed: int = 0, **config_fields) -> srn_hf.SRNForImageClassification:
    """A random-init SRN (resnet10t unless `backbone=` says otherwise), seeded, in eval mode."""
    config = srn_hf.SRNConfig(**{"backbone": "resnet10t", **SMALL_BRANCHES, "id2label": id2label, **config_fields})
    torch.manual_seed(seed)
    return srn_hf.SRNForImageClassification(config).eval()


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


def save_with_weight_value(model: srn_hf.SRNForImageClassification, folder, tensor: str, value: float) -> str:
    """[`save_with_processor`] of `model` with every value of its weight `tensor` set to `value` (NaN, inf, or a
    finite value large enough to overflow the logits), as a diverged training run saves it."""
    with torch.no_grad():
        model.get_parameter(tensor).fill_(value)
    return save_with_processor(model, folder)


SCRIPT = REPOSITORY / "examples" / "train_stages.py"


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def kill_train_stages_when(args: list[str], ready: Callable[[], bool], moment: str) -> None:
    """Runs examples/train_stages.py with `args` in a process of its own and SIGKILLs it as soon as `ready()` holds
    (asked every 50 ms, for at most 5 minutes); fails, naming `moment`, if the run ended before."""
    command = [sys.executable, str(SCRIPT), *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            if ready():
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed {moment}"


def load_script():
    spec = importlib.util.spec_from_file_location("train_stages", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_image_folder(root: Path, sizes=(48, 16, 16), names=tuple(COLOURS), seed=0) -> Path:
    """train/validation/test folders of 64x64 images with coloured squares: the squares present are the labels."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "validation", "test"), sizes):
        folder = root / split
        folder.mkdir(parents=True)
        lines = []
        for index in range(count):
            pixels = np.full((64, 64, 3), 128, np.uint8) + rng.integers(0, 30, (64, 64, 3), dtype=np.uint8)
            labels = [name for name in names if rng.random() < 0.5] or [names[index % len(names)]]
            for name in labels:
                top, left = rng.integers(0, 44, 2)
                pixels[top : top + 20, left : left + 20] = COLOURS.get(name, (250, 250, 0))
            Image.fromarray(pixels).save(folder / f"{index}.png")
            lines.append(json.dumps({"file_name": f"{index}.png", "labels": labels}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def accelerate_launch(num_processes: int, *program: str) -> list[str]:
    """The command of `accelerate launch` on the CPU with `num_processes` processes (more than one: DDP over gloo),
    then `program`: a script and its arguments, or `-m MODULE ...`."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *(["--multi_gpu"] if num_processes > 1 else []),
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *program,
    ]


def tiny_args(data_dir: Path, output_dir: Path, *extra: str, epochs: int = 1) -> list[str]:
    """The demo recipe, brought down by `--set` overrides to a random-init resnet10t at 64 px in fp32."""
    settings = {
        "output_dir": output_dir,
        "model.backbone": "resnet10t",
        "model.pretrained_weights": "null",
        "model.image_size": 64,
        "model.attention_channels": 16,
        "model.regularization_channels": 16,
        "model.regularization_out_channels": 32,
        "data.kind": "imagefolder",
        "data.options": "{data_dir: " + str(data_dir) + "}",
        "data.augment": "multiscale",
        "training.mixed_precision": "no",
        "training.channels_last": "false",
        "training.log_with": "none",
        "training.eval_batch_size": 8,
        "training.checkpoints_total_limit": "null",
        "training.frozen_maps_mb": 0,  # stages 2 and 3 on images, and stage 1 without a search (tested on their own)
        "stage1.lr_search": "[]",
        "stage1.ema_decay": "null",  # stage 1 without a moving average (tested on its own)
    }
    for stage in (1, 2, 3, 4):
        settings.update({f"stage{stage}.epochs": epochs, f"stage{stage}.batch_size": 8, f"stage{stage}.lr": 1e-3})
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")] + list(extra)


def write_imagefolder(root, splits: dict) -> str:
    """An imagefolder dataset: one sub-folder per split with random images and their labels in metadata.jsonl."""
    rng = np.random.default_rng(0)
    for split, rows in splits.items():
        folder = root / split
        folder.mkdir(parents=True)
        with open(folder / "metadata.jsonl", "w") as metadata:
            for index, labels in enumerate(rows):
                name = f"{split}_{index}.png"
                Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / name)
                metadata.write(json.dumps({"file_name": name, "labels": labels}) + "\n")
    return str(root)


LABELS = ["person", "dog", "bicycle", "tree", "car"]


def small_model(seed: int = 0) -> srn_hf.SRNForImageClassification:
    """A random-init SRN over timm's resnet18 at 64x64, small heads: fast, and every part real."""
    return small_srn(dict(enumerate(LABELS)), seed, backbone="resnet18", image_size=64, label_thresholds={"dog": 0.7})


def random_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (48 + 7 * i, 80, 3), dtype=np.uint8)) for i in range(count)]


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def install_in_hub_cache(folder: Path, repo_id: str, cache: Path) -> Path:
    """Lays `folder` out in `cache` as huggingface_hub stores a download of `repo_id` at one commit.

    models--ORG--NAME/blobs/<etag> (sha256 for LFS files, the git blob sha1 otherwise),
    models--ORG--NAME/snapshots/<commit>/<file> -> relative symlink to the blob, refs/main holding <commit>.
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for name in hub_folder_files(folder):
        content = (folder / name).read_bytes()
        lfs = name.endswith((".safetensors", ".png"))
        blob = repo / "blobs" / (hashlib.sha256(content).hexdigest() if lfs else git_blob_sha1(content))
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
