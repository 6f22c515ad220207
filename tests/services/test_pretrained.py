"""srn_hf.pretrained: the backbone's ImageNet weights a recipe names, loaded or refused in one line naming
`model.pretrained_weights` (timm's weights offline: tests/front_ends/test_train_stages_own_data.py)."""

import pytest
import timm
import torch
from helpers import small_srn
from safetensors.torch import save_file

from srn_hf.pretrained import PretrainedWeightsError, load_imagenet_backbone


def timm_weights_file(path, backbone: str, seed: int):
    torch.manual_seed(seed)
    save_file({key: value.contiguous() for key, value in timm.create_model(backbone).state_dict().items()}, path)
    return path


def test_a_weights_file_of_the_backbone_is_loaded_into_it(tmp_path):
    weights = timm_weights_file(tmp_path / "resnet10t.safetensors", "resnet10t", seed=1)
    model = small_srn({0: "a", 1: "b"})
    load_imagenet_backbone(model, str(weights))
    torch.manual_seed(1)
    expected = timm.create_model("resnet10t").state_dict()
    loaded = model.srn.backbone.state_dict()
    assert loaded and all(torch.equal(value, expected[key]) for key, value in loaded.items())


def test_a_missing_or_unfitting_weights_file_is_refused_naming_it(tmp_path):
    model = small_srn({0: "a", 1: "b"})
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(PretrainedWeightsError, match=rf"^model.pretrained_weights='{missing}': no such file"):
        load_imagenet_backbone(model, str(missing))
    other = timm_weights_file(tmp_path / "resnet18.safetensors", "resnet18", seed=0)
    with pytest.raises(
        PretrainedWeightsError,
        match=rf"^model.pretrained_weights='{other}' cannot be loaded into model.backbone=resnet10t \(RuntimeError: "
        r"Error\(s\) in loading state_dict for ResNet: size mismatch for",
    ) as refused:
        load_imagenet_backbone(model, str(other))
    assert "\n" not in str(refused.value)


def test_packaged_lite0_is_refused_for_another_backbone():
    with pytest.raises(PretrainedWeightsError, match="packaged-lite0 holds tf_efficientnet_lite0's ImageNet weights"):
        load_imagenet_backbone(small_srn({0: "a", 1: "b"}), "packaged-lite0")
