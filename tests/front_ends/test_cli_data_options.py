"""`--data-option KEY=VALUE` has one meaning in every `srn-hf` command: the value is parsed as YAML."""

import json

import pytest
from helpers import save_with_processor, small_srn
from PIL import Image

from srn_hf.bulk import BulkError, parse_data_options
from srn_hf.cli import main


def test_values_are_yaml():
    options = parse_data_options(["a=yes", "b=[dog, cat]", "c={train: a.csv}", "d=0.1", "e=photos", "f=", "g=x=y"])
    assert options == {
        "a": True,
        "b": ["dog", "cat"],
        "c": {"train": "a.csv"},
        "d": 0.1,
        "e": "photos",
        "f": None,
        "g": "x=y",
    }
    with pytest.raises(BulkError, match=r"data_options item 'b=\[dog': the value is not YAML"):
        parse_data_options(["b=[dog"])
    with pytest.raises(BulkError, match="is not KEY=VALUE"):
        parse_data_options(["missing-equals"])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A model over labels cat, dog, and a labelled folder in which only `dog` appears (so `label_names` is needed)."""
    root = tmp_path_factory.mktemp("options")
    model = save_with_processor(small_srn({0: "cat", 1: "dog"}, image_size=64), root / "model")
    data = root / "labelled"
    data.mkdir()
    lines = []
    for index in range(6):
        Image.new("RGB", (32, 32), (40 * index, 90, 20)).save(data / f"{index}.png")
        lines.append(json.dumps({"file_name": f"{index}.png", "labels": ["dog"] if index % 2 else []}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return model, data


@pytest.mark.parametrize("command", ["predict", "calibrate"])
def test_a_yaml_list_reaches_the_loader_in_every_command(command, labelled, capsys):
    """`label_names=[cat, dog]` is a list for `predict` as for `calibrate` (JSON would leave it a string)."""
    model, data = labelled
    options = [
        "--data",
        "imagefolder",
        "--data-option",
        f"data_dir={data}",
        "--data-option",
        "label_names=[cat, dog]",
        "--data-option",
        "validation_fraction=0.5",
    ]
    argv = [command, str(model), *options, "--split", "validation"] + (["--json"] if command == "predict" else [])
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    if command == "predict":
        assert len(json.loads(captured.out)) == 3  # the validation half of the 6 images
    else:
        assert "validation split" in captured.out
