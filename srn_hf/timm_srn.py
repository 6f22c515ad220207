"""The timm side of srn_hf: SRN as timm models, registered by `import srn_hf`.

```python
>>> import srn_hf, timm
>>> model = timm.create_model("srn_resnet101", num_classes=80)                     # the paper's network
>>> model = timm.create_model("srn", backbone="convnext_tiny", num_classes=20)      # SRN on any timm backbone
>>> model = srn_hf.create_timm_srn("convnext_tiny", num_classes=20, alpha=0.7)      # the same, by function
>>> model = timm.create_model("srn_tf_efficientnet_lite0", pretrained=True, num_classes=12,
...                           backbone_weights_file=packaged_efficientnet_lite0_weights())  # from srn_hf.pretrained
```

timm conventions: `pretrained_cfg` (mean, std and interpolation of the backbone, `crop_pct=1` with
`crop_mode="squash"`: timm's eval transform is the paper's whole image warped to the square input),
`num_classes` (0: the model returns the pooled F, as every timm model returns its pooled features),
`reset_classifier(num_classes)`, `get_classifier(name_only=False)`, `forward_features(x) -> (X, F)`,
`forward_head((X, F), pre_logits=False) -> y`, `forward_intermediates`, `group_matcher` (layer-wise learning-rate
decay in timm's optimizer factory), `set_grad_checkpointing`. Every other SRNConfig field (`alpha`, `layout`, `image_size` or timm's
`img_size`, `attention_feature_index`, ...) is a keyword argument of `create_model`.

`pretrained=True` loads the backbone's ImageNet weights (no SRN head weights were released), from timm's source for
the backbone, or offline from `backbone_weights_file`: the paper's starting point for training stage 1.

State dicts are interchangeable with the transformers model: [`SRNTimm`] holds an [`SRNModel`] under `srn`, like
[`SRNForImageClassification`], so the keys match 1:1 and the logits are identical either way:

```python
>>> timm_model.load_state_dict(hf_model.state_dict())        # or SRNTimm.from_transformers(hf_model)
>>> hf_model.load_state_dict(timm_model.state_dict())        # or timm_model.to_transformers()
```
"""

import copy
import os

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import group_with_matcher
from torch import nn

from .configuration_srn import SRNConfig
from .modeling_srn import SRNForImageClassification, SRNModel, SRNOutput
from .processing import backbone_data_config

# The timm backbones of the named entries; `timm.create_model("srn", backbone=...)` takes any other.
NAMED_BACKBONES = {
    "srn_resnet101": "resnet101",
    "srn_resnet50": "resnet50",
    "srn_tf_efficientnet_lite0": "tf_efficientnet_lite0",
    "srn_convnext_tiny": "convnext_tiny",
    "srn_efficientnet_b0": "efficientnet_b0",
}
DEFAULT_BACKBONE = "resnet101"

# Preprocessing of each named backbone (timm's pretrained config of its default tag), written out so that registering
# the entries at `import srn_hf` builds no config and asks timm's registry nothing. A test holds them to timm's; a
# model built with any backbone gets its backbone's own values ([`_create_srn`]).
IMAGENET_DATA = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bicubic"}
BACKBONE_DATA = {
    "resnet101": IMAGENET_DATA,
    "resnet50": IMAGENET_DATA,
    "tf_efficientnet_lite0": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"},
    "convnext_tiny": IMAGENET_DATA,
    "efficientnet_b0": IMAGENET_DATA,
}

# Names of the label layers ([`SRNModel.label_layers`]) in an SRNTimm: timm's `classifier` of the pretrained config.
CLASSIFIER_NAMES = (
    "srn.classifier",
    "srn.attention.conv3",
    "srn.confidence.conv",
    "srn.spatial_regularization.conv1.0",
    "srn.spatial_regularization.fc",
)

# The SRNModel parts beside the backbone: what `num_classes=0` leaves out.
HEAD_MODULES = ("classifier", "attention_trunk", "attention", "confidence", "spatial_regularization")


def _cfg(backbone: str, **kwargs) -> dict:
    """timm pretrained config of an SRN on `backbone`: no weights of its own, the backbone's preprocessing."""
    data_config = BACKBONE_DATA[backbone]
    return {
        "url": "",
        "num_classes": 80,  # MS-COCO, the paper's main benchmark
        "input_size": (3, 224, 224),
        "crop_pct": 1.0,
        "crop_mode": "squash",  # with crop_pct 1: the whole image warped to the input size, as the paper tests
        "interpolation": data_config["interpolation"],
        "mean": data_config["mean"],
        "std": data_config["std"],
        "classifier": CLASSIFIER_NAMES,
        "license": "apache-2.0",
        "paper_ids": "arXiv:1702.05891",
        "paper_name": "Learning Spatial Regularization with Image-level Supervisions for Multi-label Image Classification",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {"srn": _cfg(DEFAULT_BACKBONE), **{name: _cfg(backbone) for name, backbone in NAMED_BACKBONES.items()}}
)


