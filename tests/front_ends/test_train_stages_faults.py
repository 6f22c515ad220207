"""examples/train_stages.py under faults: bad images before and during training, a SIGKILL inside a checkpoint save
with `checkpoints_total_limit: 1`, truncated and broken checkpoints on --resume, bad recipes refused before anything
runs, no lock left by a refused run, a diverged stage. Stage 1 only, tiny data."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import SCRIPT, checkpoint_pause_runner, make_image_folder, tiny_args
from safetensors.torch import load_file

from srn_hf.data import load_multilabel_dataset
from srn_hf.data.transforms import collate_multilabel, with_multilabel_transforms
from srn_hf.data.verify import BadImagesError
from srn_hf.images import ImageError
from srn_hf.recipe import RecipeError
from srn_hf.storage import partial_path
from srn_hf.training import TrainingDiverged

TWO_EPOCHS = ("--stages", "1")


def stage1_args(data_dir, output_dir, *extra):
    """Two epochs of stage 1, its backbone at half of lr (both rates named when it diverges)."""
    return tiny_args(data_dir, output_dir, *TWO_EPOCHS, "--set", "stage1.backbone_lr=5e-4", *extra, epochs=2)


def same_weights(folder_a, folder_b) -> bool:
    a, b = load_file(folder_a / "model.safetensors"), load_file(folder_b / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("squares"), sizes=(24, 8, 8))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, script):
    """An unbroken run of stage 1, two epochs, every checkpoint kept (checkpoint_0 and checkpoint_1)."""
    output_dir = tmp_path_factory.mktemp("reference")
    script.main(stage1_args(data_dir, output_dir))
    return output_dir


def test_bad_images_stop_the_run_before_training_or_are_skipped(tmp_path, script, capsys):
    data_dir = make_image_folder(tmp_path / "data", sizes=(16, 8, 8))
    truncated = data_dir / "train" / "3.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (data_dir / "test" / "2.png").write_bytes(b"")
    with pytest.raises(
        BadImagesError,
        match=(
            r"^2 image\(s\) cannot be decoded \(all listed in .*bad_images.tsv\): "
            r".*train/3.png: truncated.*test/2.png: empty file"
        ),
    ):
        script.main(tiny_args(data_dir, tmp_path / "stopped", "--stages", "1"))
    assert not (tmp_path / "stopped" / "checkpoints").exists()  # before any step
    assert len((tmp_path / "stopped" / "bad_images.tsv").read_text().splitlines()) == 2

    report = script.main(tiny_args(data_dir, tmp_path / "skipped", "--stages", "1", "--set", "data.bad_images=skip"))
    assert "skipped 2 image(s) that cannot be decoded" in capsys.readouterr().out
    check = json.loads((tmp_path / "skipped" / "metrics.json").read_text())["dataset"]["image_check"]
    assert check == report["dataset"]["image_check"]
    assert check["skipped"] == 2 and check["bad"] == {"train": 1, "validation": 0, "test": 1}
    assert report["dataset"]["splits"] == {"train": 15, "validation": 8, "test": 7}


def test_an_image_that_turns_bad_during_training_names_its_file(tmp_path):
    data_dir = make_image_folder(tmp_path / "data", sizes=(4, 2, 2))
    dataset = with_multilabel_transforms(load_multilabel_dataset("imagefolder", data_dir=data_dir), image_size=32)
    victim = data_dir / "train" / "2.png"
    victim.write_bytes(victim.read_bytes()[:150])  # after the check, before its batch
    loader = torch.utils.data.DataLoader(dataset["train"], batch_size=2, num_workers=1, collate_fn=collate_multilabel)
    with pytest.raises(ImageError, match=rf"^{victim}: truncated or corrupt"):
        list(loader)  # raised in a worker process, re-raised here with the file's name


def test_kill_inside_a_save_with_total_limit_1_resumes_from_the_previous_checkpoint(
    data_dir, reference, tmp_path, script, capsys
):
    output_dir = tmp_path / "killed"
    args = stage1_args(data_dir, output_dir, "--set", "training.checkpoints_total_limit=1")
    runner = checkpoint_pause_runner(tmp_path, "checkpoint_1", "written", 120)
    process = subprocess.Popen(
        [sys.executable, str(runner), str(SCRIPT), *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    written = partial_path(output_dir / "checkpoints" / "checkpoint_1") / "progress.json"
    deadline = time.monotonic() + 300
    try:
        while not written.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # checkpoint_1 fully written, not yet renamed; checkpoint_0 not deleted
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL and written.exists()
    assert sorted(path.name for path in (output_dir / "checkpoints").iterdir()) == [
        ".checkpoint_1.partial",
        "checkpoint_0",
    ]

    script.main(args + ["--resume"])
    out = capsys.readouterr().out
    assert f"skipped {partial_path(output_dir / 'checkpoints' / 'checkpoint_1')}: an unfinished save" in out
    assert f"resuming from {output_dir / 'checkpoints' / 'checkpoint_0'}" in out
    assert same_weights(output_dir / "final", reference / "final")  # only the second epoch was redone
    assert sorted(path.name for path in (output_dir / "checkpoints").iterdir()) == ["checkpoint_1"]


def test_resume_skips_a_truncated_newest_checkpoint(reference, data_dir, tmp_path, script, capsys):
    output_dir = tmp_path / "truncated"
    shutil.copytree(reference, output_dir)
    weights = output_dir / "checkpoints" / "checkpoint_1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    script.main(stage1_args(data_dir, output_dir, "--resume"))
    out = capsys.readouterr().out
    assert f"skipped {weights.parent}: {weights}: truncated or corrupt safetensors file (4096 bytes" in out
    assert f"resuming from {output_dir / 'checkpoints' / 'checkpoint_0'}" in out
    assert same_weights(output_dir / "final", reference / "final")


def test_resume_refuses_when_no_checkpoint_loads(reference, data_dir, tmp_path):
    output_dir = tmp_path / "broken"
    shutil.copytree(reference, output_dir)
    (output_dir / "checkpoints" / "checkpoint_1" / "progress.json").write_text("{")
    optimizer = output_dir / "checkpoints" / "checkpoint_0" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *stage1_args(data_dir, output_dir, "--resume")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: no checkpoint under {output_dir / 'checkpoints'} can be resumed from: checkpoint_1: "
    )
    assert f"checkpoint_0: {optimizer}: truncated or corrupt torch.save file (1000 bytes" in last
    assert last.endswith("Pass --overwrite to start afresh")


def run_script(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_bad_recipes_are_refused_in_one_line_before_anything_runs(data_dir, tmp_path, script):
    """Checked when the recipe is read: nothing is loaded, trained or written, and the user reads one line."""
    command_lines = {
        "stage1.batch_size: 0 is out of range: must be >= 1": "stage1.batch_size=0",
        "model.backbone='resnet1O1' is not a timm model name; close names: resnet101": "model.backbone=resnet1O1",
    }
    processes = {  # side by side: each is mostly imports
        message: run_script(*tiny_args(data_dir, tmp_path / "run", "--set", setting))
        for message, setting in command_lines.items()
    }
    for message, process in processes.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 2, stderr[-2000:]
        assert stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr, stderr[-2000:]

    python_object = tmp_path / "python_object.yaml"
    python_object.write_text(f"output_dir: {tmp_path / 'run'}\nstage1:\n  lr: !!python/object/apply:os.getcwd []\n")
    in_process = {
        "stage2.epochs: -1 is out of range: must be >= 0": tiny_args(
            data_dir, tmp_path / "run", "--set", "stage2.epochs=-1"
        ),
        "model.pretrained_weights=packaged-lite0 holds tf_efficientnet_lite0's ImageNet weights, not resnet18's": [
            *tiny_args(data_dir, tmp_path / "run", "--set", "model.backbone=resnet18"),
            *("--set", "model.pretrained_weights=packaged-lite0"),
        ],
        f"{python_object}, line 3: the YAML tag !!python/object/apply:os.getcwd is refused": [
            "--config",
            str(python_object),
        ],
    }
    for message, args in in_process.items():
        with pytest.raises(RecipeError, match=re.escape(message)):
            script.main(args)
    assert not (tmp_path / "run").exists()


def test_a_refused_run_leaves_no_lock_behind(data_dir, tmp_path, script):
    """A run refused once it holds OUTPUT_DIR: the lock file goes, and a folder it made for nothing goes too."""
    fresh = tmp_path / "fresh"
    with pytest.raises(RecipeError, match="--stages '0'"):
        script.main(tiny_args(data_dir, fresh, "--stages", "0"))
    assert not fresh.exists()

    busy = tmp_path / "busy"
    (busy / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match="already holds a run: pass --resume to continue it or --overwrite"):
        script.main(tiny_args(data_dir, busy, "--stages", "1"))
    assert not (busy / ".run.lock").exists() and (busy / "checkpoints").is_dir()


DIVERGED = (
    r"^stage 1, (epoch \d, batch \d+: the loss is (nan|inf)|the model's scores are NaN) at stage1.lr=1e\+30, "
    r"stage1.backbone_lr=0.0005\. Training stopped; "
)


def test_a_diverged_stage_names_its_learning_rates_and_what_to_change(data_dir, reference, tmp_path, script):
    """No checkpoint yet: the message says which rate to lower and to run again, not to resume (which would start
    afresh at the same rates); with one, to resume from it with a lower rate."""
    output_dir = tmp_path / "first-epoch"
    with pytest.raises(TrainingDiverged) as diverged:
        script.main(stage1_args(data_dir, output_dir, "--set", "stage1.lr=1e30"))
    assert re.match(
        DIVERGED + "no checkpoint to resume from: lower stage1.lr or stage1.backbone_lr and run again$",
        str(diverged.value),
    )
    assert "--resume" not in str(diverged.value)

    output_dir = tmp_path / "second-epoch"
    shutil.copytree(reference, output_dir)
    shutil.rmtree(output_dir / "checkpoints" / "checkpoint_1")
    with pytest.raises(TrainingDiverged) as diverged:
        script.main(stage1_args(data_dir, output_dir, "--resume", "--set", "stage1.lr=1e30"))
    checkpoint = re.escape(str(output_dir / "checkpoints" / "checkpoint_0"))
    assert re.match(
        DIVERGED + f"last good checkpoint: {checkpoint}: lower stage1.lr or stage1.backbone_lr, then --resume$",
        str(diverged.value),
    )
