"""benchmarks/benchmark_deploy.py runs end to end and writes its tables; `--device cuda` without a GPU is refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "benchmark_deploy.py"
ENVIRONMENT = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": os.pathsep.join([str(SCRIPT.parents[1]), str(SCRIPT.parent)]),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_cuda_without_a_gpu_is_one_line_exit_2(tmp_path):
    command = [
        sys.executable,
        str(SCRIPT),
        "--device",
        "cuda",
        "--quick",
        "--compile",
        "--autocast-bf16",
        "--channels-last",
        "--output-dir",
        str(tmp_path),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENVIRONMENT)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [completed.stderr.strip()]
    assert "no CUDA GPU" in completed.stderr and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_quick_run_writes_every_section(tmp_path):
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--backbone",
        "resnet10t",
        "--runtime-sizes",
        "64",
        "--sizes",
        "64",
        "--repeats",
        "1",
        "--bulk-images",
        "32",
        "--memory-images",
        "64",
        "--num-workers",
        "1",
        "--output-dir",
        str(tmp_path),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, env=ENVIRONMENT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "deploy_results.json").read_text())
    runtimes = {(row["runtime"], row["batch_size"]) for row in results["runtimes"]}
    assert runtimes == {
        (name, batch) for name in ("onnxruntime", "pytorch_fp32", "fast_path", "torch_export") for batch in (1, 16)
    }
    assert all(row["onnx_max_abs_diff"] <= 1e-4 for row in results["runtimes"])
    assert {(row["model"], row["num_labels"]) for row in results["scaling"]} == {
        (model, count) for model in ("srn", "timm") for count in (80, 1000, 10000)
    }
    srn = {row["num_labels"]: row for row in results["scaling"] if row["model"] == "srn"}
    assert srn[10000]["peak_memory_mib"] > srn[80]["peak_memory_mib"]  # the label layers' weights and maps grow with C
    assert {row["precision"] for row in results["bulk"]} == {"float32", "fast_path"}
    assert all(row["bulk_images_per_second"] > 0 and row["ratio"] > 0 for row in results["bulk"])
    assert results["memory"]["images"] == 64
    assert (tmp_path / "deploy_results.md").read_text().count("|") > 50 and (
        tmp_path / "deploy_results.png"
    ).stat().st_size > 0
