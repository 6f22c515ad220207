"""SRN against what users would pick instead: timm's own multi-label training and a transformers Trainer fine-tune.

    python benchmarks/peers.py                                   # the demo recipe, seeds 0 1 2 (resumes finished runs)
    python benchmarks/peers.py --seeds 0 --peers timm-asl trainer --lrs 1e-3 --epochs 1 3
    python benchmarks/peers.py --config examples/configs/voc2007.yaml --set model.pretrained_weights=weights.safetensors
    python benchmarks/peers.py --report-only                     # tables of the finished runs

Every peer trains the recipe's backbone (`model.backbone`) from the recipe's ImageNet weights, on the recipe's data
at its image size with its training augmentation (`data.augment`), batch size and precision, through the libraries'
own code paths:

    timm-bce    timm's `timm.task.MultiLabelClassificationTask` on `timm.create_model(backbone, num_classes=C)`, its
                loss factory's BCE (`loss_type="bce"`), `timm.optim.create_optimizer_v2` (AdamW, timm's weight-decay
                groups), `timm.scheduler.create_scheduler_v2` (cosine, stepped per update with `step_update`, linear
                warm-up over the recipe's `stage1.warmup_ratio`) and a model EMA (`task.setup_ema`, timm's
                `ModelEmaV3`, decay 0.9998 with warm-up, updated after every step): timm's train script's pieces
    timm-asl    the same with the loss factory's ASL (`loss_type="asl"`: gamma_neg 4, gamma_pos 1, clip 0.05, timm's
                defaults, `batchmean` reduction)
    trainer     `transformers.Trainer` on `AutoModelForImageClassification` loaded from a local folder of
                `TimmWrapperForImageClassification` (the timm model with the same ImageNet weights, no Hub) with
                `problem_type="multi_label_classification"` (its BCE), AdamW, cosine with the same warm-up ratio,
                bf16 like the recipe, evaluating every epoch and keeping the best (`load_best_model_at_end`, by
                validation mAP)

and, from `examples/train_stages.py` as it is (a subprocess per run):

    SRN                   the recipe's four stages
    SRN on <best peer>    stage 1 trains f_cls alone (`stage1.backbone_lr=0`) on the backbone of the best peer's model
                          (its trained timm weights as `model.pretrained_weights`), then stages 2, 3, 4 as the recipe
    SRN on <setting>      the same on any peer setting named with `--srn-on PEER:LR:EPOCHS` (with that setting's
                          run beside it): SRN's head over a backbone chosen some other way, e.g. the setting that
                          scored best on test, as a diagnostic of the choice rather than a result

Search (validation split only): each peer trains once per learning rate of `--lrs` and epoch count of `--epochs`,
the same grid for each, at `--search-seed`; within a run the epoch (and for timm, the EMA or the raw weights) with
the best validation mAP is kept; the setting with the best validation mAP is the peer's, used for every seed. The
best peer (for "SRN on ...") is the one with the best validation mAP at the search seed. Every other setting is the
recipe's `stage1` (optimizer AdamW, weight decay, warm-up ratio, batch size).
Budget (compute): each peer is trained once more per seed at its chosen learning rate for as many epochs as fit in
SRN's compute at that seed (`PEER (SRN's time)`: SRN's whole train_stages.py run over the peer's seconds per epoch
at its chosen setting, training and per-epoch validation, rounded, at least 1), so that "SRN trained longer" is
ruled out. The seconds are CPU seconds (user and system, every thread; for SRN, of its subprocess): on a machine
shared with other work, wall time measures the load more than the run. Run with `--threads 1` for the budget: at one
thread the CPU seconds are the work done, while at two, OpenMP's waiting threads add CPU seconds that grow with the
machine's load (on the demo, SRN's run counted 22 CPU minutes at two threads on a shared machine, 8 at one; budgets
from two-thread figures give the peers more than SRN's compute). Where the budget is the chosen epoch
count, the chosen run is that budget run already. (SRN's optimizer steps, the epochs of all four stages, are in the
table too; its stages 2 and 3 run the backbone without gradients, so a peer given as many steps would train far
longer than SRN.)

Scores: test mAP; test CF1 and OF1 at per-label thresholds tuned on the validation split
(`srn_hf.thresholds.calibrate_thresholds`; SRN's own runs tune them the same way); every difference with a 95 %
paired bootstrap interval over the test images (mAP: `srn_hf.metrics.map_difference`; CF1 / OF1: the same
resampling at the fixed tuned thresholds, [`f1_difference`]). Wall and CPU time of every run (training, per-epoch
validation and the final scoring; for SRN the whole train_stages.py process).

Finished runs are kept (OUTPUT_DIR/seed-N/RUN/result.json, written last): an interrupted benchmark resumes where
it stopped. The default OUTPUT_DIR is benchmarks/results/peers-runs, where the repository keeps each run's
result.json and test scores (its .gitignore leaves out weights and logs): a new machine resumes from the runs another
trained, and redraws the report with `--report-only`. (SRN on the best peer needs that peer's weights of the same
seed, which stay on the machine that trained them: on another machine that peer run is trained again first.)
Writes peers.json and peers.md to `--results-dir`, with the library versions and the machine, and peers.png (each
variant's test mAP per seed; each difference per seed with its interval, beside the +1.9 goal).
Refused in one line, exit status 2, before anything trains: an unknown peer, a number of the command line out of its
range (`--threads 0`, `--lrs -1`, `--srn-on trainer:nan:3`), a recipe the training script refuses, a backbone without
ImageNet weights available offline.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from srn_hf import SRNConfig
from srn_hf.data.stamp_scenes import VARIANTS
from srn_hf.metrics import map_difference, multilabel_metrics, overall_figures, per_class_figures
from srn_hf.processing import create_image_processor
from srn_hf.recipe import Range, RecipeError, load_recipe
from srn_hf.report import write_json
from srn_hf.thresholds import ThresholdCalibration, calibrate_thresholds
from srn_hf.training import EpochSeededDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_utils import machine_description, plot_intervals, plot_seed_scores  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
TRAIN_STAGES = REPOSITORY / "examples" / "train_stages.py"
DEFAULT_CONFIG = REPOSITORY / "examples" / "configs" / "demo.yaml"
PEERS = ("timm-bce", "timm-asl", "trainer")
TIMM_LOSSES = {"timm-bce": "bce", "timm-asl": "asl"}
EMA_DECAY = 0.9998  # timm's train script's --model-ema-decay default (with --model-ema-warmup)
METRICS = ("mAP", "CF1", "OF1")


class BenchmarkError(ValueError):
    """Bad input of the benchmark (a peer it does not know, a backbone without weights offline): one line, exit 2."""


# ---------------------------------------------------------------------------------------------------------------
# Set-up: the recipe, the weights (refused before anything trains), the data.
# ---------------------------------------------------------------------------------------------------------------


def check_peers(names: list[str], flag: str = "--peers") -> list[str]:
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise BenchmarkError(f"{flag}: unknown peer {unknown[0]!r} (known: {', '.join(PEERS)})")
    return names


def resolve_weights(recipe, output_dir: Path) -> Path:
    """A file of the backbone's ImageNet weights in timm's key names, found offline; else a `BenchmarkError`.

    `model.pretrained_weights`: `packaged-lite0` (tf_efficientnet_lite0 only), a file, or `timm` (timm's pretrained
    source, only if already in the local cache: the weights are then written to OUTPUT_DIR once).
    """
    backbone, source = recipe.model.backbone, recipe.model.pretrained_weights
    if source is None:
        raise BenchmarkError(
            f"model.pretrained_weights is null: the peers compare ImageNet-initialised {backbone} backbones"
        )
    if source == "packaged-lite0":  # for tf_efficientnet_lite0 only: `load_recipe` refuses another backbone
        from srn_hf.pretrained import packaged_efficientnet_lite0_weights

        return packaged_efficientnet_lite0_weights()
    if source != "timm":
        if not Path(source).is_file():
            raise BenchmarkError(f"model.pretrained_weights={source!r}: no such file")
        return Path(source)
    target = output_dir / f"{backbone}.imagenet.safetensors"
    if not target.exists():
        try:
            with offline():
                model = timm.create_model(backbone, pretrained=True)
        except Exception as error:  # timm raises whatever its download or look-up raises
            raise BenchmarkError(
                f"model.backbone={backbone!r}: no ImageNet weights available offline "
                f"({type(error).__name__}: {str(error).split('. ')[0][:200]})"
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, target)
    return target


@contextlib.contextmanager
def offline():
    """The Hub is not asked (only its local cache is read) inside this block."""
    import huggingface_hub.constants

    saved = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = saved


def load_train_stages():
    """examples/train_stages.py as a module (its data loading and its SRN runs are the benchmark's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_stages", TRAIN_STAGES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass
class Data:
    """The recipe's label names and splits, with their transforms (training augmentation on `train`)."""

    names: list[str]
    train: object  # the training split with the recipe's augmentation
    validation: object
    test: object


def load_data(recipe) -> Data:
    """train_stages.py's dataset (same splits, same limits), with the recipe's augmentation and image processor."""
    from srn_hf.data import label_names
    from srn_hf.data.transforms import with_multilabel_transforms

    one_process = SimpleNamespace(main_process_first=contextlib.nullcontext)
    dataset = load_train_stages().load_data(recipe, one_process)
    names = label_names(dataset)
    processor = create_image_processor(srn_config(recipe, names))  # the image processor SRN's exports carry
    dataset = with_multilabel_transforms(dataset, image_processor=processor, augment=recipe.data.augment)
    return Data(names, dataset["train"], dataset["validation"], dataset["test"])


def srn_config(recipe, names: list[str]) -> SRNConfig:
    fields = {key: value for key, value in dataclasses.asdict(recipe.model).items() if key != "pretrained_weights"}
    return SRNConfig(**fields, id2label=dict(enumerate(names)))


# ---------------------------------------------------------------------------------------------------------------
# The peers' trainings. Each returns the kept model's validation and test scores and its timm weights.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setting:
    """One training of one peer: its learning rate and epochs, the seed, and where it goes."""

    peer: str
    lr: float
    epochs: int
    seed: int
    folder: Path


def autocast(recipe):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.training.mixed_precision == "bf16")


