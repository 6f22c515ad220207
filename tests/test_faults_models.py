"""Bad model folders and bad values: a one-line refusal naming the file or the field, exit status 2, before any
forward pass; a traceback only with --debug."""

import json
import shutil

import numpy as np
import pytest
from conftest import save_with_processor, small_srn
from PIL import Image
from transformers import pipeline

from srn_hf import cli
from srn_hf.hub import ModelFolderError, load_model
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
    assert err == "srn-hf publish: error: something inside went wrong (RuntimeError; run with --debug for the traceback)\n"


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
    with pytest.raises(ValueError, match=r"threshold=1.5: thresholds must lie in \[0, 1\]"):
        pipeline(TASK, model=str(folder))  # at construction, not after the first forward pass
