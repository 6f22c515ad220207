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
`crop_mode="squash"`: timm's eval transform is the paper's whole image warped to the square input; `pool_size`,
`label_names`), `num_classes` (0: the model returns the pooled F, as every timm model returns its pooled features),
`reset_classifier(num_classes)`, `get_classifier(name_only=False)`, `forward_features(x) -> F` (unpooled),
`forward_head(F, pre_logits=False, attention_features=X) -> y`, `forward_intermediates`, `feature_info` and
`features_only=True`, `prune_intermediate_layers`, `group_matcher` (layer-wise learning-rate decay in timm's optimizer
factory), `set_grad_checkpointing`, torch.fx tracing and `torch.jit.script`. Every other SRNConfig field (`alpha`,
`layout`, `image_size` or timm's `img_size`, `attention_feature_index`, ...) is a keyword argument of `create_model`;
any other name is a `TypeError`.

`pretrained=True` loads a trained SRN where `pretrained_cfg_overlay=dict(file=folder)` names a `save_pretrained`
folder or the model comes from `timm.create_model("hf-hub:org/name")` (config, weights and label names), and
otherwise the backbone's ImageNet weights, from timm's source for the backbone or offline from
`backbone_weights_file`: the paper's starting point for training stage 1.

State dicts are interchangeable with the transformers model of the same config: [`SRNTimm`] holds an [`SRNModel`]
under `srn`, like [`SRNForImageClassification`], so the keys match 1:1 and the logits are identical either way:

```python
>>> timm_model = SRNTimm.from_transformers(hf_model)          # the same config and weights
>>> hf_model.load_state_dict(timm_model.state_dict())        # or timm_model.to_transformers()
```
"""

import contextlib
import copy
import math
import os
from pathlib import Path

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import group_with_matcher
from torch import nn

from .configuration_srn import SRNConfig, placeholder_label_names
from .modeling_srn import SRNForImageClassification, SRNModel, SRNModelOutput, create_backbone
from .processing import backbone_data_config

# The timm backbones of the named entries; `timm.create_model("srn", backbone=...)` takes any other.
NAMED_BACKBONES = {
    "srn_resnet101": "resnet101",
    "srn_resnet50": "resnet50",
    "srn_tf_efficientnet_lite0": "tf_efficientnet_lite0",
    "srn_convnext_tiny": "convnext_tiny",
    "srn_efficientnet_b0": "efficientnet_b0",
    "srn_convit_tiny": "convit_tiny",
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
    "convit_tiny": IMAGENET_DATA,
}

# Names of the label layers ([`SRNModel.label_layers`]) in an SRNTimm: timm's `classifier` of the pretrained config.
CLASSIFIER_NAMES = (
    "srn.classifier",
    "srn.attention.conv3",
    "srn.confidence.conv",
    "srn.spatial_regularization.conv1.0",
    "srn.spatial_regularization.fc",
)

# Keys that timm's `hf-hub:` / `local-dir:` loaders add to the config.json they read, or take out of it.
TIMM_SOURCE_KEYS = ("architecture", "hf_hub_id", "source", "file", "label_names", "num_classes", "num_features")

# SRNConfig fields that timm's own arguments set (`in_chans`, `num_classes` / `label_names`, `img_size`).
TIMM_OWNED_FIELDS = ("num_channels", "id2label", "label2id", "num_labels", "image_size")

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
        "pool_size": (7, 7),  # F at stride 32 (a model's own: its pretrained_cfg once built)
        "classifier": CLASSIFIER_NAMES,
        "license": "apache-2.0",
        "paper_ids": "arXiv:1702.05891",
        "paper_name": (
            "Learning Spatial Regularization with Image-level Supervisions for Multi-label Image Classification"
        ),
        **kwargs,
    }


# A vision transformer's patch tokens are one grid at stride 16 (its class token left out): X is the grid of its
# second-to-last block, F of its last (before the final norm). Its input size is fixed by its position embedding.
TOKEN_GRID_CFG = {"pool_size": (14, 14), "fixed_input_size": True}
TOKEN_GRID_BACKBONES = ("convit_tiny",)

default_cfgs = generate_default_cfgs(
    {
        "srn": _cfg(DEFAULT_BACKBONE),
        **{
            name: _cfg(backbone, **(TOKEN_GRID_CFG if backbone in TOKEN_GRID_BACKBONES else {}))
            for name, backbone in NAMED_BACKBONES.items()
        },
    }
)


class SRNTimm(nn.Module):
    """SRN as a timm model: an [`SRNModel`] under `srn`, with timm's model interface.

    Args:
        backbone: timm name of the backbone f_cnn.
        num_classes: number of labels C (`label_names` names them; `LABEL_0`, ... otherwise). 0: no SRN head, the
            model returns F pooled by `global_pool`, and `reset_classifier(n)` adds a new head.
        in_chans: input channels. img_size: the square input size the model is built for (K = img_size / 16).
        global_pool: `"avg"` or `""` (none): how the headless model (`num_classes=0`, `pre_logits=True`) pools F.
            SRN's own f_cls always averages F.
        drop_rate, drop_path_rate: passed to the backbone.
        config: an [`SRNConfig`] to build from instead (the other arguments must then be left out).
        device, dtype: where and in which precision the parameters are created (timm's factory arguments).
        **srn_kwargs: any other [`SRNConfig`] field (`alpha`, `layout`, `use_batch_norm`, ...); any other name is a
            `TypeError`.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        num_classes: int = 80,
        in_chans: int = 3,
        img_size: int | tuple[int, int] | None = None,
        label_names: list[str] | None = None,
        global_pool: str = "avg",
        drop_rate: float | None = None,
        drop_path_rate: float | None = None,
        config: SRNConfig | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **srn_kwargs,
    ):
        super().__init__()
        self.global_pool = check_global_pool(global_pool)
        if config is None:
            config = srn_config(
                backbone, num_classes, in_chans, img_size, label_names, drop_rate, drop_path_rate, **srn_kwargs
            )
        elif srn_kwargs:
            name, value = next(iter(srn_kwargs.items()))
            raise TypeError(f"SRNTimm got {name}={value!r} beside config=: the config holds every SRN field")
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.srn = SRNModel(config)
        if dtype is not None:
            self.srn.to(dtype=dtype)
        self.in_chans = config.num_channels
        self.num_classes = config.num_labels
        self.set_final_stage(self.srn.feature_positions[1])
        if num_classes == 0:
            self.reset_classifier(0)

    __jit_unused_properties__ = ["config"]  # torch.jit.script (timm scripts every model) reads no config

    @property
    def config(self) -> SRNConfig:
        return self.srn.config

    def set_final_stage(self, stage: int) -> None:
        """F is the backbone's feature stage `stage`: `num_features`, and `feature_info` up to it."""
        backbone_info = self.srn.backbone.feature_info
        self.final_stage = stage
        self.num_features = self.head_hidden_size = backbone_info.channels(stage)
        self.feature_info = [
            {**info, "module": f"srn.backbone.{info['module']}"} for info in backbone_info.get_dicts()[: stage + 1]
        ]

    def feature_maps(self, x: torch.Tensor, kept: list[int]) -> list[torch.Tensor]:
        """The backbone's feature stages ([`SRNModel.forward_feature_maps`]: those not in `kept` may be None). Under
        TorchScript, timm's own forward of its feature wrapper, every stage."""
        if torch.jit.is_scripting():
            backbone = self.srn.backbone
            if hasattr(backbone, "_collect"):  # timm's list wrapper, whose forward SRN steers in Python
                return list(backbone._collect(x).values())
            maps = backbone(x)
            if torch.jit.isinstance(maps, list[torch.Tensor]):  # a feature getter's forward_intermediates
                return maps
            raise RuntimeError("the backbone's feature wrapper returned no list of maps")
        return self.srn.forward_feature_maps(x, kept)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """F, the unpooled backbone map of f_cls (stride 32 in the paper, `num_features` channels). SRN's other
        outputs: [`forward_srn`]; the map X with it: `forward_intermediates`."""
        return self.feature_maps(x, [self.final_stage])[self.final_stage]

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False, attention_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The fused logits y from F (`x`) and X (`attention_features`, the feature stage
        `srn.feature_positions[0]` of `forward_intermediates`); with `pre_logits=True` (or `num_classes=0`), F pooled
        by `global_pool` (`num_features` wide), which needs F only. Where X and F are the same map, F is enough."""
        if pre_logits or self.num_classes == 0:
            return x.mean(dim=(2, 3)) if self.global_pool == "avg" else x
        if attention_features is None:
            if self.srn.feature_positions[0] != self.srn.feature_positions[1]:
                raise ValueError(
                    "forward_head needs SRN's map X (feature stage " + str(self.srn.feature_positions[0]) + ") beside "
                    "F: pass attention_features=intermediates[that stage] of forward_intermediates(x), "
                    "or call the model"
                )
            attention_features = x
        return self.srn.forward_branches(attention_features, x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused logits y (B x C); F pooled without a head. [`forward_srn`] returns every output of SRN."""
        if self.num_classes == 0:
            return self.forward_head(self.forward_features(x))
        attention_stage, classifier_stage = self.srn.feature_positions
        maps = self.feature_maps(x, [attention_stage, classifier_stage])
        return self.forward_head(maps[classifier_stage], attention_features=maps[attention_stage])

    def forward_srn(self, x: torch.Tensor) -> SRNModelOutput:
        """All of SRN's outputs (y, y_cls, y_att, y_sr, attention maps A, confidence maps S), as [`SRNModel`] returns
        them."""
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
        """timm's `forward_intermediates`: the backbone's feature maps of `feature_info` (`indices`: which stages; an
        int n takes the last n; default all) and, unless `intermediates_only`, F as `forward_features` returns it.
        X is the stage `srn.feature_positions[0]`. `norm` and `stop_early` change nothing: the maps have no final
        norm, and the backbone holds no stage past F."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: SRN's feature maps are 'NCHW'")
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        maps = self.feature_maps(x, [*take_indices, self.final_stage])
        intermediates = [maps[index] for index in take_indices]
        if intermediates_only:
            return intermediates
        return maps[self.final_stage], intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's pruning for feature extraction (`features_only=True` calls it): keeps the backbone's stages up to
        the deepest of `indices`, which becomes F. SRN's head needs X and F, so `prune_head=True` removes it (as
        `reset_classifier(0, "")`); with `prune_head=False` the stages it needs must stay. Returns the taken indices."""
        take_indices, deepest = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0, "")
        elif self.num_classes and deepest < max(self.srn.feature_positions):
            raise ValueError(
                f"prune_intermediate_layers({indices}, prune_head=False): SRN's head needs the backbone's stages up to "
                f"{max(self.srn.feature_positions)}"
            )
        if self.num_classes == 0 and deepest < self.final_stage:
            prune_backbone(self.srn, deepest)
            self.set_final_stage(deepest)
        return take_indices

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
        for (name, parameter), (plain_name, plain_parameter) in zip(
            self.srn.backbone.named_parameters(), plain_parameters
        ):
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
        its weights. `num_classes=0` removes SRN's head: the model then returns F pooled by `global_pool` (kept when
        None)."""
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
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
    """The [`SRNConfig`] of timm-style arguments; a name that is neither these nor an SRNConfig field is a
    `TypeError`, as for every timm model."""
    for name, value in srn_kwargs.items():
        if name not in SRNConfig.__dataclass_fields__ or name in TIMM_OWNED_FIELDS:
            raise TypeError(
                f"SRN got an unexpected keyword argument {name}={value!r}: not a timm argument of SRN "
                "nor an SRNConfig field"
            )
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


def check_global_pool(global_pool: str) -> str:
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool={global_pool!r}: SRN pools F by its average ('avg') or not at all ('')")
    return global_pool


def id2label_of(num_classes: int, label_names: list[str] | None = None) -> dict[int, str]:
    """`{index: name}` for `num_classes` labels, named by `label_names` or `LABEL_0`, `LABEL_1`, ...

    `num_classes=0` (no head) gives one placeholder label, so that the config stays a valid SRNConfig."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes={num_classes!r} must be a number of labels (0: no head, pooled features)")
    if num_classes == 0 and not label_names:
        return dict(enumerate(placeholder_label_names(1)))
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"label_names has {len(label_names)} names for num_classes={num_classes}")
    return dict(enumerate(label_names or placeholder_label_names(num_classes)))


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


