"""The fast path: bf16 autocast with channels-last weights, for inference and training alike.

On CPUs with AVX-512 bf16 (or AMX) units, and on recent GPUs, convolutions run much faster in bfloat16 with
the NHWC ("channels-last") memory layout: plain timm ResNet-50 inference about 2.5 times faster, training about
2.7 times, on a 2-core AVX-512 bf16 machine; SRN-ResNet-101 gains as much (`benchmarks/benchmark_bf16.py`). Every
SRN operation stays on that path: the convolutions of f_att, the confidence maps S and f_sr run in bf16
channels-last (f_sr's whole-map grouped convolution as a batched matrix product), the attention maps A, A * S and
U = A * sigmoid(S) stay bf16 and channels-last, and the losses are computed in float32.

Usage, the same in the pipeline, the training script and the benchmarks:

    model = fast_inference(model)                      # eval, channels-last weights
    with torch.inference_mode(), autocast_context():
        outputs = model(pixel_values)                  # pixel_values may stay in the default layout

    use_channels_last(model)                           # training: before building the optimizer
    with autocast_context(enabled=args.fast):
        loss = ...
    loss.backward()                                    # outside autocast
"""

from __future__ import annotations

import torch
from torch import nn


def autocast_context(enabled: bool = True, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16):
    """bf16 autocast on `device_type` when `enabled`, a context that changes nothing otherwise.

    float16 autocast is not offered on CPU; bfloat16 keeps float32's range, so no gradient scaler is needed.
    """
    return torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled)


def use_channels_last(model: nn.Module) -> nn.Module:
    """Puts the model's 4-d weights in channels-last layout, in place; returns the model.

    A channels-last model turns the default-layout `pixel_values` into channels-last at its first convolution,
    so the inputs need no conversion. Call it before creating the optimizer (the parameters keep their identity).
    """
    return model.to(memory_format=torch.channels_last)


def fast_inference(model: nn.Module, compile: bool = False) -> nn.Module:
    """The model ready for fast inference: eval mode, channels-last weights, optionally `torch.compile`d.

    Run it under `torch.inference_mode()` and [`autocast_context`]. `compile=True` returns the compiled module
    (the first call at each new input shape compiles, for minutes on a small CPU); `python
    benchmarks/benchmark_srn.py --compile` measures whether it pays off on a given machine.
    """
    use_channels_last(model.eval())
    return torch.compile(model) if compile else model


__all__ = ["autocast_context", "fast_inference", "use_channels_last"]
