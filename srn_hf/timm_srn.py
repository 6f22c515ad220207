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
`num_classes`, `reset_classifier(num_classes)`, `get_classifier()`, `forward_features(x) -> (X, F)`,
`forward_head((X, F), pre_logits=False) -> y`. Every other SRNConfig field (`alpha`, `layout`, `image_size` or timm's
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

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
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


def _cfg(backbone: str, **kwargs) -> dict:
    """timm pretrained config of an SRN on `backbone`: no weights of its own, the backbone's preprocessing."""
    data_config = backbone_data_config(SRNConfig(backbone=backbone))
    return {
        "url": "",
        "num_classes": 80,  # MS-COCO, the paper's main benchmark
        "input_size": (3, 224, 224),
        "crop_pct": 1.0,
        "crop_mode": "squash",  # with crop_pct 1: the whole image warped to the input size, as the paper tests
        "interpolation": data_config["interpolation"],
        "mean": data_config["mean"],
        "std": data_config["std"],
        "classifier": "srn.classifier",
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
        num_classes: number of labels C (`label_names` names them; `LABEL_0`, ... otherwise).
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

    @property
    def config(self) -> SRNConfig:
        return self.srn.config

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's stride-16 map X and stride-32 map F."""
        return self.srn.forward_backbone(x)

    def forward_head(self, features: tuple[torch.Tensor, torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """The fused logits y from (X, F); with `pre_logits=True`, the pooled F (the input of f_cls, `num_features`)."""
        attention_features, classifier_features = features
        if pre_logits:
            return classifier_features.mean(dim=(2, 3))
        return self.srn.forward_heads(attention_features, classifier_features).logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused logits y (B x C); `self.srn(x)` returns every output (y_cls, y_att, y_sr, attention maps A, S)."""
        return self.forward_head(self.forward_features(x))

    def forward_srn(self, x: torch.Tensor) -> SRNOutput:
        """All of SRN's outputs, as [`SRNModel`] returns them."""
        return self.srn(x, return_dict=True)

    def get_classifier(self) -> nn.ModuleList:
        """Every layer whose size is the number of labels ([`SRNModel.label_layers`]), e.g. for a head learning rate."""
        return nn.ModuleList(self.srn.label_layers())

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, label_names: list[str] | None = None):
        """Re-creates and re-initialises every label layer for `num_classes` labels; the rest keeps its weights."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r}: SRN's f_cls pools F by its average only")
        resize_label_layers(self.srn, num_classes, label_names)
        self.num_classes = num_classes

    def load_backbone_weights(self, weights_file: str | os.PathLike | None = None) -> None:
        """ImageNet weights into the backbone only; see [`SRNModel.load_backbone_weights`]."""
        self.srn.load_backbone_weights(weights_file)

    def to_transformers(self) -> SRNForImageClassification:
        """The same network, with the same weights, as a transformers [`SRNForImageClassification`]."""
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
    """`{index: name}` for `num_classes` labels, named by `label_names` or `LABEL_0`, `LABEL_1`, ..."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"num_classes={num_classes!r}: SRN needs at least one label (its attention maps and f_sr are per "
            "label); for image embeddings use forward_features or forward_head(..., pre_logits=True)"
        )
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"label_names has {len(label_names)} names for num_classes={num_classes}")
    return dict(enumerate(label_names or [f"LABEL_{index}" for index in range(num_classes)]))


def resize_label_layers(srn: SRNModel, num_labels: int, label_names: list[str] | None = None) -> None:
    """Replaces every label layer of `srn` by a freshly initialised one for `num_labels` labels, in place.

    Each label layer outputs one channel per label, except f_sr's first convolution, which reads the C weighted
    attention maps U. The config gets the new labels (and loses its per-label thresholds).
    """
    id2label = id2label_of(num_labels, label_names)
    reads_labels = srn.spatial_regularization.conv1[0]
    names = {id(module): name for name, module in srn.named_modules()}
    for layer in srn.label_layers():
        if isinstance(layer, nn.Linear):
            new_layer = nn.Linear(layer.in_features, num_labels, bias=layer.bias is not None)
        elif layer is reads_labels:
            new_layer = nn.Conv2d(num_labels, layer.out_channels, layer.kernel_size, bias=layer.bias is not None)
        else:
            new_layer = nn.Conv2d(layer.in_channels, num_labels, layer.kernel_size, bias=layer.bias is not None)
        new_layer.to(device=layer.weight.device, dtype=layer.weight.dtype)
        srn._init_weights(new_layer)
        parent_name, _, attribute = names[id(layer)].rpartition(".")
        setattr(srn.get_submodule(parent_name), attribute, new_layer)
    srn.config.id2label = id2label
    srn.config.label2id = {name: index for index, name in id2label.items()}
    srn.config.label_thresholds = None


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
        num_classes=config.num_labels,
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