def prune_backbone(srn: SRNModel, deepest: int) -> None:
    """Keeps `srn`'s backbone up to its feature stage `deepest`: the same parameter and buffer objects (weights,
    device, dtype, frozen state), in a backbone built on the meta device up to that stage; its config then names that
    stage as F. Only for an SRN without head (X and F must stay otherwise)."""
    attention_index = min(srn.feature_positions[0], deepest)
    srn.config.attention_feature_index, srn.config.classifier_feature_index = attention_index, deepest
    with torch.device("meta"):
        pruned = create_backbone(srn.config, positions=(attention_index, deepest))
    if hasattr(pruned, "_stage_out_idx"):  # timm's EfficientNet / MobileNet feature wrappers build every block
        pruned.blocks = pruned.blocks[: max(pruned._stage_out_idx)]
    kept = {**dict(srn.backbone.named_parameters()), **dict(srn.backbone.named_buffers())}
    for name, _ in [*pruned.named_parameters(), *pruned.named_buffers()]:
        if name not in kept:
            raise ValueError(f"backbone {srn.config.backbone!r} cannot be pruned to stage {deepest}: {name} is new")
        module_name, _, attribute = name.rpartition(".")
        module = pruned.get_submodule(module_name)
        tensors = module._parameters if attribute in module._parameters else module._buffers
        tensors[attribute] = kept[name]
    srn.backbone = pruned.train(srn.backbone.training)
    srn.feature_positions = (attention_index, deepest)


