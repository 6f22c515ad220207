"""Trains SRN the way the paper does: four stages, with Accelerate, resumable.

    accelerate launch examples/train_stages.py                                   # the offline demo (demo.yaml)
    accelerate launch examples/train_stages.py --config examples/configs/coco_resnet101.yaml
    accelerate launch --multi_gpu --num_processes 8 examples/train_stages.py --config ... --set stage1.lr=2e-3
    accelerate launch examples/train_stages.py --config ... --stages 2,3,4      # from OUTPUT_DIR/stage-1
    accelerate launch examples/train_stages.py --config ... --resume            # after a crash or kill

Stage 1 trains the backbone and f_cls on L(y_cls); stage 2 the attention branch (f_att, confidence maps S) on
L(y_att) with the backbone frozen; stage 3 f_sr on L(y_sr); stage 4 everything on L(y) + L(y_att) (the table is
`srn_hf.stages.STAGES`). Each stage keeps its best epoch by validation mAP of its own prediction, exports it to
OUTPUT_DIR/stage-N (a folder `pipeline("image-classification", model=...)` loads), and is scored on the
validation and test splits; its thresholds are then tuned on the validation split (`srn_hf.thresholds`), the test
split is reported at 0.5 and at them, and the export's config.json carries them. OUTPUT_DIR/final is the last
stage's model; OUTPUT_DIR/metrics.json holds every stage's figures (both ways) and the last stage's test mAP over
stage 1 with a bootstrap interval (and its CF1 / OF1 over stage 1's at tuned thresholds), OUTPUT_DIR/training_curves.png
draws them, OUTPUT_DIR/predictions holds each stage's test scores. Checkpoints (Accelerate `save_state`) go to
OUTPUT_DIR/checkpoints after every epoch (and every `training.checkpoint_every_steps` steps).

Faults (docs/faults.md): every image of every split is decoded before the first step (`data.bad_images`: stop, or
skip and count); checkpoints and model folders are written under a temporary name and renamed when complete, the
oldest checkpoint deleted only after the new one is; `--resume` continues from the newest checkpoint that loads and
says which it skipped and why; a full disk or a refused write names the path and the free space.
"""

import argparse
import dataclasses
import importlib.util
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file, save_file
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from srn_hf import SRNConfig, SRNForImageClassification, checkpoints
from srn_hf.cli import flag_worded
from srn_hf.data import label_names, load_multilabel_dataset
from srn_hf.data.holdout import split_record, split_summary
from srn_hf.data.transforms import collate_multilabel, with_multilabel_transforms
from srn_hf.data.verify import check_images
from srn_hf.localization import label_boxes, pointing_game, pointing_game_table
from srn_hf.metrics import THRESHOLDED_FIGURES as FIGURES
from srn_hf.metrics import map_difference, multilabel_metrics
from srn_hf.model_folder import one_line, write_splits_file
from srn_hf.pretrained import load_imagenet_backbone
from srn_hf.processing import create_image_processor
from srn_hf.recipe import (
    Recipe,
    RecipeError,
    StageRecipe,
    derive_model_choices,
    flat_dict,
    load_recipe,
    network_fields,
    resume_changes,
)
from srn_hf.report import calibrated_gain, describe_gain, metric_table, threshold_table, write_json
from srn_hf.scoring import predict_scores
from srn_hf.showcase import keep_examples
from srn_hf.stages import (
    STAGES,
    BackboneMapCache,
    BackboneMaps,
    Stage,
    StageForward,
    apply_stage,
    make_loss,
    set_train_mode,
    srn_of,
    stage_loss,
    tensor_digest,
)
from srn_hf.storage import StorageError, atomic_folder, remove_folder
from srn_hf.thresholds import RUN_VALIDATION, calibrate_stage, calibrate_thresholds, write_thresholds
from srn_hf.training import EpochSeededDataset, TrainingDiverged, enable_activation_checkpointing
from srn_hf.training_plots import plot_training_curves

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
# The Python parameters that srn_hf's errors name, as this script's flags (`srn_hf.cli.flag_worded`).
FLAGS = {"overrides": "--set", "output_dir": "--output-dir", "resume": "--resume", "overwrite": "--overwrite"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe YAML (default: the offline demo)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, value parsed as YAML (repeatable): --set stage4.lr=1e-5 --set data.num_workers=2",
    )
    parser.add_argument("--output-dir", help="shorthand for --set output_dir=...")
    parser.add_argument("--stages", default="1,2,3,4", help="stages to run, in order (e.g. 2,3,4 starts from stage-1)")
    parser.add_argument(
        "--init-from", help="model folder the first stage starts from (default OUTPUT_DIR/stage-<first-1>)"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CHECKPOINT",
        help="continue from the latest checkpoint in OUTPUT_DIR/checkpoints (or from CHECKPOINT)",
    )
    parser.add_argument("--overwrite", action="store_true", help="start afresh in an OUTPUT_DIR that holds a run")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="publish OUTPUT_DIR/final with srn_hf.hub at the end")
    return parser.parse_args(argv)


def parse_stages(text: str) -> list[int]:
    try:
        stages = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise RecipeError(f"--stages {text!r}: expected stage numbers such as 1,2,3,4") from None
    if not stages or any(stage not in STAGES for stage in stages) or stages != sorted(set(stages)):
        raise RecipeError(f"--stages {text!r}: expected increasing stage numbers among {sorted(STAGES)}")
    return stages


