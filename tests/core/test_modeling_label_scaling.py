"""SRN's heads hold fewer B x C x h x w maps at once (Z freed after A, U computed in place without gradients), with
exactly the paper's values: compared bit for bit with the formulas written out, with and without gradients, fp32 and
bf16 autocast, at the configured size and another."""

import pytest
import torch
from helpers import small_srn

from srn_hf.fast import autocast_context


def paper_heads(base, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """y_cls, A, S, y_att, U and y_sr as the paper writes them, from the model's own layers."""
    from srn_hf.modeling_srn import resize_to_kernel

    features, classifier_features = base.forward_backbone(pixel_values)
    cls_logits = base.classifier(classifier_features.mean(dim=(2, 3)))
    features = base.attention_trunk(features)
    z = base.attention(features)
    a = z.flatten(2).softmax(dim=-1).view_as(z)
    s = base.confidence(features)
    u = resize_to_kernel(a * torch.sigmoid(s), base.attention_map_size)
    sr_logits = base.spatial_regularization(u)
    alpha = base.config.alpha
    return {
        "logits": alpha * cls_logits + (1 - alpha) * sr_logits,
        "att_logits": (a * s).sum(dim=(2, 3)),
        "attention_maps": a,
        "confidence_maps": s,
    }


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("size", [64, 96])
def test_heads_give_the_paper_formulas_values_exactly(grad, fast, size):
    model = small_srn({index: f"label_{index}" for index in range(300)}, image_size=64)
    pixel_values = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.set_grad_enabled(grad), autocast_context(enabled=fast):
        outputs = model(pixel_values=pixel_values)
        expected = paper_heads(model.srn, pixel_values)
    for name, value in expected.items():
        assert torch.equal(getattr(outputs, name), value), name
    if grad:  # the gradient still flows through U to the attention and confidence branches
        outputs.logits.sum().backward()
        assert model.srn.attention.conv3.weight.grad.abs().sum() > 0
        assert model.srn.confidence.conv.weight.grad.abs().sum() > 0