def _create_srn(variant: str, pretrained: bool = False, backbone_weights_file=None, **kwargs) -> SRNTimm:
    """The one builder: timm's `build_model_with_cfg`, the backbone's preprocessing in `pretrained_cfg`, and with
    `pretrained=True` the weights of a trained SRN ([`trained_srn_source`]) or else the backbone's ImageNet weights."""
    source = trained_srn_source(kwargs, pretrained)
    requested_classes = kwargs.get("num_classes")
    if variant in NAMED_BACKBONES:
        backbone = kwargs["config"].backbone if "config" in kwargs else kwargs.get("backbone", NAMED_BACKBONES[variant])
        if backbone != NAMED_BACKBONES[variant]:
            raise ValueError(f"{variant} is SRN on {NAMED_BACKBONES[variant]}; for backbone={backbone!r} use 'srn'")
        if "config" not in kwargs:
            kwargs["backbone"] = backbone
    config = kwargs.get("config")
    if config is not None:  # timm would otherwise fill in its defaults for these
        kwargs.update(num_classes=config.num_labels, in_chans=config.num_channels)
    # features_only=True: timm's wrapper over forward_intermediates, which prunes the model to the stages taken
    # (`out_indices`; by default every stage of `feature_info`, 4 or 5 for a CNN, 12 for a 12-block transformer)
    feature_cfg = {"feature_cls": "getter", "out_indices": None}
    model = build_model_with_cfg(SRNTimm, variant, pretrained=False, feature_cfg=feature_cfg, **kwargs)
    srn_model = model if isinstance(model, SRNTimm) else model.model
    if source is not None:
        hf_model = SRNForImageClassification.from_pretrained(source, cache_dir=kwargs.get("cache_dir"))
        missing, _ = srn_model.load_state_dict(hf_model.state_dict(), strict=srn_model is model)
        if missing:
            raise ValueError(f"{source}: the checkpoint lacks {missing[:3]}")
        if requested_classes is not None and requested_classes != srn_model.num_classes and srn_model is model:
            model.reset_classifier(requested_classes)
    elif pretrained:
        srn_model.load_backbone_weights(backbone_weights_file)
    update_pretrained_cfg(srn_model)
    return model


