"""Model folders: loading and checking the folder `save_pretrained` writes, before anything trusts it.

A model folder, as `save_pretrained` writes it (for instance OUTPUT_DIR/final of `examples/train_stages.py`):

    config.json                  the SRNConfig (labels, backbone, image size, thresholds)
    model.safetensors            the weights (or the shards of model.safetensors.index.json, or pytorch_model.bin)
    preprocessor_config.json     the image processor, optional (`processing.create_image_processor` otherwise)
    metrics.json                 the training run's figures, beside the model or in its parent folder, optional
    splits.json                  which images the training run put in each split, optional ([`read_splits_file`])

[`check_model_folder`] refuses, with a [`ModelFolderError`] naming the folder or the file, a folder that cannot be
loaded (before any tensor is read); [`load_model`] and [`load_image_processor`] load it; [`load_training_metrics`]
reads its run's `metrics.json`, of this format:

    {"recipe": {...the resolved training configuration...},
     "dataset": {"name": str, "label_names": [...], "splits": {"train": n, "validation": n, "test": n}},
     "stages": [{"stage": 1, "prediction": "cls_logits", "best_epoch": int,
                 "validation": {"mAP": .., "CP": .., ...}, "test": {"mAP": .., ..., "per_class_AP": [...]},
                 "test_calibrated": {"CP": .., ..., "OF1": ..}}, ...]}

with figures in percent (`srn_hf.metrics.multilabel_metrics`; `per_class_AP` in label order, None for a label
without positives). `test` is at threshold 0.5; the optional `test_calibrated` at the stage's thresholds tuned on
the validation split (`srn_hf.thresholds`).

These are services of the command line, the demo page and the Hub publishing (`srn_hf.hub`), which import them from
here; this module imports no front end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from huggingface_hub.utils import validate_repo_id
from transformers import AutoImageProcessor

from .configuration_srn import SRNConfig
from .metrics import METRIC_NAMES, THRESHOLDED_FIGURES
from .modeling_srn import SRNForImageClassification
from .pipeline_srn import check_finite_weights
from .processing import create_image_processor
from .storage import read_json_file

METRICS_FILE = "metrics.json"
SPLITS_FILE = "splits.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded: missing, without config.json or weights, a truncated weights file, or a
    config value of the wrong type or out of range; the message names the folder or the file and the field."""


class MissingModelFileError(ModelFolderError, FileNotFoundError):
    """A model folder, or its config.json or weights, that does not exist."""


class RemoteCodeError(ModelFolderError):
    """A model folder or repository that asks to run the Python code it brings (its config.json's `auto_map`, for a
    `model_type` that neither transformers nor srn_hf knows), loaded without `trust_remote_code=True`: refused before
    any of that code runs (transformers would otherwise ask on the terminal, and a piped `y` would run it)."""

    def __init__(self, source: str | os.PathLike, code: str):
        self.source, self.code = os.fspath(source), code
        super().__init__(self.worded("trust_remote_code=True"))

    def worded(self, permission: str | None) -> str:
        """The message, naming what would let the code run (`permission`), or none where nothing may."""
        allowed = f"it runs only with {permission}" if permission else "SRN models need no code of their own"
        return f"{self.source} asks to run the Python code it brings ({self.code}): refused, {allowed}"


def remote_code_refusal(model: str, error: BaseException) -> RemoteCodeError | None:
    """transformers' refusal to run a Hub repository's own code (`trust_remote_code=False`) as a `RemoteCodeError`
    naming `model`; None for another error."""
    return RemoteCodeError(model, "its auto_map") if "trust_remote_code" in str(error) else None


