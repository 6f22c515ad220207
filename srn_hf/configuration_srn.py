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
"""Configuration of the Spatial Regularization Network (SRN).

Zhu, Li, Ouyang, Yu, Wang: "Learning Spatial Regularization with Image-level Supervisions for Multi-label
Image Classification", CVPR 2017 (arXiv 1702.05891).

This file doubles as Hub remote code: it imports only transformers (and timm for validation), so that a
folder written by `save_pretrained` loads with `trust_remote_code=True` on a machine without `srn_hf`.
"""

import functools
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from transformers import PreTrainedConfig
from transformers.dynamic_module_utils import get_cached_module_file, get_relative_import_files
from transformers.utils import auto_docstring, logging

logger = logging.get_logger(__name__)

# Written into every saved config.json, so that a folder saved by `save_pretrained` (which copies this file
# and modeling_srn.py beside it) loads through all three Auto classes with `trust_remote_code=True`.
AUTO_MAP = {
    "AutoConfig": "configuration_srn.SRNConfig",
    "AutoModel": "modeling_srn.SRNModel",
    "AutoModelForImageClassification": "modeling_srn.SRNForImageClassification",
}

# Written into every saved config.json too: with `trust_remote_code=True`, transformers' `pipeline` finds SRN's
# multi-label pipeline in pipeline_srn.py, which `SRNConfig.save_pretrained` copies beside config.json.
PIPELINE_TASK = "multi-label-image-classification"
CUSTOM_PIPELINES = {
    PIPELINE_TASK: {
        "impl": "pipeline_srn.MultiLabelImageClassificationPipeline",
        "pt": ["AutoModelForImageClassification"],
        "type": "image",
    }
}

# timm's entry for a saved SRN, written into config.json: `timm.create_model("hf-hub:org/name")` builds it from there.
TIMM_ARCHITECTURE = "srn"

# SRN's own problem type, the default: independent sigmoid scores per label (its loss and its pipeline).
PROBLEM_TYPE = "multi_label_classification"
# The problem types of transformers' classifiers, all three supported (see SRNForImageClassification.forward).
PROBLEM_TYPES = (PROBLEM_TYPE, "single_label_classification", "regression")


def pipeline_registered() -> bool:
    """Whether the multi-label pipeline task is registered with transformers (by `import srn_hf`)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    return PIPELINE_TASK in PIPELINE_REGISTRY.get_supported_tasks()


def copy_pipeline_code(folder: Path, source: str | os.PathLike = "") -> None:
    """Copies pipeline_srn.py, and the files it imports, from beside this file into `folder`.

    Where this file runs as remote code whose folder has no pipeline_srn.py (a model loaded with
    `trust_remote_code=True`, the pipeline never asked for), it is fetched first from `source`, the folder or Hub
    repository the config was read from; when that fails too, a warning says the saved folder's pipeline needs srn_hf.
    """
    pipeline_file = Path(__file__).with_name("pipeline_srn.py")
    if not pipeline_file.exists() and source:
        try:
            get_cached_module_file(os.fspath(source), "pipeline_srn.py")
        except (OSError, ValueError) as error:
            logger.warning(f"pipeline_srn.py not copied ({error}): loading the pipeline from {folder} will need srn_hf")
    if not pipeline_file.exists():
        return
    for path in [pipeline_file, *map(Path, get_relative_import_files(pipeline_file))]:
        if path.resolve() != (folder / path.name).resolve():
            shutil.copy(path, folder / path.name)


def label_names(id2label: dict) -> list[str]:
    """The label names of an `id2label` map (keys as ints or as the strings of a JSON file), in index order."""
    return [id2label[key] for key in sorted(id2label, key=int)]


def config_label_names(config) -> list[str]:
    """A model config's label names, in label-id order."""
    return [config.id2label[index] for index in range(config.num_labels)]


def placeholder_label_names(num_labels: int) -> list[str]:
    """The names transformers gives labels that have none: `LABEL_0`, `LABEL_1`, ... `LABEL_{num_labels - 1}`."""
    return [f"LABEL_{index}" for index in range(num_labels)]


