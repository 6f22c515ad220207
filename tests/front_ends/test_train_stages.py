"""examples/train_stages.py end to end: short real runs on a tiny generated image folder with a tiny timm backbone.

Covers the four stages, the exports and metrics.json, the recipe checks, killing a run and resuming it (same
results as an uninterrupted run), a diverging loss, and the bad inputs that must fail before training.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import COLOURS, SCRIPT, kill_train_stages_when, make_image_folder, tiny_args
from PIL import Image

import srn_hf  # noqa: F401  (registers SRN with transformers)
from srn_hf.recipe import RecipeError, load_recipe
from srn_hf.stages import STAGES
from srn_hf.training import TrainingDiverged

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("squares"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir, script):
    output_dir = tmp_path_factory.mktemp("run")
    report = script.main(tiny_args(data_dir, output_dir))
    return output_dir, report


def test_four_stages_export_pipeline_folders_and_metrics(full_run):
    from transformers import pipeline

    output_dir, report = full_run
    saved = json.loads((output_dir / "metrics.json").read_text())
    assert [record["stage"] for record in saved["stages"]] == [1, 2, 3, 4]
    assert [record["prediction"] for record in saved["stages"]] == ["cls_logits", "att_logits", "sr_logits", "logits"]
    assert saved["dataset"]["label_names"] == sorted(COLOURS)
    assert saved["dataset"]["splits"] == {"train": 48, "validation": 16, "test": 16}
    assert saved["recipe"]["model"]["backbone"] == "resnet10t"
    for record in saved["stages"]:
        for split in ("validation", "test"):
            assert 0 <= record[split]["mAP"] <= 100 and {"CP", "CR", "CF1", "OP", "OR", "OF1"} <= set(record[split])
        assert record["best_epoch"] == 1 and len(record["history"]) == 1
    assert (output_dir / "training_curves.png").stat().st_size > 10_000
    gain = saved["test_gain_over_stage1"]  # from the test scores each stage leaves in OUTPUT_DIR/predictions
    assert gain["stage"] == 4 and gain["images"] == 16 and gain["low"] <= gain["high"]
    assert gain["difference"] == pytest.approx(saved["stages"][3]["test"]["mAP"] - saved["stages"][0]["test"]["mAP"])
    from srn_hf.model_folder import load_training_metrics  # the model card reads metrics.json beside OUTPUT_DIR/final

    assert (
        load_training_metrics(output_dir / "final")[0]["stages"][3]["test"]["mAP"] == saved["stages"][3]["test"]["mAP"]
    )
    for folder in ("stage-1", "stage-2", "stage-3", "stage-4", "final"):
        classifier = pipeline("image-classification", model=str(output_dir / folder))
        predictions = classifier(Image.new("RGB", (80, 60), (220, 30, 30)), top_k=3)
        assert sorted(p["label"] for p in predictions) == sorted(COLOURS)
        assert all(0 <= p["score"] <= 1 for p in predictions)


def test_each_stage_is_calibrated_on_validation_and_the_exports_carry_the_thresholds(full_run, data_dir):
    from safetensors.torch import load_file
    from transformers import pipeline

    from srn_hf.data import load_multilabel_dataset
    from srn_hf.metrics import THRESHOLDED_FIGURES as FIGURES
    from srn_hf.metrics import multilabel_metrics
    from srn_hf.model_folder import load_image_processor, load_model
    from srn_hf.scoring import score_split
    from srn_hf.thresholds import calibrate_thresholds

    output_dir, report = full_run
    saved = json.loads((output_dir / "metrics.json").read_text())
    for record in saved["stages"]:
        assert record["thresholds"]["threshold_calibration"]["split"] == "validation"
        # The test figures at the tuned thresholds are those of the stage's test scores at them.
        test = load_file(output_dir / "predictions" / f"stage-{record['stage']}-test.safetensors")
        thresholds = np.array([row["threshold"] for row in record["thresholds"]["per_label"]])
        expected = multilabel_metrics(test["scores"], test["labels"], threshold=thresholds)
        assert record["test_calibrated"] == pytest.approx({name: expected[name] for name in FIGURES})
        config = json.loads((output_dir / f"stage-{record['stage']}" / "config.json").read_text())
        assert config["threshold_calibration"]["split"] == "validation" and "threshold" in config
    gain = saved["test_calibrated_gain_over_stage1"]
    first, last = saved["stages"][0], saved["stages"][3]
    assert gain["calibrated"]["OF1"] == pytest.approx(last["test_calibrated"]["OF1"] - first["test_calibrated"]["OF1"])

    # OUTPUT_DIR/final: thresholds tuned on the validation split's scores of the final model, never on test; the
    # pipeline uses them by default.
    model = load_model(output_dir / "final")
    validation = load_multilabel_dataset("imagefolder", data_dir=str(data_dir))["validation"]
    scores, labels = score_split(model, load_image_processor(output_dir / "final", model.config), validation)
    tuned = calibrate_thresholds(scores, labels, sorted(COLOURS))
    assert model.config.threshold == pytest.approx(tuned.threshold, abs=1e-5)
    assert model.config.label_thresholds == pytest.approx(tuned.label_thresholds, abs=1e-5)
    assert model.config.label_thresholds == pytest.approx(saved["stages"][3]["thresholds"]["label_thresholds"])
    tagger = pipeline("multi-label-image-classification", model=str(output_dir / "final"))
    assert tagger.thresholds() == pytest.approx(tuned.thresholds, abs=1e-5)


def test_the_run_records_its_splits_in_the_output_dir_and_every_model_folder(full_run):
    """splits.json: which images the run trained, validated and tested on, relative to the data folder, so that
    `srn-hf calibrate` tunes thresholds on the run's validation images; the card says the thresholds are those."""
    from srn_hf.hub import thresholds_description

    output_dir, _ = full_run
    record = json.loads((output_dir / "splits.json").read_text())
    sizes = {"train": 48, "validation": 16, "test": 16}  # make_image_folder's sub-folders
    assert record == {
        "kind": "imagefolder",
        "splits": {split: [f"{split}/{index}.png" for index in range(size)] for split, size in sizes.items()},
    }
    for folder in ("stage-1", "stage-2", "stage-3", "stage-4", "final"):
        assert json.loads((output_dir / folder / "splits.json").read_text()) == record
    description = thresholds_description(srn_hf.SRNConfig.from_pretrained(output_dir / "final"))
    assert "on the validation split of imagefolder (16 images), none of which the model's training run trained" in (
        description
    )


