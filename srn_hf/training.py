"""The training pieces of `examples/train_stages.py`: resumable seeded data, activation checkpointing, and the error
of a diverged run.

The script's other pieces have modules of their own: the recipe in `srn_hf.recipe`, the scoring of a split in
`srn_hf.scoring`, the report's tables and metrics.json in `srn_hf.report`, its curves in `srn_hf.training_plots`.
"""

from __future__ import annotations

import random

import torch

# Moved to their own modules; importable from here for one release.
from .recipe import (  # noqa: F401
    DERIVED_MODEL_FIELDS,
    MIN_ATTENTION_CHANNELS,
    NON_NETWORK_FIELDS,
    RENAMED_KEYS,
    RESUME_FREE_FIELDS,
    RESUME_STAGE_FIELDS,
    DataRecipe,
    LossRecipe,
    ModelRecipe,
    Recipe,
    RecipeError,
    StageRecipe,
    TrainingRecipe,
    derive_model_choices,
    flat_dict,
    load_recipe,
    network_fields,
    resume_changes,
    srn_config_fields,
)
from .report import metric_table, write_json  # noqa: F401
from .scoring import predict_scores  # noqa: F401
from .training_plots import plot_training_curves  # noqa: F401


class TrainingDiverged(RuntimeError):
    """The training loss (or the scores) became NaN or infinite; the message names the stage's learning rates and
    the last good checkpoint, which is kept, or says that there is none to resume from."""


class EpochSeededDataset(torch.utils.data.Dataset):
    """A map-style dataset whose item `i` is drawn under the seed (seed, epoch, i): resumable augmentation.

    The random augmentation of an image depends only on the run's seed, the epoch and the index, not on how many
    batches were loaded before (the data loader prefetches) nor on the worker: a run resumed mid-epoch gets the
    very images the uninterrupted run got. Call [`set_epoch`] at the start of each epoch.
    """

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item_seed = (self.seed * 1_000_003 + self.epoch * 10_007 + int(index)) % 2**63
        python_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            try:
                return self.dataset[int(index)]
            finally:
                random.setstate(python_state)


def enable_activation_checkpointing(model) -> None:
    """Turns on activation (gradient) checkpointing of a transformers model by its current name,
    `activation_checkpointing_enable` (transformers 5 deprecates `gradient_checkpointing_enable`, which older
    releases have alone)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


__all__ = [
    "DataRecipe",
    "EpochSeededDataset",
    "LossRecipe",
    "ModelRecipe",
    "Recipe",
    "RecipeError",
    "StageRecipe",
    "TrainingDiverged",
    "TrainingRecipe",
    "enable_activation_checkpointing",
    "flat_dict",
    "load_recipe",
    "metric_table",
    "network_fields",
    "plot_training_curves",
    "predict_scores",
    "resume_changes",
    "write_json",
]