def remote_code(raw_config) -> str | None:
    """The folder's own Python files that a config.json's `auto_map` would import, when transformers would run them:
    its `model_type` is not one transformers or srn_hf registered. None otherwise."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    auto_map = raw_config.get("auto_map") if isinstance(raw_config, dict) else None
    if not auto_map or raw_config.get("model_type") in CONFIG_MAPPING:
        return None
    references = [item for value in dict(auto_map).values() for item in (value if isinstance(value, list) else [value])]
    modules = sorted(
        {f"{str(reference).split('--')[-1].rpartition('.')[0]}.py" for reference in references if reference}
    )
    return f"{', '.join(modules)} of its auto_map, for model_type {raw_config.get('model_type')!r}"


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (strict-dataclass errors span several)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def is_local_model(name: str | os.PathLike) -> bool:
    """True when `name` is meant as a folder on this machine (it exists, or cannot be a Hub id `org/name`)."""
    text = os.fspath(name)
    if os.path.exists(text) or text.startswith((".", "~", os.sep)) or (os.altsep and os.altsep in text):
        return True
    try:
        validate_repo_id(text)
    except ValueError:  # huggingface_hub's HFValidationError
        return True
    return False


def weights_files(model_dir: Path) -> list[Path]:
    """The weights files of a `save_pretrained` folder: `model.safetensors`, the shards of its index, or `.bin`."""
    index_file = model_dir / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as error:
            raise ModelFolderError(f"{index_file}: not a safetensors index ({one_line(error)})") from None
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = [model_dir / name for name in WEIGHTS_FILES if name.endswith((".safetensors", ".bin"))]
    return [file for file in files if file.is_file()]


def check_model_folder(model_dir: str | os.PathLike, model_type: str | None = None, trust_remote_code: bool = False):
    """Checks, before anything loads it, that `model_dir` holds a complete model (of `model_type`, if given);
    returns its config.

    Refuses with [`ModelFolderError`], naming the folder or the file: a missing folder, a missing or malformed
    config.json, a config value of the wrong type or out of range (`SRNConfig`'s own checks), no weights, a
    truncated or corrupt weights file. No tensor is read (`srn_hf.storage.check_weights_file`). A config whose
    `auto_map` would run the folder's own Python code is refused ([`RemoteCodeError`]) unless `trust_remote_code`.
    """
    from transformers import AutoConfig

    from .storage import IncompleteFileError, check_weights_file

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        missing = f"model folder {model_dir} does not exist"
        raise MissingModelFileError(missing if not model_dir.exists() else f"{model_dir} is not a folder")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise MissingModelFileError(
            f"{model_dir} holds no config.json: pass the folder written by save_pretrained (for instance the final "
            "model folder of examples/train_stages.py)"
        )
    try:
        raw_config = json.loads(config_file.read_text(encoding="utf-8"))
    except Exception as error:  # malformed JSON
        raise ModelFolderError(f"{config_file}: {one_line(error)}") from error
    if isinstance(raw_config, dict) and raw_config.get("export_format"):
        raise ModelFolderError(
            f"{model_dir} is an export folder (export_format {raw_config['export_format']!r} in its config.json), "
            "not a model with weights: run it with srn_hf.export.ExportedTagger, or pass the model folder it was "
            "exported from"
        )
    code = remote_code(raw_config)
    if code and not trust_remote_code:
        raise RemoteCodeError(model_dir, code)
    check_label_count(raw_config, config_file, weights_files(model_dir))
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as error:  # a strict-dataclass type error, a value SRNConfig refuses
        raise ModelFolderError(f"{config_file}: {one_line(error)}") from error
    if model_type is not None and config.model_type != model_type:
        raise ModelFolderError(f"{config_file}: model_type is {config.model_type!r}, not {model_type!r}")
    files = weights_files(model_dir)
    if not files:
        raise MissingModelFileError(f"{model_dir} holds no weights (none of {', '.join(WEIGHTS_FILES)})")
    for file in files:
        try:
            check_weights_file(file)
        except IncompleteFileError as error:
            raise ModelFolderError(str(error)) from None
    if config.model_type == SRNConfig.model_type:
        check_weight_shapes(config, config_file, files)
    return config


def check_label_count(raw_config: dict, config_file: Path, files: list[Path]) -> None:
    """Refuses ([`ModelFolderError`], one line) an SRN config.json whose `id2label` counts other labels than the rows
    of f_cls's weight in a safetensors header, from the file's text alone: transformers takes about a minute and
    gigabytes to read a config of 1,000,000 labels before [`check_weight_shapes`] could compare. A header that
    cannot be read is left to the checks that follow, which name it."""
    from safetensors import SafetensorError, safe_open

    if not isinstance(raw_config, dict) or raw_config.get("model_type") != SRNConfig.model_type:
        return
    labels = raw_config.get("id2label")
    if not isinstance(labels, dict):
        return
    for file in (file for file in files if file.suffix == ".safetensors"):
        try:
            with safe_open(file, framework="pt") as weights:
                classifier = [name for name in weights.keys() if name.split(".")[-2:] == ["classifier", "weight"]]
                rows = {name: weights.get_slice(name).get_shape()[0] for name in classifier}
        except (OSError, SafetensorError):
            continue
        for name, count in rows.items():
            if count != len(labels):
                raise ModelFolderError(
                    f"{file}: {name} has {count} rows, but {config_file} has {len(labels)} labels (id2label): the "
                    "config and the weights are of different models"
                )


def check_weight_shapes(config: SRNConfig, config_file: Path, files: list[Path]) -> None:
    """Refuses ([`ModelFolderError`], one line) weights whose shapes are not those the config's network has (a
    config.json of 1,000,000 labels over 3-label weights), before the model is built: the network is built on the meta
    device (no memory) and compared with the safetensors headers (no tensor read)."""
    from safetensors import safe_open

    with torch.device("meta"):
        expected = {
            name: tuple(tensor.shape) for name, tensor in SRNForImageClassification(config).state_dict().items()
        }
    for file in (file for file in files if file.suffix == ".safetensors"):
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():
                shape = tuple(weights.get_slice(name).get_shape())
                if name in expected and shape != expected[name]:
                    raise ModelFolderError(
                        f"{file}: {name} has shape {shape}, but {config_file} ({config.num_labels} labels) needs "
                        f"{expected[name]}: the config and the weights are of different models"
                    )


def load_model(model_dir: str | os.PathLike) -> SRNForImageClassification:
    """The `SRNForImageClassification` saved in `model_dir`, refusing a folder that is not a complete SRN checkpoint
    ([`check_model_folder`], then the weights must fit the config and hold no NaN or inf:
    `srn_hf.pipeline_srn.check_finite_weights`)."""
    check_model_folder(model_dir, model_type=SRNConfig.model_type)
    model, loading_info = SRNForImageClassification.from_pretrained(
        model_dir, output_loading_info=True, trust_remote_code=False
    )
    problems = {key: sorted(values) for key, values in loading_info.items() if key != "error_msgs" and values}
    if problems:
        raise ModelFolderError(f"the weights in {model_dir} do not fit its config.json: {problems}")
    try:
        check_finite_weights(model)  # the pipeline's check: NaN or inf weights, named
    except ValueError as error:
        raise ModelFolderError(str(error)) from None
    return model.eval()


def load_image_processor(model_dir: str | os.PathLike, config: SRNConfig):
    """The model folder's own image processor, or the standard one of `processing.create_image_processor`."""
    if (Path(model_dir) / PREPROCESSOR_FILE).is_file():
        return AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=False)  # never the folder's own code
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
        candidate = next(
            (path for path in (model_dir / METRICS_FILE, model_dir.parent / METRICS_FILE) if path.is_file()), None
        )
        if candidate is None:
            return None, None
    metrics = read_json_file(candidate)
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
        if "test_calibrated" in stage and not isinstance(stage["test_calibrated"], dict):
            raise ValueError(f"{where}.test_calibrated must be an object of metrics")
        missing = [
            name for name in THRESHOLDED_FIGURES if "test_calibrated" in stage and name not in stage["test_calibrated"]
        ]
        if missing:
            raise ValueError(f"{where}.test_calibrated lacks the metrics {missing}")
        if "validation" not in stage and "test" not in stage:
            raise ValueError(f"{where} has neither 'validation' nor 'test' metrics")
    return metrics, candidate


