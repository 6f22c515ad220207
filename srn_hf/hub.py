"""Publishing a trained SRN on the Hugging Face Hub: a Hub-ready folder with its model card, pushed in one commit.

[`write_hub_folder`] turns a folder written by `save_pretrained` (for instance the final model of
`examples/train_stages.py`) into the folder a Hub repository should hold:

    config.json                  the SRNConfig, with an `auto_map` for AutoConfig, AutoModel and
                                 AutoModelForImageClassification
    model.safetensors            the weights of SRNForImageClassification
    configuration_srn.py         the remote code, run by `trust_remote_code=True` where srn_hf is not installed
    modeling_srn.py
    preprocessor_config.json     the image processor (the model folder's own, else `processing.create_image_processor`)
    attention_maps.png           the label attention maps A of one image of the model's own data (the training run's
                                 first test image, with its true labels), or of `example_image`; absent without either
    examples.json, examples/     the training run's example images of its own data with their true labels
                                 ([`srn_hf.showcase`]), which the demo page of the published model shows
    training_curves.png          the run's loss and validation mAP per epoch, when the run drew them
    README.md                    the model card, rendered from the template `model_card.md`

The card's YAML metadata (library, pipeline tag, tags, license, datasets, and a `model-index` holding the final
stage's figures) is written through huggingface_hub's `ModelCardData`, so that the Hub parses it as its own
code does. Its figures come only from the training run's `metrics.json` (see below); without one the card
says that no evaluation was published, and holds no number.

[`publish`] writes that folder to a temporary directory and pushes all of it in one commit with
`HfApi.create_repo` and `HfApi.create_commit` (the token from `token=`, `HF_TOKEN` or `hf auth login`);
`dry_run_dir=` writes the same folder to disk and pushes nothing.

`metrics.json` is the training run's, beside the model or in its parent folder; its format is in
[`srn_hf.model_folder`], which loads and checks model folders. How the model's own thresholds were chosen comes from
its config (`threshold_calibration`).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import CommitInfo, CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id

from . import __version__
from .configuration_srn import AUTO_MAP, SRNConfig, config_label_names
from .metrics import METRIC_NAMES, THRESHOLDED_FIGURES, multilabel_metrics

# Moved to srn_hf.model_folder (loading and checking model folders); still importable from here for one release.
from .model_folder import (  # noqa: F401
    METRICS_FILE,
    PREPROCESSOR_FILE,
    WEIGHTS_FILES,
    MissingModelFileError,
    ModelFolderError,
    check_label_count,
    check_model_folder,
    check_weight_shapes,
    copy_splits_file,
    is_local_model,
    load_image_processor,
    load_model,
    load_training_metrics,
    one_line,
    weights_files,
)
from .modeling_srn import SRNForImageClassification
from .stages import PAPER_NAMES, STAGES
from .thresholds import tuned_on

# The template of the model card (Jinja, rendered by `ModelCard.from_template`): model_card.md at the repository's
# root, reached through the link srn_hf/model_card.md, which wheels carry as a file.
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"
TRAINING_CURVES = "training_curves.png"  # drawn by examples/train_stages.py beside metrics.json
ATTENTION_IMAGE = "attention_maps.png"
# The remote code that `save_pretrained` copies beside the weights: the modules named in config.json's auto_map.
REMOTE_CODE_FILES = tuple(sorted({f"{reference.split('.')[0]}.py" for reference in AUTO_MAP.values()}))

# Keys of a training configuration whose values are places on the training machine: never published.
LOCAL_SETTING_SUFFIXES = ("_dir", "_path", "_file", "_root", "_files")


@dataclass
class CardOptions:
    """What the model card states beyond the model and its training run: its metadata, and the template.

    Attributes:
        license: license of the weights, a Hub license id.
        datasets: Hub ids of the training datasets (the first names the dataset of the card's `model-index`).
        base_model: Hub id of the backbone weights training started from.
        tags: extra tags of the card.
        template_path: another Jinja template than the repository's `model_card.md`.
    """

    license: str = "apache-2.0"
    datasets: list[str] | None = None
    base_model: str | None = None
    tags: list[str] | None = None
    template_path: str | os.PathLike | None = None


def published_settings(recipe: dict, prefix: str = "") -> list[tuple[str, str]]:
    """The training configuration as `(dotted name, value)` rows, without places on the training machine.

    Settings named like a folder or a file (`output_dir`, `data_path`, ...) and values that are absolute paths are
    left out: the card must not publish the layout of the machine that trained the model.
    """
    rows = []
    for name, value in recipe.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict):
            rows.extend(published_settings(value, prefix=f"{dotted}."))
        elif str(name).endswith(LOCAL_SETTING_SUFFIXES) or (isinstance(value, str) and looks_like_local_path(value)):
            continue
        else:
            rows.append((dotted, "—" if value is None else value if isinstance(value, str) else json.dumps(value)))
    return rows


def looks_like_local_path(value: str) -> bool:
    """True for an absolute or home-relative file-system path (POSIX or Windows)."""
    return os.path.isabs(value) or value.startswith("~") or (len(value) > 2 and value[1:3] in (":\\", ":/"))


def format_percent(value) -> str:
    """A figure in percent with one decimal, or an em dash when it is missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{float(value):.1f}"


def format_parameters(model: torch.nn.Module) -> str:
    """The number of parameters, in millions."""
    return f"{sum(parameter.numel() for parameter in model.parameters()) / 1e6:.1f} M"


def evaluation_of(metrics: dict | None) -> tuple[dict | None, str | None]:
    """The final stage's figures and their split: `test` when the run has them, else `validation`."""
    if metrics is None:
        return None, None
    final = metrics["stages"][-1]
    split = "test" if "test" in final else "validation"
    return final, split


def card_data(
    model: SRNForImageClassification, repo_id: str, metrics: dict | None, options: CardOptions
) -> ModelCardData:
    """The card's YAML metadata; `model-index` holds the final stage's figures when `metrics` is given."""
    config = model.config
    eval_results = None
    final, split = evaluation_of(metrics)
    if final is not None:
        dataset_name = metrics["dataset"]["name"]
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Multi-label image classification",
                dataset_type=options.datasets[0] if options.datasets else dataset_name,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=name,
                metric_name=f"{name}: {description}",
                metric_value=round(float(final[split][name]), 2),
            )
            for name, description in METRIC_NAMES.items()
            if final[split][name] is not None  # a figure that could not be computed is left out, never invented
        ]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=options.license,
        datasets=options.datasets or None,
        base_model=options.base_model,
        tags=[
            *model.model_tags,
            "image-classification",
            "multi-label-image-classification",
            config.backbone,
            *(options.tags or []),
        ],
        model_name=repo_id.split("/")[-1] if eval_results else None,  # the name of the model-index only
        eval_results=eval_results,
    )


