"""Bad data found before training: real truncated and empty image files, labels outside the train split's."""

import inspect
import io
import json
import re
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from srn_hf.data import AnnotationError, DataWarning, load_multilabel_dataset
from srn_hf.data.verify import BadImagesError, check_images
from srn_hf.metrics import multilabel_metrics


def jpeg_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_split(folder, rows):
    """An imagefolder split: rows of (file name, labels, bytes)."""
    folder.mkdir(parents=True)
    for name, _, data in rows:
        (folder / name).write_bytes(data)
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": name, "labels": labels}) + "\n" for name, labels, _ in rows)
    )


@pytest.fixture
def bad_data(tmp_path):
    """train: 4 good JPEGs, one cut at half its bytes (its header intact), one of 0 bytes; test: one cut, one good."""
    good = [jpeg_bytes(seed) for seed in range(6)]
    write_split(
        tmp_path / "train",
        [
            ("a.jpg", ["cat"], good[0]),
            ("b.jpg", ["dog"], good[1]),
            ("c.jpg", ["cat", "dog"], good[2]),
            ("d.jpg", ["dog"], good[3]),
            ("cut.jpg", ["cat"], good[4][: len(good[4]) // 2]),
            ("empty.jpg", ["dog"], b""),
        ],
    )
    write_split(tmp_path / "test", [("e.jpg", ["cat"], good[5]), ("cut_test.jpg", ["dog"], good[0][:-300])])
    return load_multilabel_dataset("imagefolder", data_dir=tmp_path, validation_fraction=0)


def test_the_truncated_file_is_what_crashes_training_without_the_check(bad_data, tmp_path):
    with pytest.raises(OSError, match="truncated"):
        bad_data["train"][4]["image"]  # what a training batch does with it: no file named
    with Image.open(tmp_path / "train" / "cut.jpg") as picture:
        assert picture.size == (64, 48)  # its header is intact: a header check would let it through


def test_stop_lists_every_bad_file_before_training(bad_data, tmp_path):
    report_file = tmp_path / "bad_images.tsv"
    with pytest.raises(BadImagesError) as caught:
        check_images(bad_data, num_workers=2, report_file=report_file)  # real worker processes
    message = str(caught.value)
    assert message.startswith("3 image(s) cannot be decoded")
    for name, reason in (("cut.jpg", "truncated"), ("empty.jpg", "empty file"), ("cut_test.jpg", "truncated")):
        assert f"{name}: {reason}" in message
    assert "data.bad_images: skip" in message and "\n" not in message
    lines = report_file.read_text().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [
        ["train", str(tmp_path / "train" / "cut.jpg")],
        ["train", str(tmp_path / "train" / "empty.jpg")],
        ["test", str(tmp_path / "test" / "cut_test.jpg")],
    ]


def test_skip_leaves_them_out_and_counts_them(bad_data):
    with pytest.warns(DataWarning, match=r"skipped 3 image\(s\) that cannot be decoded"):
        dataset, report = check_images(bad_data, policy="skip", num_workers=0)
    assert report["checked"] == {"train": 6, "test": 2} and report["bad"] == {"train": 2, "test": 1}
    assert report["skipped"] == 3
    assert dataset.num_rows == {"train": 4, "test": 1}
    assert [row["image"].size for row in dataset["train"]] == [(64, 48)] * 4  # every image left decodes
    assert dataset["test"]["image_id"][0].endswith("e.jpg")


def test_a_clean_dataset_passes_unchanged(bad_data):
    clean = type(bad_data)({"train": bad_data["train"].select(range(4)), "test": bad_data["test"].select([0])})
    dataset, report = check_images(clean, num_workers=0)
    assert report["bad"] == {"train": 0, "test": 0} and dataset["train"].num_rows == 4
    with pytest.raises(ValueError, match=r"bad_images must be one of \['stop', 'skip'\], not 'ignore'"):
        check_images(bad_data, policy="ignore")


def test_a_label_only_the_test_split_has_is_refused_by_name(tmp_path):
    data = jpeg_bytes(0)
    write_split(tmp_path / "train", [("a.jpg", ["cat"], data), ("b.jpg", ["dog"], data)])
    write_split(tmp_path / "test", [("c.jpg", ["dog"], data), ("d.jpg", ["cat", "zebra"], data)])
    with pytest.raises(
        AnnotationError,
        match=r"test.metadata.jsonl, line 2: label 'zebra' is not in the labels of the train split .*\['cat', 'dog'\]",
    ):
        load_multilabel_dataset("imagefolder", data_dir=tmp_path)
    with pytest.raises(AnnotationError, match=r"label 'zebra' is not in label_names \['cat', 'dog'\]"):
        load_multilabel_dataset("imagefolder", data_dir=tmp_path, label_names=["cat", "dog"])
    dataset = load_multilabel_dataset("imagefolder", data_dir=tmp_path, label_names=["cat", "dog", "zebra"])
    assert dataset["test"]["labels"] == [[1], [0, 2]]


def test_metric_warnings_name_the_labels():
    scores = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.4]])
    labels = np.array([[1, 0, 0], [0, 1, 0]])
    with pytest.warns(UserWarning, match=r"1 class\(es\) without any positive image .*\['zebra'\]$"):
        metrics = multilabel_metrics(scores, labels, label_names=["cat", "dog", "zebra"])
    assert metrics["classes_without_positives"] == [2]
    with pytest.raises(ValueError, match="label_names has 2 names for 3 classes"):
        multilabel_metrics(scores, labels, label_names=["cat", "dog"])