class SRNTimm(nn.Module):
    """SRN as a timm model: an [`SRNModel`] under `srn`, with timm's model interface.

    Args:
        backbone: timm name of the backbone f_cnn.
        num_classes: number of labels C (`label_names` names them; `LABEL_0`, ... otherwise). 0: no SRN head, the
            model returns the pooled map F (`num_features` wide), and `reset_classifier(n)` adds a new head.
        in_chans: input channels. img_size: the square input size the model is built for (K = img_size / 16).
        drop_rate, drop_path_rate: passed to the backbone.
        config: an [`SRNConfig`] to build from instead (the other arguments must then be left out).
        **srn_kwargs: any other [`SRNConfig`] field (`alpha`, `layout`, `use_batch_norm`, ...).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        num_classes: int = 80,
        in_chans: int = 3,
        img_size: int | tuple[int, int] | None = None,
        label_names: list[str] | None = None,
        drop_rate: float | None = None,
        drop_path_rate: float | None = None,
        config: SRNConfig | None = None,
        **srn_kwargs,
    ):
        super().__init__()
        if config is None:
            config = srn_config(
                backbone, num_classes, in_chans, img_size, label_names, drop_rate, drop_path_rate, **srn_kwargs
            )
        self.srn = SRNModel(config)
        self.num_classes = config.num_labels
        self.num_features = self.head_hidden_size = self.srn.classifier.in_features
        if num_classes == 0:
            self.reset_classifier(0)

    @property
    def config(self) -> SRNConfig:
        return self.srn.config

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's maps X (stride 16 in the paper) and F (stride 32)."""
        return self.srn.forward_backbone(x)

    def forward_head(self, features: tuple[torch.Tensor, torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """The fused logits y from (X, F); with `pre_logits=True` (or `num_classes=0`), the pooled F (`num_features`)."""
        attention_features, classifier_features = features
        if pre_logits or self.num_classes == 0:
            return classifier_features.mean(dim=(2, 3))
        return self.srn.forward_heads(attention_features, classifier_features).logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused logits y (B x C); `self.srn(x)` returns every output (y_cls, y_att, y_sr, attention maps A, S)."""
        return self.forward_head(self.forward_features(x))

    def forward_srn(self, x: torch.Tensor) -> SRNOutput:
        """All of SRN's outputs, as [`SRNModel`] returns them."""
        self.check_has_head("forward_srn")
        return self.srn(x, return_dict=True)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's `forward_intermediates`: the backbone's feature maps (`indices`: which stages; an int n takes the
        last n; default all up to the deepest of X and F) and, unless `intermediates_only`, the final features
        (X, F) of `forward_features`. `norm` and `stop_early` change nothing: the maps have no final norm, and every
        stage is needed for X and F."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: SRN's feature maps are 'NCHW'")
        maps = self.srn.forward_feature_maps(x)
        take_indices, _ = feature_take_indices(len(maps), indices)
        intermediates = [maps[index] for index in take_indices]
        if intermediates_only:
            return intermediates
        positions = self.srn.feature_positions
        return (maps[positions[0]], maps[positions[1]]), intermediates

    def group_matcher(self, coarse: bool = False):
        """Layer groups for timm's layer-wise learning-rate decay (`timm.optim.create_optimizer_v2(...,
        layer_decay=...)`): the backbone's own groups (stem, then its stages or blocks, from its timm
        `group_matcher`), then SRN's head as the last group, the one with the full learning rate."""
        with torch.device("meta"):
            plain = timm.create_model(
                self.config.backbone, in_chans=self.config.num_channels, **(self.config.backbone_kwargs or {})
            )
        plain_parameters = list(plain.named_parameters())
        plain_groups = group_with_matcher(plain_parameters, plain.group_matcher(coarse), reverse=True)
        # timm's feature wrappers keep the model's parameters in order, less its head and pruned tail
        groups = {}
        for (name, parameter), (plain_name, plain_parameter) in zip(self.srn.backbone.named_parameters(), plain_parameters):
            if parameter.shape != plain_parameter.shape:
                raise ValueError(f"group_matcher: backbone {self.config.backbone!r} has no layer groups SRN can map")
            groups[f"srn.backbone.{name}"] = (plain_groups[plain_name],)
        head_group = (max(plain_groups.values(), default=0) + 1,)
        return lambda name: groups.get(name, head_group)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing of the backbone and the SRN branch ([`SRNModel.set_grad_checkpointing`])."""
        self.srn.set_grad_checkpointing(enable)

    def get_classifier(self, name_only: bool = False) -> nn.ModuleList | nn.Module | tuple[str, ...]:
        """Every layer whose size is the number of labels ([`SRNModel.label_layers`]), e.g. for a head learning rate;
        their names with `name_only=True`; `nn.Identity()` (no names) without a head (`num_classes=0`)."""
        if self.num_classes == 0:
            return () if name_only else nn.Identity()
        if name_only:
            names = {id(module): name for name, module in self.named_modules()}
            return tuple(names[id(layer)] for layer in self.srn.label_layers())
        return nn.ModuleList(self.srn.label_layers())

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, label_names: list[str] | None = None):
        """New, freshly initialised label layers for `num_classes` labels (the init a new model gets); the rest keeps
        its weights. `num_classes=0` removes SRN's head: the model then returns the pooled F."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r}: SRN's f_cls pools F by its average only")
        if num_classes == 0:
            for name in HEAD_MODULES:
                setattr(self.srn, name, nn.Identity())
        elif self.num_classes == 0:
            self.srn = srn_with_new_head(self.srn, num_classes, label_names)
        else:
            resize_label_layers(self.srn, num_classes, label_names)
        self.num_classes = num_classes

    def check_has_head(self, method: str) -> None:
        if self.num_classes == 0:
            raise ValueError(f"{method} needs SRN's head: this model has num_classes=0; reset_classifier(n) adds one")

    def load_backbone_weights(self, weights_file: str | os.PathLike | None = None) -> None:
        """ImageNet weights into the backbone only; see [`SRNModel.load_backbone_weights`]."""
        self.srn.load_backbone_weights(weights_file)

    def to_transformers(self) -> SRNForImageClassification:
        """The same network, with the same weights, as a transformers [`SRNForImageClassification`]."""
        self.check_has_head("to_transformers")
        model = SRNForImageClassification(copy.deepcopy(self.srn.config))
        model.load_state_dict(self.state_dict())
        return model.train(self.training)

    @classmethod
    def from_transformers(cls, model: SRNForImageClassification | SRNModel) -> "SRNTimm":
        """A timm SRN (with its `pretrained_cfg`) holding the weights of a transformers SRN model."""
        timm_model = create_timm_srn(config=copy.deepcopy(model.config))
        state_dict = model.state_dict()
        if isinstance(model, SRNModel):
            state_dict = {f"srn.{name}": tensor for name, tensor in state_dict.items()}
        timm_model.load_state_dict(state_dict)
        return timm_model.train(model.training)


def srn_config(
    backbone: str = DEFAULT_BACKBONE,
    num_classes: int = 80,
    in_chans: int = 3,
    img_size: int | tuple[int, int] | None = None,
    label_names: list[str] | None = None,
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    **srn_kwargs,
) -> SRNConfig:
    """The [`SRNConfig`] of timm-style arguments."""
    if img_size is not None:
        if isinstance(img_size, (tuple, list)):
            if len(set(img_size)) != 1:
                raise ValueError(f"img_size={img_size}: SRN is built for a square input (its K x K f_sr kernel)")
            img_size = img_size[0]
        srn_kwargs["image_size"] = int(img_size)
    backbone_kwargs = dict(srn_kwargs.pop("backbone_kwargs", None) or {})
    for name, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
        if value is not None:
            backbone_kwargs[name] = value
    return SRNConfig(
        backbone=backbone,
        num_channels=in_chans,
        id2label=id2label_of(num_classes, label_names),
        backbone_kwargs=backbone_kwargs or None,
        **srn_kwargs,
    )


def id2label_of(num_classes: int, label_names: list[str] | None = None) -> dict[int, str]:
    """`{index: name}` for `num_classes` labels, named by `label_names` or `LABEL_0`, `LABEL_1`, ...

    `num_classes=0` (no head) gives one placeholder label, so that the config stays a valid SRNConfig."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes={num_classes!r} must be a number of labels (0: no head, pooled features)")
    if num_classes == 0 and not label_names:
        return {0: "LABEL_0"}
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"label_names has {len(label_names)} names for num_classes={num_classes}")
    return dict(enumerate(label_names or [f"LABEL_{index}" for index in range(num_classes)]))


def set_labels(config: SRNConfig, num_labels: int, label_names: list[str] | None = None) -> None:
    """Gives `config` a new label set (and drops its per-label thresholds)."""
    id2label = id2label_of(num_labels, label_names)
    config.id2label = id2label
    config.label2id = {name: index for index, name in id2label.items()}
    config.label_thresholds = None


def resize_label_layers(srn: SRNModel, num_labels: int, label_names: list[str] | None = None) -> None:
    """New label layers for `num_labels` labels in `srn` ([`SRNModel.resize_label_layers`]), and the new labels in
    its config. Every other weight is kept."""
    set_labels(srn.config, num_labels, label_names)
    srn.resize_label_layers(num_labels)


def srn_with_new_head(srn: SRNModel, num_labels: int, label_names: list[str] | None = None) -> SRNModel:
    """An SRNModel for `num_labels` labels with a new, freshly initialised head on `srn`'s backbone (kept as is)."""
    config = copy.deepcopy(srn.config)
    set_labels(config, num_labels, label_names)
    new = SRNModel(config)
    new.backbone = srn.backbone
    reference = next(srn.backbone.parameters())
    return new.to(device=reference.device, dtype=reference.dtype).train(srn.training)


def _create_srn(variant: str, pretrained: bool = False, backbone_weights_file=None, **kwargs) -> SRNTimm:
    """The one builder: timm's `build_model_with_cfg`, the backbone's preprocessing in `pretrained_cfg`, and with
    `pretrained=True` the backbone's ImageNet weights."""
    if variant in NAMED_BACKBONES:
        if kwargs.get("backbone", NAMED_BACKBONES[variant]) != NAMED_BACKBONES[variant]:
            raise ValueError(
                f"{variant} is SRN on {NAMED_BACKBONES[variant]}; for backbone={kwargs['backbone']!r} use 'srn'"
            )
        kwargs["backbone"] = NAMED_BACKBONES[variant]
    config = kwargs.get("config")
    if config is not None:  # timm would otherwise fill in its defaults for these
        kwargs.update(num_classes=config.num_labels, in_chans=config.num_channels)
    model = build_model_with_cfg(SRNTimm, variant, pretrained=False, **kwargs)
    config = model.config
    model.pretrained_cfg.update(
        num_classes=model.num_classes,
        input_size=(config.num_channels, config.image_size, config.image_size),
        **backbone_data_config(config),
    )
    if pretrained:
        model.load_backbone_weights(backbone_weights_file)
    return model


def create_timm_srn(
    backbone: str | None = None, num_classes: int | None = None, pretrained: bool = False, **kwargs
) -> SRNTimm:
    """`timm.create_model("srn", backbone=backbone, num_classes=num_classes, ...)`: SRN on any timm backbone."""
    if backbone is not None:
        kwargs["backbone"] = backbone
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return _create_srn("srn", pretrained=pretrained, **kwargs)


@register_model
def srn(pretrained: bool = False, **kwargs) -> SRNTimm:
    """SRN on the timm backbone named by `backbone=` (default resnet101)."""
    return _create_srn("srn", pretrained, **kwargs)


@register_model
def srn_resnet101(pretrained: bool = False, **kwargs) -> SRNTimm:
    """SRN on ResNet-101, the paper's network."""
    return _create_srn("srn_resnet101", pretrained, **kwargs)


@register_model
def srn_resnet50(pretrained: bool = False, **kwargs) -> SRNTimm:
    """SRN on ResNet-50."""
    return _create_srn("srn_resnet50", pretrained, **kwargs)


@register_model
def srn_tf_efficientnet_lite0(pretrained: bool = False, **kwargs) -> SRNTimm:
    """SRN on EfficientNet-Lite0 (ImageNet weights ship offline: `srn_hf.pretrained`)."""
    return _create_srn("srn_tf_efficientnet_lite0", pretrained, **kwargs)


@register_model
def srn_convnext_tiny(pretrained: bool = False, **kwargs) -> SRNTimm:
    """SRN on ConvNeXt-Tiny."""
    return _create_srn("srn_convnext_tiny", pretrained, **kwargs)


@register_model
def srn_efficientnet_b0(pretrained: bool = False, **kwargs) -> SRNTimm:
    """SRN on EfficientNet-B0."""
    return _create_srn("srn_efficientnet_b0", pretrained, **kwargs)


__all__ = ["SRNTimm", "create_timm_srn", "resize_label_layers", "default_cfgs"]
