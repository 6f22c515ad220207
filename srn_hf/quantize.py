"""INT8 models for CPU serving: static quantization of an SRN's ONNX export with ONNX Runtime.

```bash
srn-hf export MODEL int8/ --format onnx --quantize int8 --calibration-images photos/        # a folder or a file list
srn-hf export MODEL int8/ --format onnx --quantize int8 --data stamp_scenes \\
    --data-option path=data/stamp_scenes --split validation   # calibrated and thresholds tuned on that split
```

The float32 graph of [`srn_hf.export.export_onnx`] is prepared (`quant_pre_process`: shape inference and ONNX
Runtime's graph optimisations) and quantized by `onnxruntime.quantization.quantize_static` in the QDQ format:
weights int8 per output channel, activations uint8 per tensor (the settings ONNX Runtime gives for x86 CPUs with
VNNI, no reduced range), their ranges measured by running the float graph on real images (a
`CalibrationDataReader` over the image processor's `pixel_values`; by default the 99.999th percentile of each
activation, [`DEFAULT_CALIBRATION_METHOD`]). The operators of [`FLOAT_OPERATORS`] and the backbone's first feature
stage ([`first_stage_weights`]) stay float32: each cost a score error when quantized that its float32 version
removes (measured by `benchmarks/benchmark_int8.py`, docs/deploy.md "INT8", with what the first stage costs in speed:
1.68x against 2.12x ONNX Runtime float32 at batch 16 in the quietest run; the config.json of the folder says what each
choice fixed).

The folder is a complete export folder (`model.onnx` is the INT8 graph, so [`srn_hf.export.ExportedTagger`] and
everything built on it load it as they load a float32 one), and it records what was done: `config.json` has
`export_format` and `quantization` (type, format, calibration method and image count, the operators and layers kept
float32 with the error each fixed, ONNX Runtime's version); `thresholds.json` has `thresholds_from`: `"int8
scores"` when a labelled split was given (the thresholds are tuned again on the quantized model's scores,
[`srn_hf.scoring.calibrate_model_folder`]), else `"float32 model"` (copied from the float model's config, though the
quantized scores may have drifted from its).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .export import EXPORT_FORMATS, INPUT_NAME, update_export_record

QUANTIZE_TYPES = ("int8",)
# Percentile (99.999 % of each activation's values) is the default: on the demo model it lowers the largest
# validation score error from 0.50 (MinMax) to 0.32 at the same speed (docs/deploy.md "INT8").
CALIBRATION_METHODS = ("percentile", "minmax")
DEFAULT_CALIBRATION_METHOD = "percentile"
# Not offered: ONNX Runtime's quantize_static builds its entropy calibrator with 128 histogram bins for 128 quantized
# bins (it passes no bin count on), so the KL search has one candidate, the whole range: MinMax's ranges, measured
# identical for every one of the demo graph's 135 tensors. With 2,048 bins (its calibrator called directly) the ranges
# shrink to 0.70 of MinMax's (median) and the validation mAP drops 3.9 points.
REFUSED_METHODS = {
    "entropy": "ONNX Runtime's quantize_static calibrates 'entropy' with 128 histogram bins for 128 quantized bins, "
    "which gives MinMax's ranges exactly (see docs/deploy.md, INT8)",
}
# Fewer images than this give ranges of a few extreme activations (the ONNX Runtime examples use hundreds).
MIN_CALIBRATION_IMAGES = 16
DEFAULT_CALIBRATION_IMAGES = 256
# Kept float32: the attention softmax over the h x w positions (probabilities near 1 / (h w), which a per-tensor
# uint8 scale rounds to a few levels): the one operator type whose float32 version paid on the demo's final model
# (benchmarks/benchmark_int8.py, docs/deploy.md "INT8").
FLOAT_OPERATORS = ("Softmax",)
# Kept float32 as well: the backbone's first feature stage (timm's feature_info[0] and every layer before it: the stem
# and, in EfficientNets, blocks.0), whose quantization error every later layer carries on. The first block of each of
# the next FLOAT_FIRST_BLOCKS stages may stay float32 too ([`float_layer_weights`]): on the demo model blocks.1.0
# lowered the score error most of any block (validation mean 0.00795 -> 0.00672) but not the mAP lost (validation
# -0.50 against -0.10, test -0.83 against -0.58), so none is by default (docs/deploy.md "INT8").
FLOAT_FIRST_STAGE = True
FLOAT_FIRST_BLOCKS = 0
# What each float32 choice fixed, measured on the demo model's validation split (benchmarks/benchmark_int8.py), as
# written in an INT8 folder's config.json.
FLOAT32_MEASUREMENTS = {
    "Softmax": "the attention softmax over positions: validation mAP change -0.27 with it quantized, -0.12 float32 "
    "(demo model, percentile, 400 images; MinMax, 200 images: -0.31, -0.08)",
    "backbone first stage": "the stem and first blocks: mean validation score error 0.00887 -> 0.00795 with Softmax "
    "float32 (percentile; with MinMax, from every operator quantized: 0.0104 -> 0.0083, largest 0.50 -> 0.19), demo "
    "model, 400 images",
}
BACKBONE_WEIGHTS = "model.srn.backbone."  # the backbone's weights' names in the exported graph
CALIBRATION_BATCH = 16


class QuantizationError(ValueError):
    """Calibration images that cannot calibrate a quantization: none readable, or fewer than the minimum."""


@dataclass
class CalibrationImages:
    """The preprocessed calibration images (N x 3 x H x W float32) and the problems of those left out."""

    pixel_values: np.ndarray
    source: str
    unreadable: list[str]


def check_quantize_options(quantize: str, method: str, count: int, split: str | None = None) -> None:
    """Refuses (ValueError naming the parameter) an unknown `quantize` type or calibration method, a `count` of
    calibration images under [`MIN_CALIBRATION_IMAGES`], or the test `split` of a dataset to calibrate on."""
    if split == "test":
        raise ValueError("split='test': quantization is calibrated and thresholds are tuned on a validation split")
    if quantize not in QUANTIZE_TYPES:
        raise ValueError(f"quantize={quantize!r} is not one of {', '.join(QUANTIZE_TYPES)}")
    if method in REFUSED_METHODS:
        raise ValueError(f"calibration_method={method!r} is not offered: {REFUSED_METHODS[method]}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration_method={method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    if count < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"calibration_count={count} is below the minimum of {MIN_CALIBRATION_IMAGES} images")


def calibration_images(
    sources, image_processor, count: int = DEFAULT_CALIBRATION_IMAGES, name: str | None = None
) -> CalibrationImages:
    """Up to `count` images of `sources` (a `srn_hf.bulk.Sources`: files or a dataset split), evenly spaced over
    them, opened and preprocessed; unreadable ones are left out (and named). `name` says in errors and in the
    record where they come from (e.g. `"calibration_images=photos/"`).

    Raises:
        QuantizationError: no image can be read, or fewer than [`MIN_CALIBRATION_IMAGES`] can.
    """
    from .bulk import ImageRows

    source = describe_sources(sources) if name is None else f"{name} ({describe_sources(sources)})"
    if not sources.keys:
        raise QuantizationError(f"calibration images {source}: no image files")
    picked = np.unique(np.linspace(0, len(sources.keys) - 1, min(count, len(sources.keys))).round().astype(int))
    rows = ImageRows(sources, picked.tolist(), image_processor)
    items = [rows[index] for index in range(len(rows))]
    unreadable = [item["error"] for item in items if item["error"] is not None]
    readable = [item["pixel_values"].numpy() for item in items if item["error"] is None]
    if not readable:
        raise QuantizationError(
            f"calibration images {source}: none of the {len(items)} images can be read (the first: {unreadable[0]})"
        )
    if len(readable) < MIN_CALIBRATION_IMAGES:
        raise QuantizationError(
            f"calibration images {source}: {len(readable)} readable images, fewer than the minimum of "
            f"{MIN_CALIBRATION_IMAGES} ({len(unreadable)} unreadable)"
        )
    return CalibrationImages(np.stack(readable).astype(np.float32), source, unreadable)


def describe_sources(sources) -> str:
    """The calibration source in a record: the dataset split's size, or the number of files."""
    if sources.dataset is not None:
        return f"{len(sources.keys)} dataset images"
    return f"{len(sources.keys)} image files"


