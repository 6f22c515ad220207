"""SRN as the paper defines it, over real timm backbones, saved and loaded like any transformers model."""

import json

import pytest
import timm
import torch
from timm.models.resnet import Bottleneck
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

import srn_hf
from srn_hf import SRNConfig, SRNForImageClassification, SRNModel
from srn_hf.modeling_srn import resize_to_kernel, sigmoid_cross_entropy

LABELS = dict(enumerate(["person", "dog", "car", "kite", "boat", "cup", "pizza"]))


def small_config(**overrides) -> SRNConfig:
    """A small but real SRN: ResNet-18 from timm, narrow branches so that the tests run fast on a CPU."""
    options = {
        "backbone": "resnet18",
        "id2label": LABELS,
        "attention_channels": 32,
        "regularization_channels": 16,
        "regularization_out_channels": 64,
    }
    return SRNConfig(**{**options, **overrides})


def seeded_model(config: SRNConfig, model_class=SRNModel):
    torch.manual_seed(0)
    return model_class(config).eval()


class Recorder:
    """Records the input and output of a sub-module (to check the math between the named parts)."""

    def __init__(self, module):
        self.inputs, self.output = None, None
        module.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.inputs, self.output = inputs, output


@pytest.fixture(scope="module")
def model():
    return seeded_model(small_config())


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(3, 3, 224, 224)


def test_resnet101_paper_shapes():
    model = seeded_model(SRNConfig(num_labels=80))
    f_sr = model.spatial_regularization
    assert model.attention_map_size == 14
    assert (f_sr.conv3[0].in_channels, f_sr.conv3[0].out_channels) == (512, 2048)
    assert f_sr.conv3[0].groups == 512 and f_sr.conv3[0].kernel_size == (14, 14) and f_sr.conv3[0].padding == (0, 0)
    assert model.classifier.in_features == 2048 and model.confidence.conv.in_channels == 1024
    assert model.attention.conv1[0].in_channels == 1024 and model.attention.conv2[0].kernel_size == (3, 3)
    assert model.config.problem_type == "multi_label_classification"
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 224, 224))
    assert outputs.logits.shape == (1, 80)
    assert outputs.attention_maps.shape == outputs.confidence_maps.shape == (1, 80, 14, 14)


def test_grouped_kernel_follows_image_size():
    assert seeded_model(small_config(image_size=448)).spatial_regularization.conv3[0].kernel_size == (28, 28)


def test_attention_maps_are_a_softmax_over_positions_per_sample_and_class(model, images):
    z = Recorder(model.attention)
    with torch.no_grad():
        outputs = model(images)
    a = outputs.attention_maps
    torch.testing.assert_close(a.sum(dim=(2, 3)), torch.ones(3, len(LABELS)))
    expected = torch.softmax(z.output.flatten(2), dim=-1).view_as(a)
    torch.testing.assert_close(a, expected)
    # never across the batch: a sample's maps do not depend on the others in the batch
    with torch.no_grad():
        alone = model(images[1:2]).attention_maps
    torch.testing.assert_close(alone[0], a[1], rtol=1e-4, atol=1e-6)


def test_attention_prediction_is_the_sum_of_a_times_s(model, images):
    with torch.no_grad():
        outputs = model(images)
    expected = (outputs.attention_maps * outputs.confidence_maps).sum(dim=(2, 3))
    torch.testing.assert_close(outputs.att_logits, expected)
    assert not torch.allclose(
        outputs.att_logits, (outputs.attention_maps * torch.sigmoid(outputs.confidence_maps)).sum(dim=(2, 3))
    )


def test_spatial_regularization_sees_a_times_sigmoid_of_s_only(model, images):
    u = Recorder(model.spatial_regularization)
    with torch.no_grad():
        outputs = model(images)
    torch.testing.assert_close(u.inputs[0], outputs.attention_maps * torch.sigmoid(outputs.confidence_maps))
    torch.testing.assert_close(u.output, outputs.sr_logits)


def test_main_classifier_pools_the_stride_32_map(model, images):
    with torch.no_grad():
        features, classifier_features = model.forward_backbone(images)
        outputs = model.forward_heads(features, classifier_features)
    assert features.shape[-1] == 14 and classifier_features.shape[-1] == 7
    torch.testing.assert_close(outputs.cls_logits, model.classifier(classifier_features.mean(dim=(2, 3))))


