"""`srn-hf predict --output` under faults of the second sweep: a file name that is not UTF-8, a resumed output of a
model whose weights differ in one value, records that hold errors on --resume (exit status, --retry-errors)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import save_with_processor, small_srn
from PIL import Image
from safetensors.torch import load_file, save_file

from srn_hf.cli import main

LABELS = {0: "cat", 1: "dog", 2: "car"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_with_processor(small_srn(LABELS, image_size=64), tmp_path_factory.mktemp("srn"))


def write_image(path: Path, seed: int) -> None:
    pixels = np.kron(
        np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((12, 12, 1), np.uint8)
    )
    Image.fromarray(pixels).save(path)


def predict(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["predict", *map(str, argv), "--num-workers", "0", "--batch-size", "4"])
    return status, capsys.readouterr().err


def records(output: Path) -> list[dict]:
    if output.suffix == ".parquet":
        return pq.read_table(output).to_pylist()
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_file_name_that_is_not_utf8_is_predicted_and_resumed(model_folder, tmp_path, capsys, suffix):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(20):
        write_image(photos / f"image{index:02d}.png", index)
    latin1 = os.path.join(os.fsencode(photos), b"caf\xe9.png")  # a real Latin-1 file name, invalid as UTF-8
    write_image(Path(os.fsdecode(latin1)), 99)
    output = tmp_path / f"tags{suffix}"
    status, err = predict(capsys, model_folder, photos, "--output", output)
    assert status == 0, err
    written = records(output)
    assert len(written) == 21 and all(record["error"] is None for record in written)
    assert f"{photos}/caf\\xe9.png" in {record["image"] for record in written}  # the byte, written \xe9

    status, err = predict(capsys, model_folder, photos, "--output", output, "--resume")
    assert status == 0 and "21 images already in" in err, err
    assert len(records(output)) == 21  # recognised, not predicted twice


def test_resume_refuses_a_model_whose_weights_differ_in_one_value(model_folder, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(6):
        write_image(photos / f"{index}.png", index)
    output = tmp_path / "tags.jsonl"
    assert predict(capsys, model_folder, photos / "0.png", photos / "1.png", "--output", output)[0] == 0

    other = tmp_path / "other"
    shutil.copytree(model_folder, other)
    weights = load_file(other / "model.safetensors")
    name = max(weights, key=lambda key: weights[key].numel())  # the largest tensor; its second value
    weights[name].view(-1)[1] += 1e-3  # no sampled fingerprint reads it
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    status, err = predict(capsys, other, photos, "--output", output, "--resume")
    errors = [line for line in err.splitlines() if "error" in line]  # (the weights' loading bar aside)
    assert status == 2 and len(errors) == 1, err
    assert "its records were written by another model" in errors[0] and "weights sha256" in errors[0]
    assert len(records(output)) == 2  # nothing written is lost
    assert predict(capsys, model_folder, photos, "--output", output, "--resume")[0] == 0  # the right model continues it
    assert len(records(output)) == 6


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_resume_exit_status_says_whether_the_output_holds_errors_and_retry_errors_predicts_them(
    model_folder, tmp_path, capsys, suffix
):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(6):
        write_image(photos / f"{index}.png", index)
    (photos / "later.png").write_bytes(b"")  # not there yet: an empty file
    (photos / "cut.png").write_bytes((photos / "0.png").read_bytes()[:100])
    output = tmp_path / f"tags{suffix}"
    status, err = predict(capsys, model_folder, photos, "--output", output)
    assert status == 1 and "2 of 8 images could not be predicted" in err, err

    status, err = predict(capsys, model_folder, photos, "--output", output, "--resume")
    assert status == 1, err  # nothing new to predict, but the output still holds 2 errors
    assert "2 records kept in" in err and "--retry-errors" in err

    write_image(photos / "later.png", 7)  # the files are fixed
    write_image(photos / "cut.png", 8)
    status, err = predict(capsys, model_folder, photos, "--output", output, "--resume", "--retry-errors")
    assert status == 0, err
    assert "2 records with an error dropped" in err
    written = {record["image"]: record for record in records(output)}
    assert len(records(output)) == 8 and len(written) == 8  # one record per image
    assert all(record["error"] is None for record in written.values())
    status, err = predict(capsys, model_folder, photos, "--output", output, "--resume")
    assert status == 0, err

    status, err = predict(capsys, model_folder, photos, "--output", tmp_path / f"new{suffix}", "--retry-errors")
    assert status == 2 and err.strip() == (
        "srn-hf predict: error: --retry-errors predicts again the failed images of a resumed run: pass --resume with it"
    )


def test_the_records_of_a_retried_run_match_a_fresh_run(model_folder, tmp_path, capsys):
    """The retried images' records are those a run that never failed gives (same labels and scores)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(5):
        write_image(photos / f"{index}.png", index)
    good = (photos / "4.png").read_bytes()
    (photos / "4.png").write_bytes(b"not an image")
    output, reference = tmp_path / "tags.jsonl", tmp_path / "reference.jsonl"
    assert predict(capsys, model_folder, photos, "--output", output, "--all-scores")[0] == 1
    (photos / "4.png").write_bytes(good)
    assert (
        predict(capsys, model_folder, photos, "--output", output, "--all-scores", "--resume", "--retry-errors")[0] == 0
    )
    assert predict(capsys, model_folder, photos, "--output", reference, "--all-scores")[0] == 0
    retried, fresh = ({record["image"]: record for record in records(path)} for path in (output, reference))
    assert retried.keys() == fresh.keys()
    for image, record in fresh.items():
        assert [item["label"] for item in retried[image]["labels"]] == [item["label"] for item in record["labels"]]
        np.testing.assert_allclose(retried[image]["scores"], record["scores"], atol=1e-5)


def test_a_file_size_limit_in_a_dataloader_worker_ends_the_run_in_one_line_and_resume_completes(model_folder, tmp_path):
    """`ulimit -f`: a worker cannot put its batch in shared memory. The run ends (no hang) with one line naming the
    cause and exit status 2; the records written before stay, and --resume without the limit completes them."""
    import resource
    import subprocess
    import sys

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(8):
        write_image(photos / f"image{index:02d}.png", index)
    output = tmp_path / "tags.jsonl"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    options = ["--output", str(output), "--batch-size", "2", "--num-workers", "1"]
    command = [sys.executable, "-m", "srn_hf.cli", "predict", model_folder]
    first = sorted(str(path) for path in photos.iterdir())[:4]
    assert subprocess.run([*command, *first, *options], env=environment, capture_output=True).returncode == 0

    def limit_file_size():  # a batch of 2 x 3 x 64 x 64 float32 is 98 kB; the records are far smaller
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    limited = subprocess.run(
        [*command, str(photos), *options, "--resume"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,  # a hang fails here
        preexec_fn=limit_file_size,
    )
    assert limited.returncode == 2, limited.stderr[-3000:]
    errors = [line for line in limited.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("srn-hf predict: error: a DataLoader worker failed ("), errors
    assert "File too large" in errors[0] and errors[0].endswith("the records written so far stay, --resume continues")
    assert sorted(record["image"] for record in records(output)) == first  # what was written stays valid

    resumed = subprocess.run(
        [*command, str(photos), *options, "--resume"], env=environment, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(record["image"] for record in records(output)) == sorted(str(path) for path in photos.iterdir())
