"""benchmarks/benchmark_int8.py runs end to end on a tiny SRN and dataset and writes its tables (never a speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import save_with_processor, small_srn, write_imagefolder

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "benchmark_int8.py"
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SCRIPT.parents[1])}
LABELS = {0: "cat", 1: "dog", 2: "car"}


@pytest.mark.slow
def test_study_and_measure_write_their_tables(tmp_path):
    model = save_with_processor(small_srn(LABELS, image_size=64), tmp_path / "model")
    rows = [["cat"], ["dog"], ["cat", "car"]] * 8
    data = write_imagefolder(tmp_path / "data", {"train": rows[:12], "validation": rows, "test": rows[:12]})
    command = [
        sys.executable,
        str(SCRIPT),
        "--model",
        model,
        "--data",
        "imagefolder",
        "--data-option",
        f"data_dir={data}",
        "--calibration-count",
        "16",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--output-dir",
        str(tmp_path / "results"),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=ENVIRONMENT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "int8.json").read_text())
    settings = [row["setting"] for row in results["study"]["rows"]]
    assert settings[0] == "every operator quantized" and "Softmax float32" in settings
    assert "f_sr (spatial regularization) float32" in settings
    assert (
        "backbone stage 0 (conv1.0 to bn1) float32" in settings and "backbone stage 1 (layer1.0.conv1" in settings[15]
    )
    assert settings[-3].startswith("library choice") and settings[-1] == "minmax calibration, library choice"
    assert results["study"]["rows"][-3]["float_nodes"] == 0  # the library's choice: the backbone fully quantized
    correction = [(row["setting"], row["split"]) for row in results["correction"]["rows"]]
    assert correction[:4] == [
        ("percentile, bias correction off", "validation"),
        ("percentile, bias correction off", "train"),
        ("percentile, bias correction on", "validation"),
        ("percentile, bias correction on", "train"),
    ]
    frontier = results["frontier"]["rows"]
    assert [row["float_nodes"] for row in frontier[:3]] == [0, 3, 5] and frontier[1]["setting"] == "+ stage 0"
    assert all(row["vs_onnxruntime_float32"] > 0 for row in frontier)
    measure = results["measure"]
    assert measure["test_images"] == 12 and measure["quantization"]["calibration_images"] == 16
    assert measure["quantization"]["bias_correction"]["images"] == 16
    assert measure["sizes"]["int8"] < measure["sizes"]["float32"]
    assert set(measure["speed"]["1"]) == {"eager float32", "onnxruntime float32", "onnxruntime int8"}
    assert len(measure["worst_labels"]) == len(LABELS)
    table = (tmp_path / "results" / "int8.md").read_text()
    assert "| every operator quantized |" in table and "Worst five labels" in table and "Error against speed" in table
    assert "| percentile, bias correction on | train (12) |" in table