@pytest.mark.parametrize("alpha", [0.5, 0.2, 1.0])
def test_fusion_on_logits_follows_alpha(alpha, images):
    model = seeded_model(small_config(alpha=alpha))
    with torch.no_grad():
        outputs = model(images[:1])
    torch.testing.assert_close(outputs.logits, alpha * outputs.cls_logits + (1 - alpha) * outputs.sr_logits)


def test_branches_are_named_modules_that_partition_the_parameters(model):
    parts = ["backbone", "classifier", "attention_trunk", "attention", "confidence", "spatial_regularization"]
    counted = {}
    for part in parts:
        for name, parameter in getattr(model, part).named_parameters(prefix=part):
            counted[name] = parameter
    assert set(counted) == {name for name, _ in model.named_parameters()}
    wrapped = SRNForImageClassification(small_config())
    assert isinstance(wrapped.get_submodule("srn.spatial_regularization"), torch.nn.Module)


def test_released_layout_adds_residual_blocks_and_a_two_conv_confidence_head(images):
    model = seeded_model(small_config(layout="released"))
    assert [type(block) for block in model.attention_trunk.children()] == [Bottleneck, Bottleneck]
    convs = [m for m in model.confidence.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (1, 1)] and convs[-1].out_channels == len(LABELS)
    with torch.no_grad():
        outputs = model(images[:1])
    torch.testing.assert_close(outputs.attention_maps.sum(dim=(2, 3)), torch.ones(1, len(LABELS)))


def test_batch_norm_in_the_branches_is_a_switch():
    with_bn = seeded_model(small_config())
    without = seeded_model(small_config(use_batch_norm=False))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.spatial_regularization.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in without.spatial_regularization.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in without.attention.modules())


@pytest.mark.parametrize("size", [(160, 160), (288, 352)])
def test_runs_at_other_input_sizes(model, size):
    u = Recorder(model.spatial_regularization)
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, *size))
    assert outputs.attention_maps.shape[-2:] == (size[0] // 16, size[1] // 16)
    assert u.inputs[0].shape[-2:] == (14, 14)  # U brought to K x K for f_sr
    assert torch.isfinite(outputs.logits).all()


def test_resizing_to_the_kernel_keeps_each_maps_mass():
    maps = torch.softmax(torch.randn(2, 5, 22 * 18), dim=-1).view(2, 5, 22, 18)
    resized = resize_to_kernel(maps, 14)
    assert resized.shape == (2, 5, 14, 14)
    torch.testing.assert_close(resized.sum(dim=(2, 3)), torch.ones(2, 5))


@pytest.mark.parametrize(
    "backbone, kwargs, x_channels",
    [
        ("convnext_atto", {}, 160),
        ("efficientnet_b0", {}, 112),
        ("vit_tiny_patch16_224", {"dynamic_img_size": True}, 192),
    ],
)
def test_any_timm_backbone(backbone, kwargs, x_channels):
    model = seeded_model(small_config(backbone=backbone, backbone_kwargs=kwargs or None))
    assert model.attention.conv1[0].in_channels == x_channels
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 224, 224))
        other = model(torch.randn(1, 3, 256, 256))
    assert outputs.attention_maps.shape == (2, len(LABELS), 14, 14)
    torch.testing.assert_close(outputs.attention_maps.sum(dim=(2, 3)), torch.ones(2, len(LABELS)))
    assert other.attention_maps.shape == (1, len(LABELS), 16, 16) and torch.isfinite(other.logits).all()


def test_loss_is_the_joint_loss_and_labels_are_checked(images):
    model = seeded_model(small_config(), SRNForImageClassification)
    labels = torch.zeros(2, len(LABELS))
    labels[0, 1] = labels[1, 3] = 1
    with torch.no_grad():
        outputs = model(images[:2], labels=labels)
    expected = sigmoid_cross_entropy(outputs.logits, labels) + sigmoid_cross_entropy(outputs.att_logits, labels)
    torch.testing.assert_close(outputs.loss, expected)
    with pytest.raises(ValueError, match=r"labels has shape \(2, 5\), expected \(2, 7\)"):
        model(images[:2], labels=torch.zeros(2, 5))


def test_caffe_loss_sums_over_classes():
    logits, labels = torch.randn(4, 10), (torch.rand(4, 10) > 0.5).float()
    mean = sigmoid_cross_entropy(logits, labels)
    torch.testing.assert_close(sigmoid_cross_entropy(logits, labels, "sum_over_classes"), mean * 10)
    with pytest.raises(ValueError, match="reduction='sum'"):
        sigmoid_cross_entropy(logits, labels, "sum")


