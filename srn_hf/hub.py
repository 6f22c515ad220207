"""Publishing a trained SRN on the Hugging Face Hub: a Hub-ready folder with its model card, pushed in one commit.

[`write_hub_folder`] turns a folder written by `save_pretrained` (for instance the final model of
`examples/train_stages.py`) into the folder a Hub repository should hold:

    config.json                  the SRNConfig, with an `auto_map` for AutoConfig, AutoModel and
                                 AutoModelForImageClassification
    model.safetensors            the weights of SRNForImageClassification
    configuration_srn.py         the remote code, run by `trust_remote_code=True` where srn_hf is not installed
    modeling_srn.py
    preprocessor_config.json     the image processor (the model folder's own, else `processing.create_image_processor`)
    attention_maps.png           the label attention maps A of one example image (`srn_hf.visualize`)
    training_curves.png          the run's loss and validation mAP per epoch, when the run drew them
    README.md                    the model card, rendered from the template `model_card.md`

The card's YAML metadata (library, pipeline tag, tags, license, datasets, and a `model-index` holding the final
stage's figures) is written through huggingface_hub's `ModelCardData`, so that the Hub parses it as its own
code does. Its figures come only from the training run's `metrics.json` (format below); without one the card
says that no evaluation was published, and holds no number.

[`publish`] writes that folder to a temporary directory and pushes all of it in one commit with
`HfApi.create_repo` and `HfApi.create_commit` (the token from `token=`, `HF_TOKEN` or `hf auth login`);
`dry_run_dir=` writes the same folder to disk and pushes nothing.

`metrics.json`, written by `examples/train_stages.py` next to the model or in its parent folder:

    {"recipe": {...the resolved training configuration...},
     "dataset": {"name": str, "label_names": [...], "splits": {"train": n, "validation": n, "test": n}},
     "stages": [{"stage": 1, "prediction": "cls_logits", "best_epoch": int,
                 "validation": {"mAP": .., "CP": .., ...}, "test": {"mAP": .., ..., "per_class_AP": [...]}}, ...]}

with figures in percent (`srn_hf.metrics.multilabel_metrics`; `per_class_AP` in label order, None for a label
without positives).
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
from transformers import AutoImageProcessor

from . import __version__
from .configuration_srn import AUTO_MAP, SRNConfig
from .metrics import multilabel_metrics
from .modeling_srn import SRNForImageClassification
from .processing import create_image_processor
from .stages import PAPER_NAMES, STAGES

# The template of the model card (Jinja, rendered by `ModelCard.from_template`): model_card.md at the repository's
# root, reached through the link srn_hf/model_card.md, which wheels carry as a file.
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"
METRICS_FILE = "metrics.json"
TRAINING_CURVES = "training_curves.png"  # drawn by examples/train_stages.py beside metrics.json
ATTENTION_IMAGE = "attention_maps.png"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# The remote code that `save_pretrained` copies beside the weights: the modules named in config.json's auto_map.
REMOTE_CODE_FILES = tuple(sorted({f"{reference.split('.')[0]}.py" for reference in AUTO_MAP.values()}))

# The figures of the card's tables and `model-index`, in this order, with their names on the Hub.
METRIC_NAMES = {
    "mAP": "mean average precision over labels",
    "CP": "precision averaged over labels",
    "CR": "recall averaged over labels",
    "CF1": "per-label F1",
    "OP": "overall precision",
    "OR": "overall recall",
    "OF1": "overall F1",
}
# The paper's names of the SRNOutput predictions.
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


def load_model(model_dir: str | os.PathLike) -> SRNForImageClassification:
    """The `SRNForImageClassification` saved in `model_dir`, refusing a folder that is not a complete SRN checkpoint."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{model_dir} holds no config.json: pass the folder written by save_pretrained (for instance the final "
            "model folder of examples/train_stages.py)"
        )
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type != SRNConfig.model_type:
        raise ValueError(f"{config_file}: model_type is {model_type!r}, not {SRNConfig.model_type!r}: not an SRN model")
    if not any((model_dir / name).is_file() for name in WEIGHTS_FILES):
        raise FileNotFoundError(f"{model_dir} holds no weights (none of {', '.join(WEIGHTS_FILES)})")
    model, loading_info = SRNForImageClassification.from_pretrained(model_dir, output_loading_info=True)
    problems = {key: sorted(values) for key, values in loading_info.items() if key != "error_msgs" and values}
    if problems:
        raise ValueError(f"the weights in {model_dir} do not fit its config.json: {problems}")
    return model.eval()