# ---------------------------------------------------------------------------------------------------------------
# The run's state: `Progress` is what a checkpoint saves beside Accelerate's state (progress.json), `Run` what every
# step below reads, `StageRun` one stage's prepared model, optimizer and data loaders.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where the run stands; saved as progress.json in every checkpoint.

    Attributes:
        signature: the run's label names and recipe, which a run resuming it must share, but for the fields
            `srn_hf.recipe.resume_changes` lets change ([`run_signature`]).
        stage, epoch, step: the stage, the epoch (0-based) and the batch of that epoch to continue from; epoch 0,
            batch 0 of a stage with `lr_search` is a checkpoint of its search ([`search_learning_rate`]).
        records: `{"<stage>": record}`, each stage's history, best epoch and figures (metrics.json's `stages`).
        epoch_loss: the current epoch's loss summed over all processes' batches, and how many were summed, at a
            mid-epoch checkpoint (so that a resumed epoch reports its loss whole).
        recipe_changes: each resume that changed the recipe: where (checkpoint, stage, epoch, step) and what
            (`{key: [old, new]}`); metrics.json's `recipe_changes`, the model card's too.
    """

    signature: dict
    stage: int
    epoch: int = 0
    step: int = 0
    records: dict[str, dict] = field(default_factory=dict)
    epoch_loss: tuple[float, int] | None = None
    recipe_changes: list[dict] = field(default_factory=list)

    def move_to(self, stage: int, epoch: int = 0, step: int = 0) -> None:
        """Records that the run continues from batch `step` of epoch `epoch` (0-based) of stage `stage`."""
        self.stage, self.epoch, self.step = stage, epoch, step


@dataclass
class Run:
    """What the steps share, set once by [`set_up`]; only `progress` and `checkpoint` change as the run goes."""

    args: argparse.Namespace
    recipe: Recipe
    stages: list[int]
    output_dir: Path
    accelerator: Accelerator
    dataset: DatasetDict  # with its transforms (torchvision augmentation on train, the image processor elsewhere)
    names: list[str]
    image_check: dict  # what `check_images` found before training: checked, bad and skipped images per split
    splits: dict  # which images are in each split (`split_record`): OUTPUT_DIR/splits.json and every exported folder's
    model: SRNForImageClassification
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # L(logits, labels) of the recipe's `loss`
    train_data: EpochSeededDataset
    train_as_evaluated: Dataset  # the training images with the evaluation transform, for their frozen backbone maps
    backbone_maps: BackboneMaps | None  # what stages 2 and 3 train on (`training.frozen_maps_mb`), once computed
    eval_loaders: dict[str, DataLoader]
    map_cache: BackboneMapCache  # X and F of the evaluation images while the backbone's weights stay the same
    progress: Progress
    checkpoint: Path | None  # the checkpoint to resume from, until its stage has restored it


@dataclass
class StageRun:
    """One stage, prepared: its table entry and recipe, its record, and what `accelerator.prepare` returned."""

    stage: Stage
    recipe: StageRecipe
    record: dict
    folder: Path  # OUTPUT_DIR/stage-N
    trained: list[str]
    model: torch.nn.Module  # the prepared StageForward
    optimizer: torch.optim.Optimizer
    scheduler: object  # accelerate's AcceleratedScheduler
    optimizer_steps: int  # over the stage's epochs: the scheduler's length
    train_loader: DataLoader
    validation_loader: DataLoader
    test_loader: DataLoader
    lr_trial: bool = False  # the first epoch at one rate of the stage's `lr_search`: no mid-epoch checkpoint
    ema: ModelEmaV3 | None = None  # the moving average of the weights (`ema_decay`), timm's, updated every step


def main(argv=None) -> dict:
    """The run, step by step: set-up and checks (with the checkpoint to resume from), then for each stage its
    preparation, training and evaluation, then the report. Returns the report (metrics.json's content)."""
    args = parse_args(argv)
    recipe = load_recipe(args.config, args.set + ([f"output_dir={args.output_dir}"] if args.output_dir else []))
    accelerator = create_accelerator(recipe, Path(recipe.output_dir))
    # One run at a time in OUTPUT_DIR: another is refused at once; the kernel drops the lock when a run dies.
    with checkpoints.hold_output_dir(recipe.output_dir, holder=accelerator.is_main_process):
        run = set_up(args, recipe, accelerator)
        for number in run.stages:
            if number < run.progress.stage:
                continue  # finished before the checkpoint we resume from
            search_learning_rate(run, number)
            stage_run = prepare_stage(run, number)
            train_stage(run, stage_run)
            evaluate_stage(run, stage_run)
            run.progress.move_to(number + 1)
        report = write_report(run)
        publish_final(run)
    return report


# ---------------------------------------------------------------------------------------------------------------
# Set-up and checks: everything that can be wrong is checked before the first step (data, labels, checkpoint,
# starting model).
# ---------------------------------------------------------------------------------------------------------------


def set_up(args: argparse.Namespace, recipe: Recipe, accelerator: Accelerator) -> Run:
    """The model choices, the data, the checkpoint to resume from and the starting model."""
    model_choices = derive_model_choices(recipe.model)  # `auto` X, F and layout: the backbone's
    stages = parse_stages(args.stages)
    output_dir = Path(recipe.output_dir)
    # Same seed on every process: the same initial weights everywhere (DDP also broadcasts them at `prepare`).
    set_seed(recipe.seed)
    accelerator.print(model_choices)

    dataset = load_data(recipe, accelerator)
    dataset, image_check = check_dataset_images(recipe, dataset, accelerator, output_dir)
    names = label_names(dataset)
    summary = split_summary(dataset)  # positives per label and split, from the labels (before the transforms)
    splits = record_splits(recipe, dataset, accelerator, output_dir)
    check_batch_sizes(recipe, stages, len(dataset["train"]))
    signature = run_signature(recipe, names)
    checkpoint, progress = find_resume_point(args, recipe, signature, stages, accelerator)
    model = initial_model(recipe, names, stages[0], args.init_from, output_dir)
    if recipe.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if recipe.training.gradient_checkpointing:  # once, for every stage: the backward pass recomputes the activations
        enable_activation_checkpointing(model)
    # Training crops and flips with torchvision; validation and test use the image processor saved with the model.
    image_processor = create_image_processor(model.config)
    train_as_evaluated = with_multilabel_transforms(dataset, image_processor=image_processor, train_splits=())["train"]
    dataset = with_multilabel_transforms(dataset, image_processor=image_processor, augment=recipe.data.augment)
    eval_loaders = {
        split: DataLoader(
            dataset[split],
            batch_size=recipe.training.eval_batch_size,
            collate_fn=collate_multilabel,
            num_workers=recipe.data.num_workers,
        )
        for split in ("validation", "test")
        if split in dataset
    }
    # The trackers (TensorBoard) get the whole recipe as hyper-parameters; they log on the main process only.
    accelerator.init_trackers("srn", config=flat_dict(recipe.to_dict()))
    accelerator.print(
        f"SRN on {recipe.data.kind}: {len(names)} labels, splits {dict(dataset.num_rows)}, stages {stages}"
    )
    accelerator.print(summary)
    return Run(
        args=args,
        recipe=recipe,
        stages=stages,
        output_dir=output_dir,
        accelerator=accelerator,
        dataset=dataset,
        names=names,
        image_check=image_check,
        splits=splits,
        model=model,
        loss_fn=make_loss(**vars(recipe.loss)),
        train_data=EpochSeededDataset(dataset["train"], recipe.seed),
        train_as_evaluated=train_as_evaluated,
        backbone_maps=None,
        eval_loaders=eval_loaders,
        map_cache=BackboneMapCache(recipe.training.eval_map_cache_mb),
        progress=progress or Progress(signature=signature, stage=stages[0]),
        checkpoint=checkpoint,
    )


def create_accelerator(recipe, output_dir: Path) -> Accelerator:
    """The Accelerator of the run: precision, trackers, numbered checkpoints, a seeded sampler."""
    training = recipe.training
    log_with = training.log_with
    if log_with == "auto":
        log_with = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    return Accelerator(
        mixed_precision=training.mixed_precision,  # autocast in the prepared model's forward, a grad scaler for fp16
        log_with=None if log_with == "none" else log_with,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir),
            logging_dir=str(output_dir / "logs"),
            # srn_hf.checkpoints names, writes and rotates the checkpoints (Accelerate's own `total_limit` would delete
            # the oldest before the new one is complete).
            automatic_checkpoint_naming=False,
        ),
        # The shuffling sampler is seeded by (data_seed, epoch): a resumed run draws the batches the unbroken one drew.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.seed),
    )


def load_data(recipe, accelerator: Accelerator):
    """The DatasetDict of the recipe (stamp scenes with `generate: true` are generated on first use, by the main
    process)."""
    data = recipe.data
    # The main process loads (and for the demo, generates) the dataset first; the others then read its cache.
    with accelerator.main_process_first():
        dataset = load_multilabel_dataset(data.kind, **data.options)
    for split, option in (("train", None), ("validation", "validation_fraction")):
        if split not in dataset:
            hold_out = f"; hold one out of train with data.options.{option} (docs/data.md)" if option else ""
            raise ValueError(f"dataset {data.kind!r} has no {split!r} split (splits: {list(dataset)}){hold_out}")
    if "test" not in dataset:
        accelerator.print(
            f"dataset {data.kind!r} has no test split: {NOT_MEASURED_WITHOUT_TEST} will not be measured "
            "(data.options.test_fraction holds one out of train)"
        )
    limits = {"train": data.max_train_samples, "validation": data.max_eval_samples, "test": data.max_eval_samples}
    for split, limit in limits.items():
        if split in dataset and limit is not None and limit < len(dataset[split]):
            dataset[split] = dataset[split].select(range(limit))
    return dataset