def test_auto_classes_are_registered():
    config = AutoConfig.for_model("srn", backbone="resnet18", id2label=LABELS)
    assert isinstance(config, SRNConfig)
    assert isinstance(AutoModel.from_config(config), SRNModel)
    assert isinstance(AutoModelForImageClassification.from_config(config), SRNForImageClassification)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("srn")
    model = seeded_model(small_config(), SRNForImageClassification)
    model.save_pretrained(folder)
    with torch.no_grad():
        logits = model(images).logits
    return folder, logits


def test_save_and_load_give_identical_logits_from_safetensors(saved, images):
    folder, logits = saved
    files = {path.name for path in folder.iterdir()}
    assert "model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    assert {"configuration_srn.py", "modeling_srn.py"} <= files
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    loaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    base = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(loaded(images).logits, logits)
        assert torch.equal(base(images).logits, logits)
    assert loaded.config.id2label == LABELS


def test_from_pretrained_never_loads_backbone_weights(saved, monkeypatch):
    folder, _ = saved
    calls = []
    real_create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: calls.append(k.get("pretrained")) or real_create(*a, **k))
    AutoModelForImageClassification.from_pretrained(folder)
    SRNForImageClassification(small_config())
    assert calls and not any(calls)


def test_another_label_set_needs_ignore_mismatched_sizes(saved):
    folder, _ = saved
    fewer = {i: f"tag{i}" for i in range(3)}
    with pytest.raises(ValueError, match="another label set"):
        AutoModelForImageClassification.from_pretrained(folder, id2label=fewer)
    renamed = {i: f"tag{i}" for i in range(len(LABELS))}  # same size: would load silently under wrong names
    with pytest.raises(ValueError, match="ignore_mismatched_sizes=True"):
        AutoModelForImageClassification.from_pretrained(folder, id2label=renamed)
    original = AutoModelForImageClassification.from_pretrained(folder)
    for labels in (fewer, renamed):
        model = AutoModelForImageClassification.from_pretrained(folder, id2label=labels, ignore_mismatched_sizes=True)
        assert model.config.id2label == labels and model.srn.classifier.out_features == len(labels)
        torch.testing.assert_close(model.srn.backbone.conv1.weight, original.srn.backbone.conv1.weight)
        assert not torch.equal(model.srn.confidence.conv.weight[:3], original.srn.confidence.conv.weight[:3])


def test_clear_config_errors():
    with pytest.raises(Exception, match="'resnet1011' is not a timm model name; close names: resnet101"):
        SRNConfig(backbone="resnet1011")
    with pytest.raises(ValueError, match="num_labels=3 does not match id2label, which names 7 labels"):
        SRNConfig(id2label=LABELS, num_labels=3)
    with pytest.raises(Exception, match="alpha=1.5"):
        SRNConfig(alpha=1.5)
    for field in ("image_size", "attention_channels", "regularization_channels", "regularization_out_channels"):
        with pytest.raises(Exception, match=f"{field}=0"):
            SRNConfig(**{field: 0})
    with pytest.raises(Exception, match="label_thresholds names labels that are not in id2label: \\['zebra'\\]"):
        SRNConfig(id2label=LABELS, label_thresholds={"zebra": 0.3})
    with pytest.raises(ValueError, match=r"attention_feature_index=7 .* 'resnet18', whose feature_info has 5 stages"):
        SRNModel(small_config(attention_feature_index=7))


@pytest.mark.parametrize("indices", [(-1, -1), (-1, -2), (2, -1)])
def test_any_feature_indices_give_the_maps_they_name(indices):
    """X may be the same map as F, or deeper: timm returns each stage once, shallow to deep."""
    model = seeded_model(small_config(attention_feature_index=indices[0], classifier_feature_index=indices[1]))
    pixel_values = torch.randn(2, 3, 224, 224)
    stages = timm.create_model("resnet18", features_only=True).eval()
    stages.load_state_dict(model.backbone.state_dict(), strict=False)
    with torch.no_grad():
        expected = stages(pixel_values)
        features, classifier_features = model.forward_backbone(pixel_values)
        outputs = model(pixel_values)
    torch.testing.assert_close(features, expected[indices[0]])
    torch.testing.assert_close(classifier_features, expected[indices[1]])
    side = expected[indices[0]].shape[-1]
    assert outputs.attention_maps.shape == (2, len(LABELS), side, side)


