# Copyright 2026 The srn_hf authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The Spatial Regularization Network (SRN) as a transformers model over any timm backbone.

Zhu, Li, Ouyang, Yu, Wang: "Learning Spatial Regularization with Image-level Supervisions for Multi-label
Image Classification", CVPR 2017 (arXiv 1702.05891). Names follow the paper (shapes for ResNet-101 at 224,
C classes):

    X        backbone map at stride 16 (ResNet `layer3`)                      B x 1024 x 14 x 14
    F        backbone map at stride 32 (ResNet `layer4`)                      B x 2048 x 7 x 7
    y_cls    f_cls: global average pool of F, linear to C                     B x C
    Z        f_att(X): conv1x1(512)+ReLU, conv3x3(512)+ReLU, conv1x1(C)        B x C x 14 x 14
    A        attention maps: softmax of Z over the positions, per sample and class
    S        confidence maps: conv1x1 on X to C ("conv1" in the paper)       B x C x 14 x 14
    y_att    sum over positions of A * S                                      B x C
    U        weighted attention maps A * sigmoid(S)                           B x C x 14 x 14
    y_sr     f_sr(U): conv1x1(512), conv1x1(512), grouped conv KxK(2048, groups 512), linear to C
    y        alpha * y_cls + (1 - alpha) * y_sr                                B x C