def load_image_processor(model_dir: str | os.PathLike, config: SRNConfig):
    """The model folder's own image processor, or the standard one of `processing.create_image_processor`."""
    if (Path(model_dir) / PREPROCESSOR_FILE).is_file():
        return AutoImageProcessor.from_pretrained(model_dir)
    return create_image_processor(config)


def load_training_metrics(
    model_dir: str | os.PathLike, metrics: str | os.PathLike | None = None
) -> tuple[dict | None, Path | None]:
    """The training run's metrics and the path of their file; `(None, None)` when there is none.

    The file is `metrics` when given (it must exist), else `metrics.json` in `model_dir` or in its parent (where
    `examples/train_stages.py` writes it, beside OUTPUT_DIR/final). Raises a `ValueError` naming the file and the
    field when the file does not have the agreed format (see the module docstring).
    """
    model_dir = Path(model_dir)
    if metrics is not None:
        candidate = Path(metrics)
        if not candidate.is_file():
            raise FileNotFoundError(f"metrics file {candidate} does not exist")
    else:
        candidate = next((path for path in (model_dir / METRICS_FILE, model_dir.parent / METRICS_FILE) if path.is_file()), None)
        if candidate is None:
            return None, None
    try:
        metrics = json.loads(candidate.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{candidate} is not valid JSON: {error}") from error
    if not isinstance(metrics, dict):
        raise ValueError(f"{candidate}: expected a JSON object with 'recipe', 'dataset' and 'stages'")
    if not isinstance(metrics.get("dataset"), dict) or "name" not in metrics["dataset"]:
        raise ValueError(f"{candidate}: field 'dataset' must be an object with a 'name'")
    stages = metrics.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"{candidate}: field 'stages' must be a non-empty list of evaluated stages")
    for index, stage in enumerate(stages):
        where = f"{candidate}: stages[{index}]"
        if not isinstance(stage, dict) or "stage" not in stage:
            raise ValueError(f"{where} must be an object with a 'stage' number")
        for split in ("validation", "test"):
            if split in stage and not isinstance(stage[split], dict):
                raise ValueError(f"{where}.{split} must be an object of metrics")
            missing = [name for name in METRIC_NAMES if split in stage and name not in stage[split]]
            if missing:
                raise ValueError(f"{where}.{split} lacks the metrics {missing}")
        if "validation" not in stage and "test" not in stage:
            raise ValueError(f"{where} has neither 'validation' nor 'test' metrics")
    return metrics, candidate


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


def card_data(model: SRNForImageClassification, repo_id: str, metrics: dict | None, options: CardOptions) -> ModelCardData:
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
            *model.model_tags, "image-classification", "multi-label-image-classification", config.backbone,
            *(options.tags or []),
        ],
        model_name=repo_id.split("/")[-1] if eval_results else None,  # the name of the model-index only
        eval_results=eval_results,
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
                "best_epoch": stage.get("best_epoch", "—"),
                "validation_map": format_percent((stage.get("validation") or {}).get("mAP")),
                "metrics": {name: format_percent((stage.get(split) or {}).get(name)) for name in METRIC_NAMES},
            }
            for stage in metrics["stages"]
        ],
        "per_class_rows": per_class_rows,
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
    return {"recipe_rows": rows, "stage_setting_names": setting_names, "recipe_settings": published_settings(recipe)}


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
    template_path = Path(options.template_path or MODEL_CARD_TEMPLATE)
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template {template_path} does not exist")
    config = model.config
    labels = [config.id2label[index] for index in range(config.num_labels)]
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
        label_thresholds=config.label_thresholds,
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
    labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
    if names is not None and list(names) != labels:
        raise ValueError(
            f"{metrics_file}: dataset.label_names ({len(names)} labels: {', '.join(map(str, names[:5]))}, ...) are not "
            f"the model's id2label ({len(labels)} labels: {', '.join(labels[:5])}, ...): the figures are not this model's"
        )