# What a run without a test split cannot report (said in the log and in metrics.json).
NOT_MEASURED_WITHOUT_TEST = (
    "the test metrics, the test figures at the tuned thresholds, the gain over stage 1 and the pointing game"
)


def check_dataset_images(recipe, dataset: DatasetDict, accelerator: Accelerator, output_dir: Path):
    """Decodes every image of every split before the first step, in worker processes; `data.bad_images` decides
    whether a bad one stops the run (naming the files, all of them in OUTPUT_DIR/bad_images.tsv) or is skipped."""
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    dataset, report = check_images(
        dataset,
        policy=recipe.data.bad_images,
        num_workers=recipe.data.num_workers or os.cpu_count(),
        report_file=output_dir / "bad_images.tsv",
        accelerator=accelerator,
    )
    if report["skipped"]:
        accelerator.print(
            f"skipped {report['skipped']} image(s) that cannot be decoded ({report['bad']}), listed in "
            f"{output_dir / 'bad_images.tsv'}"
        )
    return dataset, report


def record_splits(recipe, dataset: DatasetDict, accelerator: Accelerator, output_dir: Path) -> dict:
    """Which images the run trains, validates and tests on, in OUTPUT_DIR/splits.json (and in every exported folder,
    [`export`]): `srn-hf calibrate` then tunes thresholds on the run's validation images and refuses the others."""
    splits = split_record(dataset, recipe.data.kind, recipe.data.options)
    if accelerator.is_main_process:
        write_splits_file(output_dir, splits)
    return splits


def run_signature(recipe, names: list[str]) -> dict:
    """What a checkpoint holds of its run, for a run resuming it: the label names (the same) and the recipe (the same
    but for the fields `resume_changes` lets change)."""
    return {"label_names": names, "recipe": flat_dict(recipe.to_dict())}


def check_batch_sizes(recipe, stages: list[int], train_images: int) -> None:
    """Refuses batches of one image where a batch norm trains on them: f_sr's whole-map convolution leaves one value
    per channel and image, which batch norm cannot normalise over a batch of one (a last batch of one is dropped
    instead, `prepare_stage`)."""
    if train_images < 2:
        raise RecipeError(f"the train split has {train_images} image(s): training needs at least 2 per batch")
    for number in stages:
        trains_norm = "spatial_regularization" in STAGES[number].trained and recipe.model.use_batch_norm
        if trains_norm and recipe.stage(number).batch_size < 2:
            raise RecipeError(
                f"stage{number}.batch_size: {recipe.stage(number).batch_size}: stage {number} trains f_sr, whose batch "
                "norm needs at least 2 images per batch"
            )


def initial_model(recipe, names: list[str], first_stage: int, init_from: str | None, output_dir: Path):
    """Stage 1: a new SRN with ImageNet backbone weights. A later first stage: the previous stage's export."""
    id2label = dict(enumerate(names))
    if first_stage > 1:
        source = Path(init_from or output_dir / f"stage-{first_stage - 1}")
        return previous_stage_model(recipe, id2label, source, first_stage)
    if init_from:
        raise ValueError("--init-from is for runs that start after stage 1 (--stages 2,3,4)")
    config_fields = dataclasses.asdict(recipe.model)
    weights = config_fields.pop("pretrained_weights")  # every other key of the model section is an SRNConfig field
    model = SRNForImageClassification(SRNConfig(**config_fields, id2label=id2label))
    load_imagenet_backbone(model, weights)  # refused in one line naming model.pretrained_weights if it cannot be had
    return model


