"""`srn-hf export MODEL OUT --format onnx --quantize int8 --calibration-images SOURCE` (or `--data KIND ...`), and
`srn-hf calibrate` of the INT8 folder it writes: the thresholds tuned again on the quantized scores."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import random_images, save_with_processor, small_srn, write_imagefolder

from srn_hf.cli import main
from srn_hf.export import ExportedTagger
from srn_hf.quantize import MIN_CALIBRATION_IMAGES

LABELS = {0: "cat", 1: "dog", 2: "car"}
VALIDATION = [["cat"] if i % 3 == 0 else ["dog"] if i % 3 == 1 else ["cat", "car"] for i in range(24)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small SRN whose config carries tuned thresholds (dog's own), as a trained model's does."""
    model = small_srn(LABELS, image_size=64, threshold=0.4, label_thresholds={"dog": 0.7})
    return save_with_processor(model, tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def file_list(tmp_path_factory) -> Path:
    """A text file naming 20 photos, one of them broken (left out of the calibration and reported)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for index, image in enumerate(random_images(19)):
        image.save(folder / f"{index}.png")
        paths.append(str(folder / f"{index}.png"))
    (folder / "broken.png").write_bytes(b"not a png")
    paths.append(str(folder / "broken.png"))
    (folder / "list.txt").write_text("\n".join(paths) + "\n")
    return folder / "list.txt"


@pytest.fixture(scope="module")
def int8_run(model_dir, file_list, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "int8"
    argv = ["export", model_dir, str(out), "--format", "onnx", "--quantize", "int8", "--calibration-images"]
    return out, argv + [str(file_list)]


def run(capsys, argv):
    capsys.readouterr()
    status = main([str(item) for item in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_quantize_with_a_file_list_states_the_calibration_and_copies_the_float_thresholds(capsys, int8_run, file_list):
    out, argv = int8_run
    status, stdout, stderr = run(capsys, argv)
    assert status == 0, stderr
    assert "int8 (QDQ, weights int8, symmetric, per output channel" in stdout
    assert (
        "calibrated by percentile on 19 images; float32 operators: Softmax; float32 layers: none (0 nodes); " in stdout
    )
    assert "bias correction of 22 layers on the same images" in stdout
    assert "thresholds copied from the float model, not tuned on the int8 scores" in stdout
    assert "1 calibration images could not be read, left out (the first: " in stderr and "broken.png" in stderr
    config = json.loads((out / "config.json").read_text())
    record = json.loads((out / "thresholds.json").read_text())
    assert (
        config["quantization"]["calibration_images"] == 19
        and config["quantization"]["calibration_method"] == "percentile"
    )
    assert config["quantization"]["calibration_source"] == f"{file_list} (20 image files)"
    assert record["thresholds_from"] == "float32 model" and record["thresholds"] == [0.4, 0.7, 0.4]
    # ExportedTagger (and so everything built on it) runs the INT8 folder as it runs a float32 one.
    tagger = ExportedTagger(out)
    assert [type(result) for result in tagger(random_images(2, seed=1))] == [list, list]


def file_hashes(folder) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(Path(folder).iterdir())}


def test_calibrate_tunes_an_int8_folder_on_its_own_scores(capsys, int8_run, tmp_path):
    out, argv = int8_run
    if not out.exists():
        assert main(argv) == 0
    data_dir = write_imagefolder(tmp_path / "data", {"train": [["cat"], ["dog"], ["car"]], "validation": VALIDATION})
    before = file_hashes(out)
    status, stdout, stderr = run(
        capsys, ["calibrate", out, "--data", "imagefolder", "--data-option", f"data_dir={data_dir}", "--write"]
    )
    assert status == 0, stderr
    after = file_hashes(out)
    assert {name for name in after if after[name] != before[name]} == {"config.json", "thresholds.json"}
    record = json.loads((out / "thresholds.json").read_text())
    assert record["thresholds_from"] == "int8 scores" and record["threshold_calibration"]["images"] == 24
    assert record["thresholds"] != [0.4, 0.7, 0.4]
    assert np.allclose(ExportedTagger(out).thresholds, record["thresholds"])
    config = json.loads((out / "config.json").read_text())
    assert config["threshold_calibration"]["split"] == "validation" and "quantization" in config
    assert "validation split (24 images)" in stdout.splitlines()[0]


@pytest.fixture(scope="module")
def too_few(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("few")
    for index, image in enumerate(random_images(MIN_CALIBRATION_IMAGES - 1)):
        image.save(folder / f"{index}.png")
    return folder


@pytest.fixture(scope="module")
def unreadable(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unreadable")
    for index in range(20):
        (folder / f"{index}.jpg").write_bytes(b"\xff\xd8 cut short")
    return folder


def test_bad_quantize_options_are_one_line_exit_2(capsys, model_dir, too_few, unreadable, tmp_path):
    out = tmp_path / "out"
    base = ["export", model_dir, out]
    cases = [
        (["--format", "torch-export", "--quantize", "int8", "--calibration-images", too_few], "--format torch-export"),
        (["--quantize", "int4", "--calibration-images", too_few], "--quantize int4 is not one of int8"),
        (["--quantize", "int8", "--calibration-images", unreadable], f"{unreadable} (20 image files): none of the 20"),
        (["--quantize", "int8", "--calibration-images", too_few], f"{MIN_CALIBRATION_IMAGES - 1} readable images"),
        (["--quantize", "int8", "--calibration-images", too_few, "--calibration-count", "4"], "below the minimum"),
        (
            ["--quantize", "int8", "--calibration-images", too_few, "--calibration-method", "mse"],
            "--calibration-method",
        ),
        # ONNX Runtime's entropy calibration gives MinMax's ranges: refused, saying so, rather than run as MinMax.
        (
            ["--quantize", "int8", "--calibration-images", too_few, "--calibration-method", "entropy"],
            "--calibration-method entropy is not offered: ONNX Runtime's quantize_static calibrates 'entropy' with",
        ),
        (["--quantize", "int8"], "--quantize needs calibration images"),
        (["--calibration-images", too_few], "pass --quantize int8"),
        (["--quantize", "int8", "--calibration-images", tmp_path / "missing.txt"], "missing.txt: cannot be read"),
        (
            ["--quantize", "int8", "--data", "imagefolder", "--data-option", f"data_dir={too_few}", "--split", "test"],
            "--split test",
        ),
    ]
    for options, message in cases:
        status, stdout, stderr = run(capsys, base + options)
        lines = stderr.strip().splitlines()
        assert status == 2 and len(lines) == 1 and message in lines[0], (options, stderr)
        assert lines[0].startswith("srn-hf export: error: ") and not out.exists()