def thresholds_reset(old_labels: list[str], new_labels: list[str]) -> dict[str, Any]:
    """The threshold fields of a config whose label set changed: the default `threshold`, no `label_thresholds`, and a
    `threshold_calibration` that says the tuned thresholds of the old labels were dropped."""
    return {
        "threshold": SRNConfig.__dataclass_fields__["threshold"].default,
        "label_thresholds": None,
        "threshold_calibration": {
            "reset": f"the label set changed ({len(old_labels)} labels: {', '.join(old_labels[:3])}, ... -> "
            f"{len(new_labels)} labels: {', '.join(new_labels[:3])}, ...); the thresholds are the default, not tuned "
            "for these labels"
        },
    }


def refusals_as_value_errors(config_class):
    """Turns the strict dataclass's refusals into one-line `ValueError`s that name the field and the value.

    A field of the wrong type (`alpha="x"`) and a failed check of `validate_srn` both raise `ValueError`, as every
    other bad argument of the package does, instead of huggingface_hub's own exception classes.
    """
    strict_init = config_class.__init__

    @functools.wraps(strict_init)
    def __init__(self, *args, **kwargs):
        try:
            strict_init(self, *args, **kwargs)
        except StrictDataclassFieldValidationError as error:
            field = error.args[0].split("'")[1]
            expected = config_class.__dataclass_fields__[field].type
            expected = getattr(expected, "__name__", None) or str(expected).replace("typing.", "")
            raise ValueError(f"{field}={kwargs.get(field)!r} is not of type {expected}") from None
        except StrictDataclassClassValidationError as error:
            raise ValueError(str(error.__cause__)) from None

    config_class.__init__ = __init__
    return config_class