def thresholds_description(config: SRNConfig) -> str:
    """How the config's decision thresholds were chosen, from its `threshold_calibration` (see `srn_hf.thresholds`)."""
    calibration = getattr(config, "threshold_calibration", None)
    if calibration and calibration.get("reset"):  # a checkpoint loaded for another label set (SRNConfig.from_dict)
        return f"The decision threshold is the default, {config.threshold} for every label: {calibration['reset']}."
    if not calibration:
        per_label = " (and the per-label values of `config.label_thresholds`)" if config.label_thresholds else ""
        return f"The decision threshold was set, not tuned on data: {config.threshold} for every label{per_label}."
    target = calibration["criterion"].partition(":")[2]
    rule = (
        "each label's threshold maximises the label's F1 there, and the global `threshold` maximises OF1"
        if calibration["criterion"] == "f1"
        else f"each label's threshold is the lowest whose precision reaches {target} there (the highest recall), and "
        f"the global `threshold` the lowest whose OP reaches it"
    )
    fallback = calibration.get("fallback_labels") or []
    fallback_text = (
        f"{len(fallback)} label(s) with too few positive images there (fewer than {calibration['min_positives']}) "
        f"use the global threshold: {', '.join(fallback)}."
        if fallback
        else f"Every label had at least {calibration['min_positives']} positive images there."
    )
    return (
        f"The decision thresholds in `config.json` were tuned with `srn_hf.thresholds` on {tuned_on(calibration)}: "
        f"{rule}. {fallback_text}"
    )


