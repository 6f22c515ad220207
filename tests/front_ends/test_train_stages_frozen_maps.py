"""examples/train_stages.py with `training.frozen_maps_mb`: stages 2 and 3 (the backbone frozen) train on the
backbone maps of the training images, computed once for both stages; without augmentation that is the same
training as on the images. Tiny data, a random-init resnet10t, stage 3 for two epochs, the others for one."""

import shutil

import pytest
import torch
from helpers import make_image_folder, tiny_args
from safetensors.torch import load_file

from srn_hf.modeling_srn import SRNModel

TRAIN_IMAGES = 24
COMMON = ("--stages", "1,2,3", "--set", "data.augment=none", "--set", "stage3.epochs=2", "--set", "stage1.lr=3e-2")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("squares"), sizes=(TRAIN_IMAGES, 8, 8))


def counted_run(script, *args) -> tuple[dict, int]:
    """The run's report, and how many images the backbone ran on (training, maps and evaluation passes)."""
    images = []
    forward_backbone = SRNModel.forward_backbone

    def counting(self, pixel_values):
        images.append(len(pixel_values))
        return forward_backbone(self, pixel_values)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SRNModel, "forward_backbone", counting)
        report = script.main(list(args))
    return report, sum(images)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir, script):
    """The same run on the training images and on their frozen maps: {name: (output dir, report, images counted)}."""
    root = tmp_path_factory.mktemp("runs")
    on_images = counted_run(script, *tiny_args(data_dir, root / "images", *COMMON))
    on_maps = counted_run(script, *tiny_args(data_dir, root / "maps", *COMMON, "--set", "training.frozen_maps_mb=64"))
    return {"images": (root / "images", *on_images), "maps": (root / "maps", *on_maps)}


def test_stages_2_and_3_train_on_maps_computed_once_as_they_would_on_unaugmented_images(runs):
    (images_dir, on_images, images_run), (maps_dir, on_maps, maps_run) = runs["images"], runs["maps"]
    # On images the backbone runs over the training images in every epoch of stages 2 and 3 (three); on maps once.
    assert images_run - maps_run == 2 * TRAIN_IMAGES
    for got, expected in zip(on_maps["stages"], on_images["stages"]):
        assert [epoch["validation_mAP"] for epoch in got["history"]] == pytest.approx(
            [epoch["validation_mAP"] for epoch in expected["history"]], abs=1e-4
        )
    # (equal up to float rounding: the maps are batched and laid out otherwise than in the forward on images)
    expected_weights = load_file(images_dir / "stage-3" / "model.safetensors")
    for key, value in load_file(maps_dir / "stage-3" / "model.safetensors").items():
        assert torch.allclose(value, expected_weights[key], rtol=1e-3, atol=1e-4), key


def test_maps_larger_than_allowed_leave_stages_2_and_3_on_images_and_say_so(runs, script, data_dir, tmp_path, capsys):
    args = tiny_args(data_dir, tmp_path, *COMMON, "--set", "training.frozen_maps_mb=0.001")
    _, images = counted_run(script, *args)
    assert "stages 2 and 3 train on images: the training images' backbone maps would take" in capsys.readouterr().out
    # one batch measured the maps' size, in each stage; then the images, as in the run without maps
    assert images == runs["images"][2] + 2 * 8


def test_a_run_resumed_in_stage_3_computes_the_maps_again_and_ends_as_the_unbroken_run(
    runs, script, data_dir, tmp_path
):
    unbroken_dir, unbroken, _ = runs["maps"]
    shutil.copytree(unbroken_dir, tmp_path / "resumed")
    # checkpoint_2 is the one after stage 3's first epoch (stages 1 and 2 saved checkpoint_0 and checkpoint_1)
    checkpoint = tmp_path / "resumed" / "checkpoints" / "checkpoint_2"
    args = tiny_args(data_dir, tmp_path / "resumed", *COMMON, "--set", "training.frozen_maps_mb=64")
    resumed = script.main([*args, "--resume", str(checkpoint)])
    assert [epoch["validation_mAP"] for epoch in resumed["stages"][2]["history"]] == pytest.approx(
        [epoch["validation_mAP"] for epoch in unbroken["stages"][2]["history"]]
    )
    assert resumed["stages"][2]["test"]["mAP"] == pytest.approx(unbroken["stages"][2]["test"]["mAP"])
