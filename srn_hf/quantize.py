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
`CalibrationDataReader` over the image processor's `pixel_values`). The operators of [`FLOAT_OPERATORS`] stay
float32: each cost a large score error when quantized (measured per operator by `benchmarks/benchmark_int8.py`,
docs/deploy.md "INT8").

The folder is a complete export folder (`model.onnx` is the INT8 graph, so [`srn_hf.export.ExportedTagger`] and
everything built on it load it as they load a float32 one), and it records what was done: `config.json` has
`export_format` and `quantization` (type, format, calibration method and image count, the operators kept float32,
ONNX Runtime's version); `thresholds.json` has `thresholds_from`: `"int8 scores"` when a labelled split was given
(the thresholds are tuned again on the quantized model's scores, [`srn_hf.scoring.calibrate_model_folder`]), else
`"float32 model"` (copied from the float model's config, though the quantized scores may have drifted from its).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .export import EXPORT_FORMATS, INPUT_NAME, update_export_record

QUANTIZE_TYPES = ("int8",)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Fewer images than this give ranges of a few extreme activations (the ONNX Runtime examples use hundreds).
MIN_CALIBRATION_IMAGES = 16
DEFAULT_CALIBRATION_IMAGES = 256
# Kept float32: the attention softmax over the h x w positions (probabilities near 1 / (h w), which a per-tensor
# uint8 scale rounds to a few levels). Measured (benchmarks/benchmark_int8.py, docs/deploy.md "INT8") only on the
# demo run's stage-1 and stage-2 checkpoints, where f_sr's output is still near zero: there no operator type or SRN
# branch left float32 changed the score error, so this is a precaution that costs nothing measurable.
FLOAT_OPERATORS = ("Softmax",)
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
    """ONNX Runtime's `CalibrationDataReader`: `{"pixel_values": batch}` of the calibration images, then None."""

    def __init__(self, pixel_values: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self.batches = iter(
            [pixel_values[start : start + batch_size] for start in range(0, len(pixel_values), batch_size)]
        )

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_graph(
    float_graph: str | os.PathLike,
    out_graph: str | os.PathLike,
    pixel_values: np.ndarray,
    method: str = "minmax",
    float_operators: tuple[str, ...] = FLOAT_OPERATORS,
    float_nodes: tuple[str, ...] = (),
    calibration_cache: str | os.PathLike | None = None,
) -> dict:
    """Static INT8 quantization (QDQ) of an ONNX graph, calibrated on `pixel_values`; returns its record.

    Args:
        float_graph, out_graph: the float32 graph, and where to write the quantized one.
        pixel_values: N x 3 x H x W float32 calibration inputs.
        method: `"minmax"` (each activation's whole range), `"entropy"` or `"percentile"` (99.999 %).
        float_operators: operator types to keep float32.
        float_nodes: node names (of the prepared graph, [`prepared_graph`]) to keep float32 as well.
        calibration_cache: a JSON file of the activations' ranges: written by the first call, read by the next
            (quantizing one graph several ways calibrates once; the first call must quantize every operator type,
            so that every range is in it). ONNX Runtime's `calibration_cache_path`, in 1.32 and later.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(prefix="srn-int8-") as scratch:
        prepared = prepared_graph(float_graph, Path(scratch) / "prepared.onnx")
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
            nodes_to_exclude=list(float_nodes),
            calibrate_method=methods[method],
            # No CalibMaxIntermediateOutputs: ONNX Runtime 1.32's MinMax calibrator drops the batches of each full
            # chunk without taking their ranges (only the last, partial chunk counted); MinMax keeps two numbers per
            # tensor and batch anyway. Entropy and percentile keep every activation of every image in memory.
            **({} if calibration_cache is None else {"calibration_cache_path": os.fspath(calibration_cache)}),
        )
    return quantization_record(method, len(pixel_values), float_operators, float_nodes)


def prepared_graph(float_graph: str | os.PathLike, path: Path) -> Path:
    """The graph ready for quantization (`quant_pre_process`: shapes inferred, ONNX Runtime's basic optimisations)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(os.fspath(float_graph), os.fspath(path), skip_symbolic_shape=True)
    return path


def quantization_record(method: str, images: int, float_operators, float_nodes) -> dict:
    """The `quantization` field of an INT8 folder's config.json."""
    import onnxruntime

    return {
        "type": "int8",
        "format": "QDQ",
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, asymmetric, per tensor",
        "calibration_method": method,
        "calibration_images": images,
        "float_operators": list(float_operators),
        "float_nodes": list(float_nodes),
        "onnxruntime": onnxruntime.__version__,
    }


def export_quantized(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    sources,
    quantize: str = "int8",
    format: str = "onnx",
    calibration_method: str = "minmax",
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
    from .scoring import calibrate_model_folder
    from .storage import atomic_folder

    check_quantize_options(quantize, calibration_method, calibration_count, thresholds_data and thresholds_data[2])
    if format != "onnx":
        raise ValueError(
            f"quantize={quantize!r} makes an ONNX Runtime graph: format={format!r} is not quantized "
            "(pass format='onnx')"
        )
    check_export_target(out_dir, "onnx", image_size)
    processor = export_image_processor(model_dir, image_size)
    images = calibration_images(sources, processor, calibration_count, calibration_name)
    with tempfile.TemporaryDirectory(prefix="srn-float-") as scratch:
        float_folder = Path(scratch) / "float"
        export_model(model_dir, float_folder, "onnx", image_size, attention_maps)
        with atomic_folder(out_dir) as folder:
            for path in float_folder.iterdir():
                if path.name != EXPORT_FORMATS["onnx"]:
                    (folder / path.name).write_bytes(path.read_bytes())
            record = quantize_graph(
                float_folder / "model.onnx", folder / "model.onnx", images.pixel_values, calibration_method
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
    "FLOAT_OPERATORS",
    "MIN_CALIBRATION_IMAGES",
    "QUANTIZE_TYPES",
    "QuantizationError",
    "calibration_images",
    "export_quantized",
    "quantize_graph",
]
