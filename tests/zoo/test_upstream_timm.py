"""timm's own `tests/test_models.py`, from the sdist of the installed timm and run unchanged, on SRN's timm entries.

The file parametrizes its tests by timm's model listing; the plugin `upstream/timm_models.py` points that listing at
one SRN entry per run and adds SRN's module to the modules whose `forward_intermediates` and `features_only` the file
checks. What it checks of every model: docs/zoo.md#timms-own-test-suite.
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from upstream.sdist import fetch_sdist, newest_served

TESTS = Path(__file__).resolve().parent

# Every registered srn_* entry a CPU runs the file on in minutes: srn_resnet101 (and `srn`, on resnet101 by default)
# is the same code as srn_resnet50 at twice the depth.
ENTRIES = (
    "srn_resnet50",
    "srn_convnext_tiny",
    "srn_tf_efficientnet_lite0",
    "srn_efficientnet_b0",
    "srn_convit_tiny",
)

# The tests of the file parametrized by a model name: each must run, and pass, on every entry.
UPSTREAM_TESTS = {
    "test_model_forward",
    "test_model_backward",
    "test_model_default_cfgs",
    "test_model_forward_torchscript",
    "test_model_forward_features",
    "test_model_forward_intermediates_features",
    "test_model_forward_intermediates",
    "test_prune_intermediate_layers_contract",
    "test_model_forward_fx",
    "test_model_backward_fx",
    "test_model_forward_fx_torchscript",
}


def run_upstream(entry: str, report: Path) -> subprocess.CompletedProcess:
    source = fetch_sdist("timm")
    env = {
        **os.environ,
        "SRN_TIMM_MODELS": entry,
        "TIMEOUT": "900",  # the file's own knob for its per-test timeouts (120 to 360 s, sized for CI runners)
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/test_models.py",
        "-p",
        "upstream.timm_models",
        "-p",
        "no:cacheprovider",
        "-q",
        "--tb=short",
        f"--junitxml={report}",
    ]
    return subprocess.run(command, cwd=source, env=env, capture_output=True, text=True, timeout=3000)


def outcomes(report: Path) -> dict[str, str]:
    """`{test function: "passed" | "failed" | "error" | "skipped: reason"}` of a junit report."""
    results = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = case.get("name").split("[")[0]
        children = {child.tag: child for child in case}
        if "failure" in children or "error" in children:
            results[name] = "failed"
        elif "skipped" in children:
            results[name] = "skipped: " + children["skipped"].get("message", "")
        else:
            results[name] = "passed"
    return results


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("entry", ENTRIES)
def test_timm_test_models_passes_on_srn(entry, tmp_path):
    report = tmp_path / "report.xml"
    run = run_upstream(entry, report)
    results = outcomes(report)
    assert set(results) == UPSTREAM_TESTS, run.stdout[-2000:]
    failed = {name: result for name, result in results.items() if result != "passed"}
    assert not failed, run.stdout[-6000:]


def test_the_installed_timm_is_the_newest_that_pyproject_allows():
    """The suite above runs on the newest timm the package index serves within pyproject.toml's bounds."""
    from importlib.metadata import version

    newest = newest_served("timm")
    assert version("timm") == newest, (
        f"timm {version('timm')} is installed, the index serves {newest}: rebuild the environment"
    )