def trained_srn_source(kwargs: dict, pretrained: bool) -> str | None:
    """The trained SRN (a `save_pretrained` folder, or a Hub id) named by timm's arguments, with its config put in
    `kwargs["config"]`; None when they name none.

    `pretrained_cfg_overlay=dict(file=folder)` (or a weights file in it) names a folder; `timm.create_model("hf-hub:
    org/name")` and `"local-dir:folder"` hand over the config.json they read as `pretrained_cfg` (SRN's config.json
    carries timm's `architecture` key). The weights load with `pretrained=True`, as timm does.
    """
    pretrained_cfg, overlay = kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay") or {}
    if isinstance(pretrained_cfg, dict) and pretrained_cfg.get("model_type") == SRNConfig.model_type:
        source = pretrained_cfg.get("file") or pretrained_cfg["hf_hub_id"]
        config_dict = {key: value for key, value in pretrained_cfg.items() if key not in TIMM_SOURCE_KEYS}
        kwargs["config"] = SRNConfig.from_dict(config_dict)
        kwargs["pretrained_cfg"] = None
        kwargs["pretrained_cfg_overlay"] = {
            key: pretrained_cfg[key] for key in ("hf_hub_id", "file", "source") if key in pretrained_cfg
        }
        return source if pretrained else None
    if not pretrained or overlay.get("file") is None:
        return None
    path = Path(overlay["file"])
    folder = path if path.is_dir() else path.parent
    if not path.exists() or not (folder / "config.json").is_file():
        raise ValueError(
            f"pretrained_cfg_overlay file={overlay['file']!r}: no config.json of a trained SRN in "
            f"{str(folder)!r} (a save_pretrained folder); backbone weights go in backbone_weights_file"
        )
    kwargs["config"] = SRNConfig.from_pretrained(folder)
    return str(folder)