def previous_stage_model(recipe, id2label: dict, source: Path, first_stage: int) -> SRNForImageClassification:
    """The model exported by an earlier stage, refused if its network is not the recipe's `model` section."""
    if not (source / "config.json").exists():
        raise ValueError(
            f"stage {first_stage} starts from {source}, which holds no model (config.json); "
            f"run stage {first_stage - 1} first or pass --init-from"
        )
    model = SRNForImageClassification.from_pretrained(source, id2label=id2label)  # raises on another label set
    for key in network_fields():
        if getattr(model.config, key) != getattr(recipe.model, key):
            raise ValueError(
                f"{source} has {key}={getattr(model.config, key)!r}, "
                f"the recipe model.{key}={getattr(recipe.model, key)!r}"
            )
    return model


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: finding, saving and restoring them (Accelerate's `save_state` folder plus progress.json).
# ---------------------------------------------------------------------------------------------------------------


def read_progress(checkpoint: Path, saved: dict, signature: dict, recipe: Recipe) -> Progress:
    """The checkpoint's progress.json (`saved`), refused if the checkpoint belongs to another run (other labels) or
    the recipe changed a field `--resume` may not change; the changes allowed are recorded (docs/faults.md)."""
    progress = Progress(**saved)
    if progress.signature.get("label_names") != signature["label_names"]:
        raise ValueError(
            f"checkpoint {checkpoint} belongs to another run: its label_names are "
            f"{progress.signature.get('label_names')!r}, this run's are {signature['label_names']!r}. "
            "Resume with the data it was trained on, or use another --output-dir"
        )
    if "recipe" not in progress.signature:
        raise ValueError(
            f"checkpoint {checkpoint} holds no recipe (written by an older srn_hf): start afresh with --overwrite"
        )
    changes = resume_changes(progress.signature["recipe"], signature["recipe"], progress.stage, checkpoint)
    epochs = recipe.stage(progress.stage).epochs
    if epochs < progress.epoch + (progress.step > 0):
        raise RecipeError(
            f"stage{progress.stage}.epochs: {epochs}: checkpoint {checkpoint} has trained {progress.epoch} epoch(s) "
            f"and {progress.step} batch(es) of stage {progress.stage} already"
        )
    if changes:
        progress.recipe_changes.append(
            {
                "checkpoint": checkpoint.name,
                "stage": progress.stage,
                "epoch": progress.epoch,
                "step": progress.step,
                "changes": changes,
            }
        )
    progress.signature = signature  # the checkpoints this run writes carry the recipe it now trains with
    return progress


def find_resume_point(
    args, recipe: Recipe, signature: dict, stages: list[int], accelerator: Accelerator
) -> tuple[Path | None, Progress | None]:
    """With --resume, the checkpoint and its progress; without, a check that OUTPUT_DIR holds no other run."""
    output_dir = Path(recipe.output_dir)
    if not args.resume:
        if (output_dir / "checkpoints").exists() and not args.overwrite:
            raise ValueError(
                f"{output_dir} already holds a run: pass --resume to continue it or --overwrite to start afresh"
            )
        return None, None
    # The newest checkpoint that loads; the message names the newer ones skipped (a killed save, a truncated file).
    checkpoint, saved, message = checkpoints.choose_checkpoint(output_dir / "checkpoints", args.resume)
    accelerator.print(message)
    if checkpoint is None:
        return None, None
    progress = read_progress(checkpoint, saved, signature, recipe)
    if progress.stage not in stages:
        raise ValueError(f"checkpoint {checkpoint} is in stage {progress.stage}, not among --stages {args.stages}")
    return checkpoint, progress


def save_checkpoint(run: Run, stage_number: int, epoch: int, step: int, ema: ModelEmaV3 | None = None) -> None:
    """Saves the run at (stage, epoch, batch): Accelerate's state of everything prepared, progress.json, and the
    stage's moving average of the weights (`ema`) when it keeps one."""
    run.progress.move_to(stage_number, epoch, step)
    # Model, optimizer, scheduler, sampler and RNG states of every process, and progress.json, into the next
    # checkpoint_<i> folder, renamed into place when complete; then the oldest beyond the limit are deleted.
    checkpoints.save_checkpoint(
        run.accelerator,
        run.output_dir / "checkpoints",
        dataclasses.asdict(run.progress),
        total_limit=run.recipe.training.checkpoints_total_limit,
        weights=ema_weights(ema),
    )


# A checkpoint's moving average of the weights (`stageN.ema_decay`), beside Accelerate's state.
EMA_NAME = "ema"


def ema_weights(ema: ModelEmaV3 | None) -> dict[str, dict]:
    """What [`checkpoints.save_checkpoint`] keeps of a stage's moving average: its weights, or nothing without one."""
    return {} if ema is None else {EMA_NAME: ema.module.state_dict()}


def restore_ema(stage_run: StageRun, checkpoint: Path) -> None:
    """After `load_state` of `checkpoint`: the stage's moving average as that checkpoint saved it."""
    if stage_run.ema is not None:
        stage_run.ema.module.load_state_dict(load_file(checkpoint / f"{EMA_NAME}.safetensors"))


@contextmanager
def averaged_weights(model: torch.nn.Module, ema: ModelEmaV3) -> Iterator[None]:
    """`model` holds the moving average's weights inside the block, its own again after it."""
    own = {key: value.clone() for key, value in model.state_dict().items()}
    model.load_state_dict(ema.module.state_dict())
    try:
        yield
    finally:
        model.load_state_dict(own)


def resume_stage(run: Run, stage_run: StageRun) -> tuple[int, int]:
    """The epoch and batch the stage starts from: (0, 0), or the checkpoint's when the run resumes in this stage."""
    if run.checkpoint is None or stage_run.stage.number != run.progress.stage:
        return 0, 0
    accelerator, checkpoint = run.accelerator, run.checkpoint
    # The recipe's optimizer settings (learning rates, weight decay, momentum), before the checkpoint's replace them.
    settings = [
        {key: value for key, value in group.items() if key not in ("params", "lr")}
        for group in stage_run.optimizer.param_groups
    ]
    # Restores what `prepare` returned (weights, optimizer, scheduler, sampler) and every process's RNG state.
    accelerator.load_state(str(checkpoint))
    restore_ema(stage_run, checkpoint)
    apply_recipe_rates(stage_run, settings)
    run.checkpoint = None
    progress = run.progress
    accelerator.print(
        f"resumed {checkpoint}: stage {progress.stage}, epoch {progress.epoch + 1}, batch {progress.step}"
    )
    for change in progress.recipe_changes[-1:]:
        if change["checkpoint"] == checkpoint.name:
            accelerator.print(
                "changed on --resume, applied from here: "
                + ", ".join(f"{key} {old} -> {new}" for key, (old, new) in change["changes"].items())
            )
    return progress.epoch, progress.step


def apply_recipe_rates(stage_run: StageRun, settings: list[dict]) -> None:
    """After `load_state`: the optimizer keeps the checkpoint's state (momentum, Adam's moments) with the recipe's
    settings (`settings`, each group's), and the scheduler is rebuilt from the recipe (schedule, warm-up, epochs)
    and brought to the checkpoint's step, so that a learning rate or a number of epochs changed on --resume applies
    (unchanged, it gives the rates the checkpoint's scheduler would have)."""
    optimizer = stage_run.optimizer.optimizer  # inside accelerate's AcceleratedOptimizer
    for group, recipe_settings in zip(optimizer.param_groups, settings):
        group.update(recipe_settings, lr=recipe_settings["initial_lr"])
    steps_done = stage_run.scheduler.scheduler.last_epoch  # the checkpoint's scheduler steps
    scheduler = make_scheduler(stage_run.recipe, optimizer, stage_run.optimizer_steps)
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": no training step is taken here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps_done):
            scheduler.step()
    stage_run.scheduler.scheduler = scheduler  # what AcceleratedScheduler steps and checkpoints from now on


# ---------------------------------------------------------------------------------------------------------------
# One stage's training: freeze what it does not train, prepare, train epoch by epoch, keep the best epoch.
# ---------------------------------------------------------------------------------------------------------------


def stage_record(run: Run, number: int) -> dict:
    """Stage `number`'s record in the run's progress (metrics.json's `stages`), new and empty before it trains."""
    return run.progress.records.setdefault(
        str(number),
        {"stage": number, "prediction": STAGES[number].prediction, "history": [], "best_epoch": None, "best_mAP": None},
    )


def with_lr(stage_recipe: StageRecipe, lr: float) -> StageRecipe:
    """The stage's recipe at learning rate `lr`, its `backbone_lr` (when set) at the same ratio to `lr`."""
    backbone_lr = None if stage_recipe.backbone_lr is None else stage_recipe.backbone_lr * lr / stage_recipe.lr
    return dataclasses.replace(stage_recipe, lr=lr, backbone_lr=backbone_lr)


def prepare_stage(run: Run, number: int, lr_trial: float | None = None) -> StageRun:
    """Freezes what stage `number` does not train, and prepares its model, optimizer, scheduler and data loaders: at
    the recipe's learning rate, the one its `lr_search` chose, or (`lr_trial`) a rate of that search."""
    accelerator, stage, stage_recipe = run.accelerator, STAGES[number], run.recipe.stage(number)
    record = stage_record(run, number)
    lr = lr_trial or record.get("lr_search", {}).get("chosen_lr")
    if lr is not None:
        stage_recipe = with_lr(stage_recipe, lr)
    # The frozen backbone's maps first: their loader is prepared only for this pass, and dropped with the rest here.
    maps = frozen_backbone_maps(run, number) if stage.backbone_frozen and stage_recipe.epochs else None
    # Drops the previous stage's prepared objects (and DDP wrapper): `requires_grad` must be set before `prepare`.
    accelerator.free_memory()
    trainable = apply_stage(run.model, stage)
    optimizer = build_optimizer({name: getattr(srn_of(run.model), name) for name in trainable}, stage_recipe)
    # A last batch of one image is dropped: f_sr's batch norm cannot normalise one value per channel. (Across
    # processes, Accelerate fills every process's last batch with images from the start of the epoch.)
    drop_last = accelerator.num_processes == 1 and len(run.train_data) % stage_recipe.batch_size == 1
    if drop_last:
        accelerator.print(
            f"stage {number}: the last batch of each epoch ({len(run.train_data)} images, batch "
            f"{stage_recipe.batch_size}) would hold one image: it is left out"
        )
    train_loader = DataLoader(
        run.train_data if maps is None else maps,
        batch_size=stage_recipe.batch_size,
        shuffle=True,
        drop_last=drop_last,
        collate_fn=collate_multilabel if maps is None else None,  # the maps' rows: torch's default collation
        num_workers=run.recipe.data.num_workers if maps is None else 0,
    )
    # `accumulate()` below then steps the optimizer every this many batches only.
    accelerator.gradient_accumulation_steps = stage_recipe.gradient_accumulation_steps
    optimizer_steps = stage_recipe.epochs * math.ceil(len(train_loader) / stage_recipe.gradient_accumulation_steps)
    scheduler = make_scheduler(stage_recipe, optimizer, optimizer_steps)
    # Wraps the model (DDP across processes, autocast), shards the loaders per process, moves all to the device.
    stage_model, optimizer, train_loader, scheduler, validation_loader, *test_loader = accelerator.prepare(
        StageForward(run.model, stage, run.map_cache),
        optimizer,
        train_loader,
        scheduler,
        *run.eval_loaders.values(),
    )
    test_loader = test_loader[0] if test_loader else None  # a dataset without a test split has none
    # timm's moving average with its warm-up (the decay grows with the steps up to `ema_decay`), as timm's train
    # script and its tasks keep it: a copy of the whole model, starting from the stage's starting weights.
    ema = ModelEmaV3(run.model, decay=stage_recipe.ema_decay, use_warmup=True) if stage_recipe.ema_decay else None
    return StageRun(
        stage=stage,
        recipe=stage_recipe,
        record=record,
        folder=run.output_dir / f"stage-{number}",
        trained=list(trainable),
        model=stage_model,
        optimizer=optimizer,
        scheduler=scheduler,
        optimizer_steps=optimizer_steps,
        train_loader=train_loader,
        validation_loader=validation_loader,
        test_loader=test_loader,
        lr_trial=lr_trial is not None,
        ema=ema,
    )


def frozen_backbone_maps(run: Run, number: int) -> BackboneMaps | None:
    """X and F of every training image under the backbone stage `number` freezes (stages 2 and 3), computed once
    with the evaluation transform and kept while the backbone's weights stay the same; None when the recipe keeps
    none (`training.frozen_maps_mb: 0`) or they would take more than it allows (said once, with their size). A run
    resumed in this stage takes the checkpoint's weights first (`load_state` restores the rest later)."""
    limit = run.recipe.training.frozen_maps_mb * 2**20
    if not limit:
        return None
    if run.checkpoint is not None and run.progress.stage == number:
        saved = load_file(run.checkpoint / "model.safetensors")  # the prepared StageForward's: keys `model.<name>`
        run.model.load_state_dict({key.removeprefix("model."): value for key, value in saved.items()})
    accelerator, srn = run.accelerator, srn_of(run.model)
    digest = tensor_digest(srn.backbone.state_dict().values())
    if run.backbone_maps is not None and run.backbone_maps.weights_digest == digest:
        return run.backbone_maps
    loader = accelerator.prepare(
        DataLoader(
            run.train_as_evaluated, batch_size=run.recipe.training.eval_batch_size, collate_fn=collate_multilabel
        )
    )
    srn.eval()
    maps, labels = [], []
    with torch.no_grad(), accelerator.autocast():
        for batch in tqdm(
            loader, desc="backbone maps of the training images", disable=not accelerator.is_local_main_process
        ):
            pixel_values = batch["pixel_values"]
            if run.recipe.training.channels_last:
                pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
            features, classifier_features = srn.forward_backbone(pixel_values)
            kept = (features,) if classifier_features is features else (features, classifier_features)
            size = sum(tensor.nbytes for tensor in kept) * len(run.train_as_evaluated) / len(features)
            if size > limit:
                accelerator.print(
                    f"stages 2 and 3 train on images: the training images' backbone maps would take "
                    f"{size / 2**20:.0f} MB, more than training.frozen_maps_mb ({limit / 2**20:g})"
                )
                return None
            gathered = accelerator.gather_for_metrics((kept, batch["labels"]))
            maps.append([tensor.cpu() for tensor in gathered[0]])
            labels.append(gathered[1].cpu())
    columns = [torch.cat(column) for column in zip(*maps)]
    run.backbone_maps = BackboneMaps(columns[0], columns[1] if len(columns) > 1 else None, torch.cat(labels), digest)
    return run.backbone_maps


def make_scheduler(stage_recipe, optimizer: torch.optim.Optimizer, optimizer_steps: int):
    """The stage's learning-rate schedule over its `optimizer_steps`, from each group's `initial_lr` (else `lr`)."""
    return get_scheduler(
        stage_recipe.schedule,
        optimizer,
        num_warmup_steps=round(stage_recipe.warmup_ratio * optimizer_steps),
        num_training_steps=max(optimizer_steps, 1),
    )


# The recipe's optimizer names by timm's: `sgd` is classical momentum (timm's own `sgd` is Nesterov's).
TIMM_OPTIMIZERS = {"sgd": "momentum", "adamw": "adamw"}


def build_optimizer(trainable: dict[str, torch.nn.Module], stage_recipe) -> torch.optim.Optimizer:
    """timm's `create_optimizer_v2` over the stage's trained modules: per module, timm's weight-decay groups (no decay
    on biases and other 1-d weights, `param_groups_weight_decay`), the backbone's at `backbone_lr`."""
    groups = []
    for name, module in trainable.items():
        lr = (
            stage_recipe.backbone_lr if name == "backbone" and stage_recipe.backbone_lr is not None else stage_recipe.lr
        )
        groups += [{**group, "lr": lr} for group in param_groups_weight_decay(module, stage_recipe.weight_decay)]
    return create_optimizer_v2(
        groups, TIMM_OPTIMIZERS[stage_recipe.optimizer], lr=stage_recipe.lr, momentum=stage_recipe.momentum
    )


# The learning-rate search of a stage (`lr_search`): its start weights and each rate's state after one epoch.
LR_SEARCH_DIR = "lr-search"


def search_learning_rate(run: Run, number: int) -> None:
    """Stage `number`'s `lr_search`: each rate trains the stage's first epoch from the same weights and is scored on
    the validation split; the best becomes the stage's `lr`, and [`continue_chosen_trial`] goes on from the end of
    its first epoch. The figures go to the stage's record (`lr_search`) and are printed before the stage goes on.

    OUTPUT_DIR/lr-search keeps the start weights and each rate's state after its epoch; a checkpoint after each rate
    records its figures, so a resumed run trains only the rates not tried yet. Nothing to do without `lr_search`,
    at `epochs: 0`, or when the search is done.
    """
    accelerator, stage_recipe, record = run.accelerator, run.recipe.stage(number), stage_record(run, number)
    if not stage_recipe.lr_search or not stage_recipe.epochs or "chosen_lr" in record.get("lr_search", {}):
        return
    search = record.setdefault("lr_search", {"trials": []})
    run.checkpoint = None  # a checkpoint of this search: its figures are in the progress, its states in lr-search
    start = run.output_dir / LR_SEARCH_DIR / "start"
    if not search["trials"] and accelerator.is_main_process:  # a new search: the weights every rate starts from
        with atomic_folder(start) as partial:
            save_file(
                {key: value.contiguous() for key, value in run.model.state_dict().items()},
                partial / "model.safetensors",
            )
    accelerator.wait_for_everyone()
    if not (start / "model.safetensors").is_file():  # a checkpoint of a search that ended: its states are gone
        raise ValueError(
            f"the checkpoint resumed from is one of stage {number}'s learning-rate search, which has ended ({start} "
            "was removed when the stage went on): resume from a later checkpoint"
        )
    start_weights = load_file(start / "model.safetensors")
    tried = [trial["lr"] for trial in search["trials"]]
    for lr in (lr for lr in stage_recipe.lr_search if lr not in tried):
        run.model.load_state_dict(start_weights)
        trial_run = prepare_stage(run, number, lr_trial=lr)
        train_loss = train_epoch(run, trial_run, 0)
        metrics = score_split(run, trial_run, trial_run.validation_loader)[0]
        checkpoints.save_checkpoint(
            accelerator, trial_folder(run, lr), {"lr": lr}, total_limit=1, weights=ema_weights(trial_run.ema)
        )
        search["trials"].append({"lr": lr, "train_loss": train_loss, "validation_mAP": metrics["mAP"]})
        accelerator.print(
            f"stage {number} learning-rate search, lr {lr:g}: epoch 1 loss {train_loss:.4f}, "
            f"validation mAP {metrics['mAP']:.2f}"
        )
        save_checkpoint(run, number, 0, 0)
    best = max(search["trials"], key=lambda trial: trial["validation_mAP"])
    search["chosen_lr"] = best["lr"]
    accelerator.print(
        f"stage {number}: lr {best['lr']:g} chosen on the validation split after one epoch at each rate ("
        + ", ".join(f"{trial['lr']:g}: mAP {trial['validation_mAP']:.2f}" for trial in search["trials"])
        + f"); it goes on for the other {stage_recipe.epochs - 1} epoch(s)"
    )


def trial_folder(run: Run, lr: float) -> Path:
    """Where the learning-rate search keeps the state of rate `lr` after its epoch (a checkpoint folder)."""
    return run.output_dir / LR_SEARCH_DIR / f"lr-{lr:g}"


def continue_chosen_trial(run: Run, stage_run: StageRun) -> int:
    """The stage from the end of the first epoch at the rate its search chose: that state restored (weights,
    optimizer, scheduler, sampler), the epoch validated (and exported when best) and checkpointed; the search's
    folder is then removed. Returns the epoch to continue from (1)."""
    search = stage_run.record["lr_search"]
    trial = next(trial for trial in search["trials"] if trial["lr"] == search["chosen_lr"])
    trial_state = checkpoints.list_checkpoints(trial_folder(run, trial["lr"]))[-1]
    run.accelerator.load_state(str(trial_state))
    restore_ema(stage_run, trial_state)
    validate_epoch(run, stage_run, 0, trial["train_loss"])
    save_checkpoint(run, stage_run.stage.number, 1, 0, stage_run.ema)
    if run.accelerator.is_main_process:
        remove_folder(run.output_dir / LR_SEARCH_DIR)
    return 1


def train_stage(run: Run, stage_run: StageRun) -> None:
    """The stage's epochs (from the checkpoint's epoch and batch when the run resumes in this stage), each one
    validated and checkpointed."""
    start_epoch, start_step = resume_stage(run, stage_run)
    run.accelerator.print(
        f"\n== stage {stage_run.stage.number}: trains {', '.join(stage_run.trained)}; "
        f"loss on {', '.join(stage_run.stage.loss_terms)}"
        + f", at the learning rate its search chose ({stage_run.recipe.lr:g})"
        * ("lr_search" in stage_run.record)
    )
    if "lr_search" in stage_run.record and (start_epoch, start_step) == (0, 0) and stage_run.recipe.epochs:
        start_epoch = continue_chosen_trial(run, stage_run)
    for epoch in range(start_epoch, stage_run.recipe.epochs):
        train_loss = train_epoch(run, stage_run, epoch, start_step if epoch == start_epoch else 0)
        validate_epoch(run, stage_run, epoch, train_loss)
        save_checkpoint(run, stage_run.stage.number, epoch + 1, 0, stage_run.ema)


def train_epoch(run: Run, stage_run: StageRun, epoch: int, start_step: int = 0) -> float:
    """One epoch of the stage (from batch `start_step` when resumed); returns its mean training loss."""
    accelerator, number, epochs = run.accelerator, stage_run.stage.number, stage_run.recipe.epochs
    run.train_data.set_epoch(epoch)  # the augmentation's seed
    stage_run.train_loader.set_epoch(epoch)  # the seedable sampler's shuffle
    set_train_mode(stage_run.model, stage_run.stage)
    # A resumed epoch skips the batches trained before the checkpoint (the sampler draws the same order).
    batches = skip_first_batches(stage_run.train_loader, start_step) if start_step else stage_run.train_loader
    # The epoch's loss summed over all processes' batches (kept in checkpoints, so resumed epochs report it whole).
    total_loss, seen = run.progress.epoch_loss or (0.0, 0) if start_step else (0.0, 0)
    bar = tqdm(
        batches,
        desc=f"stage {number}{f' lr {stage_run.recipe.lr:g}' * stage_run.lr_trial} epoch {epoch + 1}/{epochs}",
        initial=start_step,
        total=len(stage_run.train_loader),
        disable=not accelerator.is_local_main_process,
    )
    every = run.recipe.training.checkpoint_every_steps
    accumulation, updates_per_epoch = stage_run.recipe.gradient_accumulation_steps, stage_run.optimizer_steps // epochs
    for step, batch in enumerate(bar, start=start_step):
        inputs = {key: value for key, value in batch.items() if key != "labels"}  # images, or their frozen maps
        if run.recipe.training.channels_last and "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
        # Under `accumulate`, DDP syncs gradients and the optimizer steps only every `gradient_accumulation_steps`.
        with accelerator.accumulate(stage_run.model):
            loss = stage_loss(stage_run.model(**inputs), batch["labels"], stage_run.stage, run.loss_fn)
            summed_loss = accelerator.reduce(loss.detach(), "sum").item()  # over processes: NaN if any diverged
            check_finite(run, stage_run, summed_loss, loss, epoch, step)
            accelerator.backward(loss)  # scales the loss for fp16 and for gradient accumulation
            stage_run.optimizer.step()
            stage_run.scheduler.step()
            stage_run.optimizer.zero_grad()
        if stage_run.ema is not None and accelerator.sync_gradients:  # after each optimizer step, numbered from 1
            stage_run.ema.update(run.model, step=epoch * updates_per_epoch + math.ceil((step + 1) / accumulation))
        total_loss, seen = total_loss + summed_loss, seen + accelerator.num_processes
        bar.set_postfix(loss=f"{loss.item():.4f}")
        # `sync_gradients`: this batch ended an accumulation window, so the optimizer state is whole.
        if (
            every
            and not stage_run.lr_trial
            and accelerator.sync_gradients
            and (step + 1) % every == 0
            and step + 1 < len(stage_run.train_loader)
        ):
            run.progress.epoch_loss = (total_loss, seen)
            save_checkpoint(run, number, epoch, step + 1, stage_run.ema)
    return total_loss / max(seen, 1)


def check_finite(run: Run, stage_run: StageRun, summed_loss: float, loss: torch.Tensor, epoch: int, step: int) -> None:
    """Stops the run with [`TrainingDiverged`] when the loss of any process is NaN or infinite."""
    if not math.isfinite(summed_loss):
        raise diverged(run, stage_run, f"epoch {epoch + 1}, batch {step}: the loss is {loss.item()}")


def diverged(run: Run, stage_run: StageRun, what: str) -> TrainingDiverged:
    """The error of a stage whose loss or scores went NaN or infinite (`what`), naming its learning rates and what to
    do: change them and resume from the last good checkpoint, or, with none, run again."""
    number, recipe, precision = stage_run.stage.number, stage_run.recipe, run.recipe.training.mixed_precision
    rates = {f"stage{number}.lr": recipe.lr}
    if "backbone" in stage_run.trained and recipe.backbone_lr is not None:
        rates[f"stage{number}.backbone_lr"] = recipe.backbone_lr
    change = (
        "lower " + " or ".join(rates) + f" (or set training.mixed_precision=no, now {precision})" * (precision != "no")
    )
    checkpoints_dir = run.output_dir / "checkpoints"
    checkpoint = checkpoints.find_resumable_checkpoint(checkpoints_dir)[0]
    if checkpoint is None:  # --resume would start afresh at the same rates: say what to change instead
        then = f"no checkpoint to resume from: {change} and run again" + " with --overwrite" * checkpoints_dir.exists()
    else:
        then = f"last good checkpoint: {checkpoint}: {change}, then --resume"
    at = ", ".join(f"{name}={value:g}" for name, value in rates.items())
    return TrainingDiverged(f"stage {number}, {what} at {at}. Training stopped; {then}")


def validate_epoch(run: Run, stage_run: StageRun, epoch: int, train_loss: float) -> None:
    """Validation mAP of the stage's own prediction after `epoch`; the best epoch is exported to OUTPUT_DIR/stage-N.
    A stage with a moving average (`ema_decay`) scores its weights too, and the better of the two counts and is kept,
    as timm's train script keeps the better of its model and its EMA."""
    accelerator, number, record = run.accelerator, stage_run.stage.number, stage_run.record
    scored = {"raw": score_split(run, stage_run, stage_run.validation_loader)[0]}
    if stage_run.ema is not None:
        with averaged_weights(run.model, stage_run.ema):
            scored["EMA"] = score_split(run, stage_run, stage_run.validation_loader)[0]
    weights = max(scored, key=lambda kind: scored[kind]["mAP"])  # the raw ones on a tie
    metrics = scored[weights]
    entry = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "validation_mAP": metrics["mAP"],
        "validation_OF1": metrics["OF1"],
        "validation_CF1": metrics["CF1"],
    }
    if stage_run.ema is not None:
        entry.update(weights=weights, **{f"validation_mAP_{kind}": figures["mAP"] for kind, figures in scored.items()})
    record["history"].append(entry)
    accelerator.print(
        f"stage {number} epoch {epoch + 1}: loss {train_loss:.4f}, validation mAP "
        + ", ".join(f"{figures['mAP']:.2f}" + f" ({kind})" * (len(scored) > 1) for kind, figures in scored.items())
    )
    # To the trackers, on one step axis across all stages.
    accelerator.log(
        {f"stage{number}/{key}": value for key, value in entry.items() if key != "epoch"},
        step=sum(len(r["history"]) for r in run.progress.records.values()),
    )
    if record["best_mAP"] is None or metrics["mAP"] > record["best_mAP"]:
        record.update(best_epoch=epoch + 1, best_mAP=metrics["mAP"], best_weights=weights)
        with averaged_weights(run.model, stage_run.ema) if weights == "EMA" else nullcontext():
            export(accelerator, run.model, stage_run.folder, run.splits)


