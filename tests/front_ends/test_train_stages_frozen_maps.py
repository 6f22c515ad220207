"""examples/train_stages.py with `training.frozen_maps_mb`: stages 2 and 3 (the backbone frozen) train on the
backbone maps of the training images, computed once for both stages; without augmentation that is the same
training as on the images. Tiny data, a random-init resnet10t, one epoch a stage."""

import pytest
import torch
from helpers import load_script, make_image_folder, tiny_args
from safetensors.torch import load_file

from srn_hf.modeling_srn import SRNModel

TRAIN_IMAGES = 24


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("squares"), sizes=(TRAIN_IMAGES, 8, 8))


def counted_run(script, monkeypatch, *args) -> tuple[dict, int]:
    """The run's report, and how many images the backbone ran on (training, maps and evaluation passes)."""
    images = []
    forward_backbone = SRNModel.forward_backbone

    def counting(self, pixel_values):
        images.append(len(pixel_values))
        return forward_backbone(self, pixel_values)

    monkeypatch.setattr(SRNModel, "forward_backbone", counting)
    report = script.main(list(args))
    monkeypatch.setattr(SRNModel, "forward_backbone", forward_backbone)
    return report, sum(images)


def test_stages_2_and_3_train_on_maps_computed_once_as_they_would_on_unaugmented_images(
    script, data_dir, tmp_path, monkeypatch
):
    common = ["--stages", "1,2,3", "--set", "data.augment=none"]
    on_images, images_run = counted_run(script, monkeypatch, *tiny_args(data_dir, tmp_path / "images", *common))
    on_maps, maps_run = counted_run(
        script, monkeypatch, *tiny_args(data_dir, tmp_path / "maps", *common, "--set", "training.frozen_maps_mb=64")
    )
    # On images the backbone runs over the training images in each of stages 2 and 3; on maps once for both.
    assert images_run - maps_run == TRAIN_IMAGES
    for got, expected in zip(on_maps["stages"], on_images["stages"]):
        assert [epoch["validation_mAP"] for epoch in got["history"]] == pytest.approx(
            [epoch["validation_mAP"] for epoch in expected["history"]], abs=1e-4
        )
    weights = {run: load_file(tmp_path / run / "stage-3" / "model.safetensors") for run in ("images", "maps")}
    # (equal up to float rounding: the maps are batched and laid out otherwise than in the forward on images)
    for key, expected in weights["images"].items():
        assert torch.allclose(weights["maps"][key], expected, rtol=1e-3, atol=1e-4), key


def test_maps_larger_than_allowed_leave_stages_2_and_3_on_images_and_say_so(
    script, data_dir, tmp_path, monkeypatch, capsys
):
    args = tiny_args(data_dir, tmp_path, "--stages", "1,2", "--set", "training.frozen_maps_mb=0.001")
    _, images = counted_run(script, monkeypatch, *args)
    assert "stages 2 and 3 train on images: the training images' backbone maps would take" in capsys.readouterr().out
    _, without = counted_run(script, monkeypatch, *tiny_args(data_dir, tmp_path / "off", "--stages", "1,2"))
    assert images == without + 8  # the one batch that measured the maps' size, then the images as without maps


def test_a_run_resumed_in_stage_3_computes_the_maps_again_and_ends_as_the_unbroken_run(script, data_dir, tmp_path):
    args = ["--stages", "1,2,3", "--set", "training.frozen_maps_mb=64", "--set", "stage3.epochs=2"]
    unbroken = script.main(tiny_args(data_dir, tmp_path / "unbroken", *args))
    # checkpoint_2 is the one after stage 3's first epoch (stages 1 and 2 saved checkpoint_0 and checkpoint_1)
    resumed = script.main(
        tiny_args(
            data_dir, tmp_path / "unbroken", *args, "--resume", str(tmp_path / "unbroken/checkpoints/checkpoint_2")
        )
    )
    assert [epoch["validation_mAP"] for epoch in resumed["stages"][2]["history"]] == pytest.approx(
        [epoch["validation_mAP"] for epoch in unbroken["stages"][2]["history"]]
    )
    assert resumed["stages"][2]["test"]["mAP"] == pytest.approx(unbroken["stages"][2]["test"]["mAP"])
