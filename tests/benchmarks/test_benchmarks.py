"""The benchmark scripts run end to end and write what the README reads; speed itself is never asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
MODELS = {"srn", "timm", "timm_wrapper"}
PRECISIONS = {"float32", "bf16_channels_last"}
STEPS = {"timm fine-tune", "SRN stage 1", "SRN stage 2", "SRN stage 3", "SRN stage 4"}


def test_quick_benchmark_writes_every_measurement(tmp_path):
    command = [
        sys.executable,
        str(BENCHMARKS / "benchmark_srn.py"),
        "--quick",
        "--backbone",
        "resnet10t",
        "--sizes",
        "64",
        "--batch-sizes",
        "1",
        "2",
        "--train-batch-size",
        "2",
        "--repeats",
        "1",
        "--loader-images",
        "4",
        "--matmul-size",
        "256",
        "--output-dir",
        str(tmp_path),
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]

    results = json.loads((tmp_path / "benchmark_results.json").read_text())
    assert results["machine"]["torch_threads"] >= 1
    assert set(results["matmul_peak_gflops"]) == {"float32", "bfloat16"}
    assert all(value > 0 for value in results["matmul_peak_gflops"].values())

    inference = results["inference"]
    expected = {(model, precision, batch) for model in MODELS for precision in PRECISIONS for batch in (1, 2)}
    assert {(row["model"], row["precision"], row["batch_size"]) for row in inference} == expected
    for row in inference:
        assert row["image_size"] == 64
        assert row["seconds"] > 0 and row["images_per_second"] == pytest.approx(row["batch_size"] / row["seconds"])
        assert 0 < row["peak_allocated_mib"] < row["peak_memory_mib"]
    # SRN carries the backbone plus its branches: more FLOPs and more resident memory than the plain classifier.
    flops = results["gflops_per_image"]["64"]
    assert flops["srn"] > flops["timm"] > 0
    assert flops["timm_wrapper"] == pytest.approx(flops["timm"])

    training = results["training"]
    assert {(row["step"], row["precision"]) for row in training} == {(s, p) for s in STEPS for p in PRECISIONS}
    for row in training:
        assert row["seconds"] > 0 and row["peak_memory_mib"] > 0
        if row["step"] == "SRN stage 1":
            assert row["ratio_to_stage_1"] == 1.0
    # Stage 3 trains f_sr alone: its step keeps far fewer tensors alive than joint training (stage 4).
    for precision in PRECISIONS:
        by_step = {row["step"]: row for row in training if row["precision"] == precision}
        assert by_step["SRN stage 3"]["peak_memory_mib"] < by_step["SRN stage 4"]["peak_memory_mib"]

    loader = results["loader"]
    assert loader["workers"] == 2 and loader["images_per_second"] > 0
    assert loader["fastest_training_step"].split(" (")[0] in STEPS

    targets = {target["target"]: target for target in results["targets"]}
    assert len(targets) == 2 * 2 + 2 + 2 * 2 + 1
    for target in targets.values():
        assert target["met"] == (
            target["value"] <= target["limit"] if target["at_most"] else target["value"] >= target["limit"]
        )

    tables = (tmp_path / "benchmark_results.md").read_text()
    assert "| target | measured | limit | met |" in tables and "SRN stage 3" in tables
    assert (tmp_path / "benchmark_results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_params_flops_counts_the_srn_branch_exactly(tmp_path, monkeypatch):
    """The SRN branch's FLOPs (f_att, confidence maps S, f_sr) equal the count from the paper's layer shapes."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import params_flops
    import timm

    num_labels, image_size = 5, 64
    row = params_flops.params_and_flops("resnet10t", num_labels, image_size)
    channels_x = timm.create_model("resnet10t", features_only=True).feature_info.channels()[-2]
    side = image_size // 16  # the stride-16 map X, and the kernel K of f_sr's grouped convolution
    positions = side * side
    multiply_adds = (
        positions * (channels_x * 512 + 9 * 512 * 512 + 512 * num_labels)  # f_att
        + positions * channels_x * num_labels  # confidence maps S
        + positions * (num_labels * 512 + 512 * 512)
        + 2048 * positions
        + 2048 * num_labels  # f_sr
    )
    assert row["srn_branch_gflops"] * 1e9 == pytest.approx(2 * multiply_adds)
    assert row["srn_gflops"] > row["timm_gflops"] > row["backbone_gflops"] > 0
    assert row["srn_params"] > row["timm_params"]
    assert 0 < row["srn_head_share_of_srn"] < 1

    assert (
        params_flops.main(
            ["--backbone", "resnet10t", "--num-labels", "5", "--sizes", "64", "--output-dir", str(tmp_path)]
        )
        == 0
    )
    saved = json.loads((tmp_path / "params_flops.json").read_text())
    assert saved["rows"][0]["srn_params"] == row["srn_params"]


def test_image_check_benchmark_writes_its_ratios(tmp_path):
    command = [
        sys.executable,
        str(BENCHMARKS / "benchmark_verify.py"),
        "--images",
        "24",
        "--epoch-images",
        "8",
        "--workers",
        "1",
        "--output-dir",
        str(tmp_path),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "verify_images.json").read_text())
    assert results["images"] == 24 and results["epoch_images"] == 8
    assert set(results["seconds"]) == {"read", "headers", "check_images", "full_decode"}
    assert all(results[key] > 0 for key in ("check_over_read", "check_over_full_decode", "check_over_training_epoch"))
    assert "check_images / read" in (tmp_path / "verify_images.md").read_text()


def test_threads_below_one_are_refused_in_one_line_by_every_benchmark():
    """`--threads 0` (or -1): one line naming the flag and the value, exit status 2, before anything is measured."""
    scripts = ["benchmark_srn.py", "benchmark_deploy.py", "benchmark_bf16.py", "ablations.py"]
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    runs = [
        subprocess.Popen(
            [sys.executable, str(benchmarks / script), "--threads", str(threads)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script, threads in zip(scripts, [0, -1, 0, 0])
    ]
    for script, threads, run in zip(scripts, [0, -1, 0, 0], runs):
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 2, (script, stderr)
        assert stderr.strip().splitlines() == [f"{script}: error: --threads {threads}: must be >= 1"], script
        assert stdout == ""
