"""The timm side: registered entries, timm's model interface, SRN on any backbone, state dicts shared with the
transformers model."""

import numpy as np
import pytest
import timm
import torch
from helpers import SMALL_BRANCHES
from PIL import Image
from safetensors.torch import load_file
from timm.data import create_transform, resolve_data_config

import srn_hf
from srn_hf.pretrained import packaged_efficientnet_lite0_weights
from srn_hf.processing import backbone_data_config, create_image_processor
from srn_hf.timm_srn import SRNTimm


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return timm.create_model("srn", backbone="resnet10t", num_classes=5, **SMALL_BRANCHES).eval()


def test_registered_entries():
    names = timm.list_models("srn*")
    assert {"srn", "srn_resnet101", "srn_resnet50", "srn_tf_efficientnet_lite0"} <= set(names)


def test_srn_resnet101_is_the_paper_network():
    model = timm.create_model("srn_resnet101", num_classes=80)
    assert isinstance(model, SRNTimm) and model.num_classes == 80 and model.num_features == 2048
    assert model.config.backbone == "resnet101" and model.srn.attention_map_size == 14
    assert model.srn.spatial_regularization.conv3[0].kernel_size == (14, 14)
    cfg = model.pretrained_cfg
    assert cfg["num_classes"] == 80 and cfg["input_size"] == (3, 224, 224)
    assert (cfg["crop_pct"], cfg["crop_mode"]) == (1.0, "squash")
    expected = backbone_data_config(model.config)
    assert (cfg["mean"], cfg["std"], cfg["interpolation"]) == (
        expected["mean"],
        expected["std"],
        expected["interpolation"],
    )


def test_timm_interface(small_model):
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        classifier_features = small_model.forward_features(images)
        logits = small_model(images)
        embedding = small_model.forward_head(classifier_features, pre_logits=True)
        outputs = small_model.forward_srn(images)
    assert classifier_features.shape == (2, small_model.num_features, 7, 7)  # F, pretrained_cfg's pool_size
    assert small_model.pretrained_cfg["pool_size"] == (7, 7)
    assert logits.shape == (2, 5)
    torch.testing.assert_close(embedding, classifier_features.mean(dim=(2, 3)))
    torch.testing.assert_close(outputs.logits, logits)
    assert outputs.attention_maps.shape == (2, 5, 14, 14)
    head = {id(parameter) for parameter in small_model.get_classifier().parameters()}
    assert head == {id(parameter) for layer in small_model.srn.label_layers() for parameter in layer.parameters()}


def test_generic_entry_takes_any_backbone_and_config_fields():
    model = srn_hf.create_timm_srn(
        "convnext_atto", num_classes=3, alpha=0.25, img_size=256, label_names=["a", "b", "c"], **SMALL_BRANCHES
    )
    assert model.config.backbone == "convnext_atto" and model.config.alpha == 0.25
    assert model.config.image_size == 256 and model.srn.attention_map_size == 16
    assert model.pretrained_cfg["input_size"] == (3, 256, 256)
    assert model.pretrained_cfg["mean"] == backbone_data_config(model.config)["mean"]
    assert list(model.config.id2label.values()) == ["a", "b", "c"]
    assert (
        timm.create_model("srn", backbone="convnext_atto", num_classes=3, **SMALL_BRANCHES).config.backbone
        == "convnext_atto"
    )
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 256, 256)).shape == (1, 3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_classes=-1 must be a number of labels"):
        timm.create_model("srn", backbone="resnet10t", num_classes=-1)
    with pytest.raises(ValueError, match="srn_resnet50 is SRN on resnet50"):
        timm.create_model("srn_resnet50", backbone="resnet18")
    with pytest.raises(ValueError, match="'resnet1O1' is not a timm model name; close names: resnet101"):
        timm.create_model("srn", backbone="resnet1O1")
    with pytest.raises(TypeError, match=r"^SRN got an unexpected keyword argument alpah=0\.3: "):
        timm.create_model("srn", backbone="resnet10t", alpah=0.3)
    with pytest.raises(TypeError, match="num_channels=1"):  # timm's in_chans sets it
        timm.create_model("srn", backbone="resnet10t", num_channels=1)


def test_state_dicts_interchange_with_transformers(small_model):
    images = torch.randn(2, 3, 224, 224)
    config = srn_hf.SRNConfig(
        backbone="resnet10t", id2label={index: f"LABEL_{index}" for index in range(5)}, **SMALL_BRANCHES
    )
    hf_model = srn_hf.SRNForImageClassification(config).eval()
    assert set(hf_model.state_dict()) == set(small_model.state_dict())

    hf_model.load_state_dict(small_model.state_dict())  # timm -> transformers
    with torch.no_grad():
        assert torch.equal(hf_model(images).logits, small_model(images))

    torch.manual_seed(1)
    other = srn_hf.SRNForImageClassification(config).eval()
    timm_model = SRNTimm.from_transformers(other)  # transformers -> timm
    with torch.no_grad():
        expected = other(images).logits
        assert not torch.equal(expected, small_model(images))
        assert torch.equal(timm_model(images), expected)
        assert torch.equal(timm_model.to_transformers()(images).logits, expected)
        assert torch.equal(SRNTimm.from_transformers(other.srn)(images), expected)  # the base SRNModel too
    assert timm_model.pretrained_cfg["architecture"] == "srn"


def test_reset_classifier_reinitialises_only_label_layers(small_model):
    model = SRNTimm.from_transformers(small_model.to_transformers())
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    old_label_layers = model.srn.label_layers()
    model.reset_classifier(7, label_names=[f"tag{index}" for index in range(7)])
    assert model.num_classes == 7 and model.config.num_labels == 7 and model.config.id2label[6] == "tag6"
    for old, new in zip(old_label_layers, model.srn.label_layers()):
        assert new is not old
    assert model.srn.spatial_regularization.conv1[0].in_channels == 7
    after = model.state_dict()
    label_keys = {name for name in after if after[name].shape != before.get(name, after[name]).shape}
    assert label_keys  # the label layers changed size...
    for name, tensor in after.items():
        if name not in label_keys and "num_batches_tracked" not in name:
            assert torch.equal(tensor, before[name]), name  # ...and nothing else changed
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 7)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="max")


