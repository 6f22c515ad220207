"""The text of a training run's report (the tables `examples/train_stages.py` prints) and its metrics.json.

[`metric_table`] gives the stages' mAP and thresholded figures at 0.5 on one split, [`threshold_table`] the test
split at 0.5 and at the thresholds tuned on validation, [`calibrated_gain`] and [`describe_gain`] the last stage's
CF1 / OF1 over stage 1's; [`write_json`] writes metrics.json atomically. The curves are drawn by
`srn_hf.training_plots`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .metrics import THRESHOLDED_FIGURES as FIGURES
from .stages import PAPER_NAMES
from .storage import write_text_file


def metric_table(stages: list[dict], split: str, columns=("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")) -> str:
    """A text table of the stages' metrics on `split` (one row per stage, named by its prediction)."""
    header = f"{'stage':<6}{'prediction':<12}" + "".join(f"{column:>8}" for column in columns)
    rows = [f"{split} split", header, "-" * len(header)]
    for record in stages:
        metrics = record.get(split)
        if not metrics:
            continue
        cells = "".join(f"{metrics.get(column, math.nan):>8.2f}" for column in columns)
        rows.append(f"{record['stage']:<6}{PAPER_NAMES[record['prediction']]:<12}{cells}")
    return "\n".join(rows)


def threshold_table(records: list[dict]) -> str:
    """The stages' test figures at 0.5 and at their calibrated thresholds, one row per stage (from metrics.json)."""
    header = f"{'stage':<6}{'prediction':<12}{'mAP':>8}" + "".join(f"{name:>8}" for name in FIGURES) + "  thresholds"
    rows = ["test split at 0.5 and at thresholds tuned on the validation split", header, "-" * len(header)]
    for record in records:
        if "test" not in record or "test_calibrated" not in record:
            continue
        for name, figures in (("0.5", record["test"]), ("tuned", record["test_calibrated"])):
            cells = "".join(f"{'-' if figures.get(key) is None else f'{figures[key]:.2f}':>8}" for key in FIGURES)
            rows.append(
                f"{record['stage']:<6}{PAPER_NAMES[record['prediction']]:<12}"
                f"{record['test']['mAP']:>8.2f}{cells}  {name}"
            )
    return "\n".join(rows)


def calibrated_gain(records: list[dict]) -> dict | None:
    """The last stage's test figures over stage 1's, both at their calibrated thresholds (and at 0.5), in points."""
    first, last = records[0], records[-1]
    if first["stage"] != 1 or last["stage"] == 1 or any("test_calibrated" not in record for record in (first, last)):
        return None

    def difference(key: str) -> dict:
        pairs = {name: (last[key].get(name), first[key].get(name)) for name in FIGURES}
        return {name: None if None in pair else pair[0] - pair[1] for name, pair in pairs.items()}

    return {"stage": last["stage"], "calibrated": difference("test_calibrated"), "at_0.5": difference("test")}


def describe_gain(gain: dict) -> str:
    """One line for [`calibrated_gain`]'s result: CF1 / OF1 over stage 1 at tuned thresholds, and at 0.5."""

    def pair(figures: dict) -> str:
        return " / ".join("-" if figures[name] is None else f"{figures[name]:+.2f}" for name in ("CF1", "OF1"))

    return (
        f"test CF1 / OF1 of stage {gain['stage']} over stage 1, each at its thresholds tuned on validation: "
        f"{pair(gain['calibrated'])} (at 0.5: {pair(gain['at_0.5'])})"
    )


def write_json(path: str | Path, payload: dict) -> None:
    """Writes `payload` to `path` atomically (a killed run never leaves half a file); a failed write raises
    `srn_hf.storage.StorageError` naming the path and the free space."""
    write_text_file(path, json.dumps(payload, indent=2, default=float))


__all__ = ["calibrated_gain", "describe_gain", "metric_table", "threshold_table", "write_json"]
