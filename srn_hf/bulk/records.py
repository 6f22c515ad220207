"""What every engine of bulk tagging shares: a run's errors, a record's fields and naming, and the decision that
turns scores into its labels ([`srn_hf.pipeline_srn.labels_above_thresholds`], the pipeline's rule)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..pipeline_srn import labels_above_thresholds

OUTPUT_FORMATS = {".jsonl": "jsonl", ".parquet": "parquet"}
META_SUFFIX = ".meta.json"
PARTS_SUFFIX = ".parts"
# Settings an output's records depend on: a resumed run must use the same ones.
RECORD_SETTINGS = ("weights_sha256", "labels", "thresholds", "top_k", "all_scores", "save_attention")


class BulkError(ValueError):
    """A bulk run that cannot start: bad sources, an unwritable output, an output of another model."""


def weights_digest(model: torch.nn.Module, model_name: str) -> str:
    """The SHA-256 of every byte of the model's weights: which model wrote an output.

    For a model folder, of its weights files (`model.safetensors`, or the shards of its index, or `.bin`) read in
    chunks; else (a Hub id, a model in memory) of every tensor of its state dict, with its name, shape and dtype. A
    file hash costs about a second per 500 MB, little next to one forward pass per image.
    """
    from ..model_folder import weights_files

    digest = hashlib.sha256()
    files = weights_files(Path(model_name)) if os.path.isdir(model_name) else []
    for file in files:
        digest.update(f"{file.name};".encode())
        with open(file, "rb") as weights:
            for chunk in iter(lambda: weights.read(1 << 22), b""):
                digest.update(chunk)
    if not files:
        for name, tensor in model.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# What an escaped record name may contain: a doubled backslash, `\xNN` (a byte) or `\uNNNN` (a lone surrogate).
ESCAPE_LIKE = re.compile(r"\\(?:\\|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})")


def record_text(text: str | None) -> str | None:
    """`text` as valid UTF-8 for a record, one record name per file name: a file name that is not UTF-8 (its bytes
    kept by Python as surrogates, `\\udcff`) gets each such byte written `\\xff` and each backslash doubled, so that
    JSONL and parquet can hold it, a resumed run recognises it, and a file literally named `caf\\xe9.png` (written
    `caf\\\\xe9.png`, as is every UTF-8 name that looks escaped) is not taken for the byte name `caf\\xe9.png`. Every
    other name is itself."""
    if text is None:
        return None
    if is_utf8(text) and not ESCAPE_LIKE.search(text):
        return text
    doubled = text.replace("\\", "\\\\")
    try:
        return doubled.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte (from a dataset's text): written \udXXX
        return doubled.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8(text: str) -> bool:
    """True when `text` holds no surrogate (it encodes as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class RecordMaker:
    """Turns a batch's sigmoid scores into records: the labels above their thresholds, best first, at most `top_k`.

    The rule of the `multi-label-image-classification` pipeline ([`srn_hf.pipeline_srn.labels_above_thresholds`]).
    """

    labels: list[str]
    thresholds: np.ndarray
    top_k: int | None = None
    all_scores: bool = False

    def record(self, key: str, scores: np.ndarray | None, error: str | None) -> dict:
        record = {"image": record_text(key), "labels": [], "error": record_text(error)}
        if scores is not None and error is None:
            predicted = labels_above_thresholds(scores, self.thresholds, self.top_k)
            record["labels"] = [
                {"label": self.labels[index], "score": round(float(scores[index]), 6)} for index in predicted
            ]
        if self.all_scores:
            record["scores"] = None if error is not None else [round(float(score), 6) for score in scores]
        return record


def parquet_schema(all_scores: bool, save_attention: bool):
    """The parquet columns of a record (see the module docstring)."""
    import pyarrow as pa

    columns = [
        ("image", pa.string()),
        ("labels", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
        ("error", pa.string()),
    ]
    if all_scores:
        columns.append(("scores", pa.list_(pa.float32())))
    if save_attention:
        columns.append(("attention", pa.string()))
    return pa.schema(columns)


@dataclass
class Summary:
    """What a bulk run did, over every process: images predicted, of them failed, images skipped (already written),
    records kept from earlier runs that hold an error, and error records dropped to be retried (`retry_errors`)."""

    predicted: int = 0
    failed: int = 0
    skipped: int = 0
    earlier_errors: int = 0
    retried: int = 0

    @property
    def output_errors(self) -> int:
        """Records of the output that hold an error once the run is over: this run's failures and the kept ones."""
        return self.failed + self.earlier_errors


def run_meta(bulk_model, model: str, maker: RecordMaker, save_attention: bool) -> dict:
    """`OUTPUT.meta.json`: the model and settings the records depend on (`RECORD_SETTINGS`), and the precision."""
    return {
        "model": model,
        "weights_sha256": bulk_model.digest(),
        "labels": maker.labels,
        "thresholds": [float(value) for value in maker.thresholds],
        "top_k": maker.top_k,
        "all_scores": maker.all_scores,
        "save_attention": save_attention,
        "precision": bulk_model.precision,
    }
