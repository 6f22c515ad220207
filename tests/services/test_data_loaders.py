"""The multi-label loaders on small fixtures written in each source's real file format, bad data included."""

import inspect
import json
import re
import warnings
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage

from srn_hf.data import (
    LOADERS,
    VOC_CLASSES,
    AnnotationError,
    DataWarning,
    label_names,
    load_multilabel_dataset,
)


def write_image(path, color=(200, 30, 30), mode="RGB", size=(12, 10)):
    """A tiny real image file (JPEG or PNG by extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new(mode, size, color if mode == "RGB" else 128).save(path)
    return path


def names_of(dataset, row):
    """The label names of one row."""
    return [label_names(dataset)[i] for i in row["labels"]]


# ------------------------------------------------------------------------------------------------ COCO

COCO_CATEGORIES = [  # deliberately out of id order: the class order must follow the category id
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]


def write_coco_split(root, split, images, annotations, categories=COCO_CATEGORIES, write_files=True):
    """instances_<split>2014.json plus the image files, in COCO's layout."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    records = [
        {"id": image_id, "file_name": f"COCO_{split}2014_{image_id:012d}.jpg", "width": 12, "height": 10}
        for image_id in images
    ]
    if write_files:
        for record in records:
            write_image(root / f"{split}2014" / record["file_name"])
    annotation_records = [
        {"id": 1000 + i, "image_id": image_id, "category_id": category_id, "iscrowd": 0, "bbox": [0, 0, 2, 2]}
        for i, (image_id, category_id) in enumerate(annotations)
    ]
    payload = {"images": records, "annotations": annotation_records, "categories": categories}
    (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(payload))


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    train_images = list(range(1, 21))
    train_annotations = [(i, 1) for i in train_images] + [(i, 18) for i in train_images[:5]] + [(3, 18)]
    write_coco_split(root, "train", train_images, train_annotations)
    write_coco_split(root, "val", [42, 43, 44], [(42, 3), (42, 1), (43, 18)])
    return root


def test_coco_labels_splits_and_class_order(coco_root):
    with pytest.warns(DataWarning, match="1 of 3 images have no label"):
        dataset = load_multilabel_dataset("coco2014", root=coco_root, validation_fraction=0.25, seed=0)
    assert list(dataset) == ["train", "validation", "test"]
    assert label_names(dataset) == ["person", "car", "dog"]  # sorted by category id 1, 3, 18
    assert (len(dataset["train"]), len(dataset["validation"]), len(dataset["test"])) == (15, 5, 3)
    assert isinstance(dataset["test"].features["image"], Image)
    assert dataset["test"].features["labels"] == List(ClassLabel(names=["person", "car", "dog"]))
    test = {row["image_id"]: names_of(dataset, row) for row in dataset["test"]}
    assert test == {"42": ["person", "car"], "43": ["dog"], "44": []}
    train = {row["image_id"]: names_of(dataset, row) for split in ("train", "validation") for row in dataset[split]}
    assert train["3"] == ["person", "dog"]  # two dog annotations, one label
    assert train["10"] == ["person"]
    assert dataset["test"][0]["image"].size == (12, 10)


@pytest.mark.filterwarnings("ignore::srn_hf.data.DataWarning")
def test_coco_validation_holdout_is_seeded(coco_root):
    first = load_multilabel_dataset("coco2014", root=coco_root, validation_fraction=0.25, seed=1)
    again = load_multilabel_dataset("coco2014", root=coco_root, validation_fraction=0.25, seed=1)
    other = load_multilabel_dataset("coco2014", root=coco_root, validation_fraction=0.25, seed=2)
    assert first["validation"]["image_id"] == again["validation"]["image_id"]
    assert first["validation"]["image_id"] != other["validation"]["image_id"]
    assert not set(first["validation"]["image_id"]) & set(first["train"]["image_id"])
    assert "validation" not in load_multilabel_dataset("coco2014", root=coco_root, validation_fraction=0)


def test_coco_unknown_category_id_names_file_and_value(tmp_path):
    write_coco_split(tmp_path, "train", [1], [(1, 99)])
    write_coco_split(tmp_path, "val", [2], [(2, 1)])
    with pytest.raises(AnnotationError, match=r"instances_train2014.json: annotation 1000 has category_id 99"):
        load_multilabel_dataset("coco2014", root=tmp_path)


