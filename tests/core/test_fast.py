"""The fast path (`srn_hf.fast`): SRN's label maps stay in bf16 and channels-last, as the backbone's maps do, and its
values stay those of float32 within bf16's rounding; float32 in the default layout runs as before, bit for bit."""

import copy

import pytest
import torch
from helpers import small_srn

from srn_hf.fast import autocast_context, fast_inference, use_channels_last
from srn_hf.modeling_srn import attention_softmax

LABELS = {index: f"label_{index}" for index in range(6)}


class Recorder:
    """The input of a sub-module's forward (U, the weighted attention maps that f_sr reads)."""

    def __init__(self, module):
        self.input = None
        module.register_forward_hook(lambda module, inputs, output: setattr(self, "input", inputs[0]))


@pytest.fixture(scope="module")
def pixel_values():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_fast_path_keeps_a_s_and_u_in_bf16_channels_last(pixel_values):
    model = fast_inference(small_srn(LABELS, image_size=64))
    u = Recorder(model.srn.spatial_regularization)
    with torch.inference_mode(), autocast_context():
        outputs = model(pixel_values)
    for name, maps in {"A": outputs.attention_maps, "S": outputs.confidence_maps, "U": u.input}.items():
        assert maps.dtype == torch.bfloat16, name
        assert maps.is_contiguous(memory_format=torch.channels_last) and not maps.is_contiguous(), name


def test_fast_path_attention_maps_are_float32s_within_bf16_rounding(pixel_values):
    exact = small_srn(LABELS, image_size=64)
    fast = fast_inference(copy.deepcopy(exact))
    with torch.inference_mode():
        expected = exact(pixel_values)
        with autocast_context():
            outputs = fast(pixel_values)
    torch.testing.assert_close(
        outputs.attention_maps.float().sum(dim=(2, 3)), torch.ones(3, len(LABELS)), atol=0.02, rtol=0
    )
    torch.testing.assert_close(outputs.attention_maps.float(), expected.attention_maps, atol=0.01, rtol=0.05)
    torch.testing.assert_close(outputs.logits.float(), expected.logits, atol=0.05, rtol=0.05)


def test_channels_last_float32_gives_the_default_layouts_values_and_gradients(pixel_values):
    exact = small_srn(LABELS, image_size=64)
    channels_last = use_channels_last(copy.deepcopy(exact))
    expected, outputs = exact(pixel_values), channels_last(pixel_values)
    assert outputs.attention_maps.is_contiguous(memory_format=torch.channels_last)
    for name in ("logits", "att_logits", "sr_logits", "attention_maps"):
        torch.testing.assert_close(getattr(outputs, name), getattr(expected, name), rtol=1e-4, atol=1e-6)
    # the softmax over the positions of channels-last Z passes the same gradient back to f_att
    (expected.logits.sum() + expected.att_logits.sum()).backward()
    (outputs.logits.sum() + outputs.att_logits.sum()).backward()
    gradient = channels_last.srn.attention.conv3.weight.grad
    torch.testing.assert_close(gradient, exact.srn.attention.conv3.weight.grad, rtol=1e-4, atol=1e-6)
    assert gradient.abs().sum() > 0


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_attention_softmax_is_the_softmax_over_positions_in_either_layout(memory_format):
    logits = 3 * torch.randn(2, 5, 7, 6, generator=torch.Generator().manual_seed(1))
    attention_maps = attention_softmax(logits.contiguous(memory_format=memory_format))
    expected = torch.softmax(logits.flatten(2), dim=-1).view_as(logits)
    if memory_format == torch.contiguous_format:  # the default layout: the same operation as before, bit for bit
        assert torch.equal(attention_maps, expected)
    torch.testing.assert_close(attention_maps, expected)
    assert attention_maps.is_contiguous(memory_format=memory_format)
