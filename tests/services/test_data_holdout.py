"""Validation and test splits held out of a single train split: seeded, stratified per label (srn_hf.data.holdout)."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from srn_hf import SRNConfig
from srn_hf.data import label_names, load_multilabel_dataset, with_multilabel_transforms
from srn_hf.data.holdout import split_summary, stratified_holdout
from srn_hf.processing import create_image_processor

NAMES = ["common", "uncommon", "rare", "single"]


def skewed_labels(rows: int = 200, seed: int = 0) -> list[list[int]]:
    """Labels of `rows` images: `common` on half, `uncommon` on about 10 %, `rare` on exactly 12, `single` on one."""
    rng = np.random.default_rng(seed)
    labels = [[0] if rng.random() < 0.5 else [] for _ in range(rows)]
    for row in range(rows):
        if rng.random() < 0.1:
            labels[row].append(1)
    for row in rng.choice(rows, 12, replace=False):
        labels[row].append(2)
    labels[int(rng.integers(rows))].append(3)
    return [sorted(set(row)) for row in labels]


def positives(labels, rows, label):
    return sum(label in labels[row] for row in rows)


def test_splits_are_seeded_sized_disjoint_and_stratified():
    labels = skewed_labels()
    fractions = {"validation": 0.1, "test": 0.15}
    held_out = stratified_holdout(labels, len(NAMES), fractions, seed=3)
    assert held_out == stratified_holdout(labels, len(NAMES), fractions, seed=3)
    assert held_out != stratified_holdout(labels, len(NAMES), fractions, seed=4)
    train = sorted(set(range(len(labels))) - set(held_out["validation"]) - set(held_out["test"]))
    assert not set(held_out["validation"]) & set(held_out["test"])
    for split, fraction in fractions.items():
        assert len(held_out[split]) == math.ceil(fraction * len(labels))
        for label in range(3):  # each split gets its share of every label, give or take one image
            total = positives(labels, range(len(labels)), label)
            assert abs(positives(labels, held_out[split], label) - fraction * total) <= 1, (split, NAMES[label])
    # the rare label (12 images) keeps positives in both held-out splits; the single image stays in train
    assert positives(labels, held_out["validation"], 2) >= 1 and positives(labels, held_out["test"], 2) >= 1
    assert positives(labels, train, 3) == 1


def test_a_random_split_would_often_lose_the_rare_label():
    """What the stratification is for: over seeds, a plain random hold-out often leaves a held-out split without
    any image of the rare label, the stratified one never."""
    labels = skewed_labels()
    random_misses = stratified_misses = 0
    for seed in range(20):
        order = np.random.default_rng(seed).permutation(len(labels))
        random_misses += positives(labels, order[:20], 2) == 0
        held_out = stratified_holdout(labels, len(NAMES), {"validation": 0.1}, seed)
        stratified_misses += positives(labels, held_out["validation"], 2) == 0
    assert stratified_misses == 0 and random_misses > 0


def test_fractions_that_leave_no_training_image_are_refused():
    with pytest.raises(ValueError, match="leave no training image of the 10"):
        stratified_holdout([[0]] * 10, 1, {"validation": 0.5, "test": 0.5}, seed=0)


def write_single_folder(root, rows: int = 40):
    """One folder, one metadata.jsonl: the layout a new user starts with."""
    root.mkdir()
    labels = skewed_labels(rows, seed=1)
    lines = []
    for index, row in enumerate(labels):
        Image.new("RGB", (8, 8), (index, 0, 0)).save(root / f"{index}.png")
        lines.append(json.dumps({"file_name": f"{index}.png", "labels": [NAMES[label] for label in row]}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.filterwarnings("ignore::srn_hf.data.DataWarning")
def test_a_single_folder_gets_validation_and_test_splits(tmp_path):
    folder = write_single_folder(tmp_path / "photos")
    dataset = load_multilabel_dataset(
        "imagefolder", data_dir=folder, validation_fraction=0.2, test_fraction=0.2, seed=0
    )
    assert list(dataset) == ["train", "validation", "test"]
    assert dict(dataset.num_rows) == {"train": 24, "validation": 8, "test": 8}
    ids = [set(dataset[split]["image_id"]) for split in dataset]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]) and len(set.union(*ids)) == 40
    again = load_multilabel_dataset("imagefolder", data_dir=folder, validation_fraction=0.2, test_fraction=0.2, seed=0)
    assert again["test"]["image_id"] == dataset["test"]["image_id"]
    assert "test" not in load_multilabel_dataset("imagefolder", data_dir=folder)  # test_fraction defaults to 0

    summary = split_summary(dataset).splitlines()
    assert summary[1].split() == ["train", "validation", "test"] and summary[2].split() == ["images", "24", "8", "8"]
    for line in summary[3:]:
        name, *counts = line.split()
        label = label_names(dataset).index(name)
        assert [int(count) for count in counts] == [
            sum(label in row for row in dataset[split]["labels"]) for split in dataset
        ]


def test_the_summary_counts_positive_images_from_the_labels_without_decoding_any_image(tmp_path):
    """The table training prints, on a dataset whose counts are known, after the training transforms (which turn the
    labels into multi-hot vectors) and with every image file gone: it reads the labels column only."""
    splits = {
        "train": [["cat"], ["cat", "dog"], ["cat"], ["dog"], ["bird"], ["cat"]],
        "validation": [["dog"], ["cat"], ["dog"]],
        "test": [["bird"], ["bird", "cat"]],
    }
    for split, rows in splits.items():
        (tmp_path / split).mkdir()
        for index in range(len(rows)):
            Image.new("RGB", (8, 8)).save(tmp_path / split / f"{index}.png")
        (tmp_path / split / "metadata.jsonl").write_text(
            "".join(json.dumps({"file_name": f"{index}.png", "labels": row}) + "\n" for index, row in enumerate(rows))
        )
    dataset = load_multilabel_dataset("imagefolder", data_dir=tmp_path)
    transformed = with_multilabel_transforms(dataset, image_processor=create_image_processor(SRNConfig(image_size=32)))
    for path in tmp_path.glob("*/*.png"):
        path.unlink()
    expected = [
        "positive images per label and split:",
        ["train", "validation", "test"],
        ["images", "6", "3", "2"],
        ["bird", "1", "0", "2"],
        ["cat", "4", "1", "1"],
        ["dog", "2", "2", "0"],
    ]
    for table in (split_summary(dataset), split_summary(transformed)):
        lines = table.splitlines()
        assert [lines[0]] + [line.split() for line in lines[1:]] == expected