class PixelBatches:
    """ONNX Runtime's `CalibrationDataReader`: `{"pixel_values": batch}` of the calibration images, then None; with
    `__len__` (the number of batches) and `set_range` (batches start to end), which its strided calibration calls."""

    def __init__(self, pixel_values: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self.batches = [pixel_values[start : start + batch_size] for start in range(0, len(pixel_values), batch_size)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict | None:
        batch = next(self.pending, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_graph(
    float_graph: str | os.PathLike,
    out_graph: str | os.PathLike,
    pixel_values: np.ndarray,
    method: str = DEFAULT_CALIBRATION_METHOD,
    float_operators: tuple[str, ...] = FLOAT_OPERATORS,
    float_weights: tuple[str, ...] = (),
    calibration_cache: str | os.PathLike | None = None,
) -> dict:
    """Static INT8 quantization (QDQ) of an ONNX graph, calibrated on `pixel_values`; returns its record.

    Args:
        float_graph, out_graph: the float32 graph, and where to write the quantized one.
        pixel_values: N x 3 x H x W float32 calibration inputs.
        method: `"percentile"` (99.999 % of each activation's values) or `"minmax"` (each activation's whole range).
        float_operators: operator types to keep float32.
        float_weights: prefixes of weight names: the nodes reading such a weight stay float32 as well (e.g.
            [`first_stage_weights`]).
        calibration_cache: a JSON file of the activations' ranges: written by the first call, read by the next
            (quantizing one graph several ways calibrates once; the first call must quantize every operator type,
            so that every range is in it). ONNX Runtime's `calibration_cache_path` (1.27 and later).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="srn-int8-") as scratch:
        prepared = prepared_graph(float_graph, Path(scratch) / "prepared.onnx")
        float_nodes = nodes_reading(prepared, float_weights)
        quantize_static(
            os.fspath(prepared),
            os.fspath(out_graph),
            PixelBatches(pixel_values),
            quant_format=QuantFormat.QDQ,
            # quantize_static's own default (every operator it can quantize), less those kept float32
            op_types_to_quantize=sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - set(float_operators)),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=float_nodes,
            calibrate_method=methods[method],
            # One batch at a time: the percentile calibrator keeps every activation of the images it is given (13 GB
            # for 256 images of the demo model at once); its histograms, and MinMax's ranges, merge batch by batch.
            # (Not CalibMaxIntermediateOutputs: ONNX Runtime 1.32's MinMax calibrator drops the batches of each full
            # chunk without taking their ranges.)
            extra_options={"CalibStridedMinMax": 1},
            **({} if calibration_cache is None else {"calibration_cache_path": os.fspath(calibration_cache)}),
        )
    return quantization_record(method, len(pixel_values), float_operators, float_weights, float_nodes)


def prepared_graph(float_graph: str | os.PathLike, path: Path) -> Path:
    """The graph ready for quantization (`quant_pre_process`: shapes inferred, ONNX Runtime's basic optimisations)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(os.fspath(float_graph), os.fspath(path), skip_symbolic_shape=True)
    return path


def nodes_reading(graph: str | os.PathLike, weight_prefixes: tuple[str, ...]) -> list[str]:
    """The names of the nodes of an ONNX graph that read a weight whose name starts with one of `weight_prefixes`."""
    import onnx

    if not weight_prefixes:
        return []
    return [
        node.name
        for node in onnx.load(os.fspath(graph), load_external_data=False).graph.node
        if any(name.startswith(tuple(weight_prefixes)) for name in node.input)
    ]


def feature_stage_weights(config) -> list[tuple[str, ...]]:
    """The backbone's feature stages in an exported graph, shallowest first: for each of timm's `feature_info` levels,
    the prefixes of the weights' names of its layers (those after the previous level's module, up to and including
    its own). EfficientNet-Lite0: `conv_stem`, `bn1`, `blocks.0`; then `blocks.1`; `blocks.2`; `blocks.3` and
    `blocks.4`; `blocks.5` and `blocks.6`. ResNet: the stem up to `act1`; then `layer1` ... Stops at a level whose
    module is not found among the backbone's modules."""
    import torch

    from .modeling_srn import create_backbone

    with torch.device("meta"):
        backbone = create_backbone(config)
    # timm's FeatureListNet joins nested module names with "_"
    ends = [(name, name.replace(".", "_")) for name in backbone.feature_info.module_name()]
    stages, layers, current = [], [], None
    for name, module in backbone.named_modules():
        if current is not None and not name.startswith(current + "."):
            stages, layers, current = [*stages, tuple(layers)], [], None
        if len(stages) == len(ends):
            break
        current = name if current is None and name in ends[len(stages)] else current
        if name and any(True for _ in module.parameters(recurse=False)):
            layers.append(f"{BACKBONE_WEIGHTS}{name}.")
    return stages + [tuple(layers)] if current is not None else stages


def first_stage_weights(config) -> tuple[str, ...]:
    """The prefixes of the weights' names of the backbone's first feature stage ([`feature_stage_weights`]), empty
    when it is not found."""
    stages = feature_stage_weights(config)
    return stages[0] if stages else ()


def float_layer_weights(config, blocks: int = FLOAT_FIRST_BLOCKS) -> tuple[str, ...]:
    """The prefixes of the weights' names kept float32 in the backbone: its first feature stage and the first block of
    each of the next `blocks` stages ([`feature_stage_weights`]; a stage's first block is the module
    holding its first layer: EfficientNet `blocks.1.0`, ResNet `layer1.0`). Whole blocks, not single convolutions:
    ONNX Runtime (1.32) quantizes at load time the float32 weights of a convolution read from a DequantizeLinear and
    written to a QuantizeLinear (its `WeightBiasQuantization`, per tensor, which costs more than int8 per channel)."""
    stages = feature_stage_weights(config)
    if not stages:
        return ()
    starts = [first_block(stage) for stage in stages[1 : 1 + blocks]]
    return stages[0] + tuple(
        prefix for stage, start in zip(stages[1:], starts) for prefix in stage if prefix.startswith(start)
    )


def first_block(stage: tuple[str, ...]) -> str:
    """The prefix of a stage's first block: its first layer's prefix less the layer's own name."""
    return stage[0].rstrip(".").rsplit(".", 1)[0] + "."


def quantization_record(method: str, images: int, float_operators, float_weights, float_nodes) -> dict:
    """The `quantization` field of an INT8 folder's config.json: how it was quantized, and what stayed float32 with
    the error each choice was measured to fix ([`FLOAT32_MEASUREMENTS`])."""
    import onnxruntime

    kept = {operator: FLOAT32_MEASUREMENTS.get(operator, "") for operator in float_operators}
    if float_weights:
        kept["backbone first stage"] = FLOAT32_MEASUREMENTS["backbone first stage"]
    return {
        "type": "int8",
        "format": "QDQ",
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, asymmetric, per tensor",
        "calibration_method": method,
        "calibration_images": images,
        "float_operators": list(float_operators),
        "float_weights": [prefix.removeprefix(BACKBONE_WEIGHTS) for prefix in float_weights],
        "float_nodes": list(float_nodes),
        "float32_measured": kept,
        "onnxruntime": onnxruntime.__version__,
    }


def export_quantized(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    sources,
    quantize: str = "int8",
    format: str = "onnx",
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    calibration_count: int = DEFAULT_CALIBRATION_IMAGES,
    image_size: int | None = None,
    attention_maps: bool = False,
    thresholds_data: tuple[str, dict, str] | None = None,
    calibration_name: str | None = None,
) -> dict:
    """An INT8 export folder of the SRN model in `model_dir`: the float32 ONNX export, quantized.

    Args:
        model_dir, out_dir, image_size, attention_maps: as in [`srn_hf.export.export_model`].
        sources: the calibration images, a `srn_hf.bulk.Sources` (files, or a dataset split's rows).
        quantize: the type, `"int8"`.
        format: `"onnx"`, the only format quantized (ONNX Runtime runs the INT8 graph).
        calibration_method, calibration_count: see [`quantize_graph`]; at most `calibration_count` images are used
            (evenly spaced over `sources`), at least [`MIN_CALIBRATION_IMAGES`] must be readable.
        thresholds_data: `(kind, options, split)` of a labelled `srn_hf.data` split to tune the thresholds on again
            with the quantized model's scores (never `"test"`); None copies the float model's.
        calibration_name: where `sources` come from, in errors and the record (see [`calibration_images`]).

    Returns:
        `{"graph": path, "quantization": {...}, "unreadable": [...], "calibration": ThresholdCalibration or None}`.
    """
    from .export import check_export_target, export_image_processor, export_model, write_export_thresholds
    from .model_folder import check_model_folder
    from .scoring import calibrate_model_folder
    from .storage import atomic_folder

    check_quantize_options(quantize, calibration_method, calibration_count, thresholds_data and thresholds_data[2])
    if format != "onnx":
        raise ValueError(
            f"quantize={quantize!r} makes an ONNX Runtime graph: format={format!r} is not quantized "
            "(pass format='onnx')"
        )
    check_export_target(out_dir, "onnx", image_size)
    config = check_model_folder(model_dir)
    processor = export_image_processor(model_dir, image_size, config)
    images = calibration_images(sources, processor, calibration_count, calibration_name)
    with tempfile.TemporaryDirectory(prefix="srn-float-") as scratch:
        float_folder = Path(scratch) / "float"
        export_model(model_dir, float_folder, "onnx", image_size, attention_maps)
        with atomic_folder(out_dir) as folder:
            for path in float_folder.iterdir():
                if path.name != EXPORT_FORMATS["onnx"]:
                    (folder / path.name).write_bytes(path.read_bytes())
            record = quantize_graph(
                float_folder / "model.onnx",
                folder / "model.onnx",
                images.pixel_values,
                calibration_method,
                float_weights=float_layer_weights(config, FLOAT_FIRST_BLOCKS) if FLOAT_FIRST_STAGE else (),
            )
            record["calibration_source"] = images.source
            update_export_record(folder, quantization=record)
            calibration = None
            if thresholds_data is not None:
                kind, options, split = thresholds_data
                calibration, _ = calibrate_model_folder(folder, kind, options, split)
                write_export_thresholds(folder, calibration)
    return {
        "graph": Path(out_dir) / EXPORT_FORMATS["onnx"],
        "quantization": record,
        "unreadable": images.unreadable,
        "calibration": calibration,
    }


__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_CALIBRATION_METHOD",
    "FLOAT_FIRST_BLOCKS",
    "FLOAT_FIRST_STAGE",
    "FLOAT_OPERATORS",
    "MIN_CALIBRATION_IMAGES",
    "QUANTIZE_TYPES",
    "QuantizationError",
    "calibration_images",
    "export_quantized",
    "feature_stage_weights",
    "first_stage_weights",
    "float_layer_weights",
    "nodes_reading",
    "quantize_graph",
]