def test_reused_backbone_maps_give_the_scores_of_a_plain_forward(full_run, data_dir):
    """The evaluation passes of stages 2 and 3 take X and F from earlier passes (same images, frozen backbone): the
    test scores they saved are those of the exported stage model scored from scratch."""
    from accelerate import Accelerator
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader

    from srn_hf.data import collate_multilabel, load_multilabel_dataset, with_multilabel_transforms
    from srn_hf.model_folder import load_image_processor, load_model
    from srn_hf.scoring import predict_scores
    from srn_hf.stages import StageForward

    output_dir, _ = full_run
    cache = json.loads((output_dir / "metrics.json").read_text())["evaluation_map_cache"]
    assert cache["reused"] > 0 and cache["computed"] > 0
    dataset = load_multilabel_dataset("imagefolder", data_dir=str(data_dir))
    for number in (2, 3):
        folder = output_dir / f"stage-{number}"
        model = load_model(folder)
        data = with_multilabel_transforms(
            dataset, image_processor=load_image_processor(folder, model.config), train_splits=()
        )
        loader = DataLoader(data["test"], batch_size=8, collate_fn=collate_multilabel)
        prediction = STAGES[number].prediction
        scores, labels = predict_scores(Accelerator(), StageForward(model, number), loader, (prediction,))
        saved = load_file(output_dir / "predictions" / f"stage-{number}-test.safetensors")
        assert torch.equal(saved["labels"], labels.float())
        assert torch.allclose(saved["scores"], scores[prediction], atol=1e-5), number


def test_stages_change_only_their_modules(full_run):
    """Stage 2 leaves backbone and f_cls as stage 1 exported them; stage 3 changes only f_sr."""
    from safetensors.torch import load_file

    output_dir, _ = full_run
    weights = {n: load_file(output_dir / f"stage-{n}" / "model.safetensors") for n in (1, 2, 3, 4)}

    def changed(a, b):
        return {key.split(".")[1] for key in a if not torch.equal(a[key], b[key])}

    modules = {key.split(".")[1] for key in weights[1]}  # the released layout's attention_trunk has weights
    assert (
        changed(weights[1], weights[2])
        == set(STAGES[2].trained) & modules
        == {"attention_trunk", "attention", "confidence"}
    )
    assert changed(weights[2], weights[3]) == {"spatial_regularization"}
    assert {"backbone", "classifier"} <= changed(weights[3], weights[4])