@torch.no_grad()
def predict(model, dataset, recipe) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores (N, C) of a timm model on a split, and its labels."""
    from srn_hf.data.transforms import collate_multilabel

    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=recipe.training.eval_batch_size,
        collate_fn=collate_multilabel,
        num_workers=recipe.data.num_workers,
    )
    scores, labels = [], []
    for batch in loader:
        pixels = batch["pixel_values"]
        if recipe.training.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with autocast(recipe):
            scores.append(torch.sigmoid(model(pixels).float()))
        labels.append(batch["labels"])
    return torch.cat(scores).double().numpy(), torch.cat(labels).numpy()


def timm_model(recipe, weights: Path, num_labels: int) -> torch.nn.Module:
    """`timm.create_model(backbone, num_classes=C)` with the ImageNet weights (timm drops their classifier)."""
    model = timm.create_model(
        recipe.model.backbone, num_classes=num_labels, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}
    )
    return model.to(memory_format=torch.channels_last) if recipe.training.channels_last else model


def train_timm(setting: Setting, recipe, data: Data, weights: Path) -> dict:
    """timm's multi-label task, loss factory, optimizer and scheduler factories and EMA; keeps the best epoch (raw or
    EMA weights) by validation mAP."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.task import MultiLabelClassificationTask

    from srn_hf.data.transforms import collate_multilabel

    stage = recipe.stage1
    model = timm_model(recipe, weights, len(data.names))
    task = MultiLabelClassificationTask(model, criterion_kwargs={"loss_type": TIMM_LOSSES[setting.peer]}, verbose=False)
    optimizer = create_optimizer_v2(model, "adamw", lr=setting.lr, weight_decay=stage.weight_decay)
    train_data = EpochSeededDataset(data.train, setting.seed)
    loader = DataLoader(
        train_data,
        batch_size=stage.batch_size,
        shuffle=True,
        collate_fn=collate_multilabel,
        generator=torch.Generator().manual_seed(setting.seed),
        num_workers=recipe.data.num_workers,
    )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        "cosine",
        num_epochs=setting.epochs,
        step_on_epochs=False,
        warmup_epochs=stage.warmup_ratio * setting.epochs,
        updates_per_epoch=len(loader),
    )
    ema = task.setup_ema(decay=EMA_DECAY, use_warmup=True)
    best, updates, history = None, 0, []
    for epoch in range(setting.epochs):
        train_data.set_epoch(epoch)
        task.train()
        for batch in loader:
            pixels = batch["pixel_values"]
            if recipe.training.channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            with autocast(recipe):
                loss = task(pixels, batch["labels"])["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            updates += 1
            scheduler.step_update(num_updates=updates)
            task.update_ema(step=updates)
        scheduler.step(epoch + 1)
        for kind, module in (("raw", model), ("EMA", ema.module)):
            validation_map = multilabel_metrics(*predict(module, data.validation, recipe))["mAP"]
            history.append({"epoch": epoch + 1, "weights": kind, "validation_mAP": validation_map, "loss": loss.item()})
            if best is None or validation_map > best["validation_mAP"]:
                best = {**history[-1], "state": {k: v.detach().clone() for k, v in module.state_dict().items()}}
    model.load_state_dict(best.pop("state"))
    return {"model": model, "kept": best, "history": history, "steps": updates}


def trainer_start_folder(recipe, weights: Path, names: list[str], folder: Path) -> Path:
    """A local `TimmWrapperForImageClassification` folder: the timm backbone with the ImageNet weights, a new C-label
    head, multi-label; what `AutoModelForImageClassification.from_pretrained` loads (no Hub)."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    if (folder / "config.json").exists():
        return folder
    config = TimmWrapperConfig(
        architecture=recipe.model.backbone,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
        problem_type="multi_label_classification",
    )
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(timm_model(recipe, weights, len(names)).state_dict())
    model.save_pretrained(folder)
    return folder


def train_trainer(setting: Setting, recipe, data: Data, start: Path) -> dict:
    """`transformers.Trainer` on `AutoModelForImageClassification` (TimmWrapper), multi-label; the best epoch by
    validation mAP is loaded at the end."""
    from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

    from srn_hf.data.transforms import collate_multilabel

    stage = recipe.stage1
    model = AutoModelForImageClassification.from_pretrained(start)
    if recipe.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    arguments = TrainingArguments(
        output_dir=str(setting.folder / "trainer"),
        per_device_train_batch_size=stage.batch_size,
        per_device_eval_batch_size=recipe.training.eval_batch_size,
        learning_rate=setting.lr,
        num_train_epochs=setting.epochs,
        lr_scheduler_type="cosine",
        warmup_steps=stage.warmup_ratio,
        weight_decay=stage.weight_decay,
        bf16=recipe.training.mixed_precision == "bf16",
        use_cpu=True,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="mAP",
        seed=setting.seed,
        data_seed=setting.seed,
        report_to="none",
        dataloader_num_workers=recipe.data.num_workers,
        remove_unused_columns=False,
        disable_tqdm=True,
        logging_strategy="epoch",
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=collate_multilabel,
        compute_metrics=trainer_map,
    )
    output = trainer.train()
    history = [entry for entry in trainer.state.log_history if "eval_mAP" in entry]
    best = max(history, key=lambda entry: entry["eval_mAP"])
    kept = {"epoch": round(best["epoch"]), "weights": "raw", "validation_mAP": best["eval_mAP"]}
    return {"model": trainer.model.timm_model, "kept": kept, "history": history, "steps": output.global_step}


def trainer_map(prediction) -> dict:
    """The Trainer's `compute_metrics`: validation mAP of its logits."""
    scores = 1 / (1 + np.exp(-np.asarray(prediction.predictions, dtype=np.float64)))
    return {"mAP": multilabel_metrics(scores, prediction.label_ids)["mAP"]}


def run_peer(setting: Setting, recipe, data: Data, weights: Path, output_dir: Path) -> dict:
    """Trains one setting of a peer, scores its kept model on validation and test; writes the run's files."""
    from transformers import set_seed

    set_seed(setting.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    if setting.peer == "trainer":
        start = trainer_start_folder(recipe, weights, data.names, output_dir / "trainer-start")
        trained = train_trainer(setting, recipe, data, start)
    else:
        trained = train_timm(setting, recipe, data, weights)
    model = trained["model"]
    (validation_scores, validation_labels), (test_scores, test_labels) = (
        predict(model, split, recipe) for split in (data.validation, data.test)
    )
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    save_file(
        {key: value.contiguous() for key, value in model.state_dict().items()}, setting.folder / "model.safetensors"
    )
    return finish_run(
        setting.folder,
        validation_scores,
        validation_labels,
        test_scores,
        test_labels,
        data.names,
        {
            "peer": setting.peer,
            "lr": setting.lr,
            "epochs": setting.epochs,
            "seed": setting.seed,
            "kept": trained["kept"],
            "optimizer_steps": trained["steps"],
            "history": trained["history"],
            "wall_seconds": wall,
            "cpu_seconds": cpu,
        },
    )


def finish_run(
    folder: Path, validation_scores, validation_labels, test_scores, test_labels, names, record: dict
) -> dict:
    """Tunes the thresholds on validation, scores the test split, writes test scores and result.json (last)."""
    calibration = calibrate_thresholds(validation_scores, validation_labels, names, split="validation")
    record.update(figures(test_scores, test_labels, calibration.thresholds))
    record.update(
        validation_mAP=multilabel_metrics(validation_scores, validation_labels)["mAP"],
        thresholds=np.asarray(calibration.thresholds).tolist(),
    )
    save_file(
        {
            "scores": torch.from_numpy(np.ascontiguousarray(test_scores, dtype=np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(test_labels, dtype=np.float32)),
        },
        folder / "test-scores.safetensors",
    )
    write_json(folder / "result.json", record)
    return record


def figures(scores, labels, thresholds) -> dict:
    """Test mAP, and CF1 / OF1 at the thresholds tuned on validation."""
    metrics = multilabel_metrics(scores, labels, threshold=np.asarray(thresholds))
    return {metric: metrics[metric] for metric in METRICS}


# ---------------------------------------------------------------------------------------------------------------
# SRN's runs: train_stages.py as a subprocess.
# ---------------------------------------------------------------------------------------------------------------


def run_srn(args, folder: Path, seed: int, extra_sets: list[str]) -> dict:
    """examples/train_stages.py (all four stages) into `folder`; its stage-4 test scores and tuned figures."""
    command = [
        sys.executable,
        str(TRAIN_STAGES),
        "--config",
        str(args.config),
        "--overwrite",
        "--output-dir",
        str(folder),
    ]
    for override in [*args.set, f"seed={seed}", "training.log_with=none", *extra_sets]:
        command += ["--set", override]
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
    }
    started, cpu_started = time.perf_counter(), children_cpu_seconds()
    with open(folder / "train.log", "w") as log:
        # In this process's working directory, like the peers: the recipe's relative paths name the same data.
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=environment)
    wall, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu_started
    report = json.loads((folder / "metrics.json").read_text())
    last = report["stages"][-1]
    predictions = load_file(folder / "predictions" / f"stage-{last['stage']}-test.safetensors")
    thresholds = ThresholdCalibration.from_dict(last["thresholds"]).thresholds
    record = {
        "peer": "srn",
        "seed": seed,
        "set": [override.replace(f"{REPOSITORY}{os.sep}", "") for override in extra_sets],  # no machine's path
        "validation_mAP": last["validation"]["mAP"],
        "thresholds": np.asarray(thresholds).tolist(),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "optimizer_steps": srn_optimizer_steps(
            load_recipe(args.config, args.set), report["dataset"]["splits"]["train"]
        ),
    }
    record.update(figures(predictions["scores"].double().numpy(), predictions["labels"].numpy(), thresholds))
    save_file({"scores": predictions["scores"], "labels": predictions["labels"]}, folder / "test-scores.safetensors")
    write_json(folder / "result.json", record)
    return record


def srn_optimizer_steps(recipe, train_images: int) -> int:
    """The optimizer steps of the recipe's four stages on `train_images` training images."""
    return sum(
        stage.epochs * math.ceil(math.ceil(train_images / stage.batch_size) / stage.gradient_accumulation_steps)
        for stage in (recipe.stage(number) for number in (1, 2, 3, 4))
    )


def children_cpu_seconds() -> float:
    """The CPU seconds (user and system, all threads) of this process's finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def budget_epochs(srn: dict, chosen: dict) -> int:
    """The epochs at which a peer trains for about SRN's compute: SRN's run (`srn`, its result) over the peer's
    seconds per epoch in its chosen run (`chosen`), in CPU seconds (all threads; wall seconds for a run that did
    not record them), rounded, at least 1."""
    clock = "cpu_seconds" if "cpu_seconds" in srn and "cpu_seconds" in chosen else "wall_seconds"
    return max(1, round(srn[clock] / (chosen[clock] / chosen["epochs"])))


# ---------------------------------------------------------------------------------------------------------------
# The benchmark: the search at one seed, then every seed's runs; each finished run is kept.
# ---------------------------------------------------------------------------------------------------------------


class Benchmark:
    """The recipe, the weights and (loaded on first need) the data of one benchmark invocation."""

    def __init__(self, args):
        self.args = args
        self.recipe = load_recipe(args.config, args.set)
        self.weights = None if args.report_only else resolve_weights(self.recipe, args.output_dir)
        self._data = None

    @property
    def data(self) -> Data:
        if self._data is None:
            self._data = load_data(self.recipe)
        return self._data

    def folder(self, peer: str, seed: int, lr: float | None = None, epochs: int | None = None) -> Path:
        """OUTPUT_DIR/seed-N/PEER/lr-LR-epochs-E for a peer's run; OUTPUT_DIR/seed-N/NAME for SRN's."""
        seed_dir = self.args.output_dir / f"seed-{seed}"
        return seed_dir / peer if lr is None else seed_dir / peer / f"lr-{lr:g}-epochs-{epochs}"

    def peer(self, peer: str, seed: int, lr: float, epochs: int) -> dict | None:
        """The finished run of `peer` at (seed, lr, epochs), trained now unless it is kept or `--report-only`."""
        folder = self.folder(peer, seed, lr, epochs)
        return self.kept_or_run(
            folder,
            lambda: run_peer(
                Setting(peer, lr, epochs, seed, folder), self.recipe, self.data, self.weights, self.args.output_dir
            ),
        )

    def srn(self, name: str, seed: int, extra_sets: list[str]) -> dict | None:
        folder = self.folder(name, seed)
        return self.kept_or_run(folder, lambda: run_srn(self.args, folder, seed, extra_sets))

    def srn_on(self, peer: str, seed: int, lr: float, epochs: int, name: str) -> dict | None:
        """SRN whose stage 1 trains f_cls alone on the backbone of `peer`'s run at (seed, lr, epochs), kept as
        OUTPUT_DIR/seed-N/NAME. Where that peer run was kept without its weights (trained on another machine), it is
        trained again first."""
        weights = self.folder(peer, seed, lr, epochs) / "model.safetensors"
        kept = (self.folder(name, seed) / "result.json").exists()
        if not (kept or weights.exists() or self.args.report_only):
            (weights.parent / "result.json").unlink(missing_ok=True)
            self.peer(peer, seed, lr, epochs)
        if not (kept or weights.exists()):
            return None
        return self.srn(name, seed, [f"model.pretrained_weights={weights}", "stage1.backbone_lr=0.0"])

    def kept_or_run(self, folder: Path, train) -> dict | None:
        result_file = folder / "result.json"
        if result_file.exists():
            return json.loads(result_file.read_text())
        if self.args.report_only:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{folder.relative_to(self.args.output_dir)}: training", flush=True)
        result = train()
        print(
            f"{folder.relative_to(self.args.output_dir)}: validation mAP {result['validation_mAP']:.2f}, test mAP "
            f"{result['mAP']:.2f}, {result['wall_seconds'] / 60:.1f} min",
            flush=True,
        )
        return result

    def budget(self, peer: str, seed: int, chosen: dict) -> int | None:
        """The epochs of `peer`'s run at SRN's wall time of `seed` ([`budget_epochs`]); None until SRN's run and the
        peer's chosen run at that seed are finished."""
        srn_file = self.folder("srn", seed) / "result.json"
        chosen_file = self.folder(peer, seed, chosen["lr"], chosen["epochs"]) / "result.json"
        if not (srn_file.exists() and chosen_file.exists()):
            return None
        return budget_epochs(json.loads(srn_file.read_text()), json.loads(chosen_file.read_text()))

    def search(self, peer: str) -> dict | None:
        """The grid of `--lrs` x `--epochs` at the search seed; the setting with the best validation mAP."""
        grid = [
            (lr, epochs, self.peer(peer, self.args.search_seed, lr, epochs))
            for lr in self.args.lrs
            for epochs in self.args.epochs
        ]
        rows = [
            {
                "lr": lr,
                "epochs": epochs,
                "validation_mAP": result["validation_mAP"] if result else None,
                "test_mAP": result["mAP"] if result else None,  # shown, never used for the choice
            }
            for lr, epochs, result in grid
        ]
        done = [row for row in rows if row["validation_mAP"] is not None]
        if not done:
            return None
        return {
            "grid": rows,
            "complete": len(done) == len(rows),
            "chosen": max(done, key=lambda row: row["validation_mAP"]),
        }

    def run(self, peers: list[str]) -> dict:
        """The search of every peer, then for each seed: the peers, SRN, SRN on the best peer, the peers at SRN's
        compute (as `--runs` asks). Returns the searches and the best peer."""
        # The grid point by point for all peers (an interrupted search leaves comparable runs), then the choices.
        for epochs in self.args.epochs:
            for lr in self.args.lrs:
                for peer in peers:
                    self.peer(peer, self.args.search_seed, lr, epochs)
        searches = {peer: self.search(peer) for peer in peers}
        searched = {peer: search for peer, search in searches.items() if search}
        best = max(searched, key=lambda peer: searched[peer]["chosen"]["validation_mAP"]) if searched else None
        for seed in self.args.seeds:
            for peer, search in searched.items():
                self.peer(peer, seed, search["chosen"]["lr"], search["chosen"]["epochs"])
            if "srn" in self.args.runs:
                self.srn("srn", seed, [])
            if "srn-on-best-peer" in self.args.runs and best:
                chosen = searched[best]["chosen"]
                self.srn_on(best, seed, chosen["lr"], chosen["epochs"], f"srn-on-{best}")
            for peer, lr, epochs in self.args.srn_on:
                self.peer(peer, seed, lr, epochs)
                self.srn_on(peer, seed, lr, epochs, srn_on_folder_name(peer, lr, epochs))
            if "budget" in self.args.runs:
                for peer, search in searched.items():
                    epochs = self.budget(peer, seed, search["chosen"])
                    if epochs is not None:  # the chosen run itself where it already takes SRN's time
                        self.peer(peer, seed, search["chosen"]["lr"], epochs)
        return {"searches": searches, "best_peer": best}


# ---------------------------------------------------------------------------------------------------------------
# The report: every variant over the seeds, and every difference with its paired bootstrap interval.
# ---------------------------------------------------------------------------------------------------------------


def f1_difference(
    scores_a,
    thresholds_a,
    scores_b,
    thresholds_b,
    labels,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> dict:
    """CF1 and OF1 of `scores_b` minus those of `scores_a`, each at its own thresholds, in points, with a paired
    bootstrap interval over the images (percentile method): both predictions resampled together, image by image."""
    from srn_hf.metrics import image_counts_of, predicted_labels

    positives = np.asarray(labels) > 0.5
    resamples = np.random.default_rng(seed).integers(0, len(positives), (n_resamples, len(positives)))
    counts = image_counts_of(resamples, len(positives), dtype=np.float64).T  # (R, N)
    resampled = []
    for scores, thresholds in ((scores_a, thresholds_a), (scores_b, thresholds_b)):
        predicted = predicted_labels(np.asarray(scores), np.asarray(thresholds), strict=False, top_k=None)
        sums = [counts @ values for values in (predicted & positives, predicted, positives)]
        resampled.append(
            [
                {**per_class_figures(tp, pred, pos, False), **overall_figures(tp, pred, pos, False)}
                for tp, pred, pos in zip(*sums)
            ]
        )
    tail = 100 * (1 - confidence_level) / 2
    result = {}
    for metric in ("CF1", "OF1"):
        point = figures(scores_b, labels, thresholds_b)[metric] - figures(scores_a, labels, thresholds_a)[metric]
        spread = [100 * (b[metric] - a[metric]) for a, b in zip(*resampled)]
        low, high = np.percentile(spread, [tail, 100 - tail])
        result[metric] = {"difference": point, "low": float(low), "high": float(high)}
    return result


def variant_runs(benchmark: Benchmark, plan: dict) -> dict[str, dict[int, dict]]:
    """`{variant: {seed: result}}` of the finished runs, with their test scores loaded (`scores`, `labels`)."""
    searched = {peer: search["chosen"] for peer, search in plan["searches"].items() if search}
    variants = {}
    for seed in benchmark.args.seeds:
        folders = {
            peer: benchmark.folder(peer, seed, chosen["lr"], chosen["epochs"]) for peer, chosen in searched.items()
        }
        folders["SRN"] = benchmark.folder("srn", seed)
        if plan["best_peer"]:
            folders[f"SRN on {plan['best_peer']}"] = benchmark.folder(f"srn-on-{plan['best_peer']}", seed)
        for peer, lr, epochs in benchmark.args.srn_on:
            folders[setting_name(peer, lr, epochs)] = benchmark.folder(peer, seed, lr, epochs)
            folders[f"SRN on {setting_name(peer, lr, epochs)}"] = benchmark.folder(
                srn_on_folder_name(peer, lr, epochs), seed
            )
        for peer, chosen in searched.items():
            epochs = benchmark.budget(peer, seed, chosen)
            if epochs is not None and epochs != chosen["epochs"]:  # else the chosen run is the budget run
                folders[f"{peer} (SRN's time)"] = benchmark.folder(peer, seed, chosen["lr"], epochs)
        for name, folder in folders.items():
            if (folder / "result.json").exists():
                result = json.loads((folder / "result.json").read_text())
                result.update(
                    {
                        key: value.double().numpy()
                        for key, value in load_file(folder / "test-scores.safetensors").items()
                    }
                )
                variants.setdefault(name, {})[seed] = result
    return variants


def setting_name(peer: str, lr: float, epochs: int) -> str:
    """The report's name of a peer's run at a setting named by `--srn-on`."""
    return f"{peer} (lr {lr:g}, {epochs} epochs)"


def srn_on_folder_name(peer: str, lr: float, epochs: int) -> str:
    return f"srn-on-{peer}-lr-{lr:g}-epochs-{epochs}"


def differences(variants: dict) -> list[dict]:
    """Per seed, with intervals: SRN minus every peer (and budget) variant; each "SRN on X" minus X and minus SRN."""
    bases = {f"SRN on {name}": name for name in variants if f"SRN on {name}" in variants}
    pairs = [("SRN", name) for name in variants if name != "SRN" and name not in bases]
    pairs += [(on, reference) for on, base in bases.items() for reference in (base, "SRN")]
    rows = []
    for variant, reference in pairs:
        seeds = sorted(set(variants.get(variant, {})) & set(variants.get(reference, {})))
        runs = []
        for seed in seeds:
            a, b = variants[reference][seed], variants[variant][seed]
            runs.append(
                {
                    "seed": seed,
                    "mAP": map_difference(a["scores"], b["scores"], b["labels"]),
                    **f1_difference(a["scores"], a["thresholds"], b["scores"], b["thresholds"], b["labels"]),
                }
            )
        if runs:
            rows.append({"variant": variant, "minus": reference, "runs": runs})
    return rows


def summarise(benchmark: Benchmark, plan: dict) -> dict:
    variants = variant_runs(benchmark, plan)
    table = {}
    for name, seeds in variants.items():
        values = {
            metric: [run.get(metric, math.nan) for run in seeds.values()]
            for metric in (*METRICS, "wall_seconds", "cpu_seconds")
        }
        first = next(iter(seeds.values()))
        table[name] = {
            "seeds": sorted(seeds),
            "lr": first.get("lr"),
            "epochs": first.get("epochs"),
            "optimizer_steps": first.get("optimizer_steps"),
            **{key: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": v} for key, v in values.items()},
        }
    return {"variants": table, "differences": differences(variants), **plan}


def interval_text(entry: dict) -> str:
    return f"{entry['difference']:+.2f} [{entry['low']:+.2f}, {entry['high']:+.2f}]"


def markdown(results: dict) -> str:
    """The tables: every variant over the seeds; every difference per seed; the search."""
    lines = [
        "| variant | seeds | lr | epochs | optimizer steps | test mAP | test CF1 | test OF1 | wall time per run (min) "
        "| CPU time per run (min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["variants"].items():
        spread = len(row["seeds"]) > 1  # one seed has no spread to show
        cells = [f"{row[m]['mean']:.2f}" + (f" ± {row[m]['std']:.2f}" if spread else "") for m in METRICS]
        lr = "recipe" if row["lr"] is None else f"{row['lr']:g}"
        lines.append(
            f"| {name} | {', '.join(map(str, row['seeds']))} | {lr} | {row['epochs'] or 'recipe'} | "
            f"{row['optimizer_steps']} | " + " | ".join(cells) + f" | {row['wall_seconds']['mean'] / 60:.1f} | "
            f"{row['cpu_seconds']['mean'] / 60:.1f} |"
        )
    lines += [
        "",
        "mean ± standard deviation over the seeds (one seed: its figure); CF1 and OF1 at per-label thresholds tuned "
        "on the validation split",
        "",
    ]
    lines += [
        "| difference (points) | seed | test mAP [95 % paired bootstrap interval] | test CF1 | test OF1 |",
        "|---|---|---|---|---|",
    ]
    for row in results["differences"]:
        for run in row["runs"]:
            lines.append(
                f"| {row['variant']} minus {row['minus']} | {run['seed']} | {interval_text(run['mAP'])} | "
                f"{interval_text(run['CF1'])} | {interval_text(run['OF1'])} |"
            )
    lines += [
        "",
        "| search at the search seed: validation mAP (test mAP, not used for the choice) | "
        + " | ".join(f"lr {lr:g}" for lr in results["lrs"])
        + " |",
        "|---|" + "---|" * len(results["lrs"]),
    ]
    for peer, search in results["searches"].items():
        for epochs in results["epochs"]:
            cells = []
            for lr in results["lrs"]:
                row = next((r for r in (search or {}).get("grid", []) if r["lr"] == lr and r["epochs"] == epochs), None)
                done = row is not None and row["validation_mAP"] is not None
                cells.append(f"{row['validation_mAP']:.2f} ({row['test_mAP']:.2f})" if done else "-")
            lines.append(f"| {peer}, {epochs} epoch(s) | " + " | ".join(cells) + " |")
    lines += ["", f"best peer (validation mAP at the search seed): {results['best_peer']}"]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Two panels: each variant's test mAP per seed (dots) and mean (bar); each difference of the tables per seed
    with its interval, beside the paper's +1.9 (SRN's gain on MS-COCO, the goal over the best peer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (scores_axis, gain_axis) = plt.subplots(1, 2, figsize=(14, 5.6))
    plot_seed_scores(scores_axis, {name: row["mAP"]["per_seed"] for name, row in results["variants"].items()})
    rows = {
        f"{row['variant']} minus {row['minus']}": [{"seed": run["seed"], **run["mAP"]} for run in row["runs"]]
        for row in results["differences"]
    }
    plot_intervals(gain_axis, rows, ylabel="test mAP difference (points)", title="differences (95 % paired bootstrap)")
    gain_axis.axhline(1.9, color="tab:green", linestyle="--", linewidth=1, label="+1.9 (the goal)")
    gain_axis.legend(fontsize=8)
    title = f"{results['dataset'] or 'the demo'}: SRN against the peers"
    figure.suptitle(title)
    for axis in (scores_axis, gain_axis):
        axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def versions() -> dict:
    """The libraries whose code paths the peers run, and the machine (benchmarks/benchmark_utils.py)."""
    import accelerate
    import transformers

    return {
        **machine_description(),
        "accelerate": accelerate.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
    }


# The numbers of the command line, checked as the recipe's are (`srn_hf.recipe.Range`): refused in one line naming the
# flag and the value.
FLAG_RANGES = {
    "seeds": Range(0, 2**32),
    "search_seed": Range(0, 2**32),
    "lrs": Range(0, low_open=True),
    "epochs": Range(1),
    "threads": Range(1),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="recipe of train_stages.py (default: the demo)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, as train_stages.py's"
    )
    parser.add_argument(
        "--dataset",
        default="demo",
        help="the stamp-scene variant trained on (benchmarks/datasets.json), with runs and tables of its own (default: "
        "demo, the recipe's data as it is)",
    )
    parser.add_argument("--peers", nargs="*", default=list(PEERS), help=f"among {', '.join(PEERS)} (default: all)")
    parser.add_argument(
        "--runs",
        nargs="*",
        default=["srn", "srn-on-best-peer", "budget"],
        help="besides the peers: srn, srn-on-best-peer, budget (default: all)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--search-seed", type=int, default=0, help="the seed of the search (default 0)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3], help="learning rates searched")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3], help="epoch counts searched")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="the runs, OUTPUT_DIR/seed-N/RUN (default: benchmarks/results/peers-runs, whose result files git keeps; "
        "for --dataset NAME, peers-runs-NAME)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="peers.json, peers.md, peers.png (default: benchmarks/results; for --dataset NAME: results/peers-NAME)",
    )
    parser.add_argument(
        "--srn-on",
        nargs="+",
        default=[],
        metavar="PEER:LR:EPOCHS",
        help="also SRN on the backbone of these peer settings (each seed), besides the best peer's",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each training")
    parser.add_argument("--report-only", action="store_true", help="no training: the tables of the finished runs")
    args = parser.parse_args(argv)
    select_dataset(args)
    check_peers(args.peers)
    for name, allowed in FLAG_RANGES.items():
        values = getattr(args, name)
        for value in values if isinstance(values, list) else [values]:
            allowed.check(value, f"--{name.replace('_', '-')}")
    args.srn_on = [parse_setting(text) for text in args.srn_on]
    unknown = sorted(set(args.runs) - {"srn", "srn-on-best-peer", "budget"})
    if unknown:
        raise BenchmarkError(f"--runs: unknown run {unknown[0]!r} (known: srn, srn-on-best-peer, budget)")
    return args


def select_dataset(args: argparse.Namespace) -> None:
    """`--dataset NAME`: the recipe's data become that stamp-scene variant, generated on first use into a folder of
    its own (data/stamp_scenes-NAME, which holds no other variant: `load_stamp_scenes` refuses one), its `--set`
    first so that the command's own `--set` still wins; its runs and tables go to folders of their own, so that no
    run of another dataset is resumed or overwritten. The demo (the default) leaves the recipe's data as they are."""
    if args.dataset not in VARIANTS:
        raise BenchmarkError(f"--dataset: unknown dataset {args.dataset!r} (known: {', '.join(VARIANTS)})")
    results = Path(__file__).parent / "results"
    if args.dataset != "demo":
        options = f"{{variant: {args.dataset}, path: data/stamp_scenes-{args.dataset}, generate: true}}"
        # (whole: the demo recipe's limit on its own training images is the demo's, not the variant's)
        args.set = ["data.kind=stamp_scenes", f"data.options={options}", "data.max_train_samples=null", *args.set]
    suffix = "" if args.dataset == "demo" else f"-{args.dataset}"
    args.output_dir = args.output_dir or results / f"peers-runs{suffix}"
    args.results_dir = args.results_dir or (results / f"peers{suffix}" if suffix else results)


def parse_setting(text: str) -> tuple[str, float, int]:
    """`PEER:LR:EPOCHS` of `--srn-on`, e.g. `trainer:1e-3:3`, its numbers in the ranges of `--lrs` and `--epochs`."""
    try:
        peer, lr, epochs = text.split(":")
        lr, epochs = float(lr), int(epochs)
    except ValueError:
        raise BenchmarkError(f"--srn-on {text!r}: expected PEER:LR:EPOCHS, e.g. trainer:1e-3:3") from None
    FLAG_RANGES["lrs"].check(lr, f"--srn-on {text!r}: LR")
    FLAG_RANGES["epochs"].check(epochs, f"--srn-on {text!r}: EPOCHS")
    check_peers([peer], "--srn-on")
    return peer, lr, epochs


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    benchmark = Benchmark(args)  # refuses a backbone without weights before anything trains
    plan = benchmark.run(args.peers)
    results = summarise(benchmark, plan)
    if not results["variants"]:
        raise BenchmarkError(f"no finished run under {args.output_dir}")
    config = args.config.resolve()
    results.update(
        lrs=args.lrs,
        epochs=args.epochs,
        search_seed=args.search_seed,
        versions=versions(),
        dataset=args.dataset,
        recipe={
            "config": str(config.relative_to(REPOSITORY) if config.is_relative_to(REPOSITORY) else config),
            "set": args.set,
        },
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "peers.json").write_text(json.dumps(results, indent=2, default=float))
    table = markdown(results)
    (args.results_dir / "peers.md").write_text(table + "\n")
    plot(results, args.results_dir / "peers.png")
    print(table)
    return results


if __name__ == "__main__":
    try:
        main()
    except (BenchmarkError, RecipeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