def metric_defaults() -> str:
    """How `examples/train_stages.py` computes its figures: `multilabel_metrics` with its default arguments."""
    parameters = inspect.signature(multilabel_metrics).parameters
    return ", ".join(f"{name}={parameters[name].default!r}" for name in ("threshold", "convention"))


def evaluation_context(metrics: dict | None, labels: list[str]) -> dict:
    """The card's evaluation tables from `metrics.json`: empty when there is none (the card then shows no figure)."""
    final, split = evaluation_of(metrics)
    if final is None:
        return {}
    dataset = metrics["dataset"]
    figures = final[split]
    per_class_ap = figures.get("per_class_AP") or []
    if isinstance(per_class_ap, dict):
        per_class_ap = [per_class_ap.get(label) for label in labels]
    per_class_rows = [
        {"label": label, "ap": format_percent(ap) if ap is not None else "— (no positive image)"}
        for label, ap in sorted(zip(labels, per_class_ap), key=lambda item: -(item[1] if item[1] is not None else -1))
    ]
    return {
        "dataset": dataset,
        "final_stage": final,
        "evaluated_split": split,
        "evaluated_images": dataset.get("splits", {}).get(split, "?"),
        "final_metrics": {name: format_percent(figures.get(name)) for name in METRIC_NAMES},
        "stage_rows": [
            {
                "stage": stage["stage"],
                "prediction": stage.get("prediction", "?"),
                "paper_name": PAPER_NAMES.get(stage.get("prediction"), "?"),
                "best_epoch": f"{stage.get('best_epoch', '—')}{' (EMA)' * (stage.get('best_weights') == 'EMA')}",
                "validation_map": format_percent((stage.get("validation") or {}).get("mAP")),
                "metrics": {name: format_percent((stage.get(split) or {}).get(name)) for name in METRIC_NAMES},
            }
            for stage in metrics["stages"]
        ],
        "per_class_rows": per_class_rows,
        "learning_rate_searches": [
            {
                "stage": stage["stage"],
                "chosen": f"{stage['lr_search']['chosen_lr']:g}",
                "trials": "; ".join(
                    f"{trial['lr']:g}: {format_percent(trial['validation_mAP'])}"
                    for trial in stage["lr_search"]["trials"]
                ),
            }
            for stage in metrics["stages"]
            if "chosen_lr" in stage.get("lr_search", {})
        ],
        **calibrated_context(metrics, split),
    }


def calibrated_context(metrics: dict, split: str) -> dict:
    """The card's rows at the thresholds tuned on validation (a run's `test_calibrated` figures), test split only."""
    stages = [stage for stage in metrics["stages"] if split == "test" and stage.get("test_calibrated")]
    if not stages:
        return {}
    rows = [
        {
            "stage": stage["stage"],
            "paper_name": PAPER_NAMES.get(stage.get("prediction"), "?"),
            "metrics": {name: format_percent(stage["test"].get(name)) for name in METRIC_NAMES},
            "calibrated": {name: format_percent(stage["test_calibrated"].get(name)) for name in THRESHOLDED_FIGURES},
        }
        for stage in stages
    ]
    final = metrics["stages"][-1]
    return {
        "calibrated_stage_rows": rows,
        "thresholded_names": ["CF1", "OF1"],
        "final_calibrated_metrics": rows[-1]["calibrated"] if final.get("test_calibrated") else None,
    }


def recipe_context(metrics: dict | None) -> dict:
    """The training recipe stage by stage (the paper's table in `srn_hf.stages`, with this run's settings)."""
    recipe = dict((metrics or {}).get("recipe") or {})
    stage_settings = {number: recipe.pop(f"stage{number}", None) for number in STAGES}
    rows = [
        {
            "stage": stage.number,
            "trained": ", ".join(stage.trained),
            "frozen": ", ".join(stage.frozen) or "nothing",
            "loss": " + ".join(f"L({PAPER_NAMES[term]})" for term in stage.loss_terms),
            "prediction": stage.prediction,
            "settings": dict(published_settings(stage_settings[stage.number] or {})),
        }
        for stage in STAGES.values()
    ]
    setting_names = list(dict.fromkeys(name for row in rows for name in row["settings"]))
    changes = [
        {
            **change,
            "changes": {
                key: values for key, values in change["changes"].items() if not looks_like_local_path(str(values[1]))
            },
        }
        for change in (metrics or {}).get("recipe_changes") or []
    ]  # each --resume that changed the recipe (not a moved folder: places on the training machine stay out)
    return {
        "recipe_rows": rows,
        "stage_setting_names": setting_names,
        "recipe_settings": published_settings(recipe),
        "recipe_changes": [change for change in changes if change["changes"]],
    }