def test_coco_duplicated_image_id(tmp_path):
    write_coco_split(tmp_path, "train", [7, 7], [(7, 1)])
    write_coco_split(tmp_path, "val", [2], [(2, 1)])
    with pytest.raises(AnnotationError, match="duplicated image id '7'"):
        load_multilabel_dataset("coco2014", root=tmp_path)


@pytest.mark.filterwarnings("ignore:.*have no label:srn_hf.data.DataWarning")
def test_coco_missing_images_raise_or_are_skipped_with_a_count(coco_root):
    (coco_root / "val2014" / "COCO_val2014_000000000043.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="COCO_val2014_000000000043.jpg"):
        load_multilabel_dataset("coco2014", root=coco_root)
    with pytest.warns(DataWarning, match="skipped 1 of 3 images whose file is missing"):
        dataset = load_multilabel_dataset("coco2014", root=coco_root, missing_images="skip")
    assert dataset["test"]["image_id"] == ["42", "44"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "malformed JSON"),
        (json.dumps({"images": [], "annotations": []}), "missing field 'categories'"),
        (json.dumps({"images": [{"file_name": "a.jpg"}], "annotations": [], "categories": []}), "missing field 'id'"),
    ],
)
def test_coco_malformed_annotation_file(tmp_path, content, message):
    write_coco_split(tmp_path, "val", [2], [(2, 1)])
    (tmp_path / "annotations" / "instances_train2014.json").write_text(content)
    with pytest.raises(AnnotationError, match=message) as error:
        load_multilabel_dataset("coco2014", root=tmp_path)
    assert "instances_train2014.json" in str(error.value)


# ------------------------------------------------------------------------------------------------ VOC


def voc_xml(filename, objects):
    """A VOC annotation file with (name, difficult) objects."""
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
        "</bndbox></object>"
        for name, difficult in objects
    )
    return (
        f"<annotation><folder>VOC2007</folder><filename>{filename}.jpg</filename>"
        f"<size><width>12</width><height>10</height><depth>3</depth></size>{body}</annotation>"
    )


VOC_IMAGES = {
    "000005": [("chair", 0), ("chair", 1), ("diningtable", 0)],
    "000007": [("car", 0)],
    "000009": [("horse", 0), ("person", 1)],  # person only difficult
    "000012": [("car", 0), ("person", 0)],
    "000016": [("bicycle", 1)],  # only a difficult object
}
VOC_SETS = {"train": ["000005", "000007"], "val": ["000009"], "test": ["000012", "000016"]}


def write_voc(root, images=VOC_IMAGES, sets=VOC_SETS):
    for folder in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id, objects in images.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, objects))
        write_image(root / "JPEGImages" / f"{image_id}.jpg")
    sets = {**sets, "trainval": sets["train"] + sets["val"]}
    for name, ids in sets.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


@pytest.fixture
def voc_root(tmp_path):
    return write_voc(tmp_path / "VOCdevkit" / "VOC2007")


def test_voc_splits_and_difficult_ignored_by_default(voc_root):
    with pytest.warns(DataWarning, match="1 of 2 images have no label"):
        dataset = load_multilabel_dataset("voc2007", root=voc_root.parent)  # VOCdevkit folder accepted
    assert label_names(dataset) == list(VOC_CLASSES)
    assert {split: data["image_id"] for split, data in dataset.items()} == {
        "train": ["000005", "000007"],
        "validation": ["000009"],
        "test": ["000012", "000016"],
    }
    labels = {row["image_id"]: names_of(dataset, row) for split in dataset.values() for row in split}
    assert labels["000005"] == ["chair", "diningtable"]
    assert labels["000009"] == ["horse"]  # its person is difficult: no person label
    assert labels["000016"] == []


def test_voc_difficult_as_positive_and_trainval(voc_root):
    dataset = load_multilabel_dataset("voc2007", root=voc_root, difficult="positive", train_on_trainval=True)
    assert list(dataset) == ["train", "test"]
    assert dataset["train"]["image_id"] == ["000005", "000007", "000009"]
    labels = {row["image_id"]: names_of(dataset, row) for split in dataset.values() for row in split}
    assert labels["000009"] == ["horse", "person"]
    assert labels["000016"] == ["bicycle"]