def write_splits_file(folder: str | os.PathLike, record: dict) -> Path:
    """Writes a training run's split record (`srn_hf.data.holdout.split_record`) to `folder/splits.json`, atomically
    (`srn_hf.storage.write_text_file`)."""
    from .storage import write_text_file

    return write_text_file(Path(folder) / SPLITS_FILE, json.dumps(record, separators=(",", ":")) + "\n")


def copy_splits_file(model_dir: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Copies `model_dir`'s `splits.json`, when it has one, into `folder` (an export or a Hub folder of the model), so
    that tuning on the images its run trained, validated or tested on is refused there too."""
    import shutil

    if (Path(model_dir) / SPLITS_FILE).is_file():
        shutil.copyfile(Path(model_dir) / SPLITS_FILE, Path(folder) / SPLITS_FILE)


def read_splits_file(model_dir: str | os.PathLike) -> dict | None:
    """The split record of the run that trained the model in `model_dir` (its `splits.json`: `{"kind": ..., "splits":
    {split: [image keys]}}`), None when the folder has none; a `ValueError` names the file when it is malformed."""
    path = Path(model_dir) / SPLITS_FILE
    if not path.is_file():
        return None
    record = read_json_file(path)
    splits = record.get("splits") if isinstance(record, dict) else None
    if not isinstance(splits, dict) or not all(
        isinstance(keys, list) and all(isinstance(key, str) for key in keys) for keys in splits.values()
    ):
        raise ValueError(f"{path}: expected {{'kind': ..., 'splits': {{split: [image ids]}}}}")
    return record


__all__ = [
    "METRICS_FILE",
    "MissingModelFileError",
    "ModelFolderError",
    "PREPROCESSOR_FILE",
    "SPLITS_FILE",
    "copy_splits_file",
    "WEIGHTS_FILES",
    "check_model_folder",
    "is_local_model",
    "load_image_processor",
    "load_model",
    "load_training_metrics",
    "one_line",
    "read_splits_file",
    "weights_files",
    "write_splits_file",
]