def card_template(options: CardOptions) -> Path:
    """The Jinja template of the card: `options.template_path`, else `model_card.md`; refused when missing."""
    template_path = Path(options.template_path or MODEL_CARD_TEMPLATE)
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template {template_path} does not exist")
    return template_path


def render_model_card(
    model: SRNForImageClassification,
    image_processor,
    repo_id: str,
    metrics: dict | None = None,
    attention_image: str | None = None,
    attention_caption: str = "",
    training_curves: str | None = None,
    options: CardOptions | None = None,
) -> ModelCard:
    """The model card of `model`, rendered from the template `model_card.md` (or `options.template_path`).

    `metrics` is the training run's `metrics.json` (see the module docstring) or None for a plain model folder.
    """
    options = options or CardOptions()
    template_path = card_template(options)
    config = model.config
    labels = config_label_names(config)
    return ModelCard.from_template(
        card_data(model, repo_id, metrics, options),
        template_path=str(template_path),
        srn_hf_version=__version__,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        backbone=config.backbone,
        backbone_kwargs=config.backbone_kwargs,
        image_size=config.image_size,
        image_mean=[round(value, 4) for value in image_processor.image_mean],
        image_std=[round(value, 4) for value in image_processor.image_std],
        attention_map_size=model.srn.attention_map_size,
        attention_feature_index=config.attention_feature_index,
        classifier_feature_index=config.classifier_feature_index,
        layout=config.layout,
        use_batch_norm=config.use_batch_norm,
        alpha=config.alpha,
        threshold=config.threshold,
        threshold_text=f"{config.threshold:.4g}",
        label_thresholds=config.label_thresholds,
        thresholds_text=thresholds_description(config),
        num_labels=config.num_labels,
        labels=labels,
        parameters=format_parameters(model),
        metric_names=list(METRIC_NAMES),
        attention_image=attention_image,
        attention_caption=attention_caption,
        training_curves=training_curves,
        metric_defaults=metric_defaults(),
        **recipe_context(metrics),
        **evaluation_context(metrics, labels),
    )


def check_labels(model: SRNForImageClassification, metrics: dict | None, metrics_file: Path | None) -> None:
    """Refuses a `metrics.json` whose label names are not the model's: its figures would belong to another model."""
    names = (metrics or {}).get("dataset", {}).get("label_names")
    labels = config_label_names(model.config)
    if names is not None and list(names) != labels:
        raise ValueError(
            f"{metrics_file}: dataset.label_names ({len(names)} labels: {', '.join(map(str, names[:5]))}, ...) "
            f"are not the model's id2label ({len(labels)} labels: {', '.join(labels[:5])}, ...): "
            "the figures are not this model's"
        )


def example_image_source(example_image=None, examples: list | None = None) -> tuple | None:
    """`(RGB image, words for the card, its true labels or None)` of the attention-map picture: `example_image` (a
    path or a PIL image) when given; else the first of `examples`, the model's own that its training run kept
    ([`srn_hf.showcase.local_examples`]: the first image of its test split, or of validation without one, with its
    true labels); else None, and the card has no picture. A bad file raises `ImageError` naming it."""
    from .images import open_image

    if isinstance(example_image, (str, os.PathLike)):
        return open_image(example_image), f"the image {Path(example_image).name}", None
    if example_image is not None:
        return open_image(example_image), "an example image", None
    if not examples:
        return None
    first = examples[0]
    return (
        open_image(first.path),
        f"image {first.image_id} of the training run's {first.split} split",
        list(first.labels),
    )