def test_a_hub_dataset_label_only_the_test_split_has_is_refused_by_name(tmp_path):
    from datasets import Dataset, DatasetDict, Features, List, Value
    from datasets import Image as ImageFeature

    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(0))
    features = Features({"image": ImageFeature(), "tags": List(Value("string"))})

    def split(tags):
        return Dataset.from_dict({"image": [str(tmp_path / "a.jpg")] * len(tags), "tags": tags}, features=features)

    DatasetDict({"train": split([["cat"], ["dog"]]), "test": split([["dog"], ["zebra"]])}).save_to_disk(
        tmp_path / "saved"
    )
    with pytest.raises(
        AnnotationError, match=r"\[test\] row 1: label 'zebra' is not in the labels of the train split \['cat', 'dog'\]"
    ):
        load_multilabel_dataset("hub", path=tmp_path / "saved", labels_column="tags")


def test_the_evaluate_module_names_the_labels_too(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    from srn_hf.metrics import EVALUATE_MODULE_PATH

    metric = evaluate.load(EVALUATE_MODULE_PATH, cache_dir=str(tmp_path))
    metric.add_batch(predictions=[[0.9, 0.2, 0.1], [0.3, 0.8, 0.4]], references=[[1, 0, 0], [0, 1, 0]])
    with pytest.warns(UserWarning, match=r"\['zebra'\]$"):
        metric.compute(label_names=["cat", "dog", "zebra"])


# ---------------------------------------------------------------------------------------------------------------
# Second sweep: file names outside the data folder, labels that are not class names, a stamp-scenes path with a typo


def test_a_file_name_outside_the_data_folder_is_refused_by_name(tmp_path):
    data = jpeg_bytes(0)
    outside = tmp_path / "elsewhere.jpg"  # a real image, outside the data folder
    outside.write_bytes(data)
    root = tmp_path / "data"
    for file_name in (
        "../../../../../../etc/passwd",
        str(outside),
        "../../elsewhere.jpg",
        "sub/../../../elsewhere.jpg",
    ):
        shutil.rmtree(root, ignore_errors=True)
        write_split(root / "train", [("a.jpg", ["cat"], data)])
        with open(root / "train" / "metadata.jsonl", "a") as metadata:
            metadata.write(json.dumps({"file_name": file_name, "labels": ["dog"]}) + "\n")
        with pytest.raises(
            AnnotationError,
            match=rf"train.metadata.jsonl, line 2: file_name '{re.escape(file_name)}' is outside the data folder",
        ):
            load_multilabel_dataset("imagefolder", data_dir=root)
    # Inside the data folder, a path through a sub-folder and back (or to another split's folder) is fine.
    write_split(root / "test", [("b.jpg", ["cat"], data)])
    (root / "train" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.jpg", "labels": ["cat"]})
        + "\n"
        + json.dumps({"file_name": "../test/b.jpg", "labels": ["cat"]})
        + "\n"
    )
    dataset = load_multilabel_dataset("imagefolder", data_dir=root, validation_fraction=0)
    assert dataset["train"]["image_id"] == [str(root / "train" / "a.jpg"), str(root / "test" / "b.jpg")]


@pytest.mark.parametrize(
    "label, problem", [("", "an empty name"), ("bird ", "spaces around the name"), (" bird", "spaces around the name")]
)
def test_an_empty_or_padded_label_is_refused_not_made_a_class(tmp_path, label, problem):
    data = jpeg_bytes(0)
    write_split(tmp_path / "train", [("a.jpg", ["bird"], data), ("b.jpg", ["cat", label], data)])
    with pytest.raises(AnnotationError, match=rf"train.metadata.jsonl, line 2: label '{label}' has {problem}"):
        load_multilabel_dataset("imagefolder", data_dir=tmp_path)
    (tmp_path / "all.csv").write_text("image,labels\ntrain/a.jpg,bird\ntrain/b.jpg,cat||bird\n")  # an empty cell part
    with pytest.raises(AnnotationError, match=r"all.csv, line 3: label '' has an empty name"):
        load_multilabel_dataset("csv", data_files=tmp_path / "all.csv")


def test_a_stamp_scenes_path_with_a_typo_generates_nothing(tmp_path, capsys):
    from helpers import save_with_processor, small_srn

    from srn_hf.cli import main
    from srn_hf.data import load_stamp_scenes

    typo = tmp_path / "data" / "stamp_scenez"
    with pytest.raises(FileNotFoundError, match=rf"^{typo} holds no stamp scenes \(no dataset_dict.json\)"):
        load_multilabel_dataset("stamp_scenes", path=typo)
    model = save_with_processor(small_srn({0: "bird", 1: "cattle"}, image_size=64), tmp_path / "model")
    for command in (["calibrate", model, "--data", "stamp_scenes"], ["predict", model, "--data", "stamp_scenes"]):
        capsys.readouterr()
        assert main([*command, "--data-option", f"path={typo}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"srn-hf {command[0]}: error: {typo} holds no stamp scenes") and "\n" not in err
    assert not (tmp_path / "data").exists()  # nothing generated, not even a folder

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"taken is not an empty folder and holds no stamp scenes"):
        load_stamp_scenes(tmp_path / "taken", generate=True)
    assert [path.name for path in (tmp_path / "taken").iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------------------------------------------------------
# Third sweep: symbolic links out of the data folder, empty metadata, bad hold-out fractions


def test_a_symbolic_link_out_of_the_data_folder_is_refused_naming_the_entry_and_the_file(tmp_path):
    data = jpeg_bytes(0)
    outside = tmp_path / "elsewhere.jpg"  # a real image, outside the data folder
    outside.write_bytes(data)
    root = tmp_path / "data"
    write_split(root / "train", [("a.jpg", ["cat"], data)])
    (root / "train" / "root").symlink_to("/")  # a folder link to the whole file system
    (root / "train" / "linked.jpg").symlink_to(outside)  # a file link to an image outside
    for file_name in ("root/etc/hostname", "linked.jpg"):
        (root / "train" / "metadata.jsonl").write_text(
            json.dumps({"file_name": "a.jpg", "labels": ["cat"]})
            + "\n"
            + json.dumps({"file_name": file_name, "labels": ["dog"]})
            + "\n"
        )
        with pytest.raises(
            AnnotationError,
            match=rf"train.metadata.jsonl, line 2: file_name '{re.escape(file_name)}' leads out of the data folder "
            r".* through a symbolic link",
        ):
            load_multilabel_dataset("imagefolder", data_dir=root, validation_fraction=0)
    # A link that stays inside the data folder is followed, and the data folder may itself be a link.
    (root / "train" / "inside.jpg").symlink_to(root / "train" / "a.jpg")
    (tmp_path / "data_link").symlink_to(root)
    (root / "train" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.jpg", "labels": ["cat"]})
        + "\n"
        + json.dumps({"file_name": "inside.jpg", "labels": ["dog"]})
        + "\n"
    )
    dataset = load_multilabel_dataset("imagefolder", data_dir=tmp_path / "data_link", validation_fraction=0)
    assert dataset["train"]["image_id"] == [
        str(tmp_path / "data_link" / "train" / name) for name in ("a.jpg", "inside.jpg")
    ]


def test_an_empty_annotation_file_is_named_and_said_empty(tmp_path):
    (tmp_path / "metadata.jsonl").write_text("\n")
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(tmp_path / 'metadata.jsonl'))} is empty: it lists no"):
        load_multilabel_dataset("imagefolder", data_dir=tmp_path)
    (tmp_path / "all.csv").write_text("image,labels\n")
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(tmp_path / 'all.csv'))} is empty: it lists no"):
        load_multilabel_dataset("csv", data_files=tmp_path / "all.csv")


