"""Exporting an SRN model for serving stacks: an ONNX graph or a `torch.export` program, in a folder usable alone.

```bash
srn-hf export path/to/srn-model exported/ --format onnx                # exported/model.onnx
srn-hf export path/to/srn-model exported/ --format torch-export        # exported/model.pt2
srn-hf export path/to/srn-model exported/ --format onnx --attention-maps --image-size 448
```

The graph takes `pixel_values` (B x 3 x H x W, float32, normalised by the saved image processor; B is dynamic,
H = W = the export's image size) and returns `logits` (B x C, the fused y of SRN; apply a sigmoid for scores) and,
with `attention_maps=True`, `attention_maps` (B x C x h x w, the attention maps A). The ONNX graph comes from the
current exporter, `torch.onnx.export(..., dynamo=True)`, which goes through `torch.export`: SRN has no custom
layer it cannot trace (f_sr's whole-map grouped convolution is a batched matrix product).

Beside the graph the folder keeps what a serving stack needs to use it alone, without srn_hf or the weights:

    config.json                the model's config (labels `id2label`, backbone, image size, thresholds), with
                               `export_format` (what the folder is) and no `auto_map`: it holds no torch model
    preprocessor_config.json   the image processor (`AutoImageProcessor.from_pretrained(folder)` loads it)
    thresholds.json            labels in logit order, each label's threshold on the sigmoid score, the scores
                               come from (`thresholds_from`), the outputs

[`ExportedTagger`] runs such a folder with ONNX Runtime (or `torch.export.load`) and gives the same labels as the
`multi-label-image-classification` pipeline. An INT8 folder (`srn_hf.quantize`) is such a folder with a quantized
`model.onnx`; `srn-hf calibrate` tunes any export folder's thresholds on its own scores ([`write_export_thresholds`]).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .configuration_srn import config_label_names
from .fast import autocast_context, fast_inference
from .images import ImageError, open_images
from .pipeline_srn import labels_above_thresholds
from .storage import format_bytes

EXPORT_FORMATS = {"onnx": "model.onnx", "torch-export": "model.pt2"}
THRESHOLDS_FILE = "thresholds.json"
# `thresholds_from` of thresholds.json: the float model's config (copied at export), or the scores of the folder's own
# graph they were tuned on (`srn-hf calibrate` on the folder, or `srn-hf export --quantize int8 --data ...`).
COPIED_THRESHOLDS = "float32 model"
TUNED_THRESHOLDS = {"float32": "float32 scores", "int8": "int8 scores"}
INPUT_NAME = "pixel_values"
# ONNX protobuf files hold at most 2 GB: above about this many bytes of weights, they go to a file beside the graph.
ONNX_INLINE_BYTES = 1_800_000_000
# The export's input side: at least one pixel in the stride-32 map, at most what a trace fits in memory (a batch of 2
# images of 4096 x 4096 is 400 MB of input; the backbone's maps are many times that).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 4096


class ExportableSRN(nn.Module):
    """The tensors a serving stack needs from an SRN model: `logits`, and `attention_maps` when asked for.

    Args:
        model: an `SRNForImageClassification` (any model whose output has `logits`, and `attention_maps` if asked).
        attention_maps: return the attention maps A (B x C x h x w) after the logits.
        fast: run the model on the fast path of `srn_hf.fast` (bf16 autocast; put the weights in channels-last
            first); the outputs are float32 all the same.
    """

    def __init__(self, model: nn.Module, attention_maps: bool = False, fast: bool = False):
        super().__init__()
        self.model = model
        self.attention_maps = attention_maps
        self.fast = fast

    def output_names(self) -> list[str]:
        return ["logits", "attention_maps"] if self.attention_maps else ["logits"]

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with autocast_context(enabled=self.fast, device_type=pixel_values.device.type):
            outputs = self.model(pixel_values=pixel_values, return_dict=True)
        if self.attention_maps:
            return outputs.logits.float(), outputs.attention_maps.float()
        return (outputs.logits.float(),)


def export_program(
    model: nn.Module, image_size: int, attention_maps: bool = False, fast: bool = False
) -> torch.export.ExportedProgram:
    """`torch.export` of the model at `image_size`, with a dynamic batch axis (sample batch: 2 images).

    `fast=True` exports the fast path: channels-last weights (the model is changed in place) and bf16 autocast.
    """
    wrapper = ExportableSRN(fast_inference(model) if fast else model, attention_maps, fast).eval()
    example = torch.randn(2, model.config.num_channels, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        return torch.export.export(wrapper, (example,), dynamic_shapes={INPUT_NAME: {0: batch}})


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: int, attention_maps: bool = False) -> Path:
    """Writes the ONNX graph of the model at `image_size` to `path`, through `torch.onnx.export(..., dynamo=True)`."""
    wrapper = ExportableSRN(model, attention_maps).eval()
    example = torch.randn(2, model.config.num_channels, image_size, image_size)
    weight_bytes = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=[INPUT_NAME],
            output_names=wrapper.output_names(),
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=4096)}},
            dynamo=True,
            external_data=weight_bytes > ONNX_INLINE_BYTES,
        )
    path = Path(path)
    program.save(os.fspath(path), external_data=weight_bytes > ONNX_INLINE_BYTES)
    return path


def thresholds_record(model: nn.Module, image_processor, image_size: int, output_names: list[str]) -> dict:
    """What `thresholds.json` holds: labels in logit order and their thresholds (the pipeline's, see `thresholds`),
    and where they come from (`thresholds_from`: the float model's config, [`COPIED_THRESHOLDS`]); the config's
    `threshold_calibration` says how they were tuned, if they were."""
    from transformers import pipeline

    from .pipeline_srn import TASK

    config = model.config
    tagger = pipeline(TASK, model=model, image_processor=image_processor)
    return {
        "labels": config_label_names(config),
        "thresholds": [float(value) for value in tagger.thresholds()],
        "thresholds_from": COPIED_THRESHOLDS,
        "threshold_calibration": config.threshold_calibration,
        "score": "sigmoid",
        "input": {"name": INPUT_NAME, "shape": ["batch", config.num_channels, image_size, image_size]},
        "outputs": output_names,
    }


def write_export_config(config, folder: Path, export_format: str) -> Path:
    """The model's config.json for an export folder: what the folder is (`export_format`: `"onnx"` or
    `"torch-export"`), and no `auto_map` or `custom_pipelines`, which would name code (a torch model, a pipeline)
    the folder does not hold."""
    from .storage import write_text_file

    values = json.loads(config.to_json_string(use_diff=True))
    for key in ("auto_map", "custom_pipelines"):
        values.pop(key, None)
    values["export_format"] = export_format
    return write_text_file(folder / "config.json", json.dumps(values, indent=2, sort_keys=True) + "\n")


def update_export_record(folder: str | os.PathLike, **fields) -> Path:
    """Adds `fields` (e.g. `quantization={...}`) to an export folder's config.json."""
    from .storage import read_json_file, write_text_file

    config_file = Path(folder) / "config.json"
    values = {**read_json_file(config_file), **fields}
    return write_text_file(config_file, json.dumps(values, indent=2, sort_keys=True) + "\n")


def is_export_folder(folder: str | os.PathLike) -> bool:
    """True for a folder written by `srn-hf export` (it holds `thresholds.json` and a graph)."""
    folder = Path(folder)
    return (folder / THRESHOLDS_FILE).is_file() and any((folder / name).is_file() for name in EXPORT_FORMATS.values())


def write_export_thresholds(folder: str | os.PathLike, calibration) -> Path:
    """Stores tuned thresholds (a `srn_hf.thresholds.ThresholdCalibration`) in an export folder: its
    `thresholds.json`, which [`ExportedTagger`] reads, marked as tuned on the graph's own scores (`"int8 scores"`
    for a quantized folder), and its config.json's threshold fields. Returns the path of thresholds.json."""
    from .storage import read_json_file, write_text_file
    from .thresholds import check_same_labels, write_thresholds

    folder = Path(folder)
    record = read_json_file(folder / THRESHOLDS_FILE)
    check_same_labels(calibration.label_names, record["labels"], "the calibration", str(folder / THRESHOLDS_FILE))
    quantization = read_json_file(folder / "config.json").get("quantization")
    record["thresholds"] = [float(value) for value in calibration.thresholds]
    record["thresholds_from"] = TUNED_THRESHOLDS[quantization["type"] if quantization else "float32"]
    record["threshold_calibration"] = calibration.provenance()
    write_thresholds(folder, calibration)
    return write_text_file(folder / THRESHOLDS_FILE, json.dumps(record, indent=1) + "\n")


def check_export_target(out_dir: str | os.PathLike, format: str, image_size: int | None, fast: bool = False) -> None:
    """Refuses (ValueError or FileExistsError naming the parameter) an unknown `format`, `fast` with ONNX, an
    `out_dir` that is not an empty folder or absent, and an `image_size` out of range."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format {format!r} is not one of {', '.join(EXPORT_FORMATS)}")
    if fast and format == "onnx":
        raise ValueError(
            "fast=True exports bf16 convolutions, which ONNX Runtime's CPU provider cannot run: use "
            "format='torch-export' for the fast path, or leave fast=True out (ONNX Runtime runs the float32 graph)"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} is not an empty folder: the export would mix with its files")
    check_image_size(image_size)


def export_image_processor(model_dir: str | os.PathLike, image_size: int | None, config=None):
    """The model folder's image processor, resizing to the export's `image_size` (by default the model's)."""
    from .model_folder import check_model_folder, load_image_processor

    config = check_model_folder(model_dir) if config is None else config
    image_processor = load_image_processor(model_dir, config)
    image_size = config.image_size if image_size is None else image_size
    image_processor.size = {"height": image_size, "width": image_size}
    return image_processor


def check_image_size(image_size: int | None) -> None:
    """Refuses (ValueError naming the value) an export size outside [`MIN_IMAGE_SIZE`, `MAX_IMAGE_SIZE`]; None is the
    model's own size."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(f"image_size={image_size!r} must be an integer")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size={image_size} is too small: the backbone's stride-32 map would be empty "
            f"(at least {MIN_IMAGE_SIZE})"
        )
    if image_size > MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size={image_size} is too large: at most {MAX_IMAGE_SIZE} (the export traces a batch of 2 images "
            f"of that side; {image_size} would need {format_bytes(2 * 3 * 4 * image_size**2)} for the input alone)"
        )


def export_model(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    format: str = "onnx",
    image_size: int | None = None,
    attention_maps: bool = False,
    fast: bool = False,
) -> Path:
    """Exports the SRN model saved in `model_dir` to `out_dir` (created; it must be empty or absent).

    Args:
        model_dir: a folder written by `save_pretrained` (with its `preprocessor_config.json`, else the standard
            processor of `srn_hf.processing` is saved).
        out_dir: the folder to write: the graph, `config.json`, `preprocessor_config.json`, `thresholds.json`, and the
            training run's `splits.json` when `model_dir` has one (`srn-hf calibrate` of the export reads it).
        format: `"onnx"` (`model.onnx`) or `"torch-export"` (`model.pt2`, load with `torch.export.load`).
        image_size: the input side H = W of the graph; by default the model's `image_size`. At another size the
            saved image processor resizes to it, and f_sr sees the attention maps resized as in the model.
        attention_maps: add the output `attention_maps` (B x C x h x w) after `logits`.
        fast: export the fast path of `srn_hf.fast` (bf16 autocast, channels-last weights); `torch-export` only,
            ONNX Runtime's CPU provider has no bfloat16 convolution.

    Returns:
        The path of the graph.
    """
    from .model_folder import copy_splits_file, load_model
    from .storage import atomic_folder

    out_dir = Path(out_dir)
    check_export_target(out_dir, format, image_size, fast)
    model = load_model(model_dir).float()
    image_processor = export_image_processor(model_dir, image_size, model.config)
    image_size = image_processor.size["height"]

    output_names = ExportableSRN(model, attention_maps).output_names()
    # Written under a temporary name and renamed once complete: a failure (a full disk) leaves no half export.
    with atomic_folder(out_dir) as folder:
        if format == "onnx":
            export_onnx(model, folder / EXPORT_FORMATS[format], image_size, attention_maps)
        else:
            torch.export.save(export_program(model, image_size, attention_maps, fast), folder / EXPORT_FORMATS[format])
        write_export_config(model.config, folder, format)
        image_processor.save_pretrained(folder)
        record = thresholds_record(model, image_processor, image_size, output_names)
        (folder / THRESHOLDS_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        copy_splits_file(model_dir, folder)  # which images the run trained, validated and tested on
    return out_dir / EXPORT_FORMATS[format]


class ExportedTagger:
    """Labels images with an exported folder alone: its graph, image processor and thresholds.

    ```python
    >>> tagger = ExportedTagger("exported/")               # model.onnx (ONNX Runtime) or model.pt2 (torch.export)
    >>> tagger(["street.jpg", "beach.png"])                # labels above their thresholds, best first
    [[{'label': 'person', 'score': 0.97}, ...], [...]]
    >>> tagger.logits(pixel_values)                        # the raw outputs, B x C (numpy)
    ```

    Args:
        folder: a folder written by [`export_model`].
        providers: ONNX Runtime execution providers (default: the CPU provider).
    """

    def __init__(self, folder: str | os.PathLike, providers: list[str] | None = None):
        from transformers import AutoImageProcessor

        folder = Path(folder)
        record_file = folder / THRESHOLDS_FILE
        if not record_file.is_file():
            raise FileNotFoundError(f"{folder} holds no {THRESHOLDS_FILE}: pass a folder written by srn-hf export")
        self.record = json.loads(record_file.read_text(encoding="utf-8"))
        self.labels = self.record["labels"]
        self.thresholds = np.asarray(self.record["thresholds"], dtype=np.float64)
        self.image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=False)
        if (folder / EXPORT_FORMATS["onnx"]).is_file():
            import onnxruntime

            self.session = onnxruntime.InferenceSession(
                os.fspath(folder / EXPORT_FORMATS["onnx"]), providers=providers or ["CPUExecutionProvider"]
            )
            self.program = None
        else:
            self.session = None
            self.program = torch.export.load(folder / EXPORT_FORMATS["torch-export"]).module()

    def outputs(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph (`logits`, maybe `attention_maps`) for a B x 3 x H x W float32 batch."""
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if self.session is not None:
            values = self.session.run(None, {INPUT_NAME: pixel_values})
        else:
            with torch.no_grad():
                values = [tensor.numpy() for tensor in self.program(torch.from_numpy(pixel_values))]
        return dict(zip(self.record["outputs"], values))

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.outputs(pixel_values)["logits"]

    def __call__(self, images: list) -> list[list[dict] | ImageError]:
        """Labels above their thresholds, best first, for each image (paths, PIL images or arrays).

        An image that cannot be opened gets its [`srn_hf.images.ImageError`] (naming the file) in place of its labels,
        as in the pipeline's output for a list; the other images are predicted.
        """
        results = [image for _, image in open_images(images)]
        opened = [image for image in results if not isinstance(image, ImageError)]
        if not opened:
            return results
        pixel_values = self.image_processor(images=opened, return_tensors="np")["pixel_values"]
        scores = iter(1.0 / (1.0 + np.exp(-self.logits(pixel_values).astype(np.float64))))
        return [
            result if isinstance(result, ImageError) else self.labels_above_thresholds(next(scores))
            for result in results
        ]

    def labels_above_thresholds(self, row: np.ndarray) -> list[dict]:
        """`{"label", "score"}` of the labels whose sigmoid score exceeds their threshold, best first (the pipeline's
        rule, [`srn_hf.pipeline_srn.labels_above_thresholds`])."""
        predicted = labels_above_thresholds(row, self.thresholds)
        return [{"label": self.labels[index], "score": float(row[index])} for index in predicted]


__all__ = ["EXPORT_FORMATS", "ExportableSRN", "ExportedTagger", "export_model", "export_onnx", "export_program"]
