"""examples/train_stages.py's moving average of the weights (`stageN.ema_decay`, timm's `ModelEmaV3`): every epoch
scores the weights and their average on validation, the better counts and is the one kept; the average goes through
checkpoints, kills and the learning-rate search. Stage 1 only, tiny data, a random-init resnet10t."""

import json

import pytest
import torch
from helpers import kill_train_stages_when, make_image_folder, tiny_args
from safetensors.torch import load_file

from srn_hf import SRNForImageClassification
from srn_hf.hub import render_model_card
from srn_hf.model_folder import load_image_processor, load_model
from srn_hf.recipe import RecipeError, load_recipe

DECAY = "0.9"  # the warm-up caps it after a few steps; an average far enough from the weights to score otherwise


def ema_args(data_dir, output_dir, *extra):
    """Stage 1, three epochs of three batches at lr 3e-3, with a moving average."""
    average = ["--set", f"stage1.ema_decay={DECAY}", "--set", "stage1.lr=3e-3"]
    return tiny_args(data_dir, output_dir, "--stages", "1", *average, *extra, epochs=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("squares"), sizes=(24, 16, 8))


@pytest.fixture(scope="module")
def averaged(tmp_path_factory, data_dir, script):
    output_dir = tmp_path_factory.mktemp("averaged")
    return output_dir, script.main(ema_args(data_dir, output_dir))


def test_each_epoch_scores_the_weights_and_their_average_and_keeps_the_better(averaged, data_dir, tmp_path, script):
    output_dir, report = averaged
    stage1 = report["stages"][0]
    for epoch in stage1["history"]:
        assert epoch["validation_mAP"] == max(epoch["validation_mAP_raw"], epoch["validation_mAP_EMA"])
        assert epoch["weights"] == ("EMA" if epoch["validation_mAP_EMA"] > epoch["validation_mAP_raw"] else "raw")
    # A real average: it scores otherwise than the weights (not a copy of them, not the start).
    assert any(epoch["validation_mAP_raw"] != epoch["validation_mAP_EMA"] for epoch in stage1["history"])
    best = max(stage1["history"], key=lambda epoch: epoch["validation_mAP"])
    assert (stage1["best_epoch"], stage1["best_weights"]) == (best["epoch"], best["weights"])
    # The exported stage-1 model is the kept one: scored again from its folder, it gives the best epoch's figure.
    assert stage1["validation"]["mAP"] == pytest.approx(best["validation_mAP"])
    # The average does not change the training: the weights score as a run without one, epoch by epoch.
    plain = script.main(tiny_args(data_dir, tmp_path, "--stages", "1", "--set", "stage1.lr=3e-3", epochs=3))["stages"][
        0
    ]
    assert [epoch["validation_mAP_raw"] for epoch in stage1["history"]] == pytest.approx(
        [epoch["validation_mAP"] for epoch in plain["history"]]
    )
    assert json.loads((output_dir / "metrics.json").read_text())["stages"][0]["history"] == stage1["history"]
    # Checkpoints keep the average beside the weights (what a resume needs), and it is not the weights.
    last = max((output_dir / "checkpoints").glob("checkpoint_*"), key=lambda path: int(path.name.split("_")[1]))
    average = load_file(last / "ema.safetensors")
    own = {key.removeprefix("model."): value for key, value in load_file(last / "model.safetensors").items()}
    assert average.keys() == own.keys()
    assert any(not torch.equal(average[key], own[key]) for key in own if key.startswith("srn.classifier."))


def test_a_run_killed_mid_epoch_resumes_with_its_average(averaged, data_dir, tmp_path, script):
    """SIGKILL once a mid-epoch checkpoint of epoch 2 is written; --resume ends as the unbroken run, the average's
    scores included (restarting the average from the checkpoint's weights would score otherwise)."""
    output_dir = tmp_path / "killed"
    extra = ("--set", "training.checkpoint_every_steps=2")
    # Checkpoints: epoch 1 batch 2, end of epoch 1, epoch 2 batch 2 (the third).
    mid_epoch_2 = output_dir / "checkpoints" / "checkpoint_2" / "progress.json"
    kill_train_stages_when(ema_args(data_dir, output_dir, *extra), mid_epoch_2.exists, "in epoch 2")
    saved = json.loads(mid_epoch_2.read_text())
    assert (saved["epoch"], saved["step"]) == (1, 2)
    assert (mid_epoch_2.parent / "ema.safetensors").is_file()

    resumed = script.main(ema_args(data_dir, output_dir, *extra, "--resume"))["stages"][0]
    expected = averaged[1]["stages"][0]
    for key in ("validation_mAP_raw", "validation_mAP_EMA"):
        assert [epoch[key] for epoch in resumed["history"]] == pytest.approx(
            [epoch[key] for epoch in expected["history"]]
        )
    kept = SRNForImageClassification.from_pretrained(output_dir / "stage-1").state_dict()
    unbroken = SRNForImageClassification.from_pretrained(averaged[0] / "stage-1").state_dict()
    assert all(torch.allclose(kept[key], unbroken[key], atol=1e-6) for key in unbroken)


def test_the_search_carries_the_chosen_rates_average_on(averaged, data_dir, tmp_path, script):
    """With a learning-rate search, the chosen rate goes on with the average its first epoch built: the stage
    ends as the run at that rate without a search, the average's scores included."""
    rates = ["--set", "stage1.lr_search=[1e-5, 3e-3]"]  # far apart: the squares are learnt at 3e-3 only
    report = script.main(ema_args(data_dir, tmp_path, *rates))
    searched = report["stages"][0]
    assert searched["lr_search"]["chosen_lr"] == 3e-3
    plain = averaged[1]["stages"][0]
    for key in ("validation_mAP_raw", "validation_mAP_EMA"):
        assert [epoch[key] for epoch in searched["history"]] == pytest.approx(
            [epoch[key] for epoch in plain["history"]]
        )
    # The model card says what the run chose: the rate with each rate's figure, and which weights each stage kept.
    model = load_model(tmp_path / "final")
    card = render_model_card(model, load_image_processor(tmp_path / "final", model.config), "org/srn", report).content
    trials = "; ".join(f"{trial['lr']:g}: {trial['validation_mAP']:.1f}" for trial in searched["lr_search"]["trials"])
    assert f"rate (validation mAP: {trials})" in " ".join(card.split())
    assert "learning rate, 0.003, was chosen on the validation split" in " ".join(card.split())
    kept = f"{searched['best_epoch']}{' (EMA)' if searched['best_weights'] == 'EMA' else ''}"
    assert f"| 1 | y_cls (`cls_logits`) | {kept} |" in card


@pytest.mark.parametrize("decay", ["0", "1", "1.5", "-0.1", "nan"])
def test_a_decay_outside_zero_to_one_is_refused_naming_the_key(decay):
    with pytest.raises(RecipeError, match=r"stage1\.ema_decay"):
        load_recipe(None, [f"stage1.ema_decay={decay}"])
