"""srn_hf.recipe: every number of a recipe checked against the range its field declares, the model section checked by
SRNConfig itself (close names of a mistyped backbone), the weights source against the backbone, and YAML that is
not plain refused naming the file and the line."""

import dataclasses
import re
from pathlib import Path

import pytest

from srn_hf.recipe import DataRecipe, LossRecipe, Range, RecipeError, StageRecipe, TrainingRecipe, load_recipe

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "examples" / "configs").glob("*.yaml"))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("stage1.batch_size=0", "stage1.batch_size: 0 is out of range: must be >= 1"),
        ("stage2.epochs=-1", "stage2.epochs: -1 is out of range: must be >= 0"),
        ("stage1.lr=0", "stage1.lr: 0.0 is out of range: must be a finite number > 0"),
        ("stage3.lr=-1e-3", "stage3.lr: -0.001 is out of range: must be a finite number > 0"),
        ("stage4.lr=.nan", "stage4.lr: nan is out of range: must be a finite number > 0"),
        ("stage1.lr=.inf", "stage1.lr: inf is out of range: must be a finite number > 0"),
        ("stage4.backbone_lr=-1e-5", "stage4.backbone_lr: -1e-05 is out of range: must be a finite number >= 0"),
        ("stage1.warmup_ratio=1", "stage1.warmup_ratio: 1.0 is out of range: must be a finite number in [0, 1)"),
        ("stage1.momentum=-0.1", "stage1.momentum: -0.1 is out of range: must be a finite number in [0, 1)"),
        ("stage2.weight_decay=-1", "stage2.weight_decay: -1.0 is out of range: must be a finite number >= 0"),
        ("stage3.gradient_accumulation_steps=0", "stage3.gradient_accumulation_steps: 0 is out of range: must be >= 1"),
        ("training.eval_batch_size=0", "training.eval_batch_size: 0 is out of range: must be >= 1"),
        (
            "training.eval_map_cache_mb=.nan",
            "training.eval_map_cache_mb: nan is out of range: must be a finite number >= 0",
        ),
        ("training.checkpoints_total_limit=0", "training.checkpoints_total_limit: 0 is out of range: must be >= 1"),
        ("data.num_workers=-1", "data.num_workers: -1 is out of range: must be >= 0"),
        ("data.max_train_samples=0", "data.max_train_samples: 0 is out of range: must be >= 1"),
        ("loss.clip=1", "loss.clip: 1.0 is out of range: must be a finite number in [0, 1)"),
        ("loss.eps=0", "loss.eps: 0.0 is out of range: must be a finite number > 0"),
        ("seed=-1", "seed: -1 is out of range: must be in [0, 4294967296)"),
    ],
)
def test_a_number_out_of_its_range_is_refused_naming_the_field(setting, message):
    with pytest.raises(RecipeError, match="^recipe: " + re.escape(message) + "$"):
        load_recipe(None, [setting])


def test_the_ends_of_the_ranges_are_accepted():
    """`epochs: 0` (the stage's training skipped), a frozen backbone, no warm-up, no clip, every checkpoint kept."""
    recipe = load_recipe(
        None,
        [
            "stage2.epochs=0",
            "stage1.backbone_lr=0",
            "stage1.warmup_ratio=0",
            "stage1.momentum=0",
            "loss.clip=null",
            "training.checkpoints_total_limit=null",
            "training.eval_map_cache_mb=0",
            "seed=4294967295",
        ],
    )
    assert (recipe.stage2.epochs, recipe.stage1.backbone_lr, recipe.loss.clip) == (0, 0.0, None)


def test_every_number_of_the_recipe_declares_its_range():
    """The ranges live in the fields (one place): a number added without one is caught here."""
    for section in (DataRecipe, LossRecipe, TrainingRecipe, StageRecipe):
        for field in dataclasses.fields(section):
            if re.search(r"\b(int|float)\b", str(field.type)):
                assert isinstance(field.metadata.get("range"), Range), f"{section.__name__}.{field.name}"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_the_shipped_recipes_are_in_range(config):
    load_recipe(config)


def test_a_mistyped_backbone_is_refused_with_the_close_names():
    with pytest.raises(
        RecipeError, match=r"^recipe: model.backbone='resnet1O1' is not a timm model name; close names: "
    ):
        load_recipe(None, ["model.backbone=resnet1O1"])
    with pytest.raises(RecipeError, match=r"close names: .*resnet101"):
        load_recipe(None, ["model.backbone=resnet1O1"])


def test_the_model_section_is_checked_by_the_config_itself():
    with pytest.raises(RecipeError, match=re.escape("recipe: model.alpha=1.5 must lie in [0, 1]")):
        load_recipe(None, ["model.alpha=1.5"])


def test_packaged_lite0_with_another_backbone_is_refused():
    with pytest.raises(
        RecipeError,
        match=r"^recipe: model.pretrained_weights=packaged-lite0 holds tf_efficientnet_lite0's ImageNet weights, "
        r"not resnet18's: set model.backbone=tf_efficientnet_lite0, or model.pretrained_weights to timm or",
    ):
        load_recipe(None, ["model.backbone=resnet18", "model.pretrained_weights=packaged-lite0"])


def test_a_python_tag_in_a_recipe_file_is_refused_naming_the_file_and_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: 0\nstage1:\n  lr: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(recipe))}, line 3: the YAML tag !!python/object/apply:"):
        load_recipe(recipe)
    recipe.write_text("seed: 0\nmodel: {backbone: [\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(recipe))}, line 3: not valid YAML"):
        load_recipe(recipe)


def test_a_python_tag_in_an_override_is_refused_naming_it():
    with pytest.raises(RecipeError, match=r"^overrides item 'seed=!!python/name:os.system ': the YAML tag "):
        load_recipe(None, ["seed=!!python/name:os.system "])
