"""benchmarks/peers.py: every peer's real code path (timm's task, loss factory, factories and EMA; the transformers
Trainer; train_stages.py), the budget and SRN on the best peer, the paired intervals, the resume, the refusals."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "peers.py"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


peers = load("peers", SCRIPT)


def tiny_recipe(tmp_path: Path) -> Path:
    """A recipe of 24 / 16 / 16 images with coloured squares at 64 px, resnet10t with a weights file of its own."""
    from helpers import make_image_folder

    data_dir = make_image_folder(tmp_path / "squares", sizes=(24, 16, 16))
    weights = tmp_path / "resnet10t.safetensors"
    torch.manual_seed(0)
    save_file({key: value.contiguous() for key, value in timm.create_model("resnet10t").state_dict().items()}, weights)
    stages = "\n".join(
        f"stage{n}: {{epochs: 1, batch_size: 8, lr: 1.0e-3, optimizer: adamw, warmup_ratio: 0.1}}" for n in range(1, 5)
    )
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"model: {{backbone: resnet10t, pretrained_weights: {weights}, image_size: 64, attention_channels: 16,\n"
        "        regularization_channels: 16, regularization_out_channels: 32}\n"
        f"data: {{kind: imagefolder, options: {{data_dir: {data_dir}}}, augment: multiscale}}\n"
        "training: {mixed_precision: 'no', channels_last: false, eval_batch_size: 8, log_with: none}\n" + stages + "\n"
    )
    return recipe


def run_script(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        **(env_extra or {}),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=environment)


def test_bad_input_is_refused_in_one_line_before_training(tmp_path):
    output = tmp_path / "runs"
    cases = [
        (
            ["--peers", "timm-bce", "keras"],
            "error: --peers: unknown peer 'keras' (known: timm-bce, timm-asl, trainer)",
            {},
        ),
        (
            ["--set", "model.backbone=resnet10t", "--set", "model.pretrained_weights=timm"],
            "error: model.backbone='resnet10t': no ImageNet weights available offline",
            {"HF_HOME": str(tmp_path / "empty")},
        ),
        (
            ["--set", "model.backbone=resnet10t"],
            ": model.pretrained_weights=packaged-lite0 holds tf_efficientnet_lite0's ImageNet weights, not resnet10t's",
            {},
        ),
        (["--set", f"model.pretrained_weights={tmp_path / 'missing.safetensors'}"], "no such file", {}),
        (["--srn-on", "trainer:fast:3"], "error: --srn-on 'trainer:fast:3': expected PEER:LR:EPOCHS", {}),
        (["--srn-on", "keras:1e-3:3"], "error: --srn-on: unknown peer 'keras'", {}),
        (["--threads", "0"], "error: --threads: 0 is out of range: must be >= 1", {}),
    ]
    for argv, message, env in cases:
        result = run_script(*argv, "--output-dir", str(output), env_extra=env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert not output.exists()  # nothing trained, nothing written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--srn-on", "trainer:nan:3"],
            "--srn-on 'trainer:nan:3': LR: nan is out of range: must be a finite number > 0",
        ),
        (["--srn-on", "trainer:1e-3:0"], "--srn-on 'trainer:1e-3:0': EPOCHS: 0 is out of range: must be >= 1"),
        (["--lrs", "1e-3", "-1"], "--lrs: -1.0 is out of range: must be a finite number > 0"),
        (["--lrs", "inf"], "--lrs: inf is out of range: must be a finite number > 0"),
        (["--epochs", "0"], "--epochs: 0 is out of range: must be >= 1"),
        (["--seeds", "0", "-1"], "--seeds: -1 is out of range: must be in [0, 4294967296)"),
        (["--threads", "-2"], "--threads: -2 is out of range: must be >= 1"),
    ],
)
def test_numbers_of_the_command_line_are_checked_naming_the_flag_and_value(argv, message):
    """Before anything is loaded (the one-line printing of these errors: the test above)."""
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        peers.parse_args(argv)


def test_f1_difference_is_paired_and_matches_the_metrics():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 4)) < 0.3).astype(np.float32)
    scores_a = np.clip(labels * 0.4 + rng.random((300, 4)) * 0.6, 0, 1)
    scores_b = np.clip(labels * 0.6 + rng.random((300, 4)) * 0.4, 0, 1)
    thresholds_a, thresholds_b = np.full(4, 0.5), np.array([0.5, 0.55, 0.6, 0.65])
    same = peers.f1_difference(scores_a, thresholds_a, scores_a, thresholds_a, labels, n_resamples=200)
    assert all(same[m] == {"difference": 0.0, "low": 0.0, "high": 0.0} for m in ("CF1", "OF1"))
    result = peers.f1_difference(scores_a, thresholds_a, scores_b, thresholds_b, labels, n_resamples=300)
    a, b = peers.figures(scores_a, labels, thresholds_a), peers.figures(scores_b, labels, thresholds_b)
    for metric in ("CF1", "OF1"):
        assert result[metric]["difference"] == pytest.approx(b[metric] - a[metric])
        assert result[metric]["low"] < result[metric]["difference"] < result[metric]["high"]
        assert result[metric]["low"] > 0  # b separates the labels much better: the whole interval is above 0


def test_timm_peer_runs_timms_task_factories_and_ema(tmp_path):
    recipe = peers.load_recipe(tiny_recipe(tmp_path))
    data = peers.load_data(recipe)
    folder = tmp_path / "run"
    folder.mkdir()
    setting = peers.Setting("timm-asl", 1e-3, 2, 0, folder)
    result = peers.run_peer(setting, recipe, data, Path(recipe.model.pretrained_weights), tmp_path)
    assert result["optimizer_steps"] == 2 * 3  # 24 images in batches of 8, two epochs
    assert [(entry["epoch"], entry["weights"]) for entry in result["history"]] == [
        (1, "raw"),
        (1, "EMA"),
        (2, "raw"),
        (2, "EMA"),
    ]
    best = max(result["history"], key=lambda entry: entry["validation_mAP"])
    assert result["kept"]["validation_mAP"] == best["validation_mAP"] == result["validation_mAP"]
    kept = load_file(folder / "model.safetensors")  # the kept timm model, in timm's key names
    assert set(kept) == set(timm.create_model("resnet10t", num_classes=len(data.names)).state_dict())
    scores = load_file(folder / "test-scores.safetensors")
    assert result["CF1"] == pytest.approx(
        peers.figures(scores["scores"].double().numpy(), scores["labels"].numpy(), result["thresholds"])["CF1"]
    )


@pytest.mark.slow
def test_tiny_benchmark_runs_every_peer_and_resumes(tmp_path):
    recipe = tiny_recipe(tmp_path)
    argv = [
        "--config",
        str(recipe),
        "--seeds",
        "0",
        "--lrs",
        "1e-3",
        "--epochs",
        "1",
        "--threads",
        "2",
        "--output-dir",
        str(tmp_path / "runs"),
        "--results-dir",
        str(tmp_path / "results"),
    ]
    results = peers.main(argv)
    best = results["best_peer"]
    runs = tmp_path / "runs" / "seed-0"
    srn = json.loads((runs / "srn" / "result.json").read_text())
    chosen = {peer: json.loads((runs / peer / "lr-0.001-epochs-1" / "result.json").read_text()) for peer in peers.PEERS}
    assert srn["cpu_seconds"] > 0 and all(run["cpu_seconds"] > 0 for run in chosen.values())  # SRN's subprocess counted
    budgets = {peer: peers.budget_epochs(srn, chosen[peer]) for peer in peers.PEERS}
    budget_variants = {f"{peer} (SRN's time)" for peer, epochs in budgets.items() if epochs != 1}
    assert set(results["variants"]) == {*peers.PEERS, "SRN", f"SRN on {best}", *budget_variants}
    assert results["variants"]["SRN"]["optimizer_steps"] == 4 * 3  # four stages of one epoch, 3 batches each
    for peer in peers.PEERS:
        assert results["variants"][peer]["optimizer_steps"] == 3
        # the peer trained for about SRN's compute: SRN's CPU seconds over the peer's per epoch
        assert budgets[peer] >= 1 and (
            budgets[peer] == 1 or results["variants"][f"{peer} (SRN's time)"]["epochs"] == budgets[peer]
        )
    # The Trainer's own best-epoch bookkeeping ran.
    assert list(
        (tmp_path / "runs" / "seed-0" / "trainer").glob("lr-0.001-epochs-*/trainer/checkpoint-*/trainer_state.json")
    )
    # SRN on the best peer: stage 1 starts from the peer's trained backbone and leaves it as it is (backbone_lr 0).
    peer_weights = load_file(tmp_path / "runs" / "seed-0" / best / "lr-0.001-epochs-1" / "model.safetensors")
    stage1 = load_file(tmp_path / "runs" / "seed-0" / f"srn-on-{best}" / "stage-1" / "model.safetensors")
    torch.testing.assert_close(stage1["srn.backbone.conv1.0.weight"], peer_weights["conv1.0.weight"])
    assert not torch.equal(
        stage1["srn.backbone.conv1.0.weight"], load_file(tmp_path / "resnet10t.safetensors")["conv1.0.weight"]
    )
    rows = {(row["variant"], row["minus"]) for row in results["differences"]}
    assert ("SRN", best) in rows and (f"SRN on {best}", best) in rows and (f"SRN on {best}", "SRN") in rows
    for row in results["differences"]:
        for run in row["runs"]:
            for metric in ("mAP", "CF1", "OF1"):
                assert run[metric]["low"] <= run[metric]["difference"] <= run[metric]["high"]
    written = json.loads((tmp_path / "results" / "peers.json").read_text())
    assert {"timm", "transformers", "torch", "accelerate"} <= set(written["versions"])
    assert (tmp_path / "results" / "peers.md").read_text().startswith("| variant |")
    with Image.open(tmp_path / "results" / "peers.png") as figure:  # drawn, not only tabulated
        assert figure.format == "PNG" and figure.width > 1000

    # Resumes: every finished run is kept; a run without its result.json (killed before the end) is trained again.
    result_files = sorted((tmp_path / "runs").glob("seed-0/**/result.json"))
    assert len(result_files) == 5 + len(budget_variants)  # 3 peers, SRN, SRN on the best peer, the peers at SRN's time
    times = {path: path.stat().st_mtime_ns for path in result_files}
    again = tmp_path / "runs" / "seed-0" / "timm-bce" / "lr-0.001-epochs-1" / "result.json"
    again.unlink()
    # ... and --srn-on adds SRN on another setting's backbone, with that setting's run, beside the kept runs.
    resumed = peers.main([*argv, "--srn-on", "timm-asl:1e-3:2"])
    setting = "timm-asl (lr 0.001, 2 epochs)"
    assert set(resumed["variants"]) == {*results["variants"], setting, f"SRN on {setting}"}
    assert again.exists()
    assert all(path.stat().st_mtime_ns == time for path, time in times.items() if path != again)
    rows = {(row["variant"], row["minus"]) for row in resumed["differences"]}
    assert {(f"SRN on {setting}", setting), (f"SRN on {setting}", "SRN"), ("SRN", setting)} <= rows
    on_setting = json.loads((runs / "srn-on-timm-asl-lr-0.001-epochs-2" / "result.json").read_text())
    assert on_setting["set"][0].endswith("timm-asl/lr-0.001-epochs-2/model.safetensors")


@pytest.mark.skipif(not Path("/usr/share/tuxpaint/stamps").is_dir(), reason="tuxpaint-stamps-default is not installed")
def test_dataset_selects_a_stamp_scene_variant_with_runs_of_its_own(tmp_path):
    from srn_hf.data.stamp_scenes import VARIANTS

    small = ["data.options.sizes=[4, 2, 2]", "data.options.num_workers=1", "data.options.progress=false"]
    args = peers.parse_args(
        ["--dataset", "tabletop", "--set", f"data.options.path={tmp_path / 'scenes'}", *(f"--set={s}" for s in small)]
    )
    assert args.output_dir == REPO / "benchmarks" / "results" / "peers-runs-tabletop"
    assert args.results_dir == REPO / "benchmarks" / "results" / "peers-tabletop"
    recipe = peers.load_recipe(args.config, args.set)  # the demo recipe, its data replaced, the command's --set last
    assert recipe.data.kind == "stamp_scenes" and recipe.data.options["variant"] == "tabletop"
    data = peers.load_data(recipe)
    assert data.names == sorted(VARIANTS["tabletop"].classes) and len(data.test) == 2
    assert json.loads((tmp_path / "scenes" / "stamp_scenes.json").read_text())["variant"] == "tabletop"

    demo = peers.parse_args([])
    assert demo.output_dir == REPO / "benchmarks" / "results" / "peers-runs" and demo.set == []
    result = run_script("--dataset", "kitchen", "--output-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "error: --dataset: unknown dataset 'kitchen' (known: demo, street-sky, tabletop)" in result.stderr
