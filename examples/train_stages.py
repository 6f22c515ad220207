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
validation and test splits. OUTPUT_DIR/final is the last stage's model; OUTPUT_DIR/metrics.json holds every
stage's figures and the last stage's test mAP over stage 1 with a bootstrap interval, OUTPUT_DIR/training_curves.png
draws them, OUTPUT_DIR/predictions holds each stage's test scores. Checkpoints (Accelerate `save_state`) go to
OUTPUT_DIR/checkpoints after every epoch (and every `training.checkpoint_every_steps` steps).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from srn_hf import SRNConfig, SRNForImageClassification
from srn_hf.data import label_names, load_multilabel_dataset
from srn_hf.data.transforms import collate_multilabel, with_multilabel_transforms
from srn_hf.metrics import map_difference, multilabel_metrics
from srn_hf.pretrained import packaged_efficientnet_lite0_weights
from srn_hf.processing import create_image_processor
from srn_hf.stages import STAGES, StageForward, apply_stage, make_loss, set_train_mode, stage_loss
from srn_hf.training import (
    EpochSeededDataset,
    RecipeError,
    TrainingDiverged,
    flat_dict,
    load_recipe,
    metric_table,
    plot_training_curves,
    predict_scores,
    write_json,
)

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe YAML (default: the offline demo)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe key, value parsed as YAML (repeatable): --set stage4.lr=1e-5 --set data.num_workers=2",
    )
    parser.add_argument("--output-dir", help="shorthand for --set output_dir=...")
    parser.add_argument("--stages", default="1,2,3,4", help="stages to run, in order (e.g. 2,3,4 starts from stage-1)")
    parser.add_argument("--init-from", help="model folder the first stage starts from (default OUTPUT_DIR/stage-<first-1>)")
    parser.add_argument(
        "--resume", nargs="?", const="latest", metavar="CHECKPOINT",
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


def load_data(recipe, accelerator):
    """The DatasetDict of the recipe (the offline stamp scenes are generated on first use, by the main process)."""
    data = recipe.data
    with accelerator.main_process_first():
        dataset = load_multilabel_dataset(data.kind, **data.options)
    for split in ("train", "validation", "test"):
        if split not in dataset:
            raise ValueError(f"dataset {data.kind!r} has no {split!r} split (splits: {list(dataset)})")
    limits = {"train": data.max_train_samples, "validation": data.max_eval_samples, "test": data.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None and limit < len(dataset[split]):
            dataset[split] = dataset[split].select(range(limit))
    return dataset


def signature(recipe, names: list[str]) -> dict:
    """What a checkpoint must share with this run to be resumed by it."""
    return {
        "label_names": names,
        "backbone": recipe.model.backbone,
        "image_size": recipe.model.image_size,
        "dataset": {"kind": recipe.data.kind, "options": recipe.data.options},
        "seed": recipe.seed,
    }


def find_checkpoint(output_dir: Path, resume: str) -> Path | None:
    """The checkpoint folder to resume from: the newest under OUTPUT_DIR/checkpoints, or the one named."""
    if resume != "latest":
        path = Path(resume)
        if not (path / "progress.json").exists():
            raise ValueError(f"--resume {path}: not a checkpoint of train_stages.py (no progress.json)")
        return path
    folders = sorted((output_dir / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[-1]))
    folders = [folder for folder in folders if (folder / "progress.json").exists()]
    return folders[-1] if folders else None


def check_checkpoint(progress: dict, expected: dict, path: Path) -> None:
    for key, value in expected.items():
        if progress["signature"].get(key) != value:
            raise ValueError(
                f"checkpoint {path} belongs to another run: its {key} is {progress['signature'].get(key)!r}, this "
                f"run's is {value!r}. Resume with the recipe it was trained with, or use another --output-dir"
            )


def initial_model(recipe, names: list[str], first_stage: int, init_from: str | None, output_dir: Path):
    """Stage 1: a new SRN with ImageNet backbone weights. A later first stage: the previous stage's export."""
    id2label = dict(enumerate(names))
    model_recipe = recipe.model
    if first_stage > 1:
        source = Path(init_from or output_dir / f"stage-{first_stage - 1}")
        if not (source / "config.json").exists():
            raise ValueError(f"stage {first_stage} starts from {source}, which holds no model (config.json); run stage {first_stage - 1} first or pass --init-from")
        model = SRNForImageClassification.from_pretrained(source, id2label=id2label)  # raises on another label set
        for key in ("backbone", "image_size", "attention_feature_index", "classifier_feature_index", "layout"):
            if getattr(model.config, key) != getattr(model_recipe, key):
                raise ValueError(f"{source} has {key}={getattr(model.config, key)!r}, the recipe model.{key}={getattr(model_recipe, key)!r}")
        return model
    if init_from:
        raise ValueError("--init-from is for runs that start after stage 1 (--stages 2,3,4)")
    config_fields = dict(vars(model_recipe))
    weights = config_fields.pop("pretrained_weights")  # every other key of the model section is an SRNConfig field
    model = SRNForImageClassification(SRNConfig(**config_fields, id2label=id2label))
    if weights == "packaged-lite0":
        model.load_backbone_weights(packaged_efficientnet_lite0_weights())
    elif weights == "timm":
        model.load_backbone_weights()
    elif weights is not None:
        if not Path(weights).is_file():
            raise ValueError(f"model.pretrained_weights={weights!r}: no such file (or use 'timm', 'packaged-lite0', null)")
        model.load_backbone_weights(weights)
    return model


def build_optimizer(trainable: dict, stage_recipe) -> torch.optim.Optimizer:
    """SGD or AdamW over the stage's trainable parameters; the backbone at `backbone_lr`, no decay on 1-d weights."""
    groups = []
    for name, parameters in trainable.items():
        lr = stage_recipe.backbone_lr if name == "backbone" and stage_recipe.backbone_lr is not None else stage_recipe.lr
        decay = [p for p in parameters if p.ndim > 1]
        no_decay = [p for p in parameters if p.ndim <= 1]
        groups += [
            {"params": decay, "lr": lr, "weight_decay": stage_recipe.weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]
    groups = [group for group in groups if group["params"]]
    if stage_recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=stage_recipe.lr, momentum=stage_recipe.momentum)
    return torch.optim.AdamW(groups, lr=stage_recipe.lr)


def export(accelerator, model: SRNForImageClassification, folder: Path) -> None:
    """`save_pretrained` of the model and its image processor: a folder `pipeline(...)` loads directly."""
    if accelerator.is_main_process:
        model.save_pretrained(folder)
        create_image_processor(model.config).save_pretrained(folder)
    accelerator.wait_for_everyone()


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


def main(argv=None) -> dict:
    args = parse_args(argv)
    overrides = args.set + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    recipe = load_recipe(args.config, overrides)
    stages = parse_stages(args.stages)
    output_dir = Path(recipe.output_dir)
    training = recipe.training

    log_with = training.log_with
    if log_with == "auto":
        log_with = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    accelerator = Accelerator(
        mixed_precision=training.mixed_precision,
        log_with=None if log_with == "none" else log_with,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir),
            logging_dir=str(output_dir / "logs"),
            automatic_checkpoint_naming=True,
            total_limit=training.checkpoints_total_limit,
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.seed),
    )
    set_seed(recipe.seed)

    # Everything that can be wrong is checked before the first step: data, labels, checkpoint, starting model.
    dataset = load_data(recipe, accelerator)
    names = label_names(dataset)
    run_signature = signature(recipe, names)
    checkpoint, progress = None, None
    if args.resume:
        checkpoint = find_checkpoint(output_dir, args.resume)
        if checkpoint is None:
            accelerator.print(f"no checkpoint under {output_dir / 'checkpoints'}: starting afresh")
        else:
            progress = json.loads((checkpoint / "progress.json").read_text())
            check_checkpoint(progress, run_signature, checkpoint)
            if progress["stage"] not in stages:
                raise ValueError(f"checkpoint {checkpoint} is in stage {progress['stage']}, not among --stages {args.stages}")
    elif (output_dir / "checkpoints").exists() and not args.overwrite:
        raise ValueError(f"{output_dir} already holds a run: pass --resume to continue it or --overwrite to start afresh")
    model = initial_model(recipe, names, stages[0], args.init_from, output_dir)
    if training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = make_loss(**vars(recipe.loss))
    image_processor = create_image_processor(model.config)
    dataset = with_multilabel_transforms(dataset, image_processor=image_processor, augment=recipe.data.augment)
    train_data = EpochSeededDataset(dataset["train"], recipe.seed)
    eval_loaders = {
        split: DataLoader(dataset[split], batch_size=training.eval_batch_size, collate_fn=collate_multilabel, num_workers=recipe.data.num_workers)
        for split in ("validation", "test")
    }

    if progress is None:
        progress = {"signature": run_signature, "stage": stages[0], "epoch": 0, "step": 0, "records": {}}
    accelerator.init_trackers("srn", config=flat_dict(recipe.to_dict()))
    accelerator.print(f"SRN on {recipe.data.kind}: {len(names)} labels, splits {dict(dataset.num_rows)}, stages {stages}")

    def save_checkpoint(stage_number: int, epoch: int, step: int) -> None:
        progress.update(stage=stage_number, epoch=epoch, step=step)
        location = Path(accelerator.save_state())
        if accelerator.is_main_process:
            write_json(location / "progress.json", progress)
        accelerator.wait_for_everyone()

    for number in stages:
        stage, stage_recipe = STAGES[number], recipe.stage(number)
        if number < progress["stage"]:
            continue  # finished before the checkpoint we resume from
        record = progress["records"].setdefault(
            str(number), {"stage": number, "prediction": stage.prediction, "history": [], "best_epoch": None, "best_mAP": None}
        )
        stage_dir = output_dir / f"stage-{number}"

        # Unwrap, freeze what the stage does not train, then prepare afresh (DDP must see requires_grad first).
        accelerator.free_memory()
        trainable = apply_stage(model, stage)
        optimizer = build_optimizer(trainable, stage_recipe)
        train_loader = DataLoader(
            train_data, batch_size=stage_recipe.batch_size, shuffle=True, collate_fn=collate_multilabel,
            num_workers=recipe.data.num_workers,
        )
        accelerator.gradient_accumulation_steps = stage_recipe.gradient_accumulation_steps
        optimizer_steps = stage_recipe.epochs * math.ceil(len(train_loader) / stage_recipe.gradient_accumulation_steps)
        scheduler = get_scheduler(
            stage_recipe.schedule, optimizer,
            num_warmup_steps=round(stage_recipe.warmup_ratio * optimizer_steps), num_training_steps=max(optimizer_steps, 1),
        )
        stage_model, optimizer, train_loader, scheduler, validation_loader, test_loader = accelerator.prepare(
            StageForward(model, stage), optimizer, train_loader, scheduler, eval_loaders["validation"], eval_loaders["test"]
        )
        start_epoch, start_step = 0, 0
        if checkpoint is not None and number == progress["stage"]:
            accelerator.load_state(str(checkpoint))
            existing = [int(path.name.split("_")[-1]) for path in (output_dir / "checkpoints").glob("checkpoint_*")]
            accelerator.project_configuration.iteration = max(existing, default=-1) + 1  # next checkpoint's number
            start_epoch, start_step = progress["epoch"], progress["step"]
            accelerator.print(f"resumed {checkpoint}: stage {number}, epoch {start_epoch + 1}, batch {start_step}")
            checkpoint = None
        accelerator.print(f"\n== stage {number}: trains {', '.join(trainable)}; loss on {', '.join(stage.loss_terms)}")

        for epoch in range(start_epoch, stage_recipe.epochs):
            train_data.set_epoch(epoch)
            train_loader.set_epoch(epoch)
            set_train_mode(stage_model, stage)
            batches = skip_first_batches(train_loader, start_step) if start_step else train_loader
            # The epoch's loss summed over all processes' batches (kept in checkpoints, so resumed epochs report it whole).
            total_loss, seen = progress.get("epoch_loss", (0.0, 0)) if start_step else (0.0, 0)
            bar = tqdm(batches, desc=f"stage {number} epoch {epoch + 1}/{stage_recipe.epochs}", initial=start_step,
                       total=len(train_loader), disable=not accelerator.is_local_main_process)
            for step, batch in enumerate(bar, start=start_step):
                pixel_values = batch["pixel_values"]
                if training.channels_last:
                    pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
                with accelerator.accumulate(stage_model):
                    loss = stage_loss(stage_model(pixel_values), batch["labels"], stage, loss_fn)
                    summed_loss = accelerator.reduce(loss.detach(), "sum").item()  # NaN if any process diverged
                    if not math.isfinite(summed_loss):
                        kept = find_checkpoint(output_dir, "latest")
                        raise TrainingDiverged(
                            f"stage {number}, epoch {epoch + 1}, batch {step}: the loss is {loss.item()} (lr "
                            f"{scheduler.get_last_lr()[0]:.3g}). Training stopped; last good checkpoint: {kept}. "
                            f"Lower stage{number}.lr or use mixed_precision=no, then --resume"
                        )
                    accelerator.backward(loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                total_loss, seen = total_loss + summed_loss, seen + accelerator.num_processes
                bar.set_postfix(loss=f"{loss.item():.4f}")
                every = training.checkpoint_every_steps
                if every and accelerator.sync_gradients and (step + 1) % every == 0 and step + 1 < len(train_loader):
                    progress["epoch_loss"] = (total_loss, seen)
                    save_checkpoint(number, epoch, step + 1)
            start_step = 0

            # Validation of the stage's own prediction; the best epoch is exported to OUTPUT_DIR/stage-N.
            scores, labels = predict_scores(accelerator, stage_model, validation_loader, (stage.prediction,))
            metrics = multilabel_metrics(scores[stage.prediction].numpy(), labels.numpy())
            train_loss = total_loss / max(seen, 1)
            entry = {"epoch": epoch + 1, "train_loss": train_loss, "validation_mAP": metrics["mAP"],
                     "validation_OF1": metrics["OF1"], "validation_CF1": metrics["CF1"]}
            record["history"].append(entry)
            accelerator.print(f"stage {number} epoch {epoch + 1}: loss {train_loss:.4f}, validation mAP {metrics['mAP']:.2f}")
            accelerator.log({f"stage{number}/{key}": value for key, value in entry.items() if key != "epoch"},
                            step=sum(len(r["history"]) for r in progress["records"].values()))
            if record["best_mAP"] is None or metrics["mAP"] > record["best_mAP"]:
                record.update(best_epoch=epoch + 1, best_mAP=metrics["mAP"])
                export(accelerator, model, stage_dir)
            save_checkpoint(number, epoch + 1, 0)

        # The stage ends with its best epoch: reload it, score validation and test, carry it to the next stage.
        if record["best_epoch"] is None:  # epochs: 0, the stage is only evaluated and exported
            export(accelerator, model, stage_dir)
        model.load_state_dict(load_file(stage_dir / "model.safetensors"))
        for split, loader in (("validation", validation_loader), ("test", test_loader)):
            scores, labels = predict_scores(accelerator, stage_model, loader, (stage.prediction,))
            record[split] = multilabel_metrics(scores[stage.prediction].numpy(), labels.numpy())
            if split == "test" and accelerator.is_main_process:  # for the comparison with stage 1, error analysis
                (output_dir / "predictions").mkdir(exist_ok=True)
                save_file({"scores": scores[stage.prediction].contiguous(), "labels": labels.float().contiguous()},
                          output_dir / "predictions" / f"stage-{number}-test.safetensors")  # fmt: skip
        accelerator.log({f"stage{number}/test_mAP": record["test"]["mAP"]})
        progress.update(stage=number + 1, epoch=0, step=0)

    # Report: the table across stages, metrics.json, the curves, the final model.
    records = [progress["records"][key] for key in sorted(progress["records"], key=int)]
    report = {
        "recipe": recipe.to_dict(),
        "dataset": {"name": recipe.data.kind, "label_names": names, "splits": dict(dataset.num_rows)},
        "stages": records,
        "test_gain_over_stage1": gain_over_stage1(output_dir, records) if accelerator.is_main_process else None,
    }
    accelerator.print("\n" + metric_table(records, "validation") + "\n\n" + metric_table(records, "test"))
    if report["test_gain_over_stage1"]:
        gain = report["test_gain_over_stage1"]
        accelerator.print(
            f"\ntest mAP of stage {gain['stage']} over stage 1: {gain['difference']:+.2f} "
            f"({100 * gain['confidence_level']:.0f}% interval {gain['low']:+.2f} .. {gain['high']:+.2f}, "
            f"paired bootstrap over the {gain['images']} test images)"
        )
    export(accelerator, model, output_dir / "final")
    if accelerator.is_main_process:
        write_json(output_dir / "metrics.json", report)
        plot_training_curves(records, output_dir / "training_curves.png")
        accelerator.print(f"\nmodels: {output_dir}/stage-N, {output_dir}/final; metrics.json and training_curves.png in {output_dir}")
    accelerator.end_training()

    if args.push_to_hub and accelerator.is_main_process:
        from srn_hf.hub import publish  # model card from OUTPUT_DIR/metrics.json, model + image processor pushed

        example_image = dataset["test"].with_format(None)[0]["image"]  # the card's attention picture: a test image
        accelerator.print(f"published: {publish(output_dir / 'final', args.push_to_hub, example_image=example_image)}")
    return report


if __name__ == "__main__":
    try:
        main()
    except (RecipeError, TrainingDiverged, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
