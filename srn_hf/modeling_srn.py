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

import math
import os
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as nnf
from timm.models.resnet import Bottleneck
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_srn import SRNConfig


@dataclass
class SRNOutput(ModelOutput):
    r"""
    Outputs of [`SRNModel`] and [`SRNForImageClassification`]. B is the batch, C the number of labels, h x w the
    side of the stride-16 map X at the input's size (14 x 14 at 224).

    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        Joint loss of stage 4, sigmoid cross-entropy L(y) + L(y_att), averaged over batch and classes.
    logits (`torch.FloatTensor` of shape `(B, C)`):
        Fused logits y = alpha * y_cls + (1 - alpha) * y_sr. Apply a sigmoid for per-label probabilities.
    cls_logits (`torch.FloatTensor` of shape `(B, C)`):
        y_cls, the main classifier f_cls on the pooled stride-32 map F.
    att_logits (`torch.FloatTensor` of shape `(B, C)`):
        y_att, the attention branch's prediction: sum over positions of A * S.
    sr_logits (`torch.FloatTensor` of shape `(B, C)`):
        y_sr, the spatial regularization f_sr(U).
    attention_maps (`torch.FloatTensor` of shape `(B, C, h, w)`):
        A, the label attention maps; each map sums to 1 over its h * w positions.
    confidence_maps (`torch.FloatTensor` of shape `(B, C, h, w)`):
        S, the raw (pre-sigmoid) confidence maps.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cls_logits: torch.FloatTensor | None = None
    att_logits: torch.FloatTensor | None = None
    sr_logits: torch.FloatTensor | None = None
    attention_maps: torch.FloatTensor | None = None
    confidence_maps: torch.FloatTensor | None = None


# The reductions of the loss L; the default is that of the model's own loss, `srn_hf.stages.make_loss` and recipes.
LOSS_REDUCTIONS, DEFAULT_LOSS_REDUCTION = ("mean", "sum_over_classes"), "mean"


def sigmoid_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = DEFAULT_LOSS_REDUCTION) -> torch.Tensor:
    """Sigmoid cross-entropy L of the paper.

    `reduction="mean"` averages over batch and classes (PyTorch's and transformers' convention);
    `reduction="sum_over_classes"` sums over classes and divides by the batch size, as the authors' Caffe
    loss does (C times larger gradients than the mean, so the same learning rate trains C times faster).
    """
    return reduce_loss(nnf.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none"), reduction)


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """A B x C loss to a number: `"mean"` over batch and classes, or `"sum_over_classes"` divided by the batch size."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum_over_classes":
        return loss.sum() / loss.shape[0]
    raise ValueError(f"reduction={reduction!r} is not 'mean' or 'sum_over_classes'")


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, use_batch_norm: bool, **conv_kwargs):
    """Convolution, then batch norm where configured, then ReLU: the hidden layers of the SRN branches."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, bias=not use_batch_norm, **conv_kwargs)]
    if use_batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def create_backbone(config: SRNConfig, pretrained: bool = False, weights_file: str | os.PathLike | None = None):
    """The timm backbone f_cnn, returning its maps at the configured feature indices (see `feature_positions`)."""
    out_indices = (config.attention_feature_index, config.classifier_feature_index)
    overlay = {"file": os.fspath(weights_file)} if weights_file is not None else None
    try:
        return timm.create_model(
            config.backbone,
            pretrained=pretrained,
            pretrained_cfg_overlay=overlay,
            features_only=True,
            out_indices=out_indices,
            in_chans=config.num_channels,
            **(config.backbone_kwargs or {}),
        )
    except IndexError as error:
        stages = len(timm.create_model(config.backbone, features_only=True, **(config.backbone_kwargs or {})).feature_info)
        raise ValueError(
            f"attention_feature_index={config.attention_feature_index} or classifier_feature_index="
            f"{config.classifier_feature_index} is out of range for backbone {config.backbone!r}, whose "
            f"feature_info has {stages} stages (valid indices {-stages}..{stages - 1})"
        ) from error


def feature_positions(backbone: nn.Module, config: SRNConfig) -> tuple[int, int]:
    """Where X and F sit in the backbone's output list.

    timm returns each requested stage once, shallow to deep, whatever the order of `out_indices`: X may be
    deeper than F, or the same map.
    """
    stages = len(backbone.feature_info)
    resolved = [index % stages for index in (config.attention_feature_index, config.classifier_feature_index)]
    returned = sorted(set(resolved))
    return returned.index(resolved[0]), returned.index(resolved[1])


class LabelMapConv(nn.Conv2d):
    """A 1x1 convolution with one output map per label (Z of f_att, the confidence maps S).

    A class of its own so that `_init_weights` starts it small, like the linear classifiers.
    """

    def __init__(self, in_channels: int, num_labels: int):
        super().__init__(in_channels, num_labels, kernel_size=1)


class SRNAttention(nn.Module):
    """f_att: attention logits Z from X (conv1x1 + ReLU, conv3x3 + ReLU, conv1x1 to C)."""

    def __init__(self, in_channels: int, config: SRNConfig):
        super().__init__()
        width = config.attention_channels
        self.conv1 = conv_bn_relu(in_channels, width, 1, config.use_batch_norm)
        self.conv2 = conv_bn_relu(width, width, 3, config.use_batch_norm, padding=1)
        self.conv3 = LabelMapConv(width, config.num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(features)))


class SRNConfidence(nn.Module):
    """Confidence maps S from X: one conv1x1 to C ("conv1", paper layout), or conv1x1 + ReLU + conv1x1 (released)."""

    def __init__(self, in_channels: int, config: SRNConfig):
        super().__init__()
        if config.layout == "released":
            self.hidden = conv_bn_relu(in_channels, config.attention_channels, 1, config.use_batch_norm)
            in_channels = config.attention_channels
        else:
            self.hidden = nn.Identity()
        self.conv = LabelMapConv(in_channels, config.num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(self.hidden(features))


class SRNSpatialRegularization(nn.Module):
    """f_sr: y_sr from the weighted attention maps U.

    conv1 (1x1, C -> 512) + ReLU, conv2 (1x1, 512 -> 512) + ReLU, conv3 (K x K, no padding, 512 -> 2048 in 512
    groups: 4 single-channel filters per input channel, so that each label's relations are learned from few
    maps) + ReLU, then a linear layer 2048 -> C. K is the attention maps' side at the configured image size.
    """

    def __init__(self, config: SRNConfig, kernel_size: int):
        super().__init__()
        width, out_channels = config.regularization_channels, config.regularization_out_channels
        self.kernel_size = kernel_size
        self.conv1 = conv_bn_relu(config.num_labels, width, 1, config.use_batch_norm)
        self.conv2 = conv_bn_relu(width, width, 1, config.use_batch_norm)
        self.conv3 = conv_bn_relu(width, out_channels, kernel_size, config.use_batch_norm, groups=width)
        self.fc = nn.Linear(out_channels, config.num_labels)

    def forward(self, weighted_attention_maps: torch.Tensor) -> torch.Tensor:
        hidden = self.conv2(self.conv1(weighted_attention_maps))
        grouped_conv, *batch_norm_relu = self.conv3
        hidden = whole_map_grouped_conv(grouped_conv, hidden)
        for layer in batch_norm_relu:
            hidden = layer(hidden)
        return self.fc(hidden.flatten(1))


def whole_map_grouped_conv(conv: nn.Conv2d, maps: torch.Tensor) -> torch.Tensor:
    """`conv(maps)` for a grouped convolution whose kernel covers the whole map (f_sr's K x K on K x K maps).

    Computed as one batched matrix product over the groups, with the same weights and the same result (up to
    float rounding): oneDNN's grouped convolution with a kernel as large as the map takes about 40 times the
    rest of SRN's head in channels-last float32 (measured in `benchmarks/`). Returns B x out_channels x 1 x 1.
    """
    if tuple(maps.shape[-2:]) != tuple(conv.kernel_size) or conv.padding != (0, 0):
        return conv(maps)
    batch, groups = maps.shape[0], conv.groups
    maps = maps.reshape(batch, groups, -1)  # B x g x (in/g * K * K)
    weight = conv.weight.reshape(groups, conv.out_channels // groups, -1)  # g x out/g x (in/g * K * K)
    outputs = torch.matmul(maps.transpose(0, 1), weight.transpose(1, 2))  # g x B x out/g (autocast-aware)
    outputs = outputs.transpose(0, 1).reshape(batch, conv.out_channels, 1, 1)
    return outputs if conv.bias is None else outputs + conv.bias.view(1, -1, 1, 1)


def resize_to_kernel(maps: torch.Tensor, side: int) -> torch.Tensor:
    """Brings h x w maps to side x side for f_sr's KxK convolution when the input size is not the configured one.

    Adaptive average pooling (which also upsamples, by repetition), then each map rescaled to its former total
    (the maps are non-negative): an attention map still sums to 1 after resizing, so f_sr sees inputs of the
    scale it was trained on.
    """
    if maps.shape[-2:] == (side, side):
        return maps
    resized = nnf.adaptive_avg_pool2d(maps, side)
    return resized * (maps.sum(dim=(2, 3), keepdim=True) / resized.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12))


# Arguments of `from_pretrained` that say where to read a checkpoint's config from.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


class SRNPreTrainedModel(PreTrainedModel):
    config: SRNConfig
    config_class = SRNConfig
    base_model_prefix = "srn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["SRNModel"]
    model_tags = ["srn", "multi-label", "timm"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, refusing to put another label set on a checkpoint's heads silently.

        Passing `id2label` (or a `config`) whose label names differ from the checkpoint's raises a `ValueError`
        unless `ignore_mismatched_sizes=True`, which re-initialises the label layers ([`SRNModel.label_layers`]):
        with the same number of labels, transformers would otherwise load the old heads under the new names.
        """
        new_labels = kwargs.get("id2label") or getattr(kwargs.get("config"), "id2label", None)
        if new_labels is None or isinstance(kwargs.get("config"), str):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        saved, _ = cls.config_class.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
        saved_names = [saved.get("id2label", {})[key] for key in sorted(saved.get("id2label", {}), key=int)]
        new_names = [new_labels[key] for key in sorted(new_labels, key=int)]
        if saved_names == new_names:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if not kwargs.get("ignore_mismatched_sizes", False):
            raise ValueError(
                f"{pretrained_model_name_or_path} was trained on another label set ({len(saved_names)} labels: "
                f"{', '.join(saved_names[:5])}, ...) than the one passed ({len(new_names)} labels: "
                f"{', '.join(new_names[:5])}, ...). Pass ignore_mismatched_sizes=True to re-initialise the label "
                "layers for the new labels, or leave id2label out to keep the checkpoint's labels"
            )
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if len(saved_names) == len(new_names):  # transformers re-initialises them only when the sizes differ
            base = getattr(model, model.base_model_prefix, model)
            for layer in base.label_layers():
                layer.reset_parameters()
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
        self.backbone = create_backbone(config)
        self.feature_positions = feature_positions(self.backbone, config)
        info = self.backbone.feature_info
        attention_channels = info.channels(config.attention_feature_index)
        classifier_channels = info.channels(config.classifier_feature_index)
        attention_reduction = info.reduction(config.attention_feature_index)
        self.attention_map_size = math.ceil(config.image_size / attention_reduction)

        self.classifier = nn.Linear(classifier_channels, config.num_labels)
        if config.layout == "released":
            if attention_channels % Bottleneck.expansion:
                raise ValueError(
                    f"layout='released' needs X's channels ({attention_channels} for backbone {config.backbone!r}) "
                    f"to be a multiple of {Bottleneck.expansion}"
                )
            planes = attention_channels // Bottleneck.expansion
            self.attention_trunk = nn.Sequential(Bottleneck(attention_channels, planes), Bottleneck(attention_channels, planes))
        else:
            self.attention_trunk = nn.Identity()
        self.attention = SRNAttention(attention_channels, config)
        self.confidence = SRNConfidence(attention_channels, config)
        self.spatial_regularization = SRNSpatialRegularization(config, self.attention_map_size)
        self.post_init()

    def load_backbone_weights(self, weights_file: str | os.PathLike | None = None) -> None:
        """Loads pretrained (ImageNet) weights into `backbone` only, explicitly, before training stage 1.

        With no argument the weights come from timm's pretrained source for `config.backbone` (the Hugging Face
        Hub, where reachable; a tag like `"resnet101.a1h_in1k"` picks one). With `weights_file`, from a local
        `.safetensors`, `.pth` or `.bin` file holding a state dict of the full timm model in timm's key names.
        Never called by `__init__` or `from_pretrained`, which build the model and then load a checkpoint.
        """
        pretrained = create_backbone(self.config, pretrained=True, weights_file=weights_file)
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

    def forward_backbone(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f_cnn: the stride-16 map X and the stride-32 map F (a ViT's tokens come back as grids)."""
        maps = self.backbone(pixel_values)
        return maps[self.feature_positions[0]], maps[self.feature_positions[1]]

    def forward_heads(self, features: torch.Tensor, classifier_features: torch.Tensor) -> SRNOutput:
        """f_cls, f_att, confidence maps and f_sr on the backbone maps X and F."""
        cls_logits = self.classifier(classifier_features.mean(dim=(2, 3)))

        features = self.attention_trunk(features)
        attention_logits = self.attention(features)  # Z
        attention_maps = attention_logits.flatten(2).softmax(dim=-1).view_as(attention_logits)  # A
        confidence_maps = self.confidence(features)  # S
        att_logits = (attention_maps * confidence_maps).sum(dim=(2, 3))  # y_att

        weighted_attention_maps = attention_maps * torch.sigmoid(confidence_maps)  # U
        weighted_attention_maps = resize_to_kernel(weighted_attention_maps, self.attention_map_size)
        sr_logits = self.spatial_regularization(weighted_attention_maps)  # y_sr

        alpha = self.config.alpha
        return SRNOutput(
            logits=alpha * cls_logits + (1 - alpha) * sr_logits,
            cls_logits=cls_logits,
            att_logits=att_logits,
            sr_logits=sr_logits,
            attention_maps=attention_maps,
            confidence_maps=confidence_maps,
        )

    def forward(self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs) -> SRNOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, num_channels, H, W)`):
            Images normalised with the backbone's mean and std (see the saved image processor).
        """
        outputs = self.forward_heads(*self.forward_backbone(pixel_values))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return outputs if return_dict else outputs.to_tuple()


class SRNForImageClassification(SRNPreTrainedModel):
    """SRN with the multi-label loss: `logits` are the fused y; the joint loss of stage 4 when `labels` are given."""

    def __init__(self, config: SRNConfig):
        super().__init__(config)
        self.srn = SRNModel(config)
        self.post_init()

    def load_backbone_weights(self, weights_file: str | os.PathLike | None = None) -> None:
        """See [`SRNModel.load_backbone_weights`]."""
        self.srn.load_backbone_weights(weights_file)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SRNOutput | tuple:
        r"""
        labels (`torch.FloatTensor` of shape `(B, C)`, *optional*):
            Multi-hot targets (1 where the label is present). The loss is L(y) + L(y_att), L the sigmoid
            cross-entropy averaged over batch and classes.
        """
        outputs = self.srn(pixel_values, return_dict=True)
        if labels is not None:
            expected = (pixel_values.shape[0], self.config.num_labels)
            if tuple(labels.shape) != expected:
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)}, expected {expected}: one multi-hot row of "
                    f"{self.config.num_labels} labels ({', '.join(list(self.config.id2label.values())[:5])}, ...) "
                    "per image"
                )
            outputs.loss = sigmoid_cross_entropy(outputs.logits, labels) + sigmoid_cross_entropy(outputs.att_logits, labels)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return outputs if return_dict else outputs.to_tuple()


__all__ = ["SRNModel", "SRNForImageClassification", "SRNPreTrainedModel", "SRNOutput"]
