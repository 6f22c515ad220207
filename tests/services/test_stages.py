"""srn_hf.stages: the four stages as data, freezing, the stage losses, the asymmetric loss (timm's); the stages'
optimizer (timm's factory)."""

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import small_srn
from timm.loss import AsymmetricLossMultiLabel

from srn_hf.modeling_srn import sigmoid_cross_entropy
from srn_hf.recipe import LossRecipe, RecipeError, StageRecipe, load_recipe
from srn_hf.stages import (
    SRN_MODULES,
    STAGES,
    BackboneMapCache,
    StageForward,
    apply_stage,
    get_stage,
    make_loss,
    set_train_mode,
    srn_of,
    stage_loss,
)

LABELS = {0: "cat", 1: "dog", 2: "sofa", 3: "tv"}


@pytest.fixture(scope="module")
def make_model():
    def make():
        return small_srn(LABELS, image_size=64).train()

    return make


def batch(size=4):
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(size, 3, 64, 64, generator=generator)
    labels = (torch.rand(size, len(LABELS), generator=generator) > 0.5).float()
    return pixels, labels


def test_stage_table_follows_the_paper():
    assert STAGES[1].trained == ("backbone", "classifier") and STAGES[1].loss_terms == ("cls_logits",)
    assert set(STAGES[2].trained) == {"attention_trunk", "attention", "confidence"}
    assert STAGES[2].loss_terms == ("att_logits",) and {"backbone", "classifier"} <= set(STAGES[2].frozen)
    assert STAGES[3].trained == ("spatial_regularization",) and STAGES[3].loss_terms == ("sr_logits",)
    assert STAGES[4].frozen == () and STAGES[4].loss_terms == ("logits", "att_logits")
    assert [STAGES[n].prediction for n in (1, 2, 3, 4)] == ["cls_logits", "att_logits", "sr_logits", "logits"]
    assert [STAGES[n].backbone_frozen for n in (1, 2, 3, 4)] == [False, True, True, False]
    with pytest.raises(ValueError, match="stage=5"):
        get_stage(5)


@pytest.mark.parametrize("number", [1, 2, 3, 4])
def test_one_step_updates_exactly_the_trained_modules(make_model, number):
    """Frozen: no gradient, not in the optimizer, batch-norm statistics untouched; trained: changed."""
    model = make_model()
    stage = STAGES[number]
    trainable = apply_stage(model, stage)
    assert set(trainable) == set(stage.trained)
    before = {name: {k: v.clone() for k, v in getattr(model.srn, name).state_dict().items()} for name in SRN_MODULES}
    optimizer = torch.optim.SGD([p for params in trainable.values() for p in params], lr=0.1)
    forward = StageForward(model, stage)
    pixels, labels = batch()
    loss = stage_loss(forward(pixels), labels, stage)
    loss.backward()
    optimizer.step()

    for name in SRN_MODULES:
        module = getattr(model.srn, name)
        after = module.state_dict()
        unchanged = all(torch.equal(before[name][key], after[key]) for key in after)
        if name in stage.frozen:
            assert unchanged, f"stage {number} changed frozen {name} (weights or batch-norm statistics)"
            assert all(p.grad is None and not p.requires_grad for p in module.parameters())
            assert not any(m.training for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))
        elif list(module.parameters()):
            assert not unchanged, f"stage {number} did not train {name}"


def test_frozen_backbone_runs_without_autograd(make_model):
    model = make_model()
    apply_stage(model, 2)
    seen = []
    model.srn.backbone.register_forward_hook(lambda module, args, output: seen.append(torch.is_grad_enabled()))
    outputs = StageForward(model, 2)(batch()[0])
    assert seen == [False] and outputs.att_logits.requires_grad