# ---------------------------------------------------------------------------------------------------------------
# One stage's evaluation: its best epoch on the validation and test splits.
# ---------------------------------------------------------------------------------------------------------------


def score_split(
    run: Run, stage_run: StageRun, loader: DataLoader, attention_peaks: bool = False
) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor]:
    """The metrics of the stage's prediction on one split, with the sigmoid scores (`{prediction: N x C}`, plus the
    fused y's under `"logits"` when the stage's forward computes it, and with `attention_peaks=True` where each
    label's attention map is largest under `"attention_peaks"`, N x C x 2) and the labels (N x C)."""
    prediction = stage_run.stage.prediction
    names = (prediction,) if prediction == "logits" or stage_run.stage.number == 1 else (prediction, "logits")
    scores, labels = predict_scores(run.accelerator, stage_run.model, loader, names, attention_peaks)
    if not torch.isfinite(scores[prediction]).all():  # a loss still finite, weights already past float's range
        raise diverged(run, stage_run, "the model's scores are NaN")
    return multilabel_metrics(scores[prediction].numpy(), labels.numpy(), label_names=run.names), scores, labels


def evaluate_stage(run: Run, stage_run: StageRun) -> dict:
    """Reloads the stage's best epoch (carried on to the next stage), scores it on validation and test; returns the
    stage's record. The test scores go to OUTPUT_DIR/predictions (for the comparison with stage 1, error analysis).
    After a stage that trains the attention branch (2 and 4), on a dataset with boxes, the pointing game of its
    attention maps on the test split is printed and kept in the record (`test_pointing_game`). A dataset without a
    test split gets the validation figures only."""
    record = stage_run.record
    if record["best_epoch"] is None:  # epochs: 0, the stage is only evaluated and exported
        export(run.accelerator, run.model, stage_run.folder, run.splits)
    run.model.load_state_dict(load_file(stage_run.folder / "model.safetensors"))
    record["validation"], validation_scores, validation_labels = score_split(
        run, stage_run, stage_run.validation_loader
    )
    if stage_run.test_loader is not None:  # a dataset without a test split: the validation figures only
        evaluate_test_split(run, stage_run, validation_scores[stage_run.stage.prediction], validation_labels)
    calibrate_export(run, stage_run, validation_scores, validation_labels)
    return record


