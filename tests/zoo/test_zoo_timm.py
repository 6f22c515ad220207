"""What timm checks of every model (forward, backward, reset_classifier, num_classes=0, forward_features /
forward_head, forward_intermediates, group_matcher, gradient checkpointing, pretrained_cfg), run against SRN."""

import pytest
import timm
import torch
from helpers import SMALL_BRANCHES
from timm.data import resolve_data_config
from timm.optim import create_optimizer_v2

from srn_hf.modeling_srn import LabelMapConv
from srn_hf.timm_srn import BACKBONE_DATA, CLASSIFIER_NAMES, NAMED_BACKBONES

SIZE = 64


def create(num_classes: int = 5, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(
        "srn", backbone="resnet10t", num_classes=num_classes, img_size=SIZE, **SMALL_BRANCHES, **kwargs
    )


def images(batch: int = 2, size: tuple[int, int] = (SIZE, SIZE)) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))


@pytest.mark.parametrize("size", [(SIZE, SIZE), (96, 80)])
def test_forward_and_backward_at_the_default_and_other_sizes(size):
    model = create().train()
    outputs = model(images(2, size))
    assert outputs.shape == (2, 5) and torch.isfinite(outputs).all()
    outputs.mean().backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters())


def test_forward_is_forward_head_of_forward_features():
    model = create().eval()
    pixel_values = images()
    with torch.no_grad():
        features = model.forward_features(pixel_values)
        logits = model(pixel_values)
        final, intermediates = model.forward_intermediates(pixel_values)
        pooled = model.forward_head(features, pre_logits=True)
        attention_features = intermediates[model.srn.feature_positions[0]]
        torch.testing.assert_close(model.forward_head(features, attention_features=attention_features), logits)
    assert features.shape == (2, model.num_features, *model.pretrained_cfg["pool_size"]) and torch.equal(
        final, features
    )
    torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match=r"forward_head needs SRN's map X \(feature stage 3\) beside F"):
        model.forward_head(features)


def test_forward_head_of_f_alone_where_x_is_f():
    model = create(attention_feature_index=-1).eval()  # X and F the same map
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(images())), model(images()))


def label_layer_std(model) -> dict[str, float]:
    return {
        type(layer).__name__ + str(i): layer.weight.std().item() for i, layer in enumerate(model.srn.label_layers())
    }


def test_reset_classifier_gives_the_init_of_a_new_model():
    model = create(num_classes=5).train()
    model(images()).sum().backward()  # weights of a model in use
    with torch.no_grad():
        for parameter in model.srn.label_layers()[1].parameters():
            parameter.mul_(30)
    model.reset_classifier(40)
    fresh = create(num_classes=40, seed=3)
    assert [type(layer) for layer in model.srn.label_layers()] == [type(layer) for layer in fresh.srn.label_layers()]
    assert isinstance(model.srn.confidence.conv, LabelMapConv) and isinstance(model.srn.attention.conv3, LabelMapConv)
    for (name, std), fresh_std in zip(label_layer_std(model).items(), label_layer_std(fresh).values()):
        assert std == pytest.approx(fresh_std, rel=0.3), name  # about 0.01 for Z and S, not Kaiming's 0.5
    assert model.srn.confidence.conv.weight.std() < 0.02
    with torch.no_grad():
        attention_maps = model.eval().forward_srn(images()).attention_maps
    torch.testing.assert_close(attention_maps, torch.full_like(attention_maps, 1 / 16), atol=2e-3, rtol=0.2)


def test_num_classes_zero_returns_pooled_features_and_takes_a_new_head():
    headless = create(num_classes=0).eval()
    pixel_values = images()
    with torch.no_grad():
        pooled = headless(pixel_values)
        features = headless.forward_features(pixel_values)
    assert pooled.shape == (2, headless.num_features) and headless.num_classes == 0
    torch.testing.assert_close(pooled, headless.forward_head(features, pre_logits=True))
    torch.testing.assert_close(pooled, headless.forward_head(features))
    assert all(name.startswith("srn.backbone.") for name in headless.state_dict())  # no unused head weights
    assert isinstance(headless.get_classifier(), torch.nn.Identity) and headless.get_classifier(name_only=True) == ()
    with pytest.raises(ValueError, match="num_classes=0"):
        headless.forward_srn(pixel_values)

    backbone = {name: tensor.clone() for name, tensor in headless.state_dict().items()}
    headless.reset_classifier(3, label_names=["a", "b", "c"])
    with torch.no_grad():
        logits = headless(pixel_values)
    assert logits.shape == (2, 3) and headless.config.id2label == {0: "a", 1: "b", 2: "c"}
    for name, tensor in backbone.items():
        assert torch.equal(headless.state_dict()[name], tensor), name

    model = create(num_classes=5).eval()
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(pixel_values).shape == (2, model.num_features)


def test_get_classifier_names_the_label_layers():
    model = create()
    names = model.get_classifier(name_only=True)
    assert names == CLASSIFIER_NAMES == tuple(model.pretrained_cfg["classifier"])
    state_dict = model.state_dict()
    assert all(f"{name}.weight" in state_dict for name in names)
    modules = dict(model.named_modules())
    assert [modules[name] for name in names] == list(model.get_classifier())


