"""The model a bulk run tags with, the same for every engine (one process or Ray):

- an SRN model, a folder written by `save_pretrained` or a Hub id, run through the `multi-label-image-classification`
  pipeline's model (optionally on the fast path, `srn_hf.fast`): [`PipelineModel`];
- a folder written by `srn-hf export` (ONNX Runtime, or torch.export), run by [`srn_hf.export.ExportedTagger`]:
  [`ExportedModel`].

Each gives the sigmoid scores of a batch of pixel values, its labels and thresholds (the pipeline's rule,
[`srn_hf.pipeline_srn.config_thresholds`]), its image processor, and the digest a resumed output is checked against.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..configuration_srn import config_label_names
from ..fast import autocast_context, use_channels_last
from ..pipeline_srn import check_finite_logits, config_thresholds
from .records import weights_digest

EXPORTED_FILES = ("model.onnx", "model.onnx.data", "model.pt2")


class PipelineModel:
    """An SRN model through its pipeline `tagger`; `name` is its folder or Hub id (kept in `OUTPUT.meta.json`)."""

    def __init__(self, tagger, name: str, fast: bool = False):
        self.tagger, self.name, self.fast = tagger, name, fast
        self.model, self.device = tagger.model, tagger.device
        self.labels = config_label_names(tagger.model.config)
        self.image_processor = tagger.image_processor
        if fast:
            use_channels_last(self.model)

    def thresholds(self, threshold: float | None = None, label_thresholds: dict | None = None) -> np.ndarray:
        return self.tagger.thresholds(threshold, label_thresholds)

    def predict(self, pixel_values: torch.Tensor, attention: bool = False) -> tuple[np.ndarray, torch.Tensor | None]:
        """`(sigmoid scores B x C as float32 numpy, attention maps A or None)` of a batch."""
        with torch.inference_mode(), autocast_context(enabled=self.fast, device_type=self.device.type):
            outputs = self.model(pixel_values=pixel_values.to(self.device, self.tagger.dtype))
        check_finite_logits(outputs.logits, self.model)  # NaN is above no threshold: refused, not written as no labels
        scores = torch.sigmoid(outputs.logits.float()).cpu().numpy()
        return scores, outputs.attention_maps.float().cpu() if attention else None

    def digest(self) -> str:
        return weights_digest(self.model, self.name)

    @property
    def precision(self) -> str:
        return "bf16 autocast, channels-last" if self.fast else str(self.model.dtype).removeprefix("torch.")


class ExportedModel:
    """A folder written by `srn-hf export`: its graph (ONNX Runtime or torch.export), processor and config."""

    def __init__(self, folder: str | os.PathLike, providers: list[str] | None = None):
        from transformers import AutoConfig

        from ..export import ExportedTagger

        self.name, self.folder = os.fspath(folder), Path(folder)
        self.name_or_path = self.name  # how errors name it (`srn_hf.pipeline_srn.model_name`)
        self.exported = ExportedTagger(folder, providers)
        self.config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        self.labels = self.exported.labels
        self.image_processor = self.exported.image_processor
        self.device = torch.device("cpu")

    def thresholds(self, threshold: float | None = None, label_thresholds: dict | None = None) -> np.ndarray:
        return config_thresholds(self.config, threshold, label_thresholds)

    def predict(self, pixel_values: torch.Tensor, attention: bool = False) -> tuple[np.ndarray, None]:
        logits = torch.from_numpy(self.exported.logits(pixel_values.numpy()))
        check_finite_logits(logits, self)
        return torch.sigmoid(logits.float()).numpy(), None

    def digest(self) -> str:
        """The SHA-256 of the graph's files (`model.onnx` and its external data, or `model.pt2`)."""
        digest = hashlib.sha256()
        for name in EXPORTED_FILES:
            if (self.folder / name).is_file():
                digest.update(f"{name};".encode())
                with open(self.folder / name, "rb") as graph:
                    for chunk in iter(lambda: graph.read(1 << 22), b""):
                        digest.update(chunk)
        return digest.hexdigest()

    @property
    def precision(self) -> str:
        return "onnxruntime" if self.exported.session is not None else "torch.export"


def load_bulk_model(
    model: str, device: str | torch.device | None = None, fast: bool = False, trust_remote_code: bool = False
):
    """The [`PipelineModel`] of an SRN folder or Hub id, or the [`ExportedModel`] of an exported folder.
    `trust_remote_code`: run the Python code a folder or repository brings (its `auto_map`); never by default.

    Raises:
        ModelFolderError: naming the model folder (or Hub id) and what is wrong with it (`RemoteCodeError` for code
            it brings, without `trust_remote_code`).
    """
    from transformers import pipeline

    from ..export import is_export_folder
    from ..model_folder import ModelFolderError, check_model_folder, is_local_model, one_line, remote_code_refusal
    from ..pipeline_srn import TASK

    try:
        if is_export_folder(model):
            return ExportedModel(model)
        if is_local_model(model):
            # a missing folder, truncated weights, a bad config value, its own code: named, now
            check_model_folder(model, trust_remote_code=trust_remote_code)
        tagger = pipeline(TASK, model=model, device=device, trust_remote_code=trust_remote_code)
        return PipelineModel(tagger, model, fast)
    except ModelFolderError:  # its message names the folder or the file
        raise
    except (OSError, ValueError) as error:
        message = one_line(error)  # named after the model, if it does not name it already
        named = message if model in message else f"{model}: {message}"
        raise remote_code_refusal(model, error) or ModelFolderError(named) from error


def as_bulk_model(tagger, name: str, fast: bool = False):
    """`tagger` as a bulk model: a pipeline is wrapped in a [`PipelineModel`], a bulk model is kept."""
    return tagger if isinstance(tagger, (PipelineModel, ExportedModel)) else PipelineModel(tagger, name, fast)


__all__ = ["ExportedModel", "PipelineModel", "as_bulk_model", "load_bulk_model"]