@pytest.mark.parametrize("layout", ["paper", "released"])
def test_evaluation_reuses_backbone_maps_only_while_the_weights_are_the_same(layout):
    """Stages 2 and 3 score the same images through the same frozen backbone: the second pass takes X and F from
    the cache and gives exactly the first pass's outputs; new backbone weights (a training step, a reload) drop them."""
    model = small_srn(LABELS, image_size=64, layout=layout)
    cache = BackboneMapCache(max_megabytes=64)
    forward = StageForward(model, 2, cache)
    calls = []
    model.srn.backbone.register_forward_hook(lambda module, args, output: calls.append(1))
    pixels = batch(6)[0]
    with torch.no_grad():
        first = forward.eval()(pixels)
        second = forward.eval()(pixels)  # a later validation pass: the backbone does not run
        assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
        for name in ("cls_logits", "att_logits", "sr_logits", "logits", "attention_maps"):
            assert torch.equal(getattr(first, name), getattr(second, name)), name
        other = forward(pixels[:3])  # other images are computed
        assert len(calls) == 2 and torch.equal(other.logits, first.logits[:3])

        model.srn.backbone.state_dict()[next(iter(model.srn.backbone.state_dict()))].mul_(1.5)  # the weights change
        changed = forward.eval()(pixels)
        assert len(calls) == 3 and cache.misses == 3
        assert torch.equal(changed.logits, StageForward(model, 2).eval()(pixels).logits)
        assert not torch.equal(changed.logits, first.logits)


def test_backbone_map_cache_is_bounded_and_unused_in_training(make_model):
    model = make_model()
    pixels = batch()[0]
    forward = StageForward(model, 4, BackboneMapCache(max_megabytes=0))  # 0: off
    with torch.no_grad():
        forward.eval()(pixels), forward(pixels)
    assert forward.map_cache.hits == 0 and forward.map_cache.bytes == 0
    forward = StageForward(model, 4, BackboneMapCache(max_megabytes=64))
    forward.train()(pixels).logits.sum().backward()  # a training step never looks at the cache
    assert (forward.map_cache.hits, forward.map_cache.misses) == (0, 0)
    assert model.srn.backbone.conv1[0].weight.grad is not None


def test_train_mode_keeps_frozen_batch_norm_in_eval(make_model):
    model = make_model()
    apply_stage(model, 3)
    model.train()  # what a plain training loop would do: set_train_mode must undo it for frozen parts
    set_train_mode(model, 3)
    assert model.srn.spatial_regularization.training
    assert not model.srn.backbone.training and not model.srn.attention.training


def test_stage_losses_use_the_stage_predictions(make_model):
    model = make_model()
    model.eval()
    pixels, labels = batch()
    with torch.no_grad():
        outputs = model(pixels)
    assert torch.allclose(stage_loss(outputs, labels, 4), model(pixels, labels=labels).loss)
    assert torch.allclose(stage_loss(outputs, labels, 2), sigmoid_cross_entropy(outputs.att_logits, labels))
    summed = make_loss("sigmoid_cross_entropy", "sum_over_classes")
    assert torch.allclose(
        stage_loss(outputs, labels, 1, summed), sigmoid_cross_entropy(outputs.cls_logits, labels) * len(LABELS)
    )


def test_asymmetric_loss_is_timms_with_our_reductions():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=generator) * 3
    labels = (torch.rand(8, 5, generator=generator) > 0.5).float()
    for reduction in ("mean", "sum_over_classes"):
        plain = make_loss("asymmetric", reduction, gamma_neg=0, gamma_pos=0, clip=0)
        assert isinstance(plain, AsymmetricLossMultiLabel)
        # Without focusing and clipping ASL is the sigmoid cross-entropy, a positive number, in both reductions.
        assert plain(logits, labels) > 0
        assert torch.allclose(plain(logits, labels), sigmoid_cross_entropy(logits, labels, reduction), atol=1e-6)
    asl = make_loss(**vars(LossRecipe(name="asymmetric")))  # the recipe's defaults: gamma_neg 4, gamma_pos 0, clip 0.05
    summed = make_loss(**vars(LossRecipe(name="asymmetric", reduction="sum_over_classes")))
    assert torch.allclose(summed(logits, labels), asl(logits, labels) * 5)
    # Focusing and clipping lower the weight of easy negatives: the loss of an easy negative drops to zero.
    assert asl(torch.tensor([[-4.0]]), torch.tensor([[0.0]])).item() == 0.0
    assert asl(logits, labels) < sigmoid_cross_entropy(logits, labels)
    hard_positive = torch.tensor([[-3.0]]), torch.tensor([[1.0]])
    assert torch.allclose(asl(*hard_positive), sigmoid_cross_entropy(*hard_positive))
    with pytest.raises(ValueError, match="loss='focal'"):
        make_loss("focal")