def write_attention_image(
    model: SRNForImageClassification,
    image_processor,
    path: Path,
    image,
    source: str,
    true_labels: list[str] | None,
    num_labels: int = 4,
) -> str:
    """Draws the attention maps A of the `num_labels` labels the model scores highest on `image` (an RGB image,
    described for the caption by `source`, with its `true_labels` when known: what [`example_image_source`] gives);
    returns a caption. The labels are the best-scored ones whatever the threshold, so that the picture is never empty.
    """
    from transformers import pipeline

    from .pipeline_srn import TASK
    from .visualize import save_attention_overlay

    tagger = pipeline(TASK, model=model, image_processor=image_processor, trust_remote_code=False)
    top_k = min(num_labels, model.config.num_labels)
    predictions = tagger(image, threshold=0.0, top_k=top_k, return_attention_maps=True)
    truth = None if true_labels is None else f"true: {', '.join(true_labels) or 'no label'}"
    save_attention_overlay(image, predictions, path, title=truth or "example image")
    return (
        f"Attention maps A of the {top_k} labels this model scores highest on {source}"
        + (
            f" (its true labels: {', '.join(true_labels) or 'none'}, above the image)"
            if true_labels is not None
            else ""
        )
        + ", each scaled to its own maximum; the sigmoid score is beside each label."
    )


def write_hub_folder(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    repo_id: str,
    metrics: str | os.PathLike | None = None,
    example_image=None,
    card: CardOptions | None = None,
) -> Path:
    """Writes to `out_dir` everything the Hub repository `repo_id` should hold for the model saved in `model_dir`.

    The folder is written under a temporary name beside it (`srn_hf.storage.atomic_folder`) and renamed once
    complete: a failure or a kill half-way leaves `out_dir` as it was, never a half-written model folder. A full disk
    or a refused write raises `srn_hf.storage.StorageError` naming the folder and the free space.

    Args:
        model_dir: a folder written by `save_pretrained` of an SRN model.
        metrics: the training run's `metrics.json`, which gives the card's figures and recipe; by default the one
            in `model_dir` or its parent, if any. Its `training_curves.png`, if any, is published too.
        out_dir: the folder to write, created if needed; it must be empty (all of it is uploaded).
        repo_id: `"org/name"`, used in the card's code and `model-index`.
        example_image: image (path or PIL image) of the attention-map picture; by default the image of the model's
            own data that the training run kept (its first test image, with its true labels), else no picture.
        card: the card's metadata and template ([`CardOptions`]; its defaults when None).

    Returns:
        `out_dir`, holding config.json (with `auto_map`), model.safetensors, configuration_srn.py, modeling_srn.py,
        preprocessor_config.json, README.md, (with an example image) attention_maps.png, (with the run's
        examples) examples.json and examples/, and (when `model_dir` has it) the run's splits.json.
    """
    from .showcase import copy_examples, local_examples
    from .storage import atomic_folder

    validate_repo_id(repo_id)
    out_dir = require_empty_folder(out_dir)
    model = load_model(model_dir)
    check_auto_map(model_dir)
    image_processor = load_image_processor(model_dir, model.config)
    metrics, metrics_file = load_training_metrics(model_dir, metrics)
    check_labels(model, metrics, metrics_file)
    card_template(card or CardOptions())  # a missing template or a bad image is named before anything is written
    examples = local_examples(model_dir)
    example = example_image_source(example_image, examples)
    training_curves = metrics_file.parent / TRAINING_CURVES if metrics_file is not None else None
    with atomic_folder(out_dir) as folder:
        write_hub_files(folder, model, image_processor, repo_id, metrics, training_curves, example, card)
        if examples:  # the run's own example images, for the demo page of the published model (srn_hf.app)
            copy_examples(examples, folder)
        copy_splits_file(model_dir, folder)  # which images the run trained, validated and tested on
    return out_dir


def check_auto_map(model_dir: str | os.PathLike) -> None:
    """Refuses (a `ValueError` naming the file and the entries) a model folder's config.json whose `auto_map` names
    other classes than srn_hf's own (`AUTO_MAP`: configuration_srn.SRNConfig, modeling_srn.SRNModel and
    modeling_srn.SRNForImageClassification): a module not in the folder, or other code, which the published
    repository would ask its users to run. A config.json without `auto_map` gets srn_hf's."""
    from .storage import read_json_file

    config_file = Path(model_dir) / "config.json"
    auto_map = read_json_file(config_file).get("auto_map") or {}
    if not isinstance(auto_map, dict):
        raise ValueError(f"{config_file}: auto_map must map Auto classes to srn_hf's own ({AUTO_MAP})")
    foreign = {name: reference for name, reference in auto_map.items() if AUTO_MAP.get(name) != reference}
    if foreign:
        raise ValueError(
            f"{config_file}: auto_map entries {foreign} are not srn_hf's own classes ({AUTO_MAP}): the published "
            "repository would ask its users to run other code; restore them or remove auto_map"
        )