def test_forward_intermediates():
    model = create().eval()
    pixel_values = images()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(pixel_values)
        last_two = model.forward_intermediates(pixel_values, indices=2, intermediates_only=True)
        chosen = model.forward_intermediates(pixel_values, indices=[0, -1], intermediates_only=True)
        hidden_states = model.srn(pixel_values, output_hidden_states=True).hidden_states
        features = model.forward_features(pixel_values)
    assert len(intermediates) == len(model.feature_info) == len(model.srn.backbone.feature_info) == 5
    for intermediate, hidden, info in zip(intermediates, hidden_states, model.feature_info):
        torch.testing.assert_close(intermediate, hidden)
        assert intermediate.shape[1:] == (info["num_chs"], SIZE // info["reduction"], SIZE // info["reduction"])
    torch.testing.assert_close(final, features)
    assert [t.shape for t in last_two] == [t.shape for t in intermediates[-2:]]
    assert [t.shape for t in chosen] == [intermediates[0].shape, intermediates[-1].shape]
    with pytest.raises(ValueError, match="output_fmt='NHWC'"):
        model.forward_intermediates(pixel_values, output_fmt="NHWC")


def test_features_only_gives_the_backbone_stages():
    model = create()
    with torch.no_grad():
        expected = model.eval().forward_intermediates(images(), indices=[1, 2, 3], intermediates_only=True)
    torch.manual_seed(0)
    features = timm.create_model(
        "srn", backbone="resnet10t", img_size=SIZE, features_only=True, out_indices=(1, 2, 3), **SMALL_BRANCHES
    )
    missing, unexpected = features.model.load_state_dict(model.state_dict(), strict=False)  # the pruned SRNTimm
    assert not missing and unexpected  # its keys are a part of the full model's
    assert features.feature_info.channels() == [64, 128, 256] and features.feature_info.reduction() == [4, 8, 16]
    with torch.no_grad():
        for got, want in zip(features.eval()(images()), expected):
            torch.testing.assert_close(got, want)
    assert not any(
        name.startswith(("model.srn.classifier", "model.srn.backbone.layer4")) for name in features.state_dict()
    )


def test_prune_intermediate_layers_keeps_the_stages_up_to_the_deepest_index():
    model = create().eval()
    with torch.no_grad():
        taps = model.forward_intermediates(images(), intermediates_only=True)
        assert model.prune_intermediate_layers([0, 2]) == [0, 2]
        assert model.num_classes == 0 and model.num_features == 128 and len(model.feature_info) == 3
        torch.testing.assert_close(model.forward_features(images()), taps[2])  # F is now the deepest stage kept
        assert model(images()).shape == (2, 128, SIZE // 8, SIZE // 8)  # reset_classifier(0, ""), as timm prunes
    assert not any(name.startswith(("srn.backbone.layer3", "srn.classifier")) for name in model.state_dict())
    with pytest.raises(ValueError, match="SRN's head needs the backbone's stages up to 4"):
        create().prune_intermediate_layers([2], prune_head=False)


def test_pruning_an_efficientnet_leaves_no_unused_block():
    """timm's EfficientNet feature wrapper builds (and runs) every block; pruned, only those up to the tap stay."""
    model = timm.create_model("srn", backbone="tf_efficientnet_lite0", num_classes=3, img_size=SIZE, **SMALL_BRANCHES)
    with torch.no_grad():
        tap = model.eval().forward_intermediates(images(), indices=[2], intermediates_only=True)[0]
    model.prune_intermediate_layers([2])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images()), tap)
    model.train().forward_features(images()).sum().backward()
    assert [name for name, parameter in model.named_parameters() if parameter.grad is None] == []
    assert len(model.srn.backbone.blocks) == 3


def test_fx_traces_the_forward():
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = create().eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert "srn.resize_to_kernel" in " ".join(eval_nodes) or any("resize_to_kernel" in node for node in eval_nodes)
    extractor = create_feature_extractor(model, return_nodes={eval_nodes[-1]: "logits"})
    with torch.no_grad():
        torch.testing.assert_close(extractor(images())["logits"], model(images()))


def test_group_matcher_drives_layer_wise_learning_rate_decay():
    model = create()
    optimizer = create_optimizer_v2(model, "sgd", lr=0.1, layer_decay=0.5)
    scale_of = {id(parameter): group["lr_scale"] for group in optimizer.param_groups for parameter in group["params"]}
    assert len(scale_of) == len(list(model.parameters()))  # every parameter in exactly one group
    stem = model.srn.backbone.conv1[0].weight
    last_block = model.srn.backbone.layer4[0].conv1.weight
    head = [parameter for layer in model.get_classifier() for parameter in layer.parameters()]
    head.append(model.srn.spatial_regularization.conv3[0].weight)
    assert scale_of[id(stem)] < scale_of[id(last_block)] < 1.0
    assert all(scale_of[id(parameter)] == 1.0 for parameter in head)
    coarse = model.group_matcher(coarse=True)
    assert (
        coarse("srn.backbone.layer1.0.conv1.weight")
        < coarse("srn.backbone.layer3.0.conv1.weight")
        < coarse("srn.classifier.weight")
    )


def test_set_grad_checkpointing_gives_identical_gradients():
    model = create().train()
    pixel_values = images()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    def gradients():
        model.zero_grad()
        model(pixel_values).square().mean().backward()
        return [parameter.grad.clone() for parameter in model.parameters()]

    plain = gradients()
    model.load_state_dict(state)
    model.set_grad_checkpointing(True)
    assert model.srn.gradient_checkpointing
    for got, expected in zip(gradients(), plain):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_pretrained_cfgs_hold_the_backbones_preprocessing():
    """The entries' preprocessing is written out (registration asks timm nothing): it must stay timm's."""
    for variant, backbone in NAMED_BACKBONES.items():
        expected = timm.get_pretrained_cfg(backbone)
        written = BACKBONE_DATA[backbone]
        assert (written["mean"], written["std"], written["interpolation"]) == (
            expected.mean,
            expected.std,
            expected.interpolation,
        )
        assert timm.get_pretrained_cfg(variant).mean == expected.mean
    model = create()
    data_config = resolve_data_config({}, model=model)
    assert data_config["input_size"] == (3, SIZE, SIZE) and data_config["crop_pct"] == 1.0