This file doubles as Hub remote code: it imports only torch, timm, transformers and configuration_srn.
"""

import functools
import inspect
import math
import os
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as nnf
from timm.models import FeatureListNet
from timm.models.resnet import Bottleneck
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, auto_docstring, can_return_tuple

from .configuration_srn import PROBLEM_TYPE, SRNConfig, label_names, placeholder_label_names


@auto_docstring
@dataclass
class SRNModelOutput(ModelOutput):
    r"""
    Outputs of [`SRNModel`]: the backbone's features first, as transformers' `BaseModelOutputWithPooling` (what the
    `image-feature-extraction` pipeline reads: `outputs[0]`, and `pooler_output` with `pool=True`), then SRN's maps and
    the logits of each branch; no loss. B is the batch, C the number of labels, h x w the side of the map X at the
    input's size (14 x 14 for a stride-16 X at 224), D x H' x W' the map F (2048 x 7 x 7 for ResNet-101 at 224).

    last_hidden_state (`torch.FloatTensor` of shape `(B, D, H', W')`):
        F, the backbone's map that f_cls pools (stride 32 in the paper): what timm's `forward_features` returns.
    pooler_output (`torch.FloatTensor` of shape `(B, D)`):
        F averaged over its positions: the image embedding that f_cls reads (timm's `pre_logits`), for retrieval or
        deduplication as with any backbone.
    logits (`torch.FloatTensor` of shape `(B, C)`):
        Fused logits y = alpha * y_cls + (1 - alpha) * y_sr. Apply a sigmoid for per-label probabilities.
    cls_logits (`torch.FloatTensor` of shape `(B, C)`):
        y_cls, the main classifier f_cls on the pooled map F.
    att_logits (`torch.FloatTensor` of shape `(B, C)`):
        y_att, the attention branch's prediction: sum over positions of A * S.
    sr_logits (`torch.FloatTensor` of shape `(B, C)`):
        y_sr, the spatial regularization f_sr(U).
    attention_maps (`torch.FloatTensor` of shape `(B, C, h, w)`):
        A, the label attention maps; each map sums to 1 over its h * w positions.
    confidence_maps (`torch.FloatTensor` of shape `(B, C, h, w)`):
        S, the raw (pre-sigmoid) confidence maps.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True` is passed or
    `config.output_hidden_states=True`):
        The backbone's feature maps, one per timm `feature_info` stage from the first to the deepest of X and F, each
        of shape `(B, channels, H / reduction, W / reduction)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cls_logits: torch.FloatTensor | None = None
    att_logits: torch.FloatTensor | None = None
    sr_logits: torch.FloatTensor | None = None
    attention_maps: torch.FloatTensor | None = None
    confidence_maps: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


# The former name of SRNModelOutput, kept for one release (the package itself uses SRNModelOutput).
SRNOutput = SRNModelOutput


@auto_docstring
@dataclass
class SRNImageClassifierOutput(ModelOutput):
    r"""
    Outputs of [`SRNForImageClassification`]: the loss first (as in transformers' `ImageClassifierOutput`), then the
    predictions and maps of [`SRNModelOutput`] (its backbone features, `last_hidden_state` and `pooler_output`, are
    the base model's: `model.srn(pixel_values)`).

    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        Joint loss of stage 4, sigmoid cross-entropy L(y) + L(y_att), averaged over batch and classes.
    logits (`torch.FloatTensor` of shape `(B, C)`):
        Fused logits y, as in [`SRNModelOutput`].
    cls_logits (`torch.FloatTensor` of shape `(B, C)`):
        y_cls, as in [`SRNModelOutput`].
    att_logits (`torch.FloatTensor` of shape `(B, C)`):
        y_att, as in [`SRNModelOutput`].
    sr_logits (`torch.FloatTensor` of shape `(B, C)`):
        y_sr, as in [`SRNModelOutput`].
    attention_maps (`torch.FloatTensor` of shape `(B, C, h, w)`):
        A, the label attention maps, as in [`SRNModelOutput`].
    confidence_maps (`torch.FloatTensor` of shape `(B, C, h, w)`):
        S, the raw confidence maps, as in [`SRNModelOutput`].
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        The backbone's feature maps, as in [`SRNModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cls_logits: torch.FloatTensor | None = None
    att_logits: torch.FloatTensor | None = None
    sr_logits: torch.FloatTensor | None = None
    attention_maps: torch.FloatTensor | None = None
    confidence_maps: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


# The reductions of the loss L; the default is that of the model's own loss, `srn_hf.stages.make_loss` and recipes.
LOSS_REDUCTIONS, DEFAULT_LOSS_REDUCTION = ("mean", "sum_over_classes"), "mean"


def sigmoid_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = DEFAULT_LOSS_REDUCTION
) -> torch.Tensor:
    """Sigmoid cross-entropy L of the paper.

    `reduction="mean"` averages over batch and classes (PyTorch's and transformers' convention);
    `reduction="sum_over_classes"` sums over classes and divides by the batch size, as the authors' Caffe
    loss does (C times larger gradients than the mean, so the same learning rate trains C times faster).
    """
    return reduce_loss(
        nnf.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none"), reduction
    )


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """A B x C loss to a number: `"mean"` over batch and classes, or `"sum_over_classes"` divided by the batch size."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum_over_classes":
        return loss.sum() / loss.shape[0]
    raise ValueError(f"reduction={reduction!r} is not 'mean' or 'sum_over_classes'")


class ConvNormAct(nn.Module):
    """Convolution, then batch norm where configured, then ReLU: a hidden layer of the SRN branches.

    The convolution and the batch norm are the children `0` and `1` (an identity without batch norm): the names, and
    so the checkpoint keys, of the `nn.Sequential` that held them in earlier versions. `layer[0]` is the convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        use_batch_norm: bool,
        conv_class=nn.Conv2d,
        **conv_kwargs,
    ):
        super().__init__()
        self.add_module("0", conv_class(in_channels, out_channels, kernel_size, bias=not use_batch_norm, **conv_kwargs))
        self.add_module("1", nn.BatchNorm2d(out_channels) if use_batch_norm else nn.Identity())
        self.act = nn.ReLU(inplace=True)

    def __getitem__(self, index: int) -> nn.Module:
        return self._modules[str(index)]

    def __setitem__(self, index: int, module: nn.Module) -> None:
        self.add_module(str(index), module)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.act(getattr(self, "1")(getattr(self, "0")(features)))  # getattr: TorchScript's way to a child


def create_backbone(
    config: SRNConfig,
    pretrained: bool = False,
    weights_file: str | os.PathLike | None = None,
    positions: tuple[int, int] | None = None,
):
    """The timm backbone f_cnn, returning every feature stage from the first to the deepest of X and F.

    The stages between are the hidden states ([`SRNModelOutput`]); timm builds the backbone up to the deepest stage
    returned, so its modules (and the checkpoint's keys) are those that X and F need. `positions`: the stages of X
    and F, [`feature_positions`] of the config when not given.
    """
    positions = positions or feature_positions(config)
    overlay = {"file": os.fspath(weights_file)} if weights_file is not None else None
    backbone = timm.create_model(
        config.backbone,
        pretrained=pretrained,
        pretrained_cfg_overlay=overlay,
        features_only=True,
        out_indices=tuple(range(max(positions) + 1)),
        in_chans=config.num_channels,
        **(config.backbone_kwargs or {}),
    )
    if type(backbone) is FeatureListNet and not backbone.concat:
        backbone.__class__ = FeatureStages  # a subclass with no state of its own: only the forward changes
    return backbone


def feature_positions(config: SRNConfig) -> tuple[int, int]:
    """The stage numbers (0 = shallowest) of X and F in the backbone's timm `feature_info`.

    The configured indices may be negative, and X may be deeper than F, or the same map. The number of stages comes
    from the backbone built on the meta device (no memory, no weights).
    """
    with torch.device("meta"):
        backbone = timm.create_model(config.backbone, features_only=True, **(config.backbone_kwargs or {}))
    stages = len(backbone.feature_info)
    for name in ("attention_feature_index", "classifier_feature_index"):
        index = getattr(config, name)
        if not -stages <= index < stages:
            raise ValueError(
                f"{name}={index} is out of range for backbone {config.backbone!r}, whose feature_info has {stages} "
                f"stages (valid indices {-stages}..{stages - 1})"
            )
    return config.attention_feature_index % stages, config.classifier_feature_index % stages


class LabelMapConv(nn.Conv2d):
    """A 1x1 convolution with one output map per label (Z of f_att, the confidence maps S).

    A class of its own so that `_init_weights` starts it small, like the linear classifiers.
    """

    def __init__(self, in_channels: int, num_labels: int):
        super().__init__(in_channels, num_labels, kernel_size=1)


class SRNAttentionTrunk(GradientCheckpointingLayer):
    """The released layout's two bottleneck residual blocks on X, shared by f_att and the confidence branch; a
    checkpointed segment. The blocks are the children `0` and `1`, the names (and checkpoint keys) of the
    `nn.Sequential` that held them in earlier versions."""

    def __init__(self, channels: int):
        super().__init__()
        planes = channels // Bottleneck.expansion
        self.add_module("0", Bottleneck(channels, planes))
        self.add_module("1", Bottleneck(channels, planes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return getattr(self, "1")(getattr(self, "0")(features))


class SRNAttention(GradientCheckpointingLayer):
    """f_att: attention logits Z from X (conv1x1 + ReLU, conv3x3 + ReLU, conv1x1 to C); a checkpointed segment."""

    def __init__(self, in_channels: int, config: SRNConfig):
        super().__init__()
        width = config.attention_channels
        self.conv1 = ConvNormAct(in_channels, width, 1, config.use_batch_norm)
        self.conv2 = ConvNormAct(width, width, 3, config.use_batch_norm, padding=1)
        self.conv3 = LabelMapConv(width, config.num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(features)))


class SRNConfidence(GradientCheckpointingLayer):
    """Confidence maps S from X: one conv1x1 to C ("conv1", paper layout), or conv1x1 + ReLU + conv1x1 (released);
    a checkpointed segment."""

    def __init__(self, in_channels: int, config: SRNConfig):
        super().__init__()
        # CODEPATH: layout="released" for checkpoints converted from the authors' Caffe release (two-convolution
        # confidence head); layout="paper" (the default) for the network of the paper's figures.
        if config.layout == "released":
            self.hidden = ConvNormAct(in_channels, config.attention_channels, 1, config.use_batch_norm)
            in_channels = config.attention_channels
        else:
            self.hidden = nn.Identity()
        self.conv = LabelMapConv(in_channels, config.num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(self.hidden(features))


class WholeMapGroupedConv(nn.Conv2d):
    """f_sr's grouped K x K convolution; on K x K maps (its kernel covers the whole map) a batched matrix product.

    Same weights and same result (up to float rounding): oneDNN's grouped convolution with a kernel as large as the
    map takes about 40 times the rest of SRN's head in channels-last float32 (measured in `benchmarks/`). The weight
    is read inside this module's own forward, so that accelerate's offload hooks (`device_map` with "cpu" or "disk")
    bring it in first. On maps of another size it is the plain convolution.
    """

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.padding != (0, 0):
            return self._conv_forward(maps, self.weight, self.bias)
        return whole_map_grouped_conv(maps, self.weight, self.bias, self.groups)


@torch.fx.wrap  # a leaf of torch.fx graphs: its branch is on the maps' size
def whole_map_grouped_conv(
    maps: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> torch.Tensor:
    """[`WholeMapGroupedConv`]'s computation: a batched matrix product where the kernel covers the whole map."""
    if maps.shape[-2] != weight.shape[-2] or maps.shape[-1] != weight.shape[-1]:
        return nnf.conv2d(maps, weight, bias, groups=groups)
    batch, out_channels = maps.shape[0], weight.shape[0]
    maps = maps.reshape(batch, groups, -1)  # B x g x (in/g * K * K)
    # the weight in the maps' dtype before it is transposed: autocast would cast the transposed view, a strided copy
    weight = weight.to(maps.dtype).reshape(groups, out_channels // groups, -1)  # g x out/g x (in/g * K * K)
    outputs = torch.matmul(maps.transpose(0, 1), weight.transpose(1, 2))  # g x B x out/g
    outputs = outputs.transpose(0, 1).reshape(batch, out_channels, 1, 1)
    return outputs if bias is None else outputs + bias.view(1, -1, 1, 1)


class SRNSpatialRegularization(GradientCheckpointingLayer):
    """f_sr: y_sr from the weighted attention maps U; a checkpointed segment.

    conv1 (1x1, C -> 512) + ReLU, conv2 (1x1, 512 -> 512) + ReLU, conv3 (K x K, no padding, 512 -> 2048 in 512
    groups: 4 single-channel filters per input channel, so that each label's relations are learned from few
    maps) + ReLU, then a linear layer 2048 -> C. K is the attention maps' side at the configured image size.
    """

    def __init__(self, config: SRNConfig, kernel_size: int):
        super().__init__()
        width, out_channels = config.regularization_channels, config.regularization_out_channels
        self.kernel_size = kernel_size
        self.conv1 = ConvNormAct(config.num_labels, width, 1, config.use_batch_norm)
        self.conv2 = ConvNormAct(width, width, 1, config.use_batch_norm)
        self.conv3 = ConvNormAct(
            width, out_channels, kernel_size, config.use_batch_norm, conv_class=WholeMapGroupedConv, groups=width
        )
        self.fc = nn.Linear(out_channels, config.num_labels)

    def forward(self, weighted_attention_maps: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv3(self.conv2(self.conv1(weighted_attention_maps))).flatten(1))


@torch.fx.wrap  # a leaf of torch.fx graphs: its branch is on the maps' size
def resize_to_kernel(maps: torch.Tensor, side: int) -> torch.Tensor:
    """Brings h x w maps to side x side for f_sr's KxK convolution when the input size is not the configured one.

    Adaptive average pooling (which also upsamples, by repetition), then each map rescaled to its former total
    (the maps are non-negative): an attention map still sums to 1 after resizing, so f_sr sees inputs of the
    scale it was trained on.
    """
    if maps.shape[-2] == side and maps.shape[-1] == side:
        return maps
    resized = nnf.adaptive_avg_pool2d(maps, side)
    return resized * (maps.sum(dim=(2, 3), keepdim=True) / resized.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12))


@torch.fx.wrap  # a leaf of torch.fx graphs: its branch is on the logits' memory layout
def attention_softmax(attention_logits: torch.Tensor) -> torch.Tensor:
    """A = softmax of Z over the h x w positions, per sample and label, in Z's memory layout.

    On the fast path Z is channels-last (positions outer, labels inner): the softmax then runs over the positions
    of each sample's (h * w) x C block, and A stays channels-last like S, so that A * S and A * sigmoid(S) mix no
    layouts (a softmax over the last dimension would copy Z to the default layout and return A in it). A map of
    the default layout takes the softmax over its last dimension, as before.
    """
    if attention_logits.is_contiguous() or not attention_logits.is_contiguous(memory_format=torch.channels_last):
        return attention_logits.flatten(2).softmax(dim=-1).view_as(attention_logits)
    positions_last = attention_logits.permute(0, 2, 3, 1)  # B x h x w x C, contiguous: a view of channels-last Z
    attention_maps = positions_last.flatten(1, 2).softmax(dim=1)  # over the h * w positions
    return attention_maps.view_as(positions_last).permute(0, 3, 1, 2)


@torch.fx.wrap  # a leaf of torch.fx graphs: its branch is on the maps' dtype
def weight_attention_maps(attention_maps: torch.Tensor, confidence_maps: torch.Tensor) -> torch.Tensor:
    """U = A * sigmoid(S), the weighted attention maps that f_sr reads."""
    weighted_attention_maps = torch.sigmoid(confidence_maps)
    if torch.is_grad_enabled() or weighted_attention_maps.dtype != attention_maps.dtype:
        return attention_maps * weighted_attention_maps
    # no gradient to take: in sigmoid(S)'s storage, one B x C x h x w map less at the peak, same values
    return weighted_attention_maps.mul_(attention_maps)


class FeatureStages(FeatureListNet):
    """timm's list feature wrapper (ResNet, RegNet, ConvNeXt...) with a forward that SRN steers.

    The same modules and state dict as timm's `FeatureListNet` ([`create_backbone`] gives a built one this class);
    called as a module, so that hooks on the backbone run. `forward(x)` returns what timm's does.

    Only the stages in `kept` (all when None) are returned, the others are None: their maps are freed as soon as the
    next stage has read them (inference holds X and F, not every stage). With `checkpoint_function`, each block of a
    sequential stage (a ResNet-101's third stage holds 23; timm would checkpoint whole stages) and each other module
    is a checkpointed segment, except modules that work in place (a stem's ReLU): checkpointing them saves nothing;
    and except a block whose input needs no gradient (the first, on the pixels): under a re-entrant checkpoint
    (`use_reentrant=True`) its output would need none either, and the backbone would get no gradient.
    """

    @torch.jit.unused  # TorchScript calls timm's own forward (see SRNTimm.feature_maps)
    def forward(self, x: torch.Tensor, kept: tuple[int, ...] | None = None, checkpoint_function=None) -> list:
        maps = []
        for name, module in self.items():
            blocks = module if checkpoint_function is not None and isinstance(module, nn.Sequential) else [module]
            for block in blocks:
                if checkpoint_function is None or getattr(block, "inplace", False) or not x.requires_grad:
                    x = block(x)  # the first block on the pixels too: a re-entrant checkpoint would cut its gradient
                else:
                    x = checkpoint_function(block, x)
            if name in self.return_layers:
                maps.append(x if kept is None or len(maps) in kept else None)
        return maps


def timm_checkpointing_module(backbone: nn.Module) -> nn.Module | None:
    """The module whose timm `set_grad_checkpointing` checkpoints the backbone block by block, or None.

    Other timm feature wrappers than the list ones have it themselves (EfficientNet, MobileNet...) or on the model
    they wrap (a ViT's `forward_intermediates`).
    """
    if isinstance(backbone, FeatureStages):
        return None
    for module in (backbone, getattr(backbone, "model", None)):
        if hasattr(module, "set_grad_checkpointing"):
            return module
    return None


class LabelSetMismatchError(RuntimeError, ValueError):
    """A checkpoint loaded for another label set without `ignore_mismatched_sizes=True`.

    A `RuntimeError`, what transformers raises for any checkpoint whose sizes differ from the model's, and a
    `ValueError`, what the package raises for every other bad argument (the command lines turn it into one line).
    """


# Arguments of `from_pretrained` that say where to read a checkpoint's config from.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


@auto_docstring
class SRNPreTrainedModel(PreTrainedModel):
    config: SRNConfig
    config_class = SRNConfig
    base_model_prefix = "srn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["SRNModel"]
    supports_gradient_checkpointing = True
    model_tags = ["srn", "multi-label", "timm"]
    # torch.jit.script of the timm model (timm's tests script every model) compiles the methods its forward calls;
    # transformers' properties and annotated attributes, and the config, stay out of TorchScript.
    __jit_unused_properties__ = [name for name, _ in inspect.getmembers(PreTrainedModel, inspect.isdatadescriptor)]
    __jit_ignored_attributes__ = [
        "config",
        *{name for cls in PreTrainedModel.__mro__ for name in vars(cls).get("__annotations__", {})},
    ]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, refusing to put another label set on a checkpoint's heads silently.

        Passing `id2label`, `num_labels` or a `config` whose labels differ from the checkpoint's raises a
        [`LabelSetMismatchError`] (a `RuntimeError`, as transformers' own for mismatched sizes) unless
        `ignore_mismatched_sizes=True`, which re-initialises the label layers
        ([`SRNModel.init_label_layers`]): with the same number of labels, transformers would otherwise load the old
        heads under the new names. `from_pretrained(None, config=config, state_dict=state_dict)` has no saved labels
        to compare with and loads as transformers does.
        """
        new_labels = kwargs.get("id2label") or getattr(kwargs.get("config"), "id2label", None)
        num_labels = kwargs.get("num_labels")
        if pretrained_model_name_or_path is None or isinstance(kwargs.get("config"), str):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if new_labels is None and num_labels is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        saved, _ = cls.config_class.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
        saved_names = label_names(saved.get("id2label", {}))
        if new_labels is not None:
            new_names = label_names(new_labels)
        elif num_labels != len(saved_names):  # SRNConfig.from_dict names them LABEL_0, ...
            new_names = placeholder_label_names(num_labels)
        else:
            new_names = saved_names
        if saved_names == new_names:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if not kwargs.get("ignore_mismatched_sizes", False):
            numbered = new_names == placeholder_label_names(len(new_names))  # num_labels=N gives these
            argument = "num_labels" if numbered else "id2label"
            value = len(new_names) if numbered else f"{{{len(new_names)} labels: {', '.join(new_names[:3])}, ...}}"
            raise LabelSetMismatchError(
                f"{argument}={value}: {pretrained_model_name_or_path} was trained on another label set "
                f"({len(saved_names)} labels: {', '.join(saved_names[:5])}, ...), "
                "and ignore_mismatched_sizes is False: "
                "pass ignore_mismatched_sizes=True to re-initialise the label layers for the new labels, or leave "
                f"{argument} out to keep the checkpoint's labels"
            )
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if len(saved_names) == len(new_names):  # transformers re-initialises them only when the sizes differ
            getattr(model, model.base_model_prefix, model).init_label_layers()
        return model

    def _init_weights(self, module):
        """Kaiming init for hidden convolutions, N(0, initializer_range) for the layers that output per-label logits or
        maps (f_cls, f_att's last convolution Z, the confidence maps S, f_sr's linear layer), identity batch norm.

        The small output layers make every prediction start near 0 (loss near log 2) and every attention map A start
        uniform, so that stage 2 starts from y_att = the average of S instead of from saturated sigmoids.
        Rebuilds the non-persistent buffers of timm modules, which `from_pretrained` creates on the meta device.
        """
        if isinstance(module, LabelMapConv):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func=checkpoint, every_n_layers: int = 1
    ):
        """What transformers' `activation_checkpointing_enable()` (formerly `gradient_checkpointing_enable()`) and
        `TrainingArguments(activation_checkpointing=True)` call: passed on to [`SRNModel.set_grad_checkpointing`]
        (`every_n_layers` does not apply: timm decides)."""
        for module in self.modules():
            if isinstance(module, SRNModel):
                module.set_grad_checkpointing(enable, gradient_checkpointing_func)


@auto_docstring
class SRNModel(SRNPreTrainedModel):
    """SRN: backbone f_cnn, main classifier f_cls, attention f_att, confidence maps, spatial regularization f_sr.

    Sub-modules (named so that a training stage can freeze exactly them):
        `backbone` (f_cnn), `classifier` (f_cls), `attention_trunk` (the released layout's two residual blocks on
        X, shared by f_att and the confidence branch; identity in the paper layout), `attention` (f_att),
        `confidence` (conv1), `spatial_regularization` (f_sr).

    Input sizes: at the configured `image_size` the maps are K x K and feed f_sr directly. At another size, y_cls
    and y_att are computed at the native resolution and U is resized to K x K by mass-preserving adaptive average
    pooling ([`resize_to_kernel`]) before f_sr.
    """

    def __init__(self, config: SRNConfig):
        super().__init__(config)
        self.feature_positions = feature_positions(config)
        self.backbone = create_backbone(config, positions=self.feature_positions)
        info = self.backbone.feature_info
        attention_channels = info.channels(self.feature_positions[0])
        classifier_channels = info.channels(self.feature_positions[1])
        attention_reduction = info.reduction(self.feature_positions[0])
        self.attention_map_size = math.ceil(config.image_size / attention_reduction)
        self.alpha = config.alpha  # a plain attribute: TorchScript reads no config

        self.classifier = nn.Linear(classifier_channels, config.num_labels)
        # CODEPATH: layout="released" for checkpoints converted from the authors' Caffe release (two residual blocks
        # on X before f_att and the confidence head); layout="paper" (the default) feeds X to them directly.
        if config.layout == "released":
            if attention_channels % Bottleneck.expansion:
                raise ValueError(
                    f"layout='released' needs X's channels ({attention_channels} for backbone {config.backbone!r}) "
                    f"to be a multiple of {Bottleneck.expansion}"
                )
            self.attention_trunk = SRNAttentionTrunk(attention_channels)
        else:
            self.attention_trunk = nn.Identity()
        self.attention = SRNAttention(attention_channels, config)
        self.confidence = SRNConfidence(attention_channels, config)
        self.spatial_regularization = SRNSpatialRegularization(config, self.attention_map_size)
        self.gradient_checkpointing = False
        self.post_init()

    def load_backbone_weights(self, weights_file: str | os.PathLike | None = None) -> None:
        """Loads pretrained (ImageNet) weights into `backbone` only, explicitly, before training stage 1.

        With no argument the weights come from timm's pretrained source for `config.backbone` (the Hugging Face
        Hub, where reachable; a tag like `"resnet101.a1h_in1k"` picks one). With `weights_file`, from a local
        `.safetensors`, `.pth` or `.bin` file holding a state dict of the full timm model in timm's key names.
        Never called by `__init__` or `from_pretrained`, which build the model and then load a checkpoint.
        """
        pretrained = create_backbone(
            self.config, pretrained=True, weights_file=weights_file, positions=self.feature_positions
        )
        self.backbone.load_state_dict(pretrained.state_dict())

    def label_layers(self) -> list[nn.Module]:
        """The layers whose size is the number of labels C: re-initialised for a new label set."""
        return [
            self.classifier,
            self.attention.conv3,
            self.confidence.conv,
            self.spatial_regularization.conv1[0],
            self.spatial_regularization.fc,
        ]

    def init_label_layers(self) -> None:
        """(Re)initialises the label layers with `_init_weights`, as a new model's `post_init` does.

        The one place for it: used for a checkpoint loaded for another label set with as many labels (transformers
        marks loaded weights as initialised, so the marks are removed first) and by [`resize_label_layers`].
        """
        for layer in self.label_layers():
            for module_or_tensor in (layer, *layer.parameters(recurse=False)):
                module_or_tensor.__dict__.pop("_is_hf_initialized", None)
            self._init_weights(layer)

    def resize_label_layers(self, num_labels: int) -> None:
        """Replaces the label layers by new ones of the same kinds for `num_labels` labels, initialised by
        [`init_label_layers`]; every other weight is kept. The caller updates the config's labels."""
        reference = self.classifier.weight
        spatial_regularization, old_conv1 = self.spatial_regularization, self.spatial_regularization.conv1[0]
        self.classifier = nn.Linear(self.classifier.in_features, num_labels)
        self.attention.conv3 = LabelMapConv(self.attention.conv3.in_channels, num_labels)
        self.confidence.conv = LabelMapConv(self.confidence.conv.in_channels, num_labels)
        spatial_regularization.conv1[0] = nn.Conv2d(
            num_labels, old_conv1.out_channels, 1, bias=old_conv1.bias is not None
        )
        spatial_regularization.fc = nn.Linear(spatial_regularization.fc.in_features, num_labels)
        for layer in self.label_layers():
            layer.to(device=reference.device, dtype=reference.dtype)
        self.init_label_layers()

    # timm's model API names this switch (`model.set_grad_checkpointing()`, called by timm's training scripts on the
    # timm entry); it sets no hyperparameter, only the checkpointing flags that `activation_checkpointing_enable()`
    # sets.
    # trf-ignore: TRF033
    def set_grad_checkpointing(self, enable: bool = True, checkpoint_function=None) -> None:
        """Gradient checkpointing of the backbone and of the SRN branch (timm's name for the switch).

        The backbone is checkpointed block by block: by SRN for timm's list wrappers ([`FeatureStages`]),
        by timm's `set_grad_checkpointing` where the backbone has it, as one segment otherwise. In the SRN branch, the
        released layout's trunk, f_att, the confidence branch and f_sr are each a segment: transformers'
        `GradientCheckpointingLayer`s ([`SRNAttentionTrunk`], [`SRNAttention`], [`SRNConfidence`],
        [`SRNSpatialRegularization`]).
        Active in training mode only. `checkpoint_function`: transformers' (`torch.utils.checkpoint.checkpoint`
        without re-entrance by default). As with any checkpointed batch norm, the recomputation in the backward
        pass updates the running statistics of a checkpointed batch-norm layer a second time.
        """
        checkpoint_function = checkpoint_function or functools.partial(checkpoint, use_reentrant=False)
        for module in self.modules():  # this model (the backbone's blocks) and the SRN branch's checkpointing layers
            if module is self or isinstance(module, GradientCheckpointingLayer):
                module.gradient_checkpointing = enable
                module._gradient_checkpointing_func = checkpoint_function
        timm_module = timm_checkpointing_module(self.backbone)
        if timm_module is not None:
            timm_module.set_grad_checkpointing(enable)

    def checkpointing_active(self) -> bool:
        return self.gradient_checkpointing and self.training and torch.is_grad_enabled()

    def forward_feature_maps(self, pixel_values: torch.Tensor, kept: tuple[int, ...] | None = None) -> list:
        """The feature maps of f_cnn from its first stage to the deepest of X and F (a ViT's tokens as grids).

        `kept`: the stage numbers needed (default all); a timm list wrapper then returns None for the others and
        frees their maps early ([`FeatureStages`]), other wrappers return every stage.
        """
        checkpointing = self.checkpointing_active()
        if isinstance(self.backbone, FeatureStages):
            checkpoint_function = self._gradient_checkpointing_func if checkpointing else None
            return self.backbone(pixel_values, kept, checkpoint_function)
        if checkpointing and timm_checkpointing_module(self.backbone) is None:
            return self._gradient_checkpointing_func(self.backbone, pixel_values)
        return self.backbone(pixel_values)  # timm checkpoints its blocks itself where it is switched on

    def forward_backbone(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f_cnn: the map X (stride 16 in the paper) and the map F (stride 32)."""
        maps = self.forward_feature_maps(pixel_values, kept=self.feature_positions)
        return maps[self.feature_positions[0]], maps[self.feature_positions[1]]

    def forward_attention(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention logits Z = f_att(X) and the confidence maps S (after the released layout's trunk), each a
        checkpointed segment when gradient checkpointing is on."""
        features = self.attention_trunk(features)
        return self.attention(features), self.confidence(features)

    def forward_heads(self, features: torch.Tensor, classifier_features: torch.Tensor) -> SRNModelOutput:
        """f_cls, f_att, confidence maps and f_sr on the backbone maps X and F; F and its average pool first."""
        logits, cls_logits, att_logits, sr_logits, attention_maps, confidence_maps = self.forward_branches(
            features, classifier_features
        )
        return SRNModelOutput(
            last_hidden_state=classifier_features,
            pooler_output=classifier_features.mean(dim=(2, 3)),
            logits=logits,
            cls_logits=cls_logits,
            att_logits=att_logits,
            sr_logits=sr_logits,
            attention_maps=attention_maps,
            confidence_maps=confidence_maps,
        )

    def forward_branches(
        self, features: torch.Tensor, classifier_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """[`forward_heads`] as a tuple (y, y_cls, y_att, y_sr, A, S), in TorchScript too (timm scripts it)."""
        cls_logits = self.classifier(classifier_features.mean(dim=(2, 3)))

        attention_logits, confidence_maps = self.forward_attention(features)  # Z, S
        attention_maps = attention_softmax(attention_logits)  # A
        del attention_logits  # Z is not needed again (softmax's backward uses A): one B x C x h x w map less held
        att_logits = (attention_maps * confidence_maps).sum(dim=(2, 3))  # y_att

        weighted_attention_maps = weight_attention_maps(attention_maps, confidence_maps)  # U = A * sigmoid(S)
        weighted_attention_maps = resize_to_kernel(weighted_attention_maps, self.attention_map_size)
        sr_logits = self.spatial_regularization(weighted_attention_maps)  # y_sr

        logits = self.alpha * cls_logits + (1 - self.alpha) * sr_logits
        return logits, cls_logits, att_logits, sr_logits, attention_maps, confidence_maps

    @torch.jit.unused  # TorchScript compiles the timm model's forward instead
    @can_return_tuple
    @auto_docstring
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> SRNModelOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, num_channels, H, W)`):
            Images normalised with the backbone's mean and std (see the saved image processor).

        `output_hidden_states=True` (or `config.output_hidden_states`) returns the backbone's feature maps as
        `hidden_states`; `return_dict=False` a tuple (`@can_return_tuple`).
        """
        # The hidden states are the timm backbone's feature maps, which its feature wrapper returns as one list: not
        # outputs of one layer class that `@capture_outputs` could record (`_can_record_outputs`), since the stage
        # classes differ per timm backbone. So the flag is read here, from the keyword arguments.
        output_hidden_states = kwargs.get("output_hidden_states")
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        maps = self.forward_feature_maps(pixel_values, kept=None if output_hidden_states else self.feature_positions)
        outputs = self.forward_heads(maps[self.feature_positions[0]], maps[self.feature_positions[1]])
        if output_hidden_states:
            outputs.hidden_states = tuple(maps)
        return outputs


@auto_docstring
class SRNForImageClassification(SRNPreTrainedModel):
    """SRN with a classification loss: `logits` are the fused y; with `labels`, the joint multi-label loss of stage 4
    (or transformers' single-label / regression loss on y, by `config.problem_type`)."""

    def __init__(self, config: SRNConfig):
        super().__init__(config)
        self.srn = SRNModel(config)
        self.post_init()

    def load_backbone_weights(self, weights_file: str | os.PathLike | None = None) -> None:
        """See [`SRNModel.load_backbone_weights`]."""
        self.srn.load_backbone_weights(weights_file)

    def check_labels(self, labels: torch.Tensor, batch_size: int) -> None:
        """Refuses labels that the configured problem type's loss cannot take, in one line naming the shape."""
        problem_type, num_labels = self.config.problem_type, self.config.num_labels
        if problem_type == "single_label_classification":
            shapes, meaning = [(batch_size,)], f"one class index in 0..{num_labels - 1} per image"
        elif problem_type == "regression":
            shapes = [(batch_size, num_labels)] + ([(batch_size,)] if num_labels == 1 else [])
            meaning = f"{num_labels} target value(s) per image"
        else:
            names = ", ".join(list(self.config.id2label.values())[:5])
            shapes, meaning = (
                [(batch_size, num_labels)],
                f"one multi-hot row of {num_labels} labels ({names}, ...) per image",
            )
        if tuple(labels.shape) not in shapes:
            raise ValueError(
                f"labels has shape {tuple(labels.shape)}, expected {' or '.join(map(str, shapes))} for "
                f"problem_type={problem_type!r}: {meaning}"
            )
        if problem_type == "single_label_classification" and (labels.is_floating_point() or labels.is_complex()):
            raise ValueError(
                f"labels has dtype {labels.dtype}, expected integer class indices for problem_type={problem_type!r}"
            )

    def compute_loss(self, outputs: SRNModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """transformers' classification loss (`self.loss_function`) on the fused logits y, by `config.problem_type`.

        Multi-label (the default) is SRN's joint loss of stage 4: L(y) + L(y_att), L the sigmoid cross-entropy averaged
        over batch and classes. Single-label is the softmax cross-entropy of y, regression the mean squared error of y;
        neither has a target for the per-label attention branch y_att, which then learns only through y_sr.
        """
        self.check_labels(labels, outputs.logits.shape[0])
        if self.config.problem_type != PROBLEM_TYPE:
            return self.loss_function(labels, outputs.logits.float(), self.config)
        return self.loss_function(labels.float(), outputs.logits.float(), self.config) + sigmoid_cross_entropy(
            outputs.att_logits, labels
        )

    @can_return_tuple
    @auto_docstring
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> SRNImageClassifierOutput | tuple:
        r"""
        labels (`torch.FloatTensor` of shape `(B, C)`, *optional*):
            Multi-hot targets (1 where the label is present). The loss is L(y) + L(y_att), L the sigmoid
            cross-entropy averaged over batch and classes. With `problem_type="single_label_classification"`: class
            indices of shape `(B,)`, softmax cross-entropy of y; with `"regression"`: targets of shape `(B, C)`,
            mean squared error of y ([`SRNForImageClassification.compute_loss`]).

        `output_hidden_states` and `return_dict` as in [`SRNModel.forward`].
        """
        outputs = self.srn(pixel_values, output_hidden_states=kwargs.get("output_hidden_states"), return_dict=True)
        loss = None
        if labels is not None:
            loss = self.compute_loss(outputs, labels)
        predictions = {
            name: value for name, value in outputs.items() if name in SRNImageClassifierOutput.__dataclass_fields__
        }
        return SRNImageClassifierOutput(loss=loss, **predictions)


__all__ = [
    "SRNModel",
    "SRNForImageClassification",
    "SRNPreTrainedModel",
    "SRNModelOutput",
    "SRNImageClassifierOutput",
    "SRNOutput",
    "LabelSetMismatchError",
]