def write_hub_files(
    folder: Path, model, image_processor, repo_id: str, metrics, training_curves: Path | None, example, card
) -> None:
    """The files of [`write_hub_folder`], written into `folder` (its temporary folder)."""
    model.save_pretrained(folder)  # weights, config.json with auto_map, and the remote code (see srn_hf/__init__.py)
    image_processor.save_pretrained(folder)
    saved_auto_map = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("auto_map")
    missing_code = [name for name in REMOTE_CODE_FILES if not (folder / name).is_file()]
    if saved_auto_map != AUTO_MAP or missing_code:
        raise RuntimeError(
            f"save_pretrained wrote auto_map={saved_auto_map} and lacks {missing_code}: import srn_hf registers the "
            "Auto classes that make it write the remote code"
        )
    caption = write_attention_image(model, image_processor, folder / ATTENTION_IMAGE, *example) if example else ""
    if training_curves is not None and training_curves.is_file():
        shutil.copyfile(training_curves, folder / TRAINING_CURVES)
    model_card = render_model_card(
        model,
        image_processor,
        repo_id,
        metrics,
        attention_image=ATTENTION_IMAGE if example else None,
        attention_caption=caption,
        training_curves=TRAINING_CURVES if (folder / TRAINING_CURVES).is_file() else None,
        options=card,
    )
    model_card.save(folder / "README.md")


def require_empty_folder(out_dir: str | os.PathLike) -> Path:
    """`out_dir` as a Path; refuses a file or a folder that holds anything (all of it would be uploaded)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} is not an empty folder: everything in it would be uploaded")
    return out_dir


def hub_folder_files(folder: str | os.PathLike) -> list[str]:
    """The files of `folder` as paths relative to it (POSIX), sorted: what one commit uploads."""
    folder = Path(folder)
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    repo_type: str = "model",
    space_sdk: str | None = None,
) -> CommitInfo:
    """Creates `repo_id` if needed (`private` only applies then) and uploads every file of `folder` in one commit.

    The token comes from `token`, else huggingface_hub's usual places (`HF_TOKEN`, `hf auth login`). `repo_type` is
    `"model"` or `"space"` (whose `space_sdk`, e.g. `"gradio"`, is set when the Space is created).
    """
    validate_repo_id(repo_id)
    folder = Path(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk)
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in hub_folder_files(folder)
    ]
    return api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message
        or f"Upload SRN {'demo Space' if repo_type == 'space' else 'model'} with srn_hf {__version__}",
        repo_type=repo_type,
    )


def publish(
    model_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    dry_run_dir: str | os.PathLike | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    metrics: str | os.PathLike | None = None,
    example_image=None,
    card: CardOptions | None = None,
) -> CommitInfo | Path:
    """Publishes the SRN model saved in `model_dir` as the Hub repository `repo_id`, in one commit.

    Writes the Hub folder ([`write_hub_folder`] with `metrics`, `example_image`, `card`) to a temporary directory
    and pushes it ([`push_folder`]); returns the `CommitInfo` of the commit. With `dry_run_dir`, writes the same
    folder there instead, pushes nothing and returns its path.
    """
    validate_repo_id(repo_id)
    if dry_run_dir is not None:
        return write_hub_folder(model_dir, dry_run_dir, repo_id, metrics, example_image, card)
    with tempfile.TemporaryDirectory(prefix="srn-hub-") as staging:
        folder = write_hub_folder(model_dir, Path(staging) / "hub", repo_id, metrics, example_image, card)
        return push_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)


__all__ = [
    "CardOptions",
    "ModelFolderError",
    "check_model_folder",
    "load_model",
    "load_training_metrics",
    "publish",
    "push_folder",
    "render_model_card",
    "write_hub_folder",
]
