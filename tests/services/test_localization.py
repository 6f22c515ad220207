"""The pointing game: peaks of upsampled attention maps, hits in boxes, the two baselines, on constructed cases."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, List, Sequence, Value
from PIL import Image as PILImage

from srn_hf.localization import (
    attention_peaks,
    label_boxes,
    mean_box_centres,
    pointing_game,
    pointing_game_table,
    pointing_hits,
)
from srn_hf.pipeline_srn import upsample_attention_map

TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")

NAMES = ["cat", "dog"]


def test_peak_is_a_maximum_of_the_upsampled_map():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 2, 7, 7, generator=generator).softmax(dim=-1)
    peaks = attention_peaks(maps)
    # A wide image, the map stretched over it as the pipeline draws it; sides of an odd number of pixels per cell put
    # the cells' centres on pixel centres, where the upsampled map is sampled exactly.
    height, width = 7 * 9, 7 * 23
    for n in range(3):
        for c in range(2):
            upsampled = upsample_attention_map(maps[n, c], height, width)
            x, y = peaks[n, c]
            assert upsampled[int(y * height), int(x * width)] == pytest.approx(upsampled.max(), rel=1e-5)


def test_peak_of_a_map_hot_in_one_cell_is_that_cell_centre():
    maps = np.zeros((1, 1, 4, 4))
    maps[0, 0, 1, 3] = 1.0  # row 1, column 3
    np.testing.assert_allclose(attention_peaks(maps)[0, 0], [3.5 / 4, 1.5 / 4])
    with pytest.raises(ValueError, match=r"\(N, C, h, w\)"):
        attention_peaks(np.zeros((4, 4)))


def boxes_of(*per_label):
    return [np.asarray(boxes, dtype=np.float64).reshape(-1, 4) for boxes in per_label]


def test_hits_count_only_present_labels_with_a_box():
    boxes = [boxes_of([(0.0, 0.0, 0.5, 0.5)], [(0.5, 0.5, 1.0, 1.0), (0.0, 0.6, 0.2, 0.8)]), boxes_of([], [])]
    labels = np.array([[1, 1], [1, 0]])
    points = np.array([[[0.25, 0.25], [0.1, 0.7]], [[0.5, 0.5], [0.5, 0.5]]])  # dog: inside its second box
    hits, counted = pointing_hits(points, labels, boxes)
    np.testing.assert_array_equal(counted, [[True, True], [False, False]])  # image 1: cat present but no box
    np.testing.assert_array_equal(hits, [[True, True], [False, False]])
    points[0, 0] = (0.6, 0.25)  # right of the cat's box
    assert not pointing_hits(points, labels, boxes)[0][0, 0]
    points[0, 0] = (0.5, 0.5)  # on its corner: edges are inside
    assert pointing_hits(points, labels, boxes)[0][0, 0]


def test_pointing_game_against_centre_and_mean_training_box_centre():
    # Training: cats always top-left, dogs always bottom-right. Test: two images, the maps point at the objects.
    train_boxes = [boxes_of([(0.0, 0.0, 0.2, 0.2)], [(0.8, 0.8, 1.0, 1.0)]), boxes_of([(0.1, 0.1, 0.3, 0.3)], [])]
    np.testing.assert_allclose(mean_box_centres(train_boxes, 2), [[0.15, 0.15], [0.9, 0.9]])
    test_boxes = [boxes_of([(0.4, 0.4, 0.6, 0.6)], []), boxes_of([(0.1, 0.1, 0.2, 0.2)], [(0.7, 0.0, 1.0, 0.3)])]
    labels = np.array([[1, 0], [1, 1]])
    peaks = np.array([[[0.5, 0.5], [0.0, 0.0]], [[0.15, 0.15], [0.9, 0.1]]])
    report = pointing_game(peaks, labels, test_boxes, train_boxes, NAMES)
    assert report["pairs"] == 3
    assert report["attention"] == {
        "overall": 100.0,
        "mean_over_labels": 100.0,
        "per_label": {"cat": 100.0, "dog": 100.0},
    }
    assert report["centre"]["per_label"] == {"cat": 50.0, "dog": 0.0}  # only the centred cat
    assert report["centre"]["overall"] == pytest.approx(100 / 3)
    assert report["mean_box_centre"]["per_label"] == {"cat": 50.0, "dog": 0.0}  # only the top-left cat
    table = pointing_game_table(report)
    assert "mean_box_centre" in table and "overall" in table and "33.3" in table


def jpeg(width, height):
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height)).save(buffer, format="JPEG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_label_boxes_from_a_dataset_in_fractions_of_each_image():
    features = Features(
        {
            "image": Image(),
            "labels": Sequence(ClassLabel(names=NAMES)),
            "boxes": List({"label": ClassLabel(names=NAMES), "bbox": List(Value("float32"), length=4)}),
        }
    )
    dataset = Dataset.from_dict(
        {
            "image": [jpeg(200, 100), jpeg(50, 50)],
            "labels": [[1], []],
            "boxes": [[{"label": 1, "bbox": [20, 10, 100, 50]}, {"label": 1, "bbox": [0, 0, 200, 100]}], []],
        },
        features=features,
    )
    boxes = label_boxes(dataset)
    assert [len(image_boxes) for image_boxes in boxes] == [2, 2]
    assert boxes[0][0].shape == (0, 4) and boxes[1][1].shape == (0, 4)
    np.testing.assert_allclose(boxes[0][1], [[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="no 'boxes' column"):
        label_boxes(dataset.remove_columns("boxes"))


@pytest.mark.slow
@pytest.mark.skipif(not TUXPAINT_STAMPS.is_dir(), reason="Debian's tuxpaint-stamps-default is not installed")
def test_train_stages_scores_the_pointing_game_after_stages_2_and_4(tmp_path):
    from helpers import load_script, tiny_args

    from srn_hf.data import generate_stamp_scenes

    generate_stamp_scenes(tmp_path / "scenes", sizes=(32, 16, 16), image_size=64, num_workers=1, progress=False)
    args = tiny_args(
        tmp_path / "unused",
        tmp_path / "run",
        "--set",
        "data.kind=stamp_scenes",
        "--set",
        "data.options={path: " + str(tmp_path / "scenes") + "}",
    )
    report = load_script().main(args)
    scored = {record["stage"]: record.get("test_pointing_game") for record in report["stages"]}
    assert [stage for stage, game in scored.items() if game] == [2, 4]
    game = scored[4]
    assert game["pairs"] > 0 and set(game) == {"pairs", "attention", "centre", "mean_box_centre"}
    assert 0 <= game["attention"]["overall"] <= 100
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())["stages"][3]["test_pointing_game"]
    assert stored == game  # and in metrics.json
