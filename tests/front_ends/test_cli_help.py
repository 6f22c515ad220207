"""`srn-hf --help` and each command's `--help`: they answer without importing torch or transformers (the console
script imports only the argument parser until the arguments are parsed), with examples and the dataset kinds."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import save_with_processor, small_srn
from PIL import Image

from srn_hf.cli import build_parser
from srn_hf.data import LOADERS

CONSOLE_SCRIPT = Path(sys.executable).with_name("srn-hf")  # installed by `pip install srn_hf`
HEAVY_MODULES = ("torch", "transformers", "timm", "datasets", "gradio")


def run_help(*command: str) -> tuple[str, set[str]]:
    """The help text of the real console script, and the top-level modules it imported (Python's import log)."""
    completed = subprocess.run(
        [str(CONSOLE_SCRIPT), *command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert completed.returncode == 0, completed.stderr
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in completed.stderr.splitlines()
        if line.startswith("import time:")
    }
    return completed.stdout, imported


@pytest.mark.parametrize("command", [[], ["predict"], ["calibrate"], ["export"], ["publish"], ["demo"]])
def test_help_imports_no_heavy_library(command):
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT}: the package is not installed with its console script"
    text, imported = run_help(*command)
    assert "usage: srn-hf" in text
    assert "argparse" in imported  # the import log is read
    assert not imported & set(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))


def test_top_level_help_has_examples():
    text, _ = run_help()
    examples = text.split("examples:", 1)[1]
    for command in build_parser()._subparsers._group_actions[0].choices:
        assert f"srn-hf {command} " in examples


def test_calibrate_and_predict_help_list_every_data_kind_with_its_options():
    for command in ("calibrate", "predict"):
        text, _ = run_help(command)
        listing = dict(
            line.split(maxsplit=1) for line in text.split("--data-option keys", 1)[1].splitlines()[1:] if line.strip()
        )
        assert sorted(listing) == sorted(LOADERS)
        for kind, loader in LOADERS.items():
            assert [name.lstrip("*") for name in listing[kind].split(", ")] == list(
                inspect.signature(loader).parameters
            )


def test_export_help_shows_the_default_format():
    text, _ = run_help("export")
    default = build_parser().parse_args(["export", "a", "b"]).format
    assert f"default: {default}" in " ".join(text.split())


def test_the_console_script_registers_srn_before_a_command_runs(tmp_path):
    """The console script imports SRN only after parsing; `predict` then loads a saved SRN through the pipeline
    task that `register` adds (the model folder has no remote code the pipeline could fall back on)."""
    model_folder = Path(save_with_processor(small_srn({0: "dog", 1: "cat"}), tmp_path / "model"))
    for code_file in model_folder.glob("*.py"):
        code_file.unlink()
    Image.new("RGB", (32, 32), (0, 128, 0)).save(tmp_path / "green.png")
    completed = subprocess.run(
        [str(CONSOLE_SCRIPT), "predict", str(model_folder), str(tmp_path / "green.png"), "--threshold", "0", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 0, completed.stderr
    assert {label["label"] for label in json.loads(completed.stdout)[0]["labels"]} == {"dog", "cat"}