def test_voc_without_test_set(voc_root):
    (voc_root / "ImageSets" / "Main" / "test.txt").unlink()
    assert list(load_multilabel_dataset("voc2007", root=voc_root)) == ["train", "validation"]


def test_voc_bad_class_name_bad_flag_and_broken_xml(voc_root):
    annotation = voc_root / "Annotations" / "000007.xml"
    annotation.write_text(voc_xml("000007", [("spaceship", 0)]))
    with pytest.raises(AnnotationError, match=r"000007.xml: object <name> 'spaceship' is not a VOC class"):
        load_multilabel_dataset("voc2007", root=voc_root)
    annotation.write_text(voc_xml("000007", [("car", "maybe")]))
    with pytest.raises(AnnotationError, match=r"000007.xml: object <difficult> is 'maybe'"):
        load_multilabel_dataset("voc2007", root=voc_root)
    annotation.write_text("<annotation><object><name>car</name>")
    with pytest.raises(AnnotationError, match=r"malformed XML in .*000007.xml"):
        load_multilabel_dataset("voc2007", root=voc_root)
    annotation.unlink()
    with pytest.raises(AnnotationError, match=r"annotation file not found: .*000007.xml"):
        load_multilabel_dataset("voc2007", root=voc_root)


def test_voc_duplicated_id_in_image_set(tmp_path):
    root = write_voc(tmp_path, sets={"train": ["000005", "000005"], "val": ["000009"], "test": ["000012"]})
    with pytest.raises(AnnotationError, match=r"train.txt: duplicated image id '000005'"):
        load_multilabel_dataset("voc2007", root=root)


# ------------------------------------------------------------------------------------------------ NUS-WIDE

NUS_CONCEPTS = ["airport", "animal", "beach"]
NUS_SPLITS = {
    "Train": {
        "actor\\0001_2124494179.jpg": [1, 0, 1],
        "beach\\0002_1.jpg": [0, 0, 1],
        "cat\\0003_5.jpg": [0, 1, 0],
        "dog\\0004_8.jpg": [0, 0, 0],
        "sky\\0005_9.jpg": [1, 1, 0],
    },
    "Test": {"C:\\ImageData\\Flickr\\zoo\\0001_77.jpg": [0, 1, 0], "C:\\ImageData\\Flickr\\sea\\0002_3.jpg": [1, 0, 1]},
}


def write_nuswide(root, splits=NUS_SPLITS):
    """Concepts81.txt, ImageList/*Imagelist.txt, TrainTestLabels/Labels_<concept>_<Split>.txt, Flickr/ images."""
    (root / "ImageList").mkdir(parents=True)
    (root / "TrainTestLabels").mkdir()
    (root / "Concepts81.txt").write_text("".join(f"{c}\n" for c in NUS_CONCEPTS))
    for split, images in splits.items():
        (root / "ImageList" / f"{split}Imagelist.txt").write_text("".join(f"{line}\r\n" for line in images))
        for index, concept in enumerate(NUS_CONCEPTS):
            flags = "".join(f"{labels[index]} \n" for labels in images.values())
            (root / "TrainTestLabels" / f"Labels_{concept}_{split}.txt").write_text(flags)
        for line in images:
            write_image(root / "Flickr" / line.replace("\\", "/").rsplit("Flickr/", 1)[-1])
    return root


def test_nuswide_official_files(tmp_path):
    root = write_nuswide(tmp_path / "nus")
    with pytest.warns(DataWarning, match="1 of 5 images have no label"):
        dataset = load_multilabel_dataset("nuswide", root=root, validation_fraction=0.2)
    assert label_names(dataset) == NUS_CONCEPTS
    assert [len(dataset[s]) for s in dataset] == [4, 1, 2]
    labels = {row["image_id"]: names_of(dataset, row) for split in dataset.values() for row in split}
    assert labels["actor/0001_2124494179"] == ["airport", "beach"]
    assert labels["dog/0004_8"] == []
    assert labels["sea/0002_3"] == ["airport", "beach"]  # full Windows path cut after Flickr
    assert dataset["test"][0]["image"].size == (12, 10)


