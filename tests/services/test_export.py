"""`srn-hf export`: an ONNX graph (dynamo exporter) and a torch.export program, in a folder usable alone, with
parity."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import save_with_processor, small_srn
from PIL import Image
from skimage import data
from transformers import pipeline

from srn_hf.cli import main
from srn_hf.export import ExportedTagger
from srn_hf.pipeline_srn import TASK

LABELS = dict(
    enumerate(["person", "cat", "cup", "rocket", "motorcycle", "horse", "sky", "tree", "car", "dog", "book", "chair"])
)
# Real photos that scikit-image ships (public domain or CC0): seven, for a batch of 7.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "immunohistochemistry")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in PHOTOS:
        path = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_with_processor(small_srn(LABELS, image_size=128), tmp_path_factory.mktemp("srn"))


@pytest.fixture(scope="module")
def onnx_folder(model_folder, tmp_path_factory):
    """The ONNX export with both outputs, moved away from the model folder, which is then deleted: usable alone."""
    out = tmp_path_factory.mktemp("exports") / "onnx"
    assert main(["export", model_folder, str(out), "--format", "onnx", "--attention-maps"]) == 0
    alone = tmp_path_factory.mktemp("alone") / "onnx"
    shutil.copytree(out, alone)
    return alone


def pixel_values(folder, paths) -> torch.Tensor:
    from transformers import AutoImageProcessor

    images = [Image.open(path).convert("RGB") for path in paths]
    return AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runtime_matches_pytorch(model_folder, onnx_folder, photos, batch):
    model = small_srn(LABELS, image_size=128)
    inputs = pixel_values(model_folder, photos[:batch])
    with torch.no_grad():
        expected = model(pixel_values=inputs)
    tagger = ExportedTagger(onnx_folder)
    outputs = tagger.outputs(inputs.numpy())
    assert outputs["logits"].shape == (batch, len(LABELS))
    assert np.abs(outputs["logits"] - expected.logits.numpy()).max() <= 1e-4
    assert outputs["attention_maps"].shape == tuple(expected.attention_maps.shape)
    assert np.abs(outputs["attention_maps"] - expected.attention_maps.numpy()).max() <= 1e-5

    # The same labels as the pipeline on the same photos (the folder's thresholds are the config's).
    reference = pipeline(TASK, model=model_folder)(photos[:batch], batch_size=batch)
    exported = tagger(photos[:batch])
    assert [[item["label"] for item in labels] for labels in exported] == [
        [item["label"] for item in labels] for labels in reference
    ]
    assert any(exported)  # the photos do get labels: the comparison is not between empty sets


def test_exported_folder_holds_config_processor_and_thresholds(onnx_folder):
    assert sorted(path.name for path in onnx_folder.iterdir()) == [
        "config.json",
        "model.onnx",
        "preprocessor_config.json",
        "thresholds.json",
    ]
    record = json.loads((onnx_folder / "thresholds.json").read_text())
    assert record["labels"] == list(LABELS.values()) and record["thresholds"] == [0.5] * len(LABELS)
    assert record["outputs"] == ["logits", "attention_maps"] and record["thresholds_from"] == "float32 model"
    assert json.loads((onnx_folder / "config.json").read_text())["id2label"]["3"] == "rocket"


def test_an_export_folder_config_says_what_it_is_and_names_no_missing_code(onnx_folder, tmp_path, capsys):
    """config.json names the export format and no remote code (auto_map, custom_pipelines) the folder lacks;
    AutoConfig loads it; loading it as a torch model is refused, naming what the folder is."""
    from transformers import AutoConfig

    from srn_hf.model_folder import ModelFolderError, load_model

    values = json.loads((onnx_folder / "config.json").read_text())
    assert values["export_format"] == "onnx"
    assert "auto_map" not in values and "custom_pipelines" not in values
    named = [value.split(".")[0] + ".py" for value in json.dumps(values).split('"') if value.startswith("modeling_")]
    assert all((onnx_folder / name).is_file() for name in named)
    config = AutoConfig.from_pretrained(onnx_folder)
    assert config.model_type == "srn" and config.export_format == "onnx" and config.id2label[3] == "rocket"
    with pytest.raises(ModelFolderError, match="is an export folder .export_format 'onnx' in its config.json"):
        load_model(onnx_folder)
    capsys.readouterr()
    assert main(["export", str(onnx_folder), str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an export folder" in err[0] and "ExportedTagger" in err[0]


def test_torch_export_program_and_its_fast_path(model_folder, photos, tmp_path):
    assert main(["export", model_folder, str(tmp_path / "pt2"), "--format", "torch-export"]) == 0
    assert (
        main(
            [
                "export",
                model_folder,
                str(tmp_path / "fast"),
                "--format",
                "torch-export",
                "--fast",
                "--image-size",
                "160",
            ]
        )
        == 0
    )
    model = small_srn(LABELS, image_size=128)
    inputs = pixel_values(model_folder, photos)
    with torch.no_grad():
        expected = model(pixel_values=inputs).logits.numpy()
    assert np.abs(ExportedTagger(tmp_path / "pt2").logits(inputs.numpy()) - expected).max() <= 1e-5
    fast = ExportedTagger(tmp_path / "fast")
    assert json.loads((tmp_path / "fast" / "preprocessor_config.json").read_text())["size"] == {
        "height": 160,
        "width": 160,
    }
    fast_logits = fast.logits(pixel_values(tmp_path / "fast", photos[:3]).numpy())
    assert fast_logits.shape == (3, len(LABELS)) and fast_logits.dtype == np.float32


def test_export_refusals_are_one_line_exit_2(model_folder, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    cases = [
        ([model_folder, tmp_path / "a", "--format", "onnx", "--fast"], "ONNX Runtime's CPU provider"),
        ([model_folder, tmp_path / "full"], "is not an empty folder"),
        ([tmp_path / "nothing", tmp_path / "b"], "does not exist"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["export", *map(str, argv)]) == 2
        err = capsys.readouterr().err
        assert message in err and len([line for line in err.splitlines() if "error" in line]) == 1, err


def test_a_full_disk_is_one_line_and_leaves_no_half_export(model_folder, small_disk, capsys):
    """A real full disk (a 2 MB tmpfs; the weights alone are more): exit status 2, one line naming the folder and the
    free space, and nothing left on the disk that looks like an export."""
    out_dir = small_disk / "onnx"
    assert main(["export", model_folder, str(out_dir)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"srn-hf export: error: cannot write {out_dir}: no space left"), (
        err
    )
    assert list(small_disk.iterdir()) == []