def test_later_stages_start_from_an_earlier_stage_output(full_run, data_dir, tmp_path, script):
    output_dir, _ = full_run
    report = script.main(
        tiny_args(data_dir, tmp_path / "later", "--stages", "3,4", "--init-from", str(output_dir / "stage-2"))
    )
    assert [record["stage"] for record in report["stages"]] == [3, 4]
    assert (tmp_path / "later" / "final" / "config.json").exists()


def test_recipe_checks_keys_and_types(tmp_path):
    recipe = load_recipe(SCRIPT.parent / "configs" / "demo.yaml", ["stage4.lr=2e-5", "training.mixed_precision=no"])
    assert recipe.stage4.lr == 2e-5 and recipe.training.mixed_precision == "no"
    assert recipe.model.backbone == "tf_efficientnet_lite0"
    with pytest.raises(RecipeError, match="unknown key stage4.learning_rate"):
        load_recipe(None, ["stage4.learning_rate=1e-5"])
    with pytest.raises(RecipeError, match="stage1.epochs: expected int, got str"):
        load_recipe(None, ["stage1.epochs=three"])
    with pytest.raises(RecipeError, match="training.mixed_precision"):
        load_recipe(None, ["training.mixed_precision=fp8"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  image_size: 224.5\n")
    with pytest.raises(RecipeError, match="bad.yaml.*model.image_size"):
        load_recipe(bad)


def test_recipe_model_section_is_every_srn_config_field():
    """`model.<any SRNConfig field>` is a recipe key, with SRNConfig's default and type."""
    from srn_hf import SRNConfig

    recipe = load_recipe(None, ["model.num_channels=1", "model.label_thresholds={a: 0.3}"])
    defaults = SRNConfig()
    for name in ("backbone", "alpha", "layout", "threshold", "initializer_range", "regularization_out_channels"):
        assert getattr(recipe.model, name) == getattr(defaults, name), name
    assert recipe.model.num_channels == 1 and recipe.model.label_thresholds == {"a": 0.3}
    with pytest.raises(RecipeError, match="model.use_batch_norm: expected bool"):
        load_recipe(None, ["model.use_batch_norm=maybe"])


@pytest.mark.parametrize("name", ["demo.yaml", "coco_resnet101.yaml", "voc2007.yaml", "nuswide.yaml"])
def test_shipped_recipes_load(name):
    recipe = load_recipe(SCRIPT.parent / "configs" / name)
    assert recipe.loss.reduction == ("mean" if name == "demo.yaml" else "sum_over_classes")  # see srn_hf.stages
    assert recipe.stage4.backbone_lr is not None and recipe.stage4.backbone_lr < recipe.stage1.lr


def test_bad_inputs_fail_before_training(full_run, data_dir, tmp_path, script):
    output_dir, _ = full_run
    other = make_image_folder(tmp_path / "other", sizes=(8, 4, 4), names=("red", "green", "yellow"))
    # A dataset whose label set is not the model's.
    with pytest.raises(ValueError, match="another label set"):
        script.main(tiny_args(other, tmp_path / "a", "--stages", "2,3,4", "--init-from", str(output_dir / "stage-1")))
    # A start model whose network is not the recipe's (any SRNConfig field of the model section, here f_att's width).
    with pytest.raises(ValueError, match="attention_channels=16, the recipe model.attention_channels=8"):
        script.main(
            tiny_args(
                data_dir,
                tmp_path / "e",
                "--stages",
                "2,3,4",
                "--init-from",
                str(output_dir / "stage-1"),
                "--set",
                "model.attention_channels=8",
            )
        )
    # A checkpoint folder of another run (another dataset, so other labels).
    checkpoint = sorted((output_dir / "checkpoints").iterdir())[-1]
    with pytest.raises(ValueError, match="belongs to another run"):
        script.main(tiny_args(other, tmp_path / "b", "--resume", str(checkpoint)))
    # A value of the wrong type, an unknown key.
    with pytest.raises(RecipeError, match="stage2.batch_size"):
        script.main(tiny_args(data_dir, tmp_path / "c", "--set", "stage2.batch_size=big"))
    with pytest.raises(RecipeError, match="unknown key"):
        script.main(tiny_args(data_dir, tmp_path / "d", "--set", "stage2.epoch=1"))
    # An output folder that already holds a run.
    with pytest.raises(ValueError, match="already holds a run"):
        script.main(tiny_args(data_dir, output_dir))
    for name in "abcde":
        assert not (tmp_path / name / "checkpoints").exists()


def test_gradient_checkpointing_recomputes_the_backbone_in_training(data_dir, tmp_path, script, monkeypatch):
    """`training.gradient_checkpointing: true` trains, and the backward pass recomputes the backbone's blocks: each
    training step runs the deepest convolution twice (forward and recomputation), the stem (not a block) once."""
    calls, models = {"stem": 0, "deepest": 0, "classifier": 0}, []
    initial_model = script.initial_model

    def counted_model(*args, **kwargs):
        model = initial_model(*args, **kwargs)
        convolutions = [module for module in model.srn.backbone.modules() if isinstance(module, torch.nn.Conv2d)]
        for name, module in (
            ("stem", convolutions[0]),
            ("deepest", convolutions[-1]),
            ("classifier", model.srn.classifier),
        ):
            module.register_forward_hook(
                lambda module, *_, name=name: calls.update({name: calls[name] + module.training})
            )
        models.append(model)
        return model

    monkeypatch.setattr(script, "initial_model", counted_model)
    args = tiny_args(data_dir, tmp_path, "--stages", "1", "--set", "training.gradient_checkpointing=true")
    report = script.main(args)
    assert np.isfinite(report["stages"][0]["history"][0]["train_loss"])
    assert models[0].is_activation_checkpointing and models[0].srn.gradient_checkpointing
    steps = calls["classifier"]  # one training forward per step: 48 images in batches of 8
    assert steps == 6 and calls["stem"] == steps and calls["deepest"] == 2 * steps


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, script):
    args = tiny_args(data_dir, tmp_path, "--set", "stage2.lr=1e12", "--set", "stage2.epochs=3", "--stages", "1,2")
    with pytest.raises(TrainingDiverged, match="stage 2.*last good checkpoint: .*checkpoint_0"):
        script.main(args)
    checkpoints = sorted((tmp_path / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["checkpoint_0"]
    assert json.loads((checkpoints[0] / "progress.json").read_text())["stage"] == 1
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(data_dir, tmp_path, script):
    """SIGKILL a run right after its first mid-epoch checkpoint of stage 2; --resume must end as an unbroken run."""
    extra = ["--set", "training.checkpoint_every_steps=2"]
    reference = script.main(tiny_args(data_dir, tmp_path / "reference", *extra, epochs=2))

    output_dir = tmp_path / "killed"

    def in_stage_2():
        progress = [json.loads(p.read_text()) for p in output_dir.glob("checkpoints/*/progress.json")]
        return any(p["stage"] == 2 and p["step"] > 0 for p in progress)

    kill_train_stages_when(tiny_args(data_dir, output_dir, *extra, epochs=2), in_stage_2, "mid-stage")
    assert not (output_dir / "metrics.json").exists()

    resumed = script.main(tiny_args(data_dir, output_dir, *extra, "--resume", epochs=2))
    for expected, got in zip(reference["stages"], resumed["stages"]):
        assert len(got["history"]) == len(expected["history"])
        for got_epoch, expected_epoch in zip(got["history"], expected["history"]):
            assert got_epoch == pytest.approx(expected_epoch)
        assert got["test"]["mAP"] == pytest.approx(expected["test"]["mAP"])
        assert got["best_epoch"] == expected["best_epoch"]
    from safetensors.torch import load_file

    final_reference = load_file(tmp_path / "reference" / "final" / "model.safetensors")
    final_resumed = load_file(output_dir / "final" / "model.safetensors")
    assert all(torch.equal(final_reference[key], final_resumed[key]) for key in final_reference)


def test_push_to_hub_at_the_end_publishes_the_final_model(data_dir, tmp_path, script, hub_calls):
    """`--push-to-hub`: one commit with the final model, its card and a test image's attention picture.

    Only the network edge is faked (`hub_calls`): `HfApi.create_repo` and `HfApi.create_commit` record their calls.
    """
    output_dir = tmp_path / "run"
    script.main(tiny_args(data_dir, output_dir, "--stages", "1", "--push-to-hub", "org/srn-squares", epochs=1))
    assert hub_calls[0][:2] == ("create_repo", "org/srn-squares")
    ((kind, repo_id, _, uploaded),) = hub_calls[1:]
    assert (kind, repo_id) == ("create_commit", "org/srn-squares")
    files = set(uploaded)
    assert {"README.md", "attention_maps.png", "config.json", "model.safetensors", "preprocessor_config.json"} <= set(
        files
    )
