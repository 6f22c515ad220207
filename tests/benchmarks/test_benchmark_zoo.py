"""benchmarks/benchmark_zoo.py runs end to end and writes its files; the figures themselves are never asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_quick_zoo_benchmark_writes_every_measurement(tmp_path):
    command = [
        sys.executable,
        str(BENCHMARKS / "benchmark_zoo.py"),
        "--quick",
        "--only",
        "checkpointing",
        "import",
        "--image-size",
        "64",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--output-dir",
        str(tmp_path),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "zoo_results.json").read_text())
    checkpointing = results["checkpointing"]
    assert set(checkpointing["peak_memory_mib"]) == set(checkpointing["seconds"]) == {"plain", "checkpointed"}
    assert checkpointing["memory_ratio"] == pytest.approx(
        checkpointing["peak_memory_mib"]["checkpointed"] / checkpointing["peak_memory_mib"]["plain"]
    )
    assert results["import"]["configs_built"] == 0 and results["import"]["srn_hf_seconds"] > 0
    assert "stage-4 step peak memory" in (tmp_path / "zoo_results.md").read_text()
    assert (tmp_path / "zoo_results.png").stat().st_size > 0
