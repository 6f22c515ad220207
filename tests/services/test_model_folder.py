"""Bad model folders and bad values: a one-line refusal naming the file or the field, exit status 2, before any
forward pass; a traceback only with --debug."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from helpers import save_with_processor, save_with_weight_value, small_srn, write_imagefolder
from PIL import Image
from transformers import pipeline

from srn_hf import cli
from srn_hf.model_folder import ModelFolderError, load_model
from srn_hf.pipeline_srn import TASK

LABELS = {0: "cat", 1: "dog"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_with_processor(small_srn(LABELS), tmp_path_factory.mktemp("srn"))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return str(path)


def broken_copy(model_folder, tmp_path, **config_values):
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **config_values}))
    return folder


def refusal(capsys, *argv) -> str:
    """The stderr of `srn-hf ARGV` that must exit 2 with a single line."""
    status = cli.main([*map(str, argv)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_missing_folder(capsys, image, tmp_path):
    err = refusal(capsys, "predict", tmp_path / "no" / "such" / "model", image)
    assert err == f"srn-hf predict: error: model folder {tmp_path / 'no' / 'such' / 'model'} does not exist"


def test_truncated_weights(capsys, model_folder, image, tmp_path):
    folder = broken_copy(model_folder, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    err = refusal(capsys, "predict", folder, image)
    assert err.startswith(f"srn-hf predict: error: {weights}: truncated or corrupt safetensors file (100000 bytes")
    err = refusal(capsys, "publish", folder, "--repo-id", "org/srn", "--dry-run", tmp_path / "out")
    assert f"{weights}: truncated" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "values, named",
    [
        ({"alpha": "x"}, ("alpha", "'x'")),
        ({"threshold": 1.5}, ("threshold", "1.5")),
        ({"threshold": "0.3"}, ("threshold", "'0.3'")),
        ({"label_thresholds": {"cat": 2.0}}, ("label_thresholds", "2.0")),
    ],
)
def test_config_values_of_the_wrong_type_or_out_of_range(capsys, model_folder, image, tmp_path, values, named):
    folder = broken_copy(model_folder, tmp_path, **values)
    err = refusal(capsys, "predict", folder, image)
    assert err.startswith(f"srn-hf predict: error: {folder / 'config.json'}: ")
    assert all(word in err for word in named), err
    with pytest.raises(ModelFolderError, match="config.json"):
        load_model(folder)


def test_debug_shows_the_traceback(model_folder, image, tmp_path):
    folder = broken_copy(model_folder, tmp_path, alpha="x")
    with pytest.raises(ModelFolderError, match="alpha"):
        cli.main(["predict", str(folder), image, "--debug"])
    with pytest.raises(ModelFolderError, match="alpha"):
        cli.main(["--debug", "predict", str(folder), image])


def test_an_unexpected_error_is_one_line_too_with_exit_1(capsys, monkeypatch, model_folder):
    def broken(args):
        raise RuntimeError("something inside went wrong")

    monkeypatch.setattr(cli, "run_publish", broken)
    status = cli.main(["publish", model_folder, "--repo-id", "org/srn"])
    err = capsys.readouterr().err
    assert status == 1
    assert (
        err == "srn-hf publish: error: something inside went wrong (RuntimeError; run with --debug for the traceback)\n"
    )


def test_pipeline_refuses_bad_values_before_the_forward_pass(model_folder, image, tmp_path, monkeypatch):
    tagger = pipeline(TASK, model=model_folder)
    forward_calls = []
    monkeypatch.setattr(tagger.model, "forward", lambda *args, **kwargs: forward_calls.append(args))
    with pytest.raises(ValueError, match=r"threshold='0.3' must be a number in \[0, 1\], not a str"):
        tagger(image, threshold="0.3")
    with pytest.raises(ValueError, match=r"top_k=True must be a positive integer"):
        tagger(image, top_k=True)
    with pytest.raises(ValueError, match=r"label_thresholds\['cat'\]=True must be a number"):
        tagger(image, label_thresholds={"cat": True})
    assert forward_calls == []
    folder = broken_copy(model_folder, tmp_path, threshold=1.5)
    with pytest.raises(ValueError, match=r"threshold=1.5 must lie in \[0, 1\]"):
        pipeline(TASK, model=str(folder))  # at construction, not after the first forward pass


# ---------------------------------------------------------------------------------------------------------------
# Second sweep: a config of another label count than its weights, a read-only model folder for calibrate --write,
# export sizes out of range, one bad image among an exported model's inputs


def test_a_config_of_another_label_count_than_the_weights_is_refused_from_the_headers(
    capsys, model_folder, image, tmp_path
):
    labels = {str(index): f"label{index}" for index in range(100_000)}  # over weights of 2 labels
    folder = broken_copy(
        model_folder, tmp_path, id2label=labels, label2id={name: int(index) for index, name in labels.items()}
    )
    err = refusal(capsys, "predict", folder, image)
    assert err.startswith(f"srn-hf predict: error: {folder / 'model.safetensors'}: ")
    assert "srn.classifier.weight has 2 rows" in err and "has 100000 labels (id2label)" in err
    assert "of different models" in err
    with pytest.raises(ModelFolderError, match="100000 labels"):
        load_model(folder)


@pytest.fixture
def read_only_model(model_folder, tmp_path):
    """A copy of the model in a folder that refuses writes: a read-only file system (as root), else mode 555."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    mounted = os.geteuid() == 0
    if mounted:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)]).returncode:
            pytest.skip("cannot mount a tmpfs")
    shutil.copytree(model_folder, folder, dirs_exist_ok=True)
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    yield folder, "read-only file system" if mounted else "permission denied"
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def test_calibrate_write_on_a_read_only_folder_is_refused_before_scoring(
    capsys, read_only_model, tmp_path, monkeypatch
):
    from helpers import write_imagefolder

    from srn_hf import scoring
    from srn_hf.storage import StorageError, write_text_file

    folder, cause = read_only_model
    before = (folder / "config.json").read_bytes()
    data_dir = write_imagefolder(tmp_path / "data", {"train": [["cat"], ["dog"]], "validation": [["cat"], ["dog"]] * 3})
    scored = []
    real = scoring.calibrate_model_folder
    monkeypatch.setattr(scoring, "calibrate_model_folder", lambda *args: scored.append(args) or real(*args))
    err = refusal(
        capsys, "calibrate", folder, "--data", "imagefolder", "--data-option", f"data_dir={data_dir}", "--write"
    )
    assert err.startswith(f"srn-hf calibrate: error: cannot write {folder}: {cause} (")
    assert scored == []  # refused before the split was scored
    assert (folder / "config.json").read_bytes() == before
    # The file writer itself names the file, not its temporary `.partial`, when the file system refuses.
    with pytest.raises(StorageError, match=rf"^cannot write {folder / 'config.json'}: {cause} \("):
        write_text_file(folder / "config.json", "{}")