@pytest.mark.parametrize(
    "option, value",
    [
        ("validation_fraction", -0.1),
        ("validation_fraction", float("nan")),
        ("test_fraction", "0.2"),
        ("validation_fraction", 1.0),
        ("test_fraction", True),
    ],
)
def test_a_held_out_fraction_that_is_no_fraction_is_refused_naming_option_and_value(tmp_path, option, value):
    data = jpeg_bytes(0)
    write_split(tmp_path / "train", [(f"{index}.jpg", ["cat"], data) for index in range(10)])
    with pytest.raises(ValueError, match=rf"^{option}={re.escape(repr(value))} must be a fraction .* in \[0, 1\)"):
        load_multilabel_dataset("imagefolder", data_dir=tmp_path, **{option: value})


def test_data_warnings_point_at_the_line_that_loaded_the_data_not_inside_the_loaders(tmp_path):
    data = jpeg_bytes(0)
    write_split(tmp_path / "train", [("a.jpg", ["cat"], data), ("b.jpg", [], data), ("c.jpg", ["dog"], data)])
    with open(tmp_path / "train" / "metadata.jsonl", "a") as metadata:
        metadata.write(json.dumps({"file_name": "missing.jpg", "labels": ["cat"]}) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        load_multilabel_dataset("imagefolder", data_dir=tmp_path, validation_fraction=0, missing_images="skip")
    data_warnings = [warning for warning in caught if warning.category is DataWarning]
    assert [str(warning.message).split(": ", 1)[1][:20] for warning in data_warnings] == [
        "skipped 1 of 4 image",
        "1 of 3 images have n",
    ]
    for warning in data_warnings:
        assert (warning.filename, warning.lineno) == (__file__, line)
        printed = warnings.formatwarning(warning.message, warning.category, warning.filename, warning.lineno)
        assert printed.splitlines()[1].strip().startswith("load_multilabel_dataset(")  # not `splits = {`