def evaluate_test_split(
    run: Run, stage_run: StageRun, validation_scores: torch.Tensor, validation_labels: torch.Tensor
) -> None:
    """The stage's test figures into its record: metrics at 0.5 and at thresholds tuned on validation, the pointing
    game where the dataset has boxes; the test scores to OUTPUT_DIR/predictions; the figures to the trackers."""
    accelerator, number, record = run.accelerator, stage_run.stage.number, stage_run.record
    locate = "attention" in stage_run.stage.trained and "boxes" in run.dataset["test"].column_names
    record["test"], test_scores, labels = score_split(run, stage_run, stage_run.test_loader, attention_peaks=locate)
    scores = test_scores[stage_run.stage.prediction]
    if locate:
        test_boxes, train_boxes = (label_boxes(run.dataset[split], len(run.names)) for split in ("test", "train"))
        peaks = test_scores["attention_peaks"].numpy()
        record["test_pointing_game"] = pointing_game(peaks, labels.numpy(), test_boxes, train_boxes, run.names)
        accelerator.print(f"\nstage {number}, test split: {pointing_game_table(record['test_pointing_game'])}")
    if accelerator.is_main_process:
        (run.output_dir / "predictions").mkdir(exist_ok=True)
        save_file(
            {"scores": scores.contiguous(), "labels": labels.float().contiguous()},
            run.output_dir / "predictions" / f"stage-{number}-test.safetensors",
        )
    # Thresholds of the stage's prediction tuned on validation, never on test; test CP .. OF1 at 0.5 and at them.
    _, calibrated = calibrate_stage(
        validation_scores, validation_labels, scores, labels, run.names, dataset=run.recipe.data.kind
    )
    record.update(calibrated)
    # To the trackers, from the main process: test mAP, and CP .. OF1 at 0.5 and at the tuned thresholds.
    figures = {"test_mAP": record["test"]["mAP"]}
    for name in FIGURES:
        figures.update(
            {f"test_{name}_at_0.5": record["test"][name], f"test_{name}_calibrated": record["test_calibrated"][name]}
        )
    accelerator.log({f"stage{number}/{key}": value for key, value in figures.items() if value is not None})


