"""examples/train_stages.py under the faults of the second sweep: what --resume may change in the recipe (applied, the
optimizer and scheduler rebuilt) and what it refuses, two runs on one output folder at once (real processes, a real
SIGKILL), a last training batch of one image. Stage 1 only, tiny data, but for the batch of one (stage 3)."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import SCRIPT, checkpoint_pause_runner, make_image_folder, tiny_args

from srn_hf.hub import recipe_context, render_model_card
from srn_hf.model_folder import load_image_processor, load_model
from srn_hf.recipe import RecipeError, resume_changes
from srn_hf.storage import partial_path

ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1"}


def stage1_args(data_dir, output_dir, *extra, epochs=2):
    """Stage 1 at lr 1e-3, its backbone at 5e-4 (two optimizer rates to follow through a resume)."""
    return tiny_args(data_dir, output_dir, "--stages", "1", "--set", "stage1.backbone_lr=5e-4", *extra, epochs=epochs)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("squares"), sizes=(24, 8, 8))  # 3 batches of 8 an epoch


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, script):
    """Stage 1, two epochs, lr 1e-3 (backbone 5e-4), cosine; checkpoint_0 and checkpoint_1 kept."""
    output_dir = tmp_path_factory.mktemp("reference")
    script.main(stage1_args(data_dir, output_dir))
    return output_dir


def optimizer_groups(checkpoint) -> list[dict]:
    return torch.load(checkpoint / "optimizer.bin", weights_only=True)["param_groups"]


def test_resume_applies_changed_learning_rates_and_epochs_and_records_them(
    reference, data_dir, tmp_path, script, capsys
):
    output_dir = tmp_path / "changed"
    shutil.copytree(reference, output_dir)
    checkpoint_0 = output_dir / "checkpoints" / "checkpoint_0"  # after epoch 1: 3 of the 6 optimizer steps
    report = script.main(
        stage1_args(
            data_dir,
            output_dir,
            "--resume",
            str(checkpoint_0),
            "--set",
            "stage1.lr=0.5",
            "--set",
            "stage1.backbone_lr=0.25",
            "--set",
            "stage1.epochs=3",
        )
    )
    assert (
        "changed on --resume, applied from here: stage1.backbone_lr 0.0005 -> 0.25, stage1.epochs 2 -> 3"
        in capsys.readouterr().out
    )

    # The optimizer trains at the new rates, on the schedule rebuilt for 3 epochs (9 steps): after epoch 2, step 6 of
    # the cosine, each group's lr is its new rate times 0.5 (1 + cos(pi 6 / 9)).
    groups = optimizer_groups(output_dir / "checkpoints" / "checkpoint_2")
    assert sorted({group["initial_lr"] for group in groups}) == [0.25, 0.5]
    for group in groups:
        assert group["lr"] == pytest.approx(group["initial_lr"] * 0.5 * (1 + math.cos(math.pi * 6 / 9)))
    scheduler = torch.load(output_dir / "checkpoints" / "checkpoint_2" / "scheduler.bin", weights_only=True)
    assert scheduler["last_epoch"] == 6 and sorted(set(scheduler["base_lrs"])) == [0.25, 0.5]

    # metrics.json and the card say what trained: the values the run ended with, and where they changed.
    saved = json.loads((output_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["recipe"]["stage1"]["lr"] == 0.5 and len(saved["stages"][0]["history"]) == 3
    assert saved["recipe_changes"] == [
        {
            "checkpoint": "checkpoint_0",
            "stage": 1,
            "epoch": 1,
            "step": 0,
            "changes": {"stage1.backbone_lr": [0.0005, 0.25], "stage1.epochs": [2, 3], "stage1.lr": [0.001, 0.5]},
        }
    ]
    assert recipe_context(saved)["recipe_changes"] == saved["recipe_changes"]
    model = load_model(output_dir / "final")
    card = render_model_card(model, load_image_processor(output_dir / "final", model.config), "org/srn", saved).content
    assert (
        "| stage 1, epoch 2, batch 0 | `stage1.backbone_lr` 0.0005 → 0.25; `stage1.epochs` 2 → 3; `stage1.lr` 0.001 → "
        "0.5 |"
    ) in card
    assert card.count("| resumed at | changed |") == 1


def test_an_unchanged_resume_keeps_the_rates_of_the_checkpoint(reference, data_dir, tmp_path, script):
    output_dir = tmp_path / "unchanged"
    shutil.copytree(reference, output_dir)
    shutil.rmtree(output_dir / "checkpoints" / "checkpoint_1")
    script.main(stage1_args(data_dir, output_dir, "--resume"))
    resumed, unbroken = (
        optimizer_groups(folder / "checkpoints" / "checkpoint_1") for folder in (output_dir, reference)
    )
    assert [(group["lr"], group["initial_lr"]) for group in resumed] == [
        (group["lr"], group["initial_lr"]) for group in unbroken
    ]
    assert json.loads((output_dir / "metrics.json").read_text())["recipe_changes"] == []


@pytest.mark.parametrize(
    "setting, named",
    [
        ("model.attention_channels=32", "model.attention_channels is 32 in this run's recipe but was 16"),
        ("seed=1", "seed is 1 in this run's recipe but was 0"),
        ("stage1.batch_size=4", "stage1.batch_size is 4 in this run's recipe but was 8"),
        ("stage1.optimizer=sgd", "stage1.optimizer is 'sgd' in this run's recipe but was 'adamw'"),
        ("loss.name=asymmetric", "loss.name is 'asymmetric' in this run's recipe but was 'sigmoid_cross_entropy'"),
        ("stage1.epochs=0", "stage1.epochs: 0: checkpoint"),
    ],
)
def test_resume_refuses_what_may_not_change_naming_the_field_and_both_values(
    reference, data_dir, tmp_path, script, setting, named
):
    output_dir = tmp_path / "refused"
    shutil.copytree(reference, output_dir)
    before = sorted(path.name for path in (output_dir / "checkpoints").iterdir())
    with pytest.raises(RecipeError, match=rf"{named}"):
        script.main(stage1_args(data_dir, output_dir, "--resume", "--set", setting))
    assert sorted(path.name for path in (output_dir / "checkpoints").iterdir()) == before  # nothing lost or added


def test_a_changed_network_on_resume_is_one_line_exit_2(reference, data_dir, tmp_path):
    output_dir = tmp_path / "network"
    shutil.copytree(reference, output_dir)
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            *stage1_args(data_dir, output_dir, "--resume", "--set", "model.attention_channels=32"),
        ],
        capture_output=True,
        text=True,
        env=ENVIRONMENT,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --resume: model.attention_channels is 32 in this run's recipe but was 16 when "
        f"{output_dir / 'checkpoints' / 'checkpoint_1'} was written: it cannot change on --resume (docs/faults.md); "
        "set it back, or start afresh with --overwrite"
    )


def test_the_rules_of_resume_changes():
    saved = {"stage1.lr": 0.1, "stage2.lr": 0.1, "stage3.batch_size": 8, "data.num_workers": 0}
    assert resume_changes(saved, {**saved, "stage3.batch_size": 4, "data.num_workers": 2}, 2, "c") == {
        "data.num_workers": [0, 2],
        "stage3.batch_size": [8, 4],  # a later stage, a run-wide setting
    }
    assert resume_changes(saved, {**saved, "stage2.lr": 0.2}, 2, "c") == {"stage2.lr": [0.1, 0.2]}  # the current one
    with pytest.raises(RecipeError, match=r"stage1.lr is 0.2 in this run's recipe but was 0.1 when c was written"):
        resume_changes(saved, {**saved, "stage1.lr": 0.2}, 2, "c")  # a finished stage
    with pytest.raises(RecipeError, match=r"data.options.data_dir is 'b' in this run's recipe but was None"):
        resume_changes(saved, {**saved, "data.options.data_dir": "b"}, 2, "c")


@pytest.mark.multiprocess
def test_a_second_run_on_the_same_output_dir_is_refused_and_a_killed_run_leaves_no_lock(data_dir, tmp_path):
    output_dir = tmp_path / "shared"
    args = stage1_args(data_dir, output_dir)
    runner = checkpoint_pause_runner(tmp_path, "checkpoint_1", "written", 120)
    first = subprocess.Popen(
        [sys.executable, str(runner), str(SCRIPT), *args],
        env=ENVIRONMENT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    written = partial_path(output_dir / "checkpoints" / "checkpoint_1") / "progress.json"
    try:
        deadline = time.monotonic() + 300
        while not written.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert written.exists(), "the first run never reached its second checkpoint"
        for extra in ([], ["--overwrite"], ["--resume"], ["--set", "seed=1", "--overwrite"]):
            second = subprocess.run(
                [sys.executable, str(SCRIPT), *args, *extra],
                capture_output=True,
                text=True,
                env=ENVIRONMENT,
                timeout=300,
            )
            assert second.returncode == 2, second.stderr[-2000:]
            assert second.stderr.strip().splitlines()[-1] == (
                f"error: {output_dir} is in use by another training run (it holds {output_dir / '.run.lock'}): wait "
                "for it to end, or use another --output-dir"
            )
        assert first.poll() is None  # untouched by the refused runs
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL
    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--resume"], capture_output=True, text=True, env=ENVIRONMENT, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # the kernel released the killed run's lock
    assert f"resuming from {output_dir / 'checkpoints' / 'checkpoint_0'}" in resumed.stdout
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["recipe"]["seed"] == 0 and len(metrics["stages"][0]["history"]) == 2


def test_a_last_batch_of_one_image_is_left_out_and_one_image_is_refused(tmp_path, script, capsys):
    # 25 train images in batches of 4: the last batch of each epoch would hold one image, which f_sr's batch norm
    # (stage 3) cannot train on.
    data_dir = make_image_folder(tmp_path / "data", sizes=(25, 8, 8))
    report = script.main(
        tiny_args(
            data_dir,
            tmp_path / "run",
            "--stages",
            "1,2,3",
            *[arg for stage in (1, 2, 3) for arg in ("--set", f"stage{stage}.batch_size=4")],
        )
    )
    assert (
        "stage 3: the last batch of each epoch (25 images, batch 4) would hold one image: it is left out"
        in capsys.readouterr().out
    )
    assert [record["stage"] for record in report["stages"]] == [1, 2, 3]
    assert 0 <= report["stages"][2]["test"]["mAP"] <= 100

    one = make_image_folder(tmp_path / "one", sizes=(1, 4, 4), names=("red",))
    with pytest.raises(RecipeError, match=r"^the train split has 1 image\(s\): training needs at least 2 per batch$"):
        script.main(tiny_args(one, tmp_path / "one-run", "--stages", "1"))
    with pytest.raises(
        RecipeError, match=r"^stage3.batch_size: 1: stage 3 trains f_sr, whose batch norm needs at least 2"
    ):
        script.main(tiny_args(data_dir, tmp_path / "batch-1", "--set", "stage3.batch_size=1"))
    assert not (tmp_path / "one-run" / "checkpoints").exists() and not (tmp_path / "batch-1" / "checkpoints").exists()


def test_a_stamp_scenes_path_with_a_typo_stops_training_in_one_line(data_dir, tmp_path):
    typo = tmp_path / "data" / "stamp_scenez"
    args = tiny_args(
        data_dir,
        tmp_path / "run",
        "--stages",
        "1",
        "--set",
        "data.kind=stamp_scenes",
        "--set",
        f"data.options={{path: {typo}}}",
    )
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=ENVIRONMENT, timeout=300
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert (
        result.stderr.strip().splitlines()[-1].startswith(f"error: {typo} holds no stamp scenes (no dataset_dict.json)")
    )
    assert not (tmp_path / "data").exists()  # nothing generated
