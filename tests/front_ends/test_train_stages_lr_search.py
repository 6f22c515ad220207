"""examples/train_stages.py's learning-rate search (`stageN.lr_search`): each rate trains the first epoch from the
same weights, the best on validation goes on from where its epoch ended, and a run killed mid-search resumes with
the rates already tried. Stage 1 only, tiny data, a random-init resnet10t."""

import json

import pytest
import torch
from helpers import kill_train_stages_when, make_image_folder, tiny_args
from safetensors.torch import load_file

from srn_hf.recipe import RecipeError, load_recipe

RATES = ("1e-5", "3e-3")  # far apart: the tiny network learns the squares at one, barely moves at the other


def search_args(data_dir, output_dir, *extra):
    """Stage 1 searching `RATES`, its backbone at half the rate (tiny_args's lr 1e-3 and backbone_lr 5e-4)."""
    search = ["--set", f"stage1.lr_search=[{', '.join(RATES)}]", "--set", "stage1.backbone_lr=5e-4"]
    return tiny_args(data_dir, output_dir, "--stages", "1", *search, *extra, epochs=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("squares"), sizes=(24, 16, 8))


@pytest.fixture(scope="module")
def searched(tmp_path_factory, data_dir, script):
    output_dir = tmp_path_factory.mktemp("searched")
    return output_dir, script.main(search_args(data_dir, output_dir))


def test_the_search_chooses_on_validation_and_goes_on_as_a_run_at_the_chosen_rate(searched, data_dir, tmp_path, script):
    output_dir, report = searched
    stage1 = report["stages"][0]
    search = stage1["lr_search"]
    assert [trial["lr"] for trial in search["trials"]] == [float(rate) for rate in RATES]
    best = max(search["trials"], key=lambda trial: trial["validation_mAP"])
    assert search["chosen_lr"] == best["lr"]
    assert search["trials"][0]["validation_mAP"] != search["trials"][1]["validation_mAP"]
    # The chosen rate's first epoch is the stage's first epoch (not trained again), and the other epochs follow it:
    assert stage1["history"][0]["validation_mAP"] == pytest.approx(best["validation_mAP"])
    assert len(stage1["history"]) == 3
    # ... so the stage ends where a run at that rate, without a search, ends.
    rates = ["--set", f"stage1.lr={best['lr']}", "--set", f"stage1.backbone_lr={best['lr'] / 2}"]
    plain = script.main(tiny_args(data_dir, tmp_path, "--stages", "1", *rates, epochs=3))
    assert [epoch["validation_mAP"] for epoch in stage1["history"]] == pytest.approx(
        [epoch["validation_mAP"] for epoch in plain["stages"][0]["history"]]
    )
    searched_weights = load_file(output_dir / "stage-1" / "model.safetensors")
    plain_weights = load_file(tmp_path / "stage-1" / "model.safetensors")
    assert all(torch.allclose(searched_weights[key], plain_weights[key]) for key in plain_weights)
    assert not (output_dir / "lr-search").exists()  # the search's states are removed once the stage goes on
    assert json.loads((output_dir / "metrics.json").read_text())["stages"][0]["lr_search"] == search


def test_a_run_killed_mid_search_resumes_with_the_rates_already_tried(searched, data_dir, tmp_path, script):
    """SIGKILL once the first rate's checkpoint is written; --resume trains the second rate only and ends as the
    unbroken search did."""
    output_dir = tmp_path / "killed"
    first_rate_saved = output_dir / "checkpoints" / "checkpoint_0" / "progress.json"
    kill_train_stages_when(search_args(data_dir, output_dir), first_rate_saved.exists, "mid-search")
    saved = json.loads((output_dir / "checkpoints" / "checkpoint_0" / "progress.json").read_text())
    assert [trial["lr"] for trial in saved["records"]["1"]["lr_search"]["trials"]] == [float(RATES[0])]

    resumed = script.main(search_args(data_dir, output_dir, "--resume"))
    expected = searched[1]["stages"][0]
    got = resumed["stages"][0]
    assert got["lr_search"]["chosen_lr"] == expected["lr_search"]["chosen_lr"]
    for got_trial, expected_trial in zip(got["lr_search"]["trials"], expected["lr_search"]["trials"]):
        assert got_trial["validation_mAP"] == pytest.approx(expected_trial["validation_mAP"])
    assert [epoch["validation_mAP"] for epoch in got["history"]] == pytest.approx(
        [epoch["validation_mAP"] for epoch in expected["history"]]
    )


@pytest.mark.parametrize("rates", ["[3e-3]", "[1e-3, 1e-3]", "[1e-3, -1e-3]", "[1e-3, nan]", "3e-3"])
def test_a_search_of_fewer_than_two_different_positive_rates_is_refused_naming_the_key(rates):
    with pytest.raises(RecipeError, match=r"stage1\.lr_search"):
        load_recipe(None, [f"stage1.lr_search={rates}"])