def test_timm_eval_transform_is_the_paper_warp(small_model):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 300, 3), dtype=np.uint8))
    timm_pixels = create_transform(**resolve_data_config({}, model=small_model))(image)
    hf_pixels = create_image_processor(small_model.config)(images=image, return_tensors="pt")["pixel_values"][0]
    assert timm_pixels.shape == hf_pixels.shape == (3, 224, 224)
    assert (timm_pixels - hf_pixels).abs().mean() < 0.05  # same warp and normalisation, two resize implementations


def test_pretrained_loads_the_backbone_weights_offline(tmp_path):
    weights_file = packaged_efficientnet_lite0_weights(tmp_path)
    model = timm.create_model(
        "srn_tf_efficientnet_lite0",
        pretrained=True,
        backbone_weights_file=weights_file,
        num_classes=4,
        **SMALL_BRANCHES,
    )
    weights = load_file(weights_file)
    backbone = model.srn.backbone.state_dict()
    assert torch.equal(backbone["conv_stem.weight"], weights["conv_stem.weight"])
    assert torch.equal(backbone["blocks.4.0.conv_pw.weight"], weights["blocks.4.0.conv_pw.weight"])


def saved_srn(folder, labels=("cat", "dog", "person")) -> srn_hf.SRNForImageClassification:
    """A trained-looking SRN (random weights, its own labels), saved by `save_pretrained` in `folder`."""
    config = srn_hf.SRNConfig(backbone="resnet10t", id2label=dict(enumerate(labels)), alpha=0.3, **SMALL_BRANCHES)
    torch.manual_seed(4)
    model = srn_hf.SRNForImageClassification(config).eval()
    model.save_pretrained(folder)
    return model


def assert_same_network(timm_model, hf_model, labels) -> None:
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(timm_model.eval()(images), hf_model(images).logits)
    assert timm_model.pretrained_cfg["label_names"] == list(labels)
    assert timm_model.config.alpha == 0.3 and timm_model.config.backbone == "resnet10t"


def test_pretrained_loads_a_trained_srn_folder_with_its_labels(tmp_path):
    hf_model = saved_srn(tmp_path)
    for file in (tmp_path, tmp_path / "model.safetensors"):  # the folder, or its weights file
        timm_model = timm.create_model("srn", pretrained=True, pretrained_cfg_overlay={"file": str(file)})
        assert_same_network(timm_model, hf_model, ["cat", "dog", "person"])
    assert timm_model.pretrained_cfg["file"] == str(tmp_path / "model.safetensors")

    new_head = timm.create_model("srn", pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path)}, num_classes=2)
    assert new_head.num_classes == 2 and new_head.pretrained_cfg["label_names"] == ["LABEL_0", "LABEL_1"]
    assert torch.equal(new_head.srn.backbone.conv1[0].weight, hf_model.srn.backbone.conv1[0].weight)

    with pytest.raises(ValueError, match="srn_resnet50 is SRN on resnet50; for backbone='resnet10t' use 'srn'"):
        timm.create_model("srn_resnet50", pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path)})
    (tmp_path / "empty").mkdir()
    for file in (tmp_path / "empty", tmp_path / "missing.safetensors"):
        with pytest.raises(ValueError, match="no config.json of a trained SRN"):
            timm.create_model("srn", pretrained=True, pretrained_cfg_overlay={"file": str(file)})


def test_hf_hub_id_loads_from_an_offline_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub
    from helpers import install_in_hub_cache

    hf_model = saved_srn(tmp_path / "folder")
    install_in_hub_cache(tmp_path / "folder", "org/srn-tiny", tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the network edge: nothing leaves

    timm_model = timm.create_model("hf-hub:org/srn-tiny", pretrained=True, cache_dir=tmp_path / "cache")
    assert_same_network(timm_model, hf_model, ["cat", "dog", "person"])
    assert timm_model.pretrained_cfg["hf_hub_id"] == "org/srn-tiny"
    untrained = timm.create_model("hf-hub:org/srn-tiny", cache_dir=tmp_path / "cache")  # the architecture only
    assert untrained.pretrained_cfg["label_names"] == ["cat", "dog", "person"]
    assert not torch.equal(untrained.srn.classifier.weight, hf_model.srn.classifier.weight)