def test_config_round_trip_keeps_every_field(tmp_path):
    config = small_config(layout="released", alpha=0.3, label_thresholds={"dog": 0.7}, image_size=320)
    config.save_pretrained(tmp_path)
    loaded = SRNConfig.from_pretrained(tmp_path)
    for field in ("backbone", "layout", "alpha", "label_thresholds", "image_size", "attention_channels", "id2label"):
        assert getattr(loaded, field) == getattr(config, field)
    assert "pretrained_cfg" not in json.loads((tmp_path / "config.json").read_text())


@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory):
    from srn_hf.pretrained import packaged_efficientnet_lite0_weights

    return packaged_efficientnet_lite0_weights(tmp_path_factory.mktemp("weights"))


def test_packaged_imagenet_weights_are_live(lite0_weights):
    """The packaged Lite0 weights classify a real photo, and SRN's backbone computes that very network's maps."""
    import skimage.data
    from PIL import Image
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    classifier = timm.create_model(
        "tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay={"file": str(lite0_weights)}
    ).eval()
    transform = create_transform(**resolve_data_config(model=classifier))
    photo = transform(Image.fromarray(skimage.data.coffee()))[None]
    with torch.no_grad():
        top = classifier(photo).softmax(-1)[0].argmax().item()
    assert ImageNetInfo().index_to_description(top) == "espresso"

    srn = seeded_model(small_config(backbone="tf_efficientnet_lite0"))
    random_stem = srn.backbone.conv_stem.weight.clone()
    srn.load_backbone_weights(lite0_weights)
    assert not torch.equal(srn.backbone.conv_stem.weight, random_stem)
    with torch.no_grad():
        features, classifier_features = srn.forward_backbone(photo)
        _, intermediates = classifier.forward_intermediates(photo, indices=[3, 4])
    torch.testing.assert_close(features, intermediates[0])
    torch.testing.assert_close(classifier_features, intermediates[1])


def test_package_registers_everything_on_import():
    assert srn_hf.SRNConfig is SRNConfig and srn_hf.SRNModel is SRNModel
    assert srn_hf.SRNForImageClassification is SRNForImageClassification


def with_sequential_layers(model: torch.nn.Module) -> torch.nn.Module:
    """The model as earlier versions built it: each hidden layer of the SRN branches an `nn.Sequential` of convolution,
    batch norm (where configured) and ReLU, the released layout's trunk an `nn.Sequential` of its two blocks; the same
    parameter and buffer objects, moved into the old containers."""
    from srn_hf.modeling_srn import ConvNormAct, SRNAttentionTrunk

    for name, module in list(model.named_modules()):
        if isinstance(module, ConvNormAct):
            norm = [module[1]] if isinstance(module[1], torch.nn.BatchNorm2d) else []
            old = torch.nn.Sequential(module[0], *norm, torch.nn.ReLU(inplace=True))
        elif isinstance(module, SRNAttentionTrunk):
            old = torch.nn.Sequential(*module.children())
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, old)
    return model


@pytest.mark.parametrize("fields", [{}, {"layout": "released"}, {"use_batch_norm": False}])
def test_the_layers_that_replaced_nn_sequential_keep_the_keys_and_the_logits(fields, images):
    """ConvNormAct and SRNAttentionTrunk (transformers' linter forbids nn.Sequential) hold the same weights under the
    same checkpoint keys as the nn.Sequential layers of earlier versions, and give the same logits (fixed seed)."""
    new = seeded_model(small_config(**fields), SRNForImageClassification)
    old = with_sequential_layers(seeded_model(small_config(**fields), SRNForImageClassification))
    assert list(old.state_dict()) == list(new.state_dict())  # e.g. srn.attention.conv1.0.weight, conv1.1.running_mean
    assert any(".conv1.1." in key for key in new.state_dict()) == fields.get("use_batch_norm", True)
    with torch.no_grad():
        torch.testing.assert_close(new(images).logits, old(images).logits, rtol=0, atol=0)
    reloaded = SRNForImageClassification(small_config(**fields)).eval()
    reloaded.load_state_dict(old.state_dict())  # a checkpoint saved by the old layout loads, strictly
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images).logits, old(images).logits, rtol=0, atol=0)
