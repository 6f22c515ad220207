"""benchmarks/benchmark_bulk_ray.py runs end to end on a few tiny images and writes its table (never a speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "benchmark_bulk_ray.py"
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SCRIPT.parents[1])}


def test_an_unknown_engine_is_refused(tmp_path):
    command = [sys.executable, str(SCRIPT), "--engines", "local,spark", "--output-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENVIRONMENT)
    assert completed.returncode == 2 and "--engines are local, accelerate2, ray1, ray2" in completed.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_one_process_and_ray_engines_on_tiny_input(tmp_path):
    command = [sys.executable, str(SCRIPT), "--images", "6", "--image-size", "64", "--batch-size", "2"]
    command += ["--engines", "local,ray1", "--rounds", "1", "--output-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, env=ENVIRONMENT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "bulk_ray_results.json").read_text())
    assert [row["engine"] for row in results["engines"]] == ["local", "ray1"]
    for row in results["engines"]:
        assert row["images_per_s"] > 0 and row["first_row_s"] > 0 and row["rss_mib_per_tagger"] > 0
        assert row["taggers"] == 1  # the one process (its DataLoader workers aside); the actor (not the driver)
        assert row["cpu_ms_per_image"]["tagging"] > 0 and row["cpu_ms_per_image"]["other"] >= 0
    ray = results["engines"][1]
    assert ray["cpu_ms_per_image"]["other"] > 0  # the driver, Ray's daemons and system actors
    table = (tmp_path / "bulk_ray_results.md").read_text()
    assert "| local |" in table and "| ray1 |" in table
