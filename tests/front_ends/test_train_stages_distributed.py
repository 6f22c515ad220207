"""Two-process CPU runs (Accelerate's debug_launcher, real DDP over gloo) of the staged training and evaluation."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from helpers import load_script, make_image_folder, small_srn, tiny_args
from torch.utils.data import DataLoader

from srn_hf.data import (
    collate_multilabel,
    load_multilabel_dataset,
    with_multilabel_transforms,
)
from srn_hf.processing import create_image_processor
from srn_hf.scoring import predict_scores
from srn_hf.stages import StageForward

pytestmark = pytest.mark.multiprocess


def train_two_stages(data_dir, output_dir):
    """Each rank runs stages 1 and 2 as the shipped recipes do (stage 1 with a rate search and a model EMA, stage 2
    on frozen backbone maps); the models exported after each stage are compared across ranks."""
    script = load_script()
    exported = {}
    original_export = script.export

    def recording_export(accelerator, model, folder, *rest):
        exported[folder.name] = {key: value.detach().clone() for key, value in model.state_dict().items()}
        original_export(accelerator, model, folder, *rest)

    script.export = recording_export
    shipped = {"stage1.lr_search": "[1e-3, 3e-3]", "stage1.ema_decay": 0.9, "training.frozen_maps_mb": 64}
    script.main(tiny_args(data_dir, output_dir, "--stages", "1,2", *(f"--set={k}={v}" for k, v in shipped.items())))

    accelerator = Accelerator()
    assert accelerator.num_processes == 2
    for folder, state in exported.items():
        checksums = torch.stack([value.double().sum() for value in state.values()]).unsqueeze(0)
        gathered = accelerator.gather(checksums)
        assert torch.equal(gathered[0], gathered[1]), f"{folder}: the ranks hold different weights"
    # Stage 2 froze the backbone and f_cls: on every rank they are still stage 1's.
    for key, value in exported["stage-2"].items():
        if key.startswith(("srn.backbone.", "srn.classifier.")):
            assert torch.equal(value, exported["stage-1"][key]), f"frozen {key} changed in stage 2"


def score_validation(data_dir):
    """Evaluation over 2 ranks of a split whose size does not divide into full batches: every image once."""
    accelerator = Accelerator()
    dataset = load_multilabel_dataset("imagefolder", data_dir=str(data_dir))
    names = dataset["train"].features["labels"].feature.names
    model = small_srn(dict(enumerate(names)), image_size=64)
    dataset = with_multilabel_transforms(dataset, image_processor=create_image_processor(model.config))
    validation = dataset["validation"]
    loader = DataLoader(validation, batch_size=4, collate_fn=collate_multilabel)
    stage_model, sharded = accelerator.prepare(StageForward(model, 4), loader)
    scores, labels = predict_scores(accelerator, stage_model, sharded, ("logits", "cls_logits"))

    expected_labels = torch.stack([row["labels"] for row in validation])
    assert labels.shape == expected_labels.shape == (13, len(names))
    assert torch.equal(labels, expected_labels)  # each image exactly once, in dataset order
    single = StageForward(model, 4).eval()
    with torch.no_grad():
        expected = torch.sigmoid(single(collate_multilabel(list(validation))["pixel_values"]).logits)
    assert torch.allclose(scores["logits"], expected, atol=1e-5)


def launch_two_processes(function, *args: str) -> None:
    """`debug_launcher(function, args, num_processes=2)`, started from a fresh Python process.

    debug_launcher forks its workers; forking the test process after earlier tests have started torch's OpenMP
    thread pool deadlocks the children, so the launch happens in an interpreter that has run no torch op yet.
    """
    code = (
        "from accelerate import debug_launcher\n"
        f"from test_train_stages_distributed import {function.__name__}\n"
        f"debug_launcher({function.__name__}, args={args!r}, num_processes=2)\n"
    )
    tests = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])  # helpers.py
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": tests},
    )
    assert result.returncode == 0, result.stderr[-5000:]


def test_two_process_stages_keep_ranks_identical(tmp_path):
    data_dir = make_image_folder(tmp_path / "data", sizes=(24, 13, 8))
    launch_two_processes(train_two_stages, str(data_dir), str(tmp_path / "run"))
    assert (tmp_path / "run" / "stage-2" / "model.safetensors").exists()


def test_two_process_evaluation_gathers_every_sample_once(tmp_path):
    data_dir = make_image_folder(tmp_path / "data", sizes=(8, 13, 8))
    launch_two_processes(score_validation, str(data_dir))