def calibrate_export(run: Run, stage_run: StageRun, validation_scores: dict, validation_labels: torch.Tensor) -> None:
    """Thresholds of the fused y, the exported folder's pipeline output, tuned on the validation split: into the
    model's config (so OUTPUT_DIR/final carries the last stage's) and OUTPUT_DIR/stage-N/config.json.

    Stages 2 to 4 computed y with their own prediction; stage 1's forward stops at y_cls, so y is scored once more.
    """
    scores = validation_scores.get("logits")
    if scores is None:
        with run.accelerator.autocast():  # the precision of the prepared forward
            full_forward = StageForward(run.model, STAGES[4], run.map_cache)
            scores = predict_scores(run.accelerator, full_forward, stage_run.validation_loader, ("logits",))[0][
                "logits"
            ]
    calibration = calibrate_thresholds(
        scores,
        validation_labels,
        run.names,
        split="validation",
        dataset=run.recipe.data.kind,
        run_overlap=RUN_VALIDATION,
    )
    if calibration.fallback_labels:
        run.accelerator.print(
            f"stage {stage_run.stage.number}: {len(calibration.fallback_labels)} of {len(run.names)} labels keep the "
            f"global threshold {calibration.threshold:.2f}, not tuned on their own: "
            + "; ".join(f"{name} ({reason})" for name, reason in calibration.fallback_labels.items())
        )
    calibration.apply_to(run.model.config)
    if run.accelerator.is_main_process:
        write_thresholds(stage_run.folder, calibration)  # config.json only: the weights are the stage's best epoch
    run.accelerator.wait_for_everyone()


