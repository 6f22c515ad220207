"""`srn-hf predict MODEL IMAGE_OR_DIR... [--threshold T] [--top-k K] [--json] [--save-attention DIR]`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import save_with_processor, save_with_weight_value, small_srn
from PIL import Image

from srn_hf.bulk import BulkError, check_output
from srn_hf.cli import FLAGS, flag_worded, main

LABELS = {0: "cat", 1: "dog", 2: "car"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_with_processor(small_srn(LABELS), tmp_path_factory.mktemp("srn"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of 4 images (one nested, one that is not an image) and one image outside it."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "nested").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "nested/a.png"):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.jpg").write_text("not an image")
    single = tmp_path_factory.mktemp("single") / "c.png"
    Image.new("RGB", (30, 30), (0, 128, 0)).save(single)
    return folder, single


def run(capsys, *argv):
    status = main(["predict", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_json_attention_and_a_bad_file(capsys, model_folder, photos, tmp_path):
    folder, single = photos
    status, out, err = run(
        capsys, model_folder, folder, single, "--json", "--threshold", "0", "--save-attention", tmp_path
    )
    assert status == 1  # one file failed, the others were predicted
    records = json.loads(out)
    images = [str(folder / name) for name in ("a.png", "b.jpg", "broken.jpg", "nested/a.png")] + [str(single)]
    assert [record["image"] for record in records] == sorted(images[:4]) + images[4:]
    for record in records:
        if record["image"].endswith("broken.jpg"):
            assert record["labels"] == [] and "broken.jpg" in record["error"] and "attention" not in record
        else:
            assert record["error"] is None and len(record["labels"]) == 3  # threshold 0: every label
            assert Image.open(record["attention"]).format == "PNG"
    pictures = sorted(path.name for path in tmp_path.iterdir())
    assert pictures == ["a_1_attention.png", "a_attention.png", "b_attention.png", "c_attention.png"]
    assert "1 of 5 images could not be predicted" in err


def test_text_output_thresholds_and_top_k(capsys, model_folder, photos):
    folder, single = photos
    status, out, _ = run(capsys, model_folder, single, folder / "a.png", "--top-k", "2", "--threshold", "0")
    assert status == 0
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(single), str(folder / "a.png")]
    assert all(len(line.split("\t")[1].split(", ")) == 2 for line in lines)

    status, out, _ = run(capsys, model_folder, single, "--json", "--threshold", "1")
    assert status == 0 and json.loads(out)[0]["labels"] == []  # no sigmoid score exceeds 1

    status, out, _ = run(capsys, model_folder, single, "--json", "--threshold", "1", "--label-threshold", "dog=0")
    assert [item["label"] for item in json.loads(out)[0]["labels"]] == ["dog"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label-threshold", "dog"], "is not LABEL=THRESHOLD"),
        (["--label-threshold", "cow=0.5"], "labels the model does not have"),
        (["--top-k", "0"], "--top-k 0"),
    ],
)
def test_bad_arguments_exit_2(capsys, model_folder, photos, extra, message):
    status, _, err = run(capsys, model_folder, photos[1], *extra)
    assert status == 2 and message in err


def test_library_errors_name_parameters_and_the_command_line_its_flags(tmp_path, model_folder, photos, capsys):
    output = tmp_path / "tags.jsonl"
    output.write_text("")
    with pytest.raises(BulkError) as refusal:
        check_output(output, resume=False)
    assert str(refusal.value) == f"output={output} exists: pass resume=True to continue it, or choose another file"
    status, _, err = run(capsys, model_folder, photos[1], "--output", output)
    assert status == 2
    assert (
        err
        == f"srn-hf predict: error: --output {output} exists: pass --resume to continue it, or choose another file\n"
    )
    # name=True and name=... are the flag, name='value' and name=value the flag and the value, `name item` the flag.
    message = (
        "resume=True with output=... and split='test', data_options item 'a', file_list=b c, metadata=x, data.split=y"
    )
    worded = "--resume with --output and --split test, --data-option 'a', --file-list b c, metadata=x, data.split=y"
    assert flag_worded(message, FLAGS["predict"]) == worded


def test_no_images_exit_2(capsys, model_folder, tmp_path):
    status, _, err = run(capsys, model_folder, tmp_path)
    assert status == 2 and err == f"srn-hf predict: error: no image files in {tmp_path}\n"
    status, _, err = run(capsys, model_folder)  # nothing given at all: said so, not "no image files in"
    assert (status, err) == (
        2,
        "srn-hf predict: error: no image source given: pass IMAGE_OR_DIR, --file-list FILE or --data KIND\n",
    )


def test_a_pipe_closed_by_head_ends_the_command_quietly(model_folder, tmp_path):
    """`srn-hf predict MODEL photos/ | head -n 1`: a real pipe; once head has gone, the command stops like other
    Unix tools, without a traceback or a "Broken pipe" message, exit status 141 (SIGPIPE's) or 0."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(12):
        Image.new("RGB", (32, 32), (index * 20, 0, 0)).save(photos / f"image{index:02d}.png")
    command = [sys.executable, "-m", "srn_hf.cli", "predict", model_folder, str(photos), "--threshold", "0"]
    command += ["--batch-size", "1", "--num-workers", "0"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    predict = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    head = subprocess.Popen(["head", "-n", "1"], stdin=predict.stdout, stdout=subprocess.PIPE, text=True)
    predict.stdout.close()  # head alone reads the pipe
    first_line, _ = head.communicate(timeout=300)
    stderr = predict.stderr.read()
    status = predict.wait(timeout=300)
    assert first_line.startswith(str(photos / "image00.png"))
    assert status in (0, 141), stderr
    assert "Broken pipe" not in stderr and "Traceback" not in stderr and "error" not in stderr, stderr


def test_console_script(model_folder, photos):
    folder, single = photos
    command = [sys.executable, "-m", "srn_hf.cli", "predict", model_folder, str(folder), "--threshold", "0"]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert completed.returncode == 1, completed.stderr
    assert len(completed.stdout.strip().splitlines()) == 3
    assert "broken.jpg" in completed.stderr and "predict: 100%" in completed.stderr  # the progress bar


def test_scores_that_overflow_are_refused_at_the_first_batch_never_written(capsys, photos, tmp_path):
    """Finite weights whose logits overflow to inf (f_cls's weights near float32's largest value): refused in one line
    naming the model, before any record is written; NaN never reaches the JSON output."""
    folder = save_with_weight_value(small_srn(LABELS), tmp_path / "model", "srn.classifier.weight", 3e38)
    output = tmp_path / "tags.jsonl"
    status, out, err = run(capsys, folder, photos[1], "--all-scores", "--output", output)
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(
        f"srn-hf predict: error: model {folder} gave non-finite scores (3 of 3 logits are NaN or inf)"
    )
    assert not output.exists() or "inf" not in output.read_text().lower()
    status, out, err = run(capsys, folder, photos[1], "--json", "--all-scores")
    assert status == 2 and json.loads(out) == []  # a valid JSON list, with no record


def test_record_writers_refuse_nan_rather_than_write_invalid_json(tmp_path, capsys):
    """The guard behind the checks of the scores: JSON has no NaN, so a record holding one is never written."""
    from srn_hf.bulk import JsonlWriter, StdoutWriter

    record = {"image": "a.png", "labels": [], "error": None, "scores": [float("nan")]}
    writer = JsonlWriter(tmp_path / "tags.jsonl")
    with pytest.raises(ValueError, match="not JSON compliant"):
        writer.write([record])
    writer.close()
    assert (tmp_path / "tags.jsonl").read_text() == ""
    with pytest.raises(ValueError, match="not JSON compliant"):
        StdoutWriter(as_json=True).write([record])
    assert "NaN" not in capsys.readouterr().out
