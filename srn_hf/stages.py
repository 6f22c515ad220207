"""The paper's four training stages as data: what trains, what is frozen, which loss, which prediction.

Zhu et al. (CVPR 2017) train SRN in four stages:

    stage  trains                                      frozen                         loss            evaluated
    1      backbone (f_cnn) + classifier (f_cls)       the SRN branch (unused)        L(y_cls)        y_cls
    2      attention_trunk + attention (f_att)         backbone, classifier, f_sr     L(y_att)        y_att
           + confidence (conv1, S)
    3      spatial_regularization (f_sr)               everything else                L(y_sr)         y_sr
    4      everything                                  nothing                        L(y) + L(y_att) y

A frozen part is frozen three ways ([`apply_stage`]): its parameters are left out of the optimizer, they do not
require gradients, and its batch-norm layers stay in eval mode (running statistics untouched). When the backbone
is frozen (stages 2 and 3) it runs under `torch.no_grad()` ([`StageForward`]). Under DDP, `requires_grad` must be
set before the model is wrapped (`accelerator.prepare`), so the model is unwrapped and prepared again at each stage.

The loss L is the sigmoid cross-entropy of `modeling_srn.sigmoid_cross_entropy`, or the asymmetric loss (ASL,
Ridnik et al., ICCV 2021; timm's `timm.loss.AsymmetricLossMultiLabel`, [`make_loss`]), with one of two reductions
(`modeling_srn.LOSS_REDUCTIONS`, defined there once):
`"mean"` over batch and classes, the default (`DEFAULT_LOSS_REDUCTION`: the model's own loss when called with
`labels`, [`make_loss`] and a recipe without `loss.reduction`), or the authors' Caffe `"sum_over_classes"` (sum
over classes, divided by the batch size: C times the mean, so a learning rate tuned for it is C times smaller).
The shipped recipes say which they use: `examples/configs/demo.yaml` the mean (AdamW, lr tuned for it); the
paper's benchmarks `coco_resnet101.yaml`, `voc2007.yaml` and `nuswide.yaml` the Caffe sum (the paper's SGD rates
in stages 2 to 4; their stage 1 runs AdamW, for which the reduction only scales the loss).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from timm.loss import AsymmetricLossMultiLabel
from torch import nn

from .modeling_srn import (
    DEFAULT_LOSS_REDUCTION,
    LOSS_REDUCTIONS,
    SRNForImageClassification,
    SRNModel,
    SRNModelOutput,
    sigmoid_cross_entropy,
)

# The paper's name of each SRNModelOutput prediction.
PAPER_NAMES = {"cls_logits": "y_cls", "att_logits": "y_att", "sr_logits": "y_sr", "logits": "y"}

# The sub-modules of SRNModel, in the order the paper introduces them.
SRN_MODULES = ("backbone", "classifier", "attention_trunk", "attention", "confidence", "spatial_regularization")


@dataclass(frozen=True)
class Stage:
    """One training stage of SRN.

    Attributes:
        number: 1 to 4, the paper's order.
        trained: names of the `SRNModel` sub-modules the optimizer updates.
        loss_terms: `SRNModelOutput` fields whose losses are summed (`"logits"` is the fused y).
        prediction: the `SRNModelOutput` field evaluated after the stage.
    """

    number: int
    trained: tuple[str, ...]
    loss_terms: tuple[str, ...]
    prediction: str

    @property
    def frozen(self) -> tuple[str, ...]:
        """The `SRNModel` sub-modules that do not train in this stage."""
        return tuple(name for name in SRN_MODULES if name not in self.trained)

    @property
    def backbone_frozen(self) -> bool:
        """True when f_cnn does not train: it then runs without autograd."""
        return "backbone" in self.frozen


STAGES: dict[int, Stage] = {
    1: Stage(1, trained=("backbone", "classifier"), loss_terms=("cls_logits",), prediction="cls_logits"),
    2: Stage(
        2, trained=("attention_trunk", "attention", "confidence"), loss_terms=("att_logits",), prediction="att_logits"
    ),
    3: Stage(3, trained=("spatial_regularization",), loss_terms=("sr_logits",), prediction="sr_logits"),
    4: Stage(4, trained=SRN_MODULES, loss_terms=("logits", "att_logits"), prediction="logits"),
}


# The SRN branch (f_att, confidence maps S, f_sr): the sub-modules that stage 1 leaves out.
SRN_BRANCH = tuple(name for name in SRN_MODULES if name not in STAGES[1].trained)


def get_stage(stage: int | Stage) -> Stage:
    """The [`Stage`] numbered `stage` (1 to 4); a [`Stage`] is returned as it is."""
    if isinstance(stage, Stage):
        return stage
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not one of the paper's stages {sorted(STAGES)}")
    return STAGES[stage]


def srn_of(model: nn.Module) -> SRNModel:
    """The `SRNModel` inside `model`: an `SRNForImageClassification`, an `SRNModel`, a [`StageForward`], or one of
    these wrapped by `accelerator.prepare` (DDP's `module`)."""
    model = getattr(model, "module", model)
    model = getattr(model, "model", model)
    if isinstance(model, SRNForImageClassification):
        return model.srn
    if isinstance(model, SRNModel):
        return model
    raise TypeError(f"expected an SRN model, got {type(model).__name__}")


def apply_stage(model: nn.Module, stage: int | Stage) -> dict[str, list[nn.Parameter]]:
    """Freezes what `stage` does not train; returns the trainable parameters as `{module name: [parameters]}`.

    Sets `requires_grad` on every parameter (call it on the unwrapped model, before `accelerator.prepare`) and puts
    the model in train mode with the frozen sub-modules in eval mode ([`set_train_mode`]).
    """
    stage = get_stage(stage)
    srn = srn_of(model)
    trainable = {}
    for name in SRN_MODULES:
        module = getattr(srn, name)
        module.requires_grad_(name in stage.trained)
        if name in stage.trained:
            trainable[name] = list(module.parameters())
    set_train_mode(model, stage)
    return trainable


def set_train_mode(model: nn.Module, stage: int | Stage) -> None:
    """`model.train()`, then eval mode for the frozen sub-modules (their batch norm keeps its running statistics).

    Call it at the start of every training epoch: `model.train()` alone would put frozen batch norm back in
    train mode.
    """
    stage = get_stage(stage)
    model.train()
    srn = srn_of(model)
    for name in stage.frozen:
        getattr(srn, name).eval()


def tensor_digest(tensors) -> bytes:
    """A digest of the tensors' shapes, dtypes and bytes: equal digests mean equal contents."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.digest()


class BackboneMapCache:
    """The backbone maps X and F of evaluation batches, kept while the backbone's weights stay the same.

    Stages 2 and 3 train the SRN branch on a frozen backbone: every validation and test pass of theirs (and the
    rescoring of a stage's best epoch) runs f_cnn on the same images with the same weights as the pass before it.
    [`StageForward`] in eval mode takes X and F from here instead: a batch is looked up by the digest of its pixels,
    and the whole cache is dropped as soon as the backbone's weights (parameters and batch-norm statistics) are not
    the ones it was filled with ([`bind`], called each time the forward is put in eval mode). The maps are kept in
    host memory, at most `max_megabytes` of them (per process); batches beyond that are computed each time.
    """

    def __init__(self, max_megabytes: float):
        self.max_bytes = int(max_megabytes * 2**20)
        self.weights_digest: bytes | None = None
        self.maps: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self.bytes = 0
        self.hits = self.misses = 0

    def bind(self, backbone: nn.Module) -> None:
        """Keeps the cached maps if `backbone` holds the weights they were computed with, else drops them."""
        if not self.max_bytes:  # off: nothing is kept, so the weights need no digest
            return
        digest = tensor_digest(backbone.state_dict().values())
        if digest != self.weights_digest:
            self.maps.clear()
            self.weights_digest, self.bytes = digest, 0

    def forward_backbone(self, srn: SRNModel, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`srn.forward_backbone(pixel_values)`, computed once per batch of pixels under the bound weights."""
        if not self.max_bytes:  # off: every batch is computed, no digest taken
            self.misses += 1
            return srn.forward_backbone(pixel_values)
        key = tensor_digest([pixel_values])
        if key in self.maps:
            self.hits += 1
            return copied_maps(*self.maps[key], pixel_values.device)
        self.misses += 1
        features, classifier_features = srn.forward_backbone(pixel_values)
        size = features.nbytes + (classifier_features.nbytes if classifier_features is not features else 0)
        if self.bytes + size <= self.max_bytes:
            self.maps[key] = copied_maps(features, classifier_features, torch.device("cpu"))
            self.bytes += size
        return features, classifier_features


def copied_maps(
    features: torch.Tensor, classifier_features: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of X and F on `device` (their memory format kept), one copy when X and F are the same map."""
    copy = features.detach().to(device, copy=True)
    return copy, copy if classifier_features is features else classifier_features.detach().to(device, copy=True)


class BackboneMaps(torch.utils.data.Dataset):
    """X and F of every training image under a frozen backbone, computed once, with the images' labels: what stages 2
    and 3 train on when the recipe allows (`training.frozen_maps_mb`). Its rows are `{"features": X, "labels": y}`,
    plus `"classifier_features": F` when F is another map than X; [`StageForward`] takes them as keywords. The maps
    come from the evaluation transform (no augmentation), and `weights_digest` ([`tensor_digest`] of the backbone's
    weights) says which backbone computed them."""

    def __init__(
        self, features: torch.Tensor, classifier_features: torch.Tensor | None, labels: torch.Tensor, weights_digest
    ):
        self.features, self.classifier_features, self.labels = features, classifier_features, labels
        self.weights_digest = weights_digest

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = {"features": self.features[index], "labels": self.labels[index]}
        if self.classifier_features is not None:
            row["classifier_features"] = self.classifier_features[index]
        return row


class StageForward(nn.Module):
    """The forward pass of one stage: the module that `accelerator.prepare` wraps (DDP sees this forward).

    With a frozen backbone (stages 2, 3), f_cnn runs under `torch.no_grad()`. In stage 1 only y_cls is computed:
    the SRN branch is unused, and f_att's 3x3 convolution alone costs about as much as a small backbone.
    `model` is the wrapped `SRNForImageClassification`; its state dict keys gain the prefix `model.`.
    With a [`BackboneMapCache`], the eval-mode forward (validation and test) runs f_cnn once per batch of images
    for as long as the backbone's weights do not change; given the maps themselves, it does not run f_cnn at all.
    """

    def __init__(self, model: SRNForImageClassification, stage: int | Stage, map_cache: BackboneMapCache | None = None):
        super().__init__()
        self.model = model
        self.stage = get_stage(stage)
        self.map_cache = map_cache

    def train(self, mode: bool = True) -> StageForward:
        super().train(mode)
        if not mode and self.map_cache is not None:
            self.map_cache.bind(self.model.srn.backbone)  # the weights may have changed since the last eval pass
        return self

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        classifier_features: torch.Tensor | None = None,
    ) -> SRNModelOutput:
        """The stage's outputs for a batch of images, or of their maps X (`features`) and F (`classifier_features`,
        when it is another map) from a frozen backbone ([`BackboneMaps`])."""
        srn = self.model.srn
        if features is not None:
            classifier_features = features if classifier_features is None else classifier_features
        elif self.map_cache is not None and not self.training and not torch.is_grad_enabled():
            features, classifier_features = self.map_cache.forward_backbone(srn, pixel_values)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.stage.backbone_frozen):
                features, classifier_features = srn.forward_backbone(pixel_values)
        if self.stage.trained == STAGES[1].trained:
            return SRNModelOutput(cls_logits=srn.classifier(classifier_features.mean(dim=(2, 3))))
        return srn.forward_heads(features, classifier_features)


LOSSES = ("sigmoid_cross_entropy", "asymmetric")


# Our reductions by timm's names for them (`AsymmetricLossMultiLabel(reduction=...)`): the mean over batch and classes
# is timm's "mean"; the Caffe sum over classes divided by the batch size is timm's "batchmean".
TIMM_REDUCTIONS = {"mean": "mean", "sum_over_classes": "batchmean"}


def make_loss(
    name: str = "sigmoid_cross_entropy", reduction: str = DEFAULT_LOSS_REDUCTION, **asymmetric_options
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss L(logits, labels): `"sigmoid_cross_entropy"` (the paper's) or `"asymmetric"` (ASL).

    ASL is timm's `timm.loss.AsymmetricLossMultiLabel`, built with `asymmetric_options` under timm's names
    (`gamma_neg`, `gamma_pos`, `clip`, `eps`) and our `reduction` mapped to timm's ([`TIMM_REDUCTIONS`]); it
    computes in float32 and returns a non-negative number, like `sigmoid_cross_entropy`. The sigmoid cross-entropy
    ignores the options.
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss reduction={reduction!r} is not one of {LOSS_REDUCTIONS}")
    if name == "sigmoid_cross_entropy":
        return partial(sigmoid_cross_entropy, reduction=reduction)
    if name == "asymmetric":
        return AsymmetricLossMultiLabel(reduction=TIMM_REDUCTIONS[reduction], **asymmetric_options)
    raise ValueError(f"loss={name!r} is not one of {LOSSES}")


def stage_loss(
    outputs: SRNModelOutput, labels: torch.Tensor, stage: int | Stage, loss: Callable = sigmoid_cross_entropy
) -> torch.Tensor:
    """The stage's training loss: the sum of `loss(prediction, labels)` over the stage's `loss_terms`."""
    stage = get_stage(stage)
    return sum(loss(getattr(outputs, term), labels) for term in stage.loss_terms)


__all__ = [
    "STAGES",
    "SRN_BRANCH",
    "SRN_MODULES",
    "Stage",
    "StageForward",
    "apply_stage",
    "get_stage",
    "make_loss",
    "set_train_mode",
    "stage_loss",
]