def test_nuswide_label_file_errors(tmp_path):
    root = write_nuswide(tmp_path / "nus")
    label_file = root / "TrainTestLabels" / "Labels_animal_Train.txt"
    label_file.write_text("0\n1\n")
    with pytest.raises(AnnotationError, match=r"Labels_animal_Train.txt: 2 lines, but .*TrainImagelist.txt lists 5"):
        load_multilabel_dataset("nuswide", root=root)
    label_file.write_text("0\n1\n2\n0\n0\n")
    with pytest.raises(AnnotationError, match=r"Labels_animal_Train.txt, line 3: value '2'"):
        load_multilabel_dataset("nuswide", root=root)
    label_file.unlink()
    with pytest.raises(AnnotationError, match="annotation file not found: .*Labels_animal_Train.txt"):
        load_multilabel_dataset("nuswide", root=root)


@pytest.mark.filterwarnings("ignore:.*have no label:srn_hf.data.DataWarning")
def test_nuswide_missing_images_skipped_with_count(tmp_path):
    root = write_nuswide(tmp_path / "nus")
    (root / "Flickr" / "zoo" / "0001_77.jpg").unlink()
    with pytest.warns(DataWarning, match="skipped 1 of 2 images"):
        dataset = load_multilabel_dataset("nuswide", root=root, missing_images="skip")
    assert dataset["test"]["image_id"] == ["sea/0002_3"]


# ------------------------------------------------------------------------------------------------ image folder, CSV