@pytest.mark.parametrize(
    "size, message", [("0", "is too small"), ("31", "is too small"), ("100000", "is too large: at most 4096")]
)
def test_export_sizes_out_of_range_are_refused_before_the_model_loads(capsys, model_folder, tmp_path, size, message):
    err = refusal(capsys, "export", model_folder, tmp_path / "out", "--image-size", size)
    assert err.startswith(f"srn-hf export: error: --image-size {size} {message}")
    assert not (tmp_path / "out").exists()


def test_exported_tagger_gives_an_error_for_the_bad_image_only(model_folder, image, tmp_path):
    pytest.importorskip("onnxruntime")
    from srn_hf.export import ExportedTagger, export_model
    from srn_hf.images import ImageError

    export_model(model_folder, tmp_path / "exported", "onnx", image_size=64)
    tagger = ExportedTagger(tmp_path / "exported")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    results = tagger([image, str(bad), image])
    assert isinstance(results[1], ImageError) and str(results[1]).startswith(str(bad))
    alone = tagger([image])[0]
    for result in (results[0], results[2]):  # the good images' labels, as alone
        assert [item["label"] for item in result] == [item["label"] for item in alone]
        np.testing.assert_allclose([item["score"] for item in result], [item["score"] for item in alone], atol=1e-5)
    only_bad = tagger([str(bad)])
    assert len(only_bad) == 1 and isinstance(only_bad[0], ImageError)


# ---------------------------------------------------------------------------------------------------------------
# Third sweep: weights holding NaN or inf are refused at loading, naming the model, by every command that loads one


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_every_command_naming_the_model(capsys, image, tmp_path, value):
    folder = save_with_weight_value(small_srn(LABELS), tmp_path / "model", "srn.classifier.weight", value)
    expected = (
        f"model {folder} has non-finite weights (NaN or inf) in srn.classifier.weight: its scores would be NaN (a "
        "training run that diverged?)"
    )
    with pytest.raises(ModelFolderError) as refused:
        load_model(folder)
    assert str(refused.value) == expected
    data_dir = write_imagefolder(tmp_path / "data", {"train": [["cat"], ["dog"]], "validation": [["cat"], ["dog"]]})
    commands = [
        ("predict", folder, image, "--all-scores", "--output", tmp_path / "tags.jsonl"),
        ("export", folder, tmp_path / "exported"),
        ("calibrate", folder, "--data", "imagefolder", "--data-option", f"data_dir={data_dir}", "--write"),
    ]
    before = (tmp_path / "model" / "config.json").read_bytes()
    capsys.readouterr()
    for argv in commands:
        assert refusal(capsys, *argv) == f"srn-hf {argv[0]}: error: {expected}"
    assert not (tmp_path / "tags.jsonl").exists() and not (tmp_path / "exported").exists()
    assert (tmp_path / "model" / "config.json").read_bytes() == before  # calibrate --write wrote no thresholds