@refusals_as_value_errors
@auto_docstring(
    custom_intro="Configuration of a Spatial Regularization Network (SRN) over any timm backbone: `SRNModel` and "
    "`SRNForImageClassification` are built from it."
)
@strict
class SRNConfig(PreTrainedConfig):
    r"""
    backbone (`str`, defaults to `"resnet101"`):
        Name of the timm model whose feature maps feed SRN (`f_cnn` in the paper). It is always created with
        `pretrained=False`; ImageNet weights are loaded explicitly with
        [`SRNModel.load_backbone_weights`], never inside `__init__` or `from_pretrained`.
    backbone_kwargs (`dict`, *optional*):
        Extra keyword arguments for `timm.create_model` (e.g. `{"dynamic_img_size": True}` for a ViT that must
        run at several input sizes).
    attention_feature_index (`int`, defaults to -2):
        Index into the backbone's timm `feature_info` of the map X that feeds the attention and confidence
        branches (paper: ResNet-101 `res4b22_relu`, stride 16, 1024 x 14 x 14 at 224). Default: the
        second-to-last feature stage. A ViT has one stride: the default takes its second-to-last block.
    classifier_feature_index (`int`, defaults to -1):
        Index of the map F that feeds the main classifier `f_cls` (paper: ResNet-101 `layer4`, stride 32).
        Default: the last feature stage (a ViT: the final tokens reshaped to a grid).
    image_size (`int`, defaults to 224):
        Square input size the model is built for. It fixes K, the side of the attention maps (14 at 224 for a
        stride-16 map), and with it the kernel of `f_sr`'s grouped convolution. The model runs at other sizes:
        see [`SRNModel`].
    num_channels (`int`, defaults to 3):
        Input image channels.
    attention_channels (`int`, defaults to 512):
        Width of `f_att`'s two hidden convolutions (and of the released layout's confidence head).
    regularization_channels (`int`, defaults to 512):
        Width of `f_sr`'s first two 1x1 convolutions; also the number of groups of its KxK convolution.
    regularization_out_channels (`int`, defaults to 2048):
        Output channels of `f_sr`'s grouped KxK convolution (2048 = 4 filters per group of 512 in the paper).
    alpha (`float`, defaults to 0.5):
        Fusion weight on logits: `y = alpha * y_cls + (1 - alpha) * y_sr`.
    layout (`str`, defaults to `"paper"`):
        `"paper"`: the network of the paper's figures (one 1x1 confidence convolution, `f_att` directly on X).
        `"released"`: the official Caffe release, with two bottleneck residual blocks on X shared by `f_att`
        and the confidence branch, and a confidence head of two 1x1 convolutions.
    use_batch_norm (`bool`, defaults to `True`):
        Batch norm after each hidden convolution of the SRN branches. The paper's figures show none; the
        official release (pre-activation backbone) and every faithful re-implementation use it, and it keeps
        training stable when the stages switch the backbone between frozen and trained, hence the default.
    threshold (`float`, defaults to 0.5):
        Default probability threshold of the multi-label pipeline (sigmoid score > threshold is a label).
    label_thresholds (`dict[str, float]`, *optional*):
        Per-label thresholds overriding `threshold`, keyed by label name.
    threshold_calibration (`dict`, *optional*):
        How `threshold` and `label_thresholds` were chosen, when [`srn_hf.thresholds`] tuned them on data
        (`criterion`, `split`, `dataset`, `images`, `min_positives`, `fallback_labels`); `{"reset": ...}` when a
        checkpoint was loaded for another label set and its tuned thresholds were dropped; None when they were
        set by hand.
    initializer_range (`float`, defaults to 0.01):
        Standard deviation of the normal initialisation of the linear classifiers.

    `problem_type` is `"multi_label_classification"` by default: SRN's joint loss on independent per-label sigmoid
    scores, which transformers' stock `image-classification` pipeline then applies too. `"single_label_classification"`
    (softmax cross-entropy on the fused logits) and `"regression"` (mean squared error on the fused logits) are
    transformers' other two (see [`SRNForImageClassification.forward`]). `num_labels` follows from
    `id2label`; `from_pretrained(..., num_labels=N, ignore_mismatched_sizes=True)` gives a checkpoint N new labels
    named `LABEL_0`, ... (see [`SRNConfig.from_dict`]).

    Every refusal is a `ValueError` naming the field and the value.
    """

    model_type = "srn"

    backbone: str = "resnet101"
    backbone_kwargs: dict[str, Any] | None = None
    attention_feature_index: int = -2
    classifier_feature_index: int = -1
    image_size: int = 224
    num_channels: int = 3
    attention_channels: int = 512
    regularization_channels: int = 512
    regularization_out_channels: int = 2048
    alpha: float = 0.5
    layout: Literal["paper", "released"] = "paper"
    use_batch_norm: bool = True
    threshold: float = 0.5
    label_thresholds: dict[str, float] | None = None
    threshold_calibration: dict[str, Any] | None = None
    initializer_range: float = 0.01

    def __post_init__(self, **kwargs):
        if self.problem_type is None:
            self.problem_type = PROBLEM_TYPE
        if self.id2label is not None and kwargs.get("num_labels") not in (None, len(self.id2label)):
            raise ValueError(
                f"num_labels={kwargs['num_labels']} does not match id2label, which names {len(self.id2label)} "
                "labels; to change the label set, pass id2label with the new label names (and "
                "ignore_mismatched_sizes=True when loading a checkpoint)"
            )
        if getattr(self, "auto_map", None) is None and "auto_map" not in kwargs:
            kwargs["auto_map"] = dict(AUTO_MAP)
        if pipeline_registered():  # srn_hf is imported: transformers' `pipeline` must take the registered task
            kwargs.pop("custom_pipelines", None)
        kwargs.setdefault("architecture", TIMM_ARCHITECTURE)
        super().__post_init__(**kwargs)
        if self.label2id is None or len(self.label2id) != len(self.id2label):
            self.label2id = {name: index for index, name in self.id2label.items()}

    def to_dict(self) -> dict[str, Any]:
        """transformers' `to_dict`, with `custom_pipelines` ([`CUSTOM_PIPELINES`]) always in it, so in every saved
        config.json; the attribute itself is left out where srn_hf registered the pipeline task
        ([`pipeline_registered`]), because transformers' `pipeline` prefers a config's custom pipelines to the
        registered ones and would ask for `trust_remote_code=True`."""
        return {**super().to_dict(), "custom_pipelines": getattr(self, "custom_pipelines", None) or CUSTOM_PIPELINES}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "SRNConfig":
        """transformers' `from_dict`, where a label set other than the saved one starts from untuned thresholds.

        `num_labels=N` that differs from the saved `id2label` names N new labels `LABEL_0` ... `LABEL_{N-1}`, as
        transformers does for its own models; `id2label={...}` with other names is a new label set too. Either way the
        saved `label_thresholds` are dropped, `threshold` goes back to its default and `threshold_calibration` says
        why ([`thresholds_reset`]): the checkpoint's tuned thresholds belong to its own labels. Loading the weights
        then needs `ignore_mismatched_sizes=True` ([`SRNPreTrainedModel.from_pretrained`]). Passing `num_labels`
        together with a different `id2label` to the constructor itself stays an error.
        """
        num_labels, saved = kwargs.get("num_labels"), config_dict.get("id2label")
        new_id2label = kwargs.get("id2label")
        if num_labels is not None and saved is not None and num_labels != len(saved) and new_id2label is None:
            new_id2label = dict(enumerate(placeholder_label_names(num_labels)))
        if saved is not None and new_id2label is not None and label_names(new_id2label) != label_names(saved):
            config_dict = {
                key: value for key, value in config_dict.items() if key not in ("label2id", "label_thresholds")
            }
            config_dict.update(id2label=new_id2label, **thresholds_reset(label_names(saved), label_names(new_id2label)))
        return super().from_dict(config_dict, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs):
        """transformers' `save_pretrained`, which also copies pipeline_srn.py and the files it imports beside
        config.json ([`copy_pipeline_code`]): the remote code of the `custom_pipelines` entry."""
        os.makedirs(save_directory, exist_ok=True)
        copy_pipeline_code(Path(save_directory), getattr(self, "_name_or_path", ""))
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def validate_srn(self):
        """Checks run by transformers' strict dataclass validation, each naming the offending field."""
        import difflib

        import timm

        if not timm.is_model(self.backbone):
            close = difflib.get_close_matches(self.backbone, timm.list_models(), n=5)
            raise ValueError(
                f"backbone={self.backbone!r} is not a timm model name"
                + (f"; close names: {', '.join(close)}" if close else "")
            )
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type={self.problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        for field in ("alpha", "threshold"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ValueError(f"{field}={getattr(self, field)!r} must lie in [0, 1]")
        for field in ("image_size", "num_channels", "attention_channels", "regularization_channels"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}={getattr(self, field)!r} must be at least 1")
        if self.regularization_out_channels < 1 or self.regularization_out_channels % self.regularization_channels:
            raise ValueError(
                f"regularization_out_channels={self.regularization_out_channels} must be a multiple of "
                f"regularization_channels={self.regularization_channels} (the groups of f_sr's KxK convolution)"
            )
        if len(set(self.id2label.values())) != len(self.id2label):
            raise ValueError("id2label holds the same label name twice")
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ValueError(f"id2label keys must be 0..{len(self.id2label) - 1}, got {sorted(self.id2label)}")
        unknown = set(self.label_thresholds or {}) - set(self.id2label.values())
        if unknown:
            raise ValueError(f"label_thresholds names labels that are not in id2label: {sorted(unknown)}")
        for name, value in (self.label_thresholds or {}).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"label_thresholds[{name!r}]={value!r} must lie in [0, 1]")


__all__ = ["SRNConfig", "PROBLEM_TYPE", "PROBLEM_TYPES", "PIPELINE_TASK", "CUSTOM_PIPELINES"]