def export(accelerator: Accelerator, model: SRNForImageClassification, folder: Path, splits: dict) -> None:
    """`save_pretrained` of the model and its image processor, with the run's `splits.json`: a folder `pipeline(...)`
    loads directly. It is written under a temporary name and renamed when complete: a failed or killed export leaves
    the previous folder whole."""
    if accelerator.is_main_process:  # one writer; `model` is the unwrapped model, its weights are every process's
        with atomic_folder(folder) as partial:
            model.save_pretrained(partial)
            create_image_processor(model.config).save_pretrained(partial)
            write_splits_file(partial, splits)
    accelerator.wait_for_everyone()  # no process reads the folder before it is written


# ---------------------------------------------------------------------------------------------------------------
# The report: the table across stages, metrics.json, the curves, the final model; then the Hub.
# ---------------------------------------------------------------------------------------------------------------


def write_report(run: Run) -> dict:
    """Prints the stages' tables, exports OUTPUT_DIR/final, writes metrics.json and training_curves.png."""
    accelerator, output_dir, recipe = run.accelerator, run.output_dir, run.recipe
    records = [run.progress.records[key] for key in sorted(run.progress.records, key=int)]
    report = {
        "recipe": recipe.to_dict(),
        "dataset": {
            "name": recipe.data.kind,
            "label_names": run.names,
            "splits": dict(run.dataset.num_rows),
            "image_check": run.image_check,
        },
        "stages": records,
        # Each --resume that changed the recipe: from which checkpoint (stage, epoch, batch), which fields, old and new;
        # `recipe` above holds the values the run ended with.
        "recipe_changes": run.progress.recipe_changes,
        "test_gain_over_stage1": gain_over_stage1(output_dir, records) if accelerator.is_main_process else None,
        "test_calibrated_gain_over_stage1": calibrated_gain(records),
        # Evaluation batches whose backbone maps were reused from an earlier pass (same images, same weights).
        "evaluation_map_cache": {"reused": run.map_cache.hits, "computed": run.map_cache.misses},
    }
    if "test" not in run.dataset:
        report["not_measured"] = f"no test split: {NOT_MEASURED_WITHOUT_TEST}"
    if accelerator.is_main_process:
        report["examples"] = keep_run_examples(run)
    accelerator.print("\n" + metric_table(records, "validation") + "\n\n" + metric_table(records, "test"))
    if "not_measured" in report:
        accelerator.print(
            f"\n{report['not_measured']}: the figures above are the validation split's, which chose the "
            "best epochs and the thresholds (optimistic)"
        )
    accelerator.print("\n" + threshold_table(records))
    if report["test_calibrated_gain_over_stage1"]:
        accelerator.print("\n" + describe_gain(report["test_calibrated_gain_over_stage1"]))
    if report["test_gain_over_stage1"]:
        gain = report["test_gain_over_stage1"]
        accelerator.print(
            f"\ntest mAP of stage {gain['stage']} over stage 1: {gain['difference']:+.2f} "
            f"({100 * gain['confidence_level']:.0f}% interval {gain['low']:+.2f} .. {gain['high']:+.2f}, "
            f"paired bootstrap over the {gain['images']} test images)"
        )
    export(accelerator, run.model, output_dir / "final", run.splits)
    if accelerator.is_main_process:
        write_json(output_dir / "metrics.json", report)
        plot_training_curves(records, output_dir / "training_curves.png")
        accelerator.print(
            f"\nmodels: {output_dir}/stage-N, {output_dir}/final; metrics.json and training_curves.png in {output_dir}"
        )
    # Closes the trackers (flushes TensorBoard's files).
    accelerator.end_training()
    return report


def keep_run_examples(run: Run) -> list[dict]:
    """The first test images (validation without a test split) in OUTPUT_DIR/examples/, the bytes the data holds, with
    their true labels in OUTPUT_DIR/examples.json (`srn_hf.showcase`): the model card's attention picture and the demo
    page's examples show images of the model's own data."""
    split = "test" if "test" in run.dataset else "validation"
    return keep_examples(run.dataset[split], split, run.names, run.output_dir)


def gain_over_stage1(output_dir: Path, records: list[dict]) -> dict | None:
    """The last stage's test mAP over stage 1's, with a paired bootstrap interval over the test images.

    Reads the test scores that each stage leaves in OUTPUT_DIR/predictions (so a resumed run has them too).
    """
    last = records[-1]["stage"]
    files = [output_dir / "predictions" / f"stage-{number}-test.safetensors" for number in (1, last)]
    if last == 1 or not all(file.exists() for file in files):
        return None
    first, final = (load_file(file) for file in files)
    return {"stage": last, **map_difference(first["scores"], final["scores"], final["labels"])}


def publish_final(run: Run) -> None:
    """With --push-to-hub, publishes OUTPUT_DIR/final with its model card (from metrics.json), from the main process."""
    if not run.args.push_to_hub or not run.accelerator.is_main_process:
        return
    from srn_hf.hub import publish

    # The card's picture and the page's examples: the run's first test images with their true labels
    # (`keep_run_examples`).
    result = publish(run.output_dir / "final", run.args.push_to_hub)
    run.accelerator.print(f"published: {result}")


if __name__ == "__main__":
    try:
        main()
    # Bad input (a recipe value, a missing data folder, a busy output folder), a full disk: one line.
    except (RecipeError, TrainingDiverged, ValueError, StorageError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {flag_worded(one_line(error), FLAGS)}", file=sys.stderr)
        sys.exit(2)
