"""benchmarks/benchmark_bf16.py runs end to end and writes its files, and its operation log sees what the fast path
runs; the figures themselves are never asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_quick_bf16_benchmark_writes_ratios_and_the_branch_operations(tmp_path):
    command = [
        sys.executable,
        str(BENCHMARKS / "benchmark_bf16.py"),
        "--quick",
        "--backbone",
        "resnet10t",
        "--image-size",
        "64",
        "--batch-size",
        "2",
        "--output-dir",
        str(tmp_path),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "bf16_branch.json").read_text())
    for precision in ("float32", "bf16_channels_last"):
        row = results["ratios"][precision]
        assert len(row["srn"]["times"]) == len(row["timm"]["times"]) == 2
        assert row["srn_over_timm_cpu"] == pytest.approx(row["srn"]["cpu_seconds"] / row["timm"]["cpu_seconds"])
    operations = results["branch_profile"]["operations"]
    assert sum(row["share"] for row in operations) == pytest.approx(1.0)
    # the heads' first convolution f_att conv1 (resnet10t's X has 256 channels), on the fast path
    assert any(
        row["operation"] == "aten.conv2d.default" and row["inputs"].startswith("bfloat16 channels-last 2x256x4x4")
        for row in operations
    )
    assert 0 < results["branch_profile"]["heads_share_of_forward"] < 1
    report = (tmp_path / "bf16_branch.md").read_text()
    assert "| bf16 + channels-last |" in report and "- float32 outputs: none" in report


def test_operation_log_names_dtypes_layouts_and_views():
    sys.path.insert(0, str(BENCHMARKS))
    from probes import OperationLog

    maps = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    log = OperationLog()
    with log.forward():
        maps.flatten(2).softmax(dim=-1)
    rows = {row["operation"]: row for row in log.table()}
    assert rows["aten.view.default"]["view"] and rows["aten.view.default"]["inputs"] == "float32 channels-last 2x3x4x5"
    assert rows["aten._softmax.default"]["inputs"] == "float32 strided 2x3x20"
    assert rows["aten._softmax.default"]["output"] == "float32 contiguous 2x3x20"
    assert not rows["aten._softmax.default"]["view"]