def update_pretrained_cfg(model: SRNTimm) -> None:
    """What timm reads of `pretrained_cfg`, for the model as built: input size, preprocessing, the size of F,
    the first convolution, the label layers and the label names."""
    config = model.config
    first_conv = next(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))
    side = math.ceil(config.image_size / model.feature_info[-1]["reduction"])
    model.pretrained_cfg.update(
        num_classes=model.num_classes,
        input_size=(config.num_channels, config.image_size, config.image_size),
        pool_size=(side, side),
        first_conv=first_conv,
        classifier=model.get_classifier(name_only=True) or model.pretrained_cfg["classifier"],
        label_names=list(config.id2label.values()) if model.num_classes else None,
        **backbone_data_config(config),
    )


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
def srn_convit_tiny(pretrained: bool = False, **kwargs) -> SRNTimm:
    """SRN on ConViT-Ti, a vision transformer (16 x 16 patches): X and F are the patch-token grids (14 x 14 at 224)
    of its last two blocks. (timm's own ViT, `srn` with `backbone="vit_small_patch16_224"`, runs too, but its
    feature getter does not compile with torch.jit.script, which timm's tests ask of every entry.)"""
    return _create_srn("srn_convit_tiny", pretrained, **kwargs)


@register_model
def srn_efficientnet_b0(pretrained: bool = False, **kwargs) -> SRNTimm:
    """SRN on EfficientNet-B0."""
    return _create_srn("srn_efficientnet_b0", pretrained, **kwargs)


__all__ = ["SRNTimm", "create_timm_srn", "resize_label_layers", "default_cfgs"]