def write_imagefolder(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, _ in rows:
        write_image(folder / file_name, mode="L" if file_name.endswith(".png") else "RGB")
    lines = [json.dumps({"file_name": file_name, "labels": labels}) for file_name, labels in rows]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def test_imagefolder_with_split_subfolders(tmp_path):
    write_imagefolder(tmp_path / "train", [("a.jpg", ["dog", "sofa"]), ("b.png", ["cat"]), ("c.jpg", [])])
    write_imagefolder(tmp_path / "val", [("d.jpg", ["dog"])])
    write_imagefolder(tmp_path / "test", [("e.jpg", ["traffic light", "cat"])])
    # A label that only the test split has would be a class the model never trains on: refused, named.
    with pytest.raises(
        AnnotationError,
        match=r"test.metadata.jsonl, line 1: label 'traffic light' is not in the labels of the train split",
    ):
        load_multilabel_dataset("imagefolder", data_dir=tmp_path)
    names = ["cat", "dog", "sofa", "traffic light"]
    with pytest.warns(DataWarning, match="1 of 3 images have no label"):
        dataset = load_multilabel_dataset("imagefolder", data_dir=tmp_path, label_names=names)
    assert list(dataset) == ["train", "validation", "test"]  # "val" is the validation split
    assert label_names(dataset) == names
    assert [names_of(dataset, row) for row in dataset["train"]] == [["dog", "sofa"], ["cat"], []]
    assert names_of(dataset, dataset["test"][0]) == ["cat", "traffic light"]
    assert dataset["train"][1]["image"].mode == "L"


def test_imagefolder_single_folder_given_names_and_errors(tmp_path):
    write_imagefolder(tmp_path, [("a.jpg", ["dog"]), ("b.jpg", ["cat", "dog"]), ("c.jpg", ["cat"])])
    dataset = load_multilabel_dataset(
        "imagefolder", data_dir=tmp_path, label_names=["dog", "cat", "bird"], validation_fraction=0
    )
    assert list(dataset) == ["train"]
    assert label_names(dataset) == ["dog", "cat", "bird"]
    assert dataset["train"]["labels"] == [[0], [0, 1], [1]]
    with pytest.raises(AnnotationError, match=r"metadata.jsonl, line 1: label 'dog' is not in label_names"):
        load_multilabel_dataset("imagefolder", data_dir=tmp_path, label_names=["cat"])
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.jpg", "labels": ["dog"]}\n{"file_name": "b.jpg"\n')
    with pytest.raises(AnnotationError, match=r"metadata.jsonl, line 2: malformed JSON"):
        load_multilabel_dataset("imagefolder", data_dir=tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.jpg", "tags": ["dog"]}\n')
    with pytest.raises(AnnotationError, match=r"metadata.jsonl, line 1: missing field 'labels'"):
        load_multilabel_dataset("imagefolder", data_dir=tmp_path)


def test_imagefolder_duplicated_file_and_missing_image(tmp_path):
    write_imagefolder(tmp_path, [("a.jpg", ["dog"]), ("a.jpg", ["cat"])])
    with pytest.raises(AnnotationError, match=r"duplicated image id '.*a.jpg'"):
        load_multilabel_dataset("imagefolder", data_dir=tmp_path)
    write_imagefolder(tmp_path, [("a.jpg", ["dog"]), ("b.jpg", ["cat"])])
    (tmp_path / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"metadata.jsonl: 1 image file\(s\) not found, first: .*b.jpg"):
        load_multilabel_dataset("imagefolder", data_dir=tmp_path)


def test_csv_with_separator_and_images_dir(tmp_path):
    for name in ("x.jpg", "y.jpg", "z.jpg", "w.jpg"):
        write_image(tmp_path / "images" / name)
    (tmp_path / "train.csv").write_text('path,tags\nx.jpg,"dog; traffic light"\ny.jpg,cat\nz.jpg,\n')
    (tmp_path / "test.csv").write_text("path,tags\nw.jpg,cat;dog\n")
    with pytest.warns(DataWarning, match="train.csv: 1 of 3 images have no label"):
        dataset = load_multilabel_dataset(
            "csv",
            data_files={"train": tmp_path / "train.csv", "test": tmp_path / "test.csv"},
            image_column="path",
            labels_column="tags",
            label_separator=";",
            images_dir=tmp_path / "images",
            validation_fraction=0,
        )
    assert list(dataset) == ["train", "test"]
    assert label_names(dataset) == ["cat", "dog", "traffic light"]
    assert [names_of(dataset, row) for row in dataset["train"]] == [["dog", "traffic light"], ["cat"], []]
    assert names_of(dataset, dataset["test"][0]) == ["cat", "dog"]


def test_csv_missing_column(tmp_path):
    (tmp_path / "train.csv").write_text("image,tags\nx.jpg,cat\n")
    with pytest.raises(AnnotationError, match=r"train.csv: no column 'labels'"):
        load_multilabel_dataset("csv", data_files=tmp_path / "train.csv")


# ------------------------------------------------------------------------------------------------ existing datasets


def small_dataset(tmp_path, labels, feature):
    paths = [str(write_image(tmp_path / f"img{i}.png", size=(8, 8))) for i in range(len(labels))]
    features = Features({"picture": Image(), "tags": feature, "note": Value("string")})
    return Dataset.from_dict({"picture": paths, "tags": labels, "note": ["n"] * len(labels)}, features=features)


def test_hub_load_from_disk_with_string_labels(tmp_path):
    data = small_dataset(tmp_path, [["dog", "cat"], ["cat"], [], ["bird"]], List(Value("string")))
    DatasetDict({"train": data, "val": data.select([0])}).save_to_disk(tmp_path / "saved")
    dataset = load_multilabel_dataset("hub", path=tmp_path / "saved", labels_column="tags", image_column="picture")
    assert list(dataset) == ["train", "validation"]
    assert label_names(dataset) == ["bird", "cat", "dog"]
    assert dataset["train"].features["labels"] == List(ClassLabel(names=["bird", "cat", "dog"]))
    assert [names_of(dataset, row) for row in dataset["train"]] == [["cat", "dog"], ["cat"], [], ["bird"]]
    assert dataset["train"][0]["image"].size == (8, 8)
    assert dataset["train"][0]["note"] == "n"  # other columns are kept


def test_hub_load_dataset_from_parquet_with_indices_and_multi_hot(tmp_path):
    data = small_dataset(tmp_path, [[0, 2], [1], [2]], List(Value("int64")))
    (tmp_path / "repo" / "data").mkdir(parents=True)
    data.to_parquet(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    dataset = load_multilabel_dataset(
        "hub",
        path=str(tmp_path / "repo"),
        labels_column="tags",
        image_column="picture",
        label_names=["a", "b", "c"],
        validation_fraction=0,
    )
    assert dataset["train"]["labels"] == [[0, 2], [1], [2]]
    with pytest.raises(AnnotationError, match="indices labels need label_names"):
        load_multilabel_dataset("hub", path=str(tmp_path / "repo"), labels_column="tags", image_column="picture")
    with pytest.raises(AnnotationError, match=r"\[train\] row 0: label index 2 is outside the 2 classes"):
        load_multilabel_dataset(
            "hub", path=str(tmp_path / "repo"), labels_column="tags", image_column="picture", label_names=["a", "b"]
        )

    multi_hot = small_dataset(tmp_path, [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], List(Value("float32")))
    multi_hot.save_to_disk(tmp_path / "multi_hot")
    dataset = load_multilabel_dataset(
        "hub",
        path=tmp_path / "multi_hot",
        labels_column="tags",
        image_column="picture",
        label_names=["a", "b", "c"],
        validation_fraction=0,
    )
    assert dataset["train"]["labels"] == [[0, 2], []]


def test_hub_class_label_columns_and_missing_column(tmp_path):
    names = ["x", "y", "z"]
    data = small_dataset(tmp_path, [[2, 0], [1]], List(ClassLabel(names=names)))
    data.save_to_disk(tmp_path / "multi")
    dataset = load_multilabel_dataset(
        "hub", path=tmp_path / "multi", labels_column="tags", image_column="picture", validation_fraction=0
    )
    assert label_names(dataset) == names
    assert dataset["train"]["labels"] == [[0, 2], [1]]

    single = small_dataset(tmp_path, [2, 1], ClassLabel(names=names))  # a single-label dataset
    single.save_to_disk(tmp_path / "single")
    dataset = load_multilabel_dataset(
        "hub", path=tmp_path / "single", labels_column="tags", image_column="picture", validation_fraction=0
    )
    assert dataset["train"]["labels"] == [[2], [1]]
    with pytest.raises(AnnotationError, match=r"no column 'labels'"):
        load_multilabel_dataset("hub", path=tmp_path / "single", image_column="picture")
    with pytest.raises(AnnotationError, match=r"label_names \['z', 'y', 'x'\] differ from the ClassLabel names"):
        load_multilabel_dataset(
            "hub", path=tmp_path / "single", labels_column="tags", image_column="picture", label_names=["z", "y", "x"]
        )
    strings = small_dataset(tmp_path, ["dog", "cat"], Value("string"))  # single-label names
    strings.save_to_disk(tmp_path / "strings")
    dataset = load_multilabel_dataset(
        "hub", path=tmp_path / "strings", labels_column="tags", image_column="picture", validation_fraction=0
    )
    assert label_names(dataset) == ["cat", "dog"] and dataset["train"]["labels"] == [[1], [0]]


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown dataset kind 'kinetics'"):
        load_multilabel_dataset("kinetics")


def test_no_warning_when_every_image_has_a_label(coco_root):
    write_coco_split(coco_root, "val", [42], [(42, 3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        load_multilabel_dataset("coco2014", root=coco_root)


def test_the_kinds_table_of_docs_data_md_holds():
    """docs/data.md's table of kinds: each loader, its options and the default fraction of each split it holds out
    are the code's (a loader without `test_fraction` holds no test split out, so its row names none)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith('| `"')]
    assert sorted(row[0].strip('| `"') for row in rows) == sorted(LOADERS)
    for kind, loader, options, _, held_out in rows:
        kind = kind.strip('| `"')
        assert loader.strip("`") == LOADERS[kind].__name__, kind
        parameters = inspect.signature(LOADERS[kind]).parameters
        for option in re.findall(r"`(\w+)`", options):
            assert option in parameters, (kind, option)
        documented = {option: float(default) for option, default in re.findall(r"`(\w+_fraction)`: ([\d.]+)", held_out)}
        actual = {name: float(p.default) for name, p in parameters.items() if name.endswith("_fraction")}
        assert documented == actual, kind
        for split, option in (("validation", "validation_fraction"), ("test", "test_fraction")):
            assert (f"`{split}` (`{option}`" in held_out) == (option in actual), (kind, split)