def write_attention_image(
    model: SRNForImageClassification, image_processor, path: Path, example_image=None, num_labels: int = 4
) -> str:
    """Draws the attention maps A of the `num_labels` labels the model scores highest on one image; returns a caption.

    The image is `example_image` (a path or a PIL image), else scikit-image's bundled astronaut photo (NASA, public
    domain). The labels are the best-scored ones whatever the threshold, so that the picture is never empty.
    """
    from transformers import pipeline

    from .pipeline_srn import TASK
    from .visualize import save_attention_overlay

    if example_image is None:
        from PIL import Image
        from skimage import data

        image, source = Image.fromarray(data.astronaut()), "scikit-image's astronaut photo (NASA, public domain)"
    else:
        image = example_image
        source = f"the image {Path(example_image).name}" if isinstance(example_image, (str, os.PathLike)) else "an example image"
    tagger = pipeline(TASK, model=model, image_processor=image_processor)
    top_k = min(num_labels, model.config.num_labels)
    predictions = tagger(image, threshold=0.0, top_k=top_k, return_attention_maps=True)
    save_attention_overlay(image, predictions, path, title="example image")
    return (
        f"Attention maps A of the {top_k} labels this model scores highest on {source}, each scaled to its own "
        "maximum; the sigmoid score is beside each label."
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

    Args:
        model_dir: a folder written by `save_pretrained` of an SRN model.
        metrics: the training run's `metrics.json`, which gives the card's figures and recipe; by default the one
            in `model_dir` or its parent, if any. Its `training_curves.png`, if any, is published too.
        out_dir: the folder to write, created if needed; it must be empty (all of it is uploaded).
        repo_id: `"org/name"`, used in the card's code and `model-index`.
        example_image: image (path or PIL image) of the attention-map picture; by default a photo bundled with
            scikit-image.
        card: the card's metadata and template ([`CardOptions`]; its defaults when None).

    Returns:
        `out_dir`, holding config.json (with `auto_map`), model.safetensors, configuration_srn.py, modeling_srn.py,
        preprocessor_config.json, attention_maps.png and README.md.
    """
    validate_repo_id(repo_id)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} is not an empty folder: everything in it would be uploaded")
    model = load_model(model_dir)
    image_processor = load_image_processor(model_dir, model.config)
    metrics, metrics_file = load_training_metrics(model_dir, metrics)
    check_labels(model, metrics, metrics_file)
    training_curves = metrics_file.parent / TRAINING_CURVES if metrics_file is not None else None

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # weights, config.json with auto_map, and the remote code (see srn_hf/__init__.py)
    image_processor.save_pretrained(out_dir)
    saved_auto_map = json.loads((out_dir / "config.json").read_text(encoding="utf-8")).get("auto_map")
    missing_code = [name for name in REMOTE_CODE_FILES if not (out_dir / name).is_file()]
    if saved_auto_map != AUTO_MAP or missing_code:
        raise RuntimeError(
            f"save_pretrained wrote auto_map={saved_auto_map} and lacks {missing_code}: import srn_hf registers the "
            "Auto classes that make it write the remote code"
        )
    caption = write_attention_image(model, image_processor, out_dir / ATTENTION_IMAGE, example_image)
    if training_curves is not None and training_curves.is_file():
        shutil.copyfile(training_curves, out_dir / TRAINING_CURVES)
    card = render_model_card(
        model,
        image_processor,
        repo_id,
        metrics,
        attention_image=ATTENTION_IMAGE,
        attention_caption=caption,
        training_curves=TRAINING_CURVES if (out_dir / TRAINING_CURVES).is_file() else None,
        options=card,
    )
    card.save(out_dir / "README.md")
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
) -> CommitInfo:
    """Creates `repo_id` if needed (`private` only applies then) and uploads every file of `folder` in one commit.

    The token comes from `token`, else huggingface_hub's usual places (`HF_TOKEN`, `hf auth login`).
    """
    validate_repo_id(repo_id)
    folder = Path(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in hub_folder_files(folder)]
    return api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or f"Upload SRN model with srn_hf {__version__}",
        repo_type="model",
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
        folder = write_hub_folder(model_dir, staging, repo_id, metrics, example_image, card)
        return push_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)


__all__ = [
    "CardOptions",
    "load_training_metrics",
    "publish",
    "push_folder",
    "render_model_card",
    "write_hub_folder",
]
