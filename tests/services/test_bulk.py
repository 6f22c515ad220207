"""Bulk tagging with `srn-hf predict --output`: streamed records, resume after a real SIGKILL, two processes, bad
files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from helpers import accelerate_launch, save_with_processor, small_srn
from PIL import Image

from srn_hf.bulk import file_sources, tag_images
from srn_hf.cli import main

LABELS = {0: "cat", 1: "dog", 2: "car", 3: "tree"}
ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_with_processor(small_srn(LABELS, image_size=64), tmp_path_factory.mktemp("srn"))


def write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` small PNG and JPEG images of random colour blobs, in two subfolders; their paths, sorted."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"part{index % 2}" / f"image{index:05d}.{'png' if index % 3 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((12, 12, 1), dtype=np.uint8))
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return sorted(paths)


def write_bad_files(folder: Path) -> list[str]:
    """A truncated JPEG, a text file named .png and an empty .jpg: real bad files."""
    good = folder / "whole.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.png").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    return [str(folder / name) for name in ("truncated.jpg", "notes.png", "empty.jpg")]


def predict(*argv) -> int:
    return main(["predict", *map(str, argv)])


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def by_image(records) -> dict:
    return {record["image"]: record for record in records}


def assert_same_records(first: dict, second: dict) -> None:
    """The same images, labels and (to float rounding of other batch compositions) scores."""
    assert first.keys() == second.keys()
    for key, record in first.items():
        other = second[key]
        assert [item["label"] for item in record["labels"]] == [item["label"] for item in other["labels"]], key
        assert record["error"] == other["error"]
        if record.get("scores") is not None:
            np.testing.assert_allclose(record["scores"], other["scores"], atol=1e-5)


def test_jsonl_and_parquet_read_back_with_datasets(model_folder, tmp_path, capsys):
    images = write_images(tmp_path / "photos", 12)
    bad = write_bad_files(tmp_path / "photos")
    for name in ("tags.jsonl", "tags.parquet"):
        status = predict(
            model_folder, tmp_path / "photos", "--output", tmp_path / name, "--all-scores", "--batch-size", 5
        )
        assert status == 1  # three bad files, reported, the other images predicted
    err = capsys.readouterr().err
    assert "truncated.jpg" in err and "3 of 15 images could not be predicted" in err

    jsonl = load_dataset(
        "json", data_files=str(tmp_path / "tags.jsonl"), split="train", cache_dir=str(tmp_path / "cache")
    )
    parquet = load_dataset(
        "parquet", data_files=str(tmp_path / "tags.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert jsonl.num_rows == parquet.num_rows == 15
    assert sorted(jsonl["image"]) == sorted(parquet["image"]) == sorted(images + bad)
    assert_same_records(by_image(jsonl.to_list()), by_image(parquet.to_list()))

    # Each record is what the pipeline gives for that image: the labels above the config's threshold, best first.
    from transformers import pipeline

    tagger = pipeline("multi-label-image-classification", model=model_folder)
    records = by_image(jsonl.to_list())
    for image in images[:3]:
        expected = tagger(image)
        assert [item["label"] for item in records[image]["labels"]] == [item["label"] for item in expected]
        np.testing.assert_allclose(
            [item["score"] for item in records[image]["labels"]], [item["score"] for item in expected], atol=1e-5
        )
        assert len(records[image]["scores"]) == len(LABELS)
    for image in bad:
        assert records[image]["labels"] == [] and records[image]["scores"] is None
        assert records[image]["error"].startswith(image)


def test_bad_files_in_a_large_folder_do_not_stop_the_run(model_folder, tmp_path, capsys):
    images = write_images(tmp_path / "photos", 300)
    bad = write_bad_files(tmp_path / "photos" / "part1")
    output = tmp_path / "tags.jsonl"
    assert predict(model_folder, tmp_path / "photos", "--output", output, "--batch-size", 16, "--num-workers", 2) == 1
    records = by_image(read_jsonl(output))
    assert sorted(records) == sorted(images + bad)
    assert all(records[image]["error"] is None for image in images)
    reasons = {image: records[image]["error"] for image in bad}
    assert "truncated or corrupt" in reasons[bad[0]] and "not an image file" in reasons[bad[1]]
    assert all(reason.startswith(image) for image, reason in reasons.items())
    err = capsys.readouterr().err
    assert all(image in err for image in bad) and "3 of 303 images could not be predicted" in err


def test_a_killed_run_resumed_gives_one_record_per_image(model_folder, tmp_path):
    images = write_images(tmp_path / "photos", 600)
    output = tmp_path / "tags.jsonl"
    command = [
        sys.executable,
        "-m",
        "srn_hf.cli",
        "predict",
        model_folder,
        str(tmp_path / "photos"),
        "--output",
        str(output),
        "--batch-size",
        "2",
        "--num-workers",
        "1",
        "--all-scores",
    ]
    log = open(tmp_path / "killed.log", "w")  # a file, not a pipe: a full pipe would stall the run
    run = subprocess.Popen(command, env=ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run.poll() is None:
        if output.exists() and output.read_bytes().count(b"\n") >= 40:
            break
        time.sleep(0.005)
    os.killpg(run.pid, signal.SIGKILL)  # the run and its DataLoader worker, mid-way
    run.wait()
    log.close()
    assert run.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    written = output.read_bytes().count(b"\n")
    assert 40 <= written < len(images), "the kill must land mid-run"

    resumed = subprocess.run([*command, "--resume"], env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "already in" in resumed.stderr
    records = read_jsonl(output)
    assert sorted(record["image"] for record in records) == images  # exactly one record per image

    reference = tmp_path / "reference.jsonl"
    assert predict(model_folder, tmp_path / "photos", "--output", reference, "--batch-size", 8, "--all-scores") == 0
    assert_same_records(by_image(records), by_image(read_jsonl(reference)))


def test_parquet_resume_merges_old_and_new_records(model_folder, tmp_path):
    from transformers import pipeline

    images = write_images(tmp_path / "photos", 20)
    tagger = pipeline("multi-label-image-classification", model=model_folder)
    output = tmp_path / "tags.parquet"
    first = tag_images(tagger, file_sources(images[:7]), model_folder, output=output, part_rows=3, num_workers=0)
    assert (first.predicted, first.skipped) == (7, 0)
    second = tag_images(tagger, file_sources(images), model_folder, output=output, resume=True, part_rows=3)
    assert (second.predicted, second.skipped) == (13, 7)
    table = load_dataset("parquet", data_files=str(output), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(table["image"]) == images
    assert not output.with_name("tags.parquet.parts").exists()  # merged into the one file


def test_resume_refuses_another_model_or_label_set(model_folder, tmp_path, capsys):
    images = write_images(tmp_path / "photos", 3)
    output = tmp_path / "tags.jsonl"
    assert predict(model_folder, *images[:2], "--output", output) == 0
    before = output.read_text()
    other_weights = save_with_processor(small_srn(LABELS, seed=1, image_size=64), tmp_path / "other")
    other_labels = save_with_processor(small_srn({0: "cat", 1: "bird"}, image_size=64), tmp_path / "labels")
    cases = [
        ((model_folder, *images, "--output", output), "exists: pass --resume"),
        ((other_weights, *images, "--output", output, "--resume"), "written by another model"),
        ((other_labels, *images, "--output", output, "--resume"), "for another label set"),
        ((model_folder, *images, "--output", output, "--resume", "--threshold", "0.2"), "written with thresholds ["),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert predict(*argv) == 2
        err = capsys.readouterr().err
        assert message in err and len([line for line in err.splitlines() if "error" in line]) == 1, err
    assert output.read_text() == before  # nothing written by the refused runs


@pytest.mark.parametrize("kind", ["missing folder", "a folder", "bad suffix"])
def test_unwritable_output_refused_before_the_first_image(model_folder, tmp_path, capsys, kind):
    images = write_images(tmp_path / "photos", 2)
    output = {
        "missing folder": tmp_path / "nowhere" / "tags.jsonl",
        "a folder": tmp_path / "photos",
        "bad suffix": tmp_path / "tags.csv",
    }[kind]
    if kind == "a folder":
        output = tmp_path / "dir.jsonl"
        output.mkdir()
    assert predict(model_folder, *images, "--output", output) == 2
    err = capsys.readouterr().err
    assert str(output) in err and len([line for line in err.splitlines() if "error" in line]) == 1, err
    assert "predict:" not in err.replace("srn-hf predict:", "")  # no progress: no image was opened


def fill_up(disk: Path, leave: int) -> Path:
    """A ballast file that leaves about `leave` bytes free on `disk`; delete it to free the space again."""
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * max(0, os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - leave))
    return ballast


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_full_disk_is_one_line_naming_the_file_and_resume_completes(
    model_folder, tmp_path, small_disk, capsys, suffix
):
    """A real full disk (a 2 MB tmpfs, nearly filled) mid-run: exit status 2, one line naming the file being written
    and the free space; what was written stays whole, and --resume after freeing space gives one record per image."""
    images = write_images(tmp_path / "photos", 40)
    output = small_disk / f"tags{suffix}"
    ballast = fill_up(small_disk, leave=12_000)  # the meta file, then a few batches of records
    assert (
        predict(model_folder, *images, "--output", output, "--batch-size", 2, "--num-workers", 0, "--all-scores") == 2
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"srn-hf predict: error: cannot write {output}: no space left"), (
        err
    )
    assert errors[0].endswith("free of 2.1 MB)") and "Traceback" not in err, err
    if suffix == ".jsonl":  # complete records only: the batch that did not fit was cut back off
        written = read_jsonl(output)
        assert 0 < len(written) < len(images) and output.read_bytes().endswith(b"\n")
    assert not [path.name for path in small_disk.rglob("*.tmp")] + [path.name for path in small_disk.rglob("*.partial")]

    ballast.unlink()
    assert (
        predict(
            model_folder, *images, "--output", output, "--resume", "--batch-size", 2, "--num-workers", 0, "--all-scores"
        )
        == 0
    )
    records = read_jsonl(output) if suffix == ".jsonl" else pq_records(output)
    assert sorted(record["image"] for record in records) == images  # exactly one record per image


def pq_records(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_file_list_and_a_datasets_source_give_the_same_records(model_folder, tmp_path):
    images = write_images(tmp_path / "data", 6)
    (tmp_path / "data" / "metadata.jsonl").write_text(
        "".join(
            json.dumps({"file_name": os.path.relpath(image, tmp_path / "data"), "labels": ["cat"]}) + "\n"
            for image in images
        )
    )
    (tmp_path / "list.txt").write_text("\n".join(images) + "\n")
    assert (
        predict(
            model_folder, "--file-list", tmp_path / "list.txt", "--output", tmp_path / "files.jsonl", "--all-scores"
        )
        == 0
    )
    data_argv = [
        "--data",
        "imagefolder",
        "--data-option",
        f"data_dir={tmp_path / 'data'}",
        "--data-option",
        "validation_fraction=0",
    ]
    assert predict(model_folder, *data_argv, "--output", tmp_path / "rows.jsonl", "--all-scores") == 0
    files, rows = read_jsonl(tmp_path / "files.jsonl"), read_jsonl(tmp_path / "rows.jsonl")
    assert [record["image"] for record in files] == images
    ids = [record["image"] for record in rows]  # the dataset's image_id
    assert len(ids) == len(set(ids)) == len(images)
    for record, image in zip(files, images):  # rows in the dataset's order, matched by image id
        match = next(row for row in rows if image.endswith(row["image"]))
        np.testing.assert_allclose(record["scores"], match["scores"], atol=1e-5)


@pytest.mark.multiprocess
def test_two_processes_give_the_same_records_as_one(model_folder, tmp_path):
    images = write_images(tmp_path / "photos", 45)
    bad = write_bad_files(tmp_path / "photos")
    for name in ("two.jsonl", "two.parquet"):
        command = accelerate_launch(
            2,
            *("-m", "srn_hf.cli", "predict", model_folder, str(tmp_path / "photos"), "--output", str(tmp_path / name)),
            *("--all-scores", "--batch-size", "4"),
        )
        completed = subprocess.run(command, env=ENVIRONMENT, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 1, completed.stderr[-3000:]  # the bad files, counted over both processes
        assert "3 of 48 images could not be predicted" in completed.stderr
        assert "24/24" in completed.stderr  # the first process's progress bar: its share, half of the images
    assert predict(model_folder, tmp_path / "photos", "--output", tmp_path / "one.jsonl", "--all-scores") == 1
    one = read_jsonl(tmp_path / "one.jsonl")
    two = read_jsonl(tmp_path / "two.jsonl")
    two_parquet = load_dataset(
        "parquet", data_files=str(tmp_path / "two.parquet"), split="train", cache_dir=str(tmp_path / "c")
    )
    assert len(two) == len(one) == two_parquet.num_rows == len(images) + len(bad)  # nothing twice, nothing missing
    assert_same_records(by_image(one), by_image(two))
    assert_same_records(by_image(one), by_image(two_parquet.to_list()))
    assert not (tmp_path / "two.jsonl.parts").exists()
