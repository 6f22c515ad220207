"""`srn-hf calibrate MODEL_DIR --data KIND --data-option key=value ... [--split] [--criterion] [--write]`."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import save_with_processor, small_srn, write_imagefolder
from PIL import Image
from transformers import pipeline

import srn_hf
from srn_hf.cli import main
from srn_hf.scoring import calibrate_model_folder

LABELS = {0: "cat", 1: "dog", 2: "car"}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """Validation: 24 images of cats and dogs, no car (it is only in train and test; train has every label)."""
    validation = [["cat"] if i % 3 == 0 else ["dog"] if i % 3 == 1 else ["cat", "dog"] for i in range(24)]
    return write_imagefolder(
        tmp_path_factory.mktemp("data"),
        {"train": [["car"], ["cat"], ["dog"]], "validation": validation, "test": [["car", "dog"], ["cat"], ["car"]]},
    )


@pytest.fixture
def model_dir(tmp_path):
    return save_with_processor(small_srn(LABELS, image_size=64), tmp_path / "model")


def run(capsys, *argv):
    capsys.readouterr()  # what the fixtures printed
    status = main(["calibrate", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def file_hashes(folder) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_write_changes_only_config_json_and_round_trips_through_the_pipeline(capsys, model_dir, dataset_dir):
    before = file_hashes(Path(model_dir))
    status, out, err = run(
        capsys, model_dir, "--data", "imagefolder", "--data-option", f"data_dir={dataset_dir}", "--write"
    )
    assert status == 0, err
    after = file_hashes(Path(model_dir))
    assert set(after) == set(before) and after["config.json"] != before["config.json"]
    assert {name: digest for name, digest in after.items() if name != "config.json"} == {
        name: digest for name, digest in before.items() if name != "config.json"
    }
    # The table: every label with its threshold, validation P / R / F1 and support; car has no validation positive.
    lines = out.splitlines()
    assert "validation split (24 images)" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[3:6]}
    assert set(rows) == {"cat", "dog", "car"} and rows["car"][1] == "*" and rows["car"][-1] == "0"
    assert rows["cat"][-1] == "16" and rows["dog"][-1] == "16"  # support
    assert "* car: global threshold (0 positive image(s) in validation, fewer than 5)" in out
    assert f"thresholds written to {Path(model_dir) / 'config.json'}" in out

    expected, _ = calibrate_model_folder(model_dir, "imagefolder", {"data_dir": dataset_dir})
    config = srn_hf.SRNForImageClassification.from_pretrained(model_dir).config
    assert config.label_thresholds == expected.label_thresholds and set(config.label_thresholds) == {"cat", "dog"}
    assert config.threshold == expected.threshold
    assert config.threshold_calibration == {
        "criterion": "f1",
        "split": "validation",
        "dataset": "imagefolder",
        "images": 24,
        "min_positives": 5,
        "fallback_labels": ["car"],
        "run_overlap": None,  # the folder records no training run's splits (splits.json)
    }
    assert float(rows["cat"][1]) == pytest.approx(expected.label_thresholds["cat"], abs=5e-5)

    # The real pipeline uses the stored thresholds by default: it returns exactly the labels above them.
    tagger = pipeline(srn_hf.PIPELINE_TASK, model=model_dir)
    thresholds = dict(zip(LABELS.values(), tagger.thresholds()))
    assert thresholds == {**expected.label_thresholds, "car": expected.threshold}
    images = sorted(str(path) for path in (Path(dataset_dir) / "validation").glob("*.png"))
    for default, every in zip(tagger(images), tagger(images, threshold=0.0)):
        assert [item["label"] for item in default] == [
            item["label"] for item in every if item["score"] > thresholds[item["label"]]
        ]
    # So does `srn-hf predict`.
    assert main(["predict", model_dir, images[0], "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)[0]["labels"]
    assert [item["label"] for item in predicted] == [item["label"] for item in tagger(images[0])]


def test_label_order_of_the_dataset_does_not_matter_and_nothing_is_written_without_write(
    capsys, model_dir, dataset_dir
):
    config_before = (srn_hf.SRNConfig.from_pretrained(model_dir)).to_dict()
    default, _ = calibrate_model_folder(model_dir, "imagefolder", {"data_dir": dataset_dir})
    status, out, _ = run(
        capsys,
        model_dir,
        "--data",
        "imagefolder",
        "--data-option",
        f"data_dir={dataset_dir}",
        "--data-option",
        "label_names=[dog, car, cat]",
        "--criterion",
        "precision:0.5",
    )
    assert status == 0 and "nothing written" in out and "thresholds by precision:0.5" in out
    assert srn_hf.SRNConfig.from_pretrained(model_dir).to_dict() == config_before
    reordered, _ = calibrate_model_folder(
        model_dir, "imagefolder", {"data_dir": dataset_dir, "label_names": ["dog", "car", "cat"]}
    )
    assert reordered.label_names == default.label_names == ["cat", "dog", "car"]
    assert np.array_equal(reordered.thresholds, default.thresholds)  # columns mapped to the model's label order


@pytest.fixture(scope="module")
def other_labels_dir(tmp_path_factory):
    return write_imagefolder(
        tmp_path_factory.mktemp("cows"), {"train": [["cat"], ["cow"]], "validation": [["cow"], ["cat"]]}
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--split", "test"], "--split test: thresholds are tuned on a validation split, never on the test split"),
        (["--split", "holdout"], "has no 'holdout' split (its splits: ['train', 'validation', 'test'])"),
        (["--criterion", "precision:2"], "criterion 'precision:2' is neither 'f1' nor 'precision:P'"),
        (["--data-option", "no_such_option=1"], "dataset kind 'imagefolder' has no option 'no_such_option'"),
        (["--data-option", "missing-equals"], "--data-option 'missing-equals' is not KEY=VALUE"),
    ],
)
def test_refusals_are_one_line_with_exit_status_2(capsys, model_dir, dataset_dir, argv, message):
    status, out, err = run(
        capsys, model_dir, "--data", "imagefolder", "--data-option", f"data_dir={dataset_dir}", *argv
    )
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("srn-hf calibrate: error: ") and message in err


def test_refusals_of_the_model_and_the_dataset(capsys, tmp_path, model_dir, other_labels_dir):
    status, _, err = run(capsys, model_dir, "--data", "imagefolder", "--data-option", f"data_dir={other_labels_dir}")
    assert status == 2 and err.count("\n") == 1
    assert "the labels of the imagefolder dataset are not those of the model in" in err
    assert "only in the imagefolder dataset: ['cow']; only in the model in" in err and "['car', 'dog']" in err

    status, _, err = run(
        capsys, tmp_path / "nothing", "--data", "imagefolder", "--data-option", f"data_dir={other_labels_dir}"
    )
    assert status == 2 and err.count("\n") == 1 and "nothing does not exist" in err
    status, _, err = run(capsys, model_dir, "--data", "no_such_kind")
    assert status == 2 and err.count("\n") == 1 and "unknown dataset kind 'no_such_kind'" in err


def test_the_model_card_says_how_the_thresholds_were_chosen_and_shows_both_rows(
    capsys, model_dir, dataset_dir, tmp_path
):
    from srn_hf.metrics import multilabel_metrics
    from srn_hf.thresholds import calibrate_stage

    hub = tmp_path / "hub"
    assert main(["publish", model_dir, "--repo-id", "org/srn", "--dry-run", str(hub / "plain")]) == 0
    assert "was set, not tuned on data: 0.5 for every label" in (hub / "plain" / "README.md").read_text()

    assert (
        run(capsys, model_dir, "--data", "imagefolder", "--data-option", f"data_dir={dataset_dir}", "--write")[0] == 0
    )
    # A run's metrics.json beside the folder, with each stage's test figures at 0.5 and at its tuned thresholds.
    rng = np.random.default_rng(0)
    validation, test = rng.random((40, 3)), rng.random((50, 3))
    validation_labels, test_labels = (rng.random((40, 3)) < 0.4).astype(int), (rng.random((50, 3)) < 0.4).astype(int)
    stages = []
    for number, prediction, power in ((1, "cls_logits", 3.0), (4, "logits", 1.0)):
        _, entries = calibrate_stage(
            validation**power, validation_labels, test**power, test_labels, list(LABELS.values())
        )
        stages.append(
            {"stage": number, "prediction": prediction, "test": multilabel_metrics(test**power, test_labels), **entries}
        )
    metrics = {
        "dataset": {"name": "toy", "label_names": list(LABELS.values()), "splits": {"test": 50}},
        "stages": stages,
    }
    (Path(model_dir).parent / "metrics.json").write_text(json.dumps(metrics))
    assert main(["publish", model_dir, "--repo-id", "org/srn", "--dry-run", str(hub / "run")]) == 0
    card = (hub / "run" / "README.md").read_text()
    assert (
        "were tuned with `srn_hf.thresholds` on the validation split of imagefolder (24 images); the model folder "
        "records no split of its training run (splits.json), so whether the run trained or tested on these images is "
        "not known: each label's threshold maximises the label's F1 there"
    ) in card
    assert "use the global threshold: car." in card
    final = stages[-1]
    assert f"| 0.5 | {final['test']['mAP']:.1f} | {final['test']['CP']:.1f} |" in card
    assert (
        f"| tuned on validation (in `config.json`) | {final['test']['mAP']:.1f} "
        f"| {final['test_calibrated']['CP']:.1f} |" in card
    )
    first = stages[0]
    row = (
        f"| 1 | y_cls | {first['test']['mAP']:.1f} | {first['test']['CF1']:.1f} "
        f"| {first['test_calibrated']['CF1']:.1f} |"
    )
    assert row in card


# ---------------------------------------------------------------------------------------------------------------
# The training run's splits (splits.json): calibrate tunes on its validation images, refuses its train and test ones


@pytest.fixture
def run_folder(tmp_path):
    """One folder of 20 images and a model folder whose training run held 5 validation and 5 test images out of it
    (the splits.json that examples/train_stages.py writes into every model folder)."""
    from srn_hf.data import load_multilabel_dataset
    from srn_hf.data.holdout import split_record
    from srn_hf.model_folder import write_splits_file

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    names = list(LABELS.values())
    rows = [[names[i % 3]] + ([names[(i + 1) % 3]] if i % 4 == 0 else []) for i in range(20)]
    for index in range(20):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "labels": row}) + "\n" for i, row in enumerate(rows))
    )
    options = {"data_dir": str(folder), "validation_fraction": 0.25, "test_fraction": 0.25}
    trained_on = load_multilabel_dataset("imagefolder", **options)
    model_dir = save_with_processor(small_srn(LABELS, image_size=64), tmp_path / "model")
    write_splits_file(model_dir, split_record(trained_on, "imagefolder", options))
    return folder, model_dir, trained_on, rows


def test_calibrate_on_the_runs_folder_tunes_on_the_runs_validation_images(run_folder):
    from srn_hf.data import label_names
    from srn_hf.model_folder import load_image_processor, load_model
    from srn_hf.scoring import score_split
    from srn_hf.thresholds import calibrate_thresholds

    folder, model_dir, trained_on, _ = run_folder
    # Left to itself, calibrate would hold out 2 images (its own default 0.1), 1 of them from the run's train split.
    calibration, _ = calibrate_model_folder(model_dir, "imagefolder", {"data_dir": str(folder)}, min_positives=1)
    assert calibration.images == 5 and calibration.run_overlap == {"train": 0, "test": 0}
    model = load_model(model_dir)
    scores, labels = score_split(model, load_image_processor(model_dir, model.config), trained_on["validation"])
    order = [label_names(trained_on).index(name) for name in LABELS.values()]  # the dataset's label order: sorted
    expected = calibrate_thresholds(scores, labels[:, order], list(LABELS.values()), min_positives=1)
    assert np.allclose(calibration.thresholds, expected.thresholds) and calibration.threshold == expected.threshold


def test_images_the_run_trained_or_tested_on_are_refused_unless_allowed_and_the_card_says_so(
    capsys, run_folder, tmp_path
):
    from srn_hf.hub import thresholds_description

    folder, model_dir, trained_on, rows = run_folder
    # Another labelled set: 3 of the run's train images, 2 of its test images and 4 it never saw.
    train_ids, test_ids = (trained_on[split]["image_id"] for split in ("train", "test"))
    reused = [Path(path).name for path in train_ids[:3] + test_ids[:2]]
    for index in range(4):
        Image.new("RGB", (48, 48), (60 * index, 0, 0)).save(folder / f"new{index}.png")
    listed = [(name, rows[int(name[:-4])]) for name in reused] + [(f"new{i}.png", ["cat", "dog"]) for i in range(4)]
    (folder / "more.csv").write_text("image,labels\n" + "".join(f"{name},{'|'.join(row)}\n" for name, row in listed))
    data = ["--data", "csv", "--data-option", f"data_files={{validation: {folder / 'more.csv'}}}"]

    status, out, err = run(capsys, model_dir, *data, "--write")
    assert status == 2 and out == "" and err.count("\n") == 1
    assert (
        "5 of the 9 images of the 'validation' split were used by the model's training run (splits.json): 3 in its "
        "train split and 2 in its test split"
        in err
        and err.rstrip().endswith("or pass --allow-overlap")
    )
    status, out, err = run(capsys, model_dir, *data, "--min-positives", "1", "--allow-overlap", "--write")
    assert status == 0, err
    assert "tuned on the validation split of csv (9 images), which the model's training run used (3 of which it " in out
    config = srn_hf.SRNConfig.from_pretrained(model_dir)
    assert config.threshold_calibration["run_overlap"] == {"train": 3, "test": 2}
    assert (
        "tuned with `srn_hf.thresholds` on the validation split of csv (9 images), which the model's training run used "
        "(3 of which it trained on and 2 of which it tested on; allowed with --allow-overlap): these thresholds, and "
        "the figures at them, are optimistic"
    ) in thresholds_description(config)