def test_recipe_asymmetric_loss_takes_timms_parameter_names(tmp_path):
    recipe = load_recipe(
        None,
        [
            "loss.name=asymmetric",
            "loss.gamma_neg=2",
            "loss.gamma_pos=1",
            "loss.clip=null",
            "loss.reduction=sum_over_classes",
        ],
    )
    loss = make_loss(**vars(recipe.loss))
    assert (loss.gamma_neg, loss.gamma_pos, loss.clip, loss.eps, loss.reduction) == (2.0, 1.0, None, 1e-8, "batchmean")
    for old, new in (("gamma_negative", "gamma_neg"), ("gamma_positive", "gamma_pos")):
        with pytest.raises(RecipeError, match=f"loss.{old} is now loss.{new}"):
            load_recipe(None, [f"loss.{old}=2"])


def load_train_stages():
    path = Path(__file__).resolve().parents[2] / "examples" / "train_stages.py"
    spec = importlib.util.spec_from_file_location("train_stages", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_stage_optimizer_from_timms_factory_is_the_recipes(make_model, optimizer):
    """timm's `create_optimizer_v2` gives the optimizer the recipe describes: classical momentum for `sgd`, the
    backbone at `backbone_lr`, no decay on 1-d weights; its steps are those of the torch optimizer built by hand."""
    build_optimizer = load_train_stages().build_optimizer
    recipe = StageRecipe(optimizer=optimizer, lr=1e-2, backbone_lr=1e-3, weight_decay=0.1)
    models = [make_model(), make_model()]
    optimizers = []
    for model in models:
        trainable = apply_stage(model, 4)
        optimizers.append(build_optimizer({name: getattr(srn_of(model), name) for name in trainable}, recipe))
    backbone = {id(p) for p in srn_of(models[0]).backbone.parameters()}
    groups = optimizers[0].param_groups
    assert sum(len(group["params"]) for group in groups) == len(list(models[0].parameters()))
    for group in groups:
        assert {id(p) in backbone for p in group["params"]} in ({True}, {False})
        assert group["lr"] == (1e-3 if id(group["params"][0]) in backbone else 1e-2)
        assert group["weight_decay"] == (0.0 if group["params"][0].ndim <= 1 else 0.1)
        assert {p.ndim <= 1 for p in group["params"]} in ({True}, {False})
    # The same groups of the twin model, for the torch optimizer built by hand.
    positions = {id(p): index for index, p in enumerate(models[0].parameters())}
    twin = list(models[1].parameters())
    by_hand = [{**group, "params": [twin[positions[id(p)]] for p in group["params"]]} for group in groups]
    if optimizer == "sgd":
        assert all(group["momentum"] == 0.9 and not group["nesterov"] for group in groups)
        reference = torch.optim.SGD(by_hand, lr=1e-2, momentum=0.9)
    else:
        assert type(optimizers[0]) is torch.optim.AdamW
        reference = torch.optim.AdamW(by_hand, lr=1e-2)
    pixels, labels = batch()
    for model, step in ((models[0], optimizers[0]), (models[1], reference)):
        for _ in range(2):
            stage_loss(model(pixels), labels, 4).backward()
            step.step()
            step.zero_grad()
    for mine, theirs in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(mine, theirs)
