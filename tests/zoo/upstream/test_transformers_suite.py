"""transformers' own generic model tests (test_modeling_common.py, test_configuration_common.py from the sdist of the
installed transformers), run unchanged against SRN through SRN's model tester; see docs/zoo.md.

The suite runs in a pytest subprocess over the package that `transformers_suite.build_suite` lays out in a temporary
folder (pip downloads the sdist on first use). It passes with 0 failures, and every test it skips is skipped for a
reason that skips it for transformers' in-tree vision models too: the reasons are listed in SKIP_REASONS and, each
with its explanation, in docs/zoo.md.
"""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from .sdist import newest_served
from .transformers_suite import build_suite

ZOO_DOC = Path(__file__).parents[3] / "docs" / "zoo.md"

# The skip messages of the upstream tests (regular expressions), each as it stands in docs/zoo.md's list.
SKIP_REASONS = [
    r"test requires (CUDA|MPS|accelerator|multiple accelerators|Flash Attention( [34])?|deepspeed)",
    r"test is slow",
    r"Model architecture does not support attentions|Model does not (output |support output_)attentions"
    r"|Parts of this model don't support sdpa",
    r"does not support grouped_mm|This model has no sparse experts\.|This model has no `output_router_logits`"
    r"|Model does not have a TP plan\.",
    r"RoPE|Model does not have position embeddings|This model doesn't use `inputs_embeds`"
    r"|Do not take a cache as input to forward|No decoder-only language modeling head|No sequence-to-sequence"
    r"|test_resize_embeddings is set to `False`|has no input or output embeddings"
    r"|No model with a differentiable loss was available to verify enable_input_require_grads",
    r"This model is not composite|No subconfigs so the test does not make sense",
    r"_keep_in_fp32_modules",
    r"No conversion found for",
    r"No usage of the `capture_outputs` decorator|Cannot capture hidden states",
    r"Could not locate the classification Linear layer\.",
]


def run_suite(folder: Path) -> tuple[ElementTree.ElementTree, subprocess.CompletedProcess]:
    tester = build_suite(folder)
    report = folder / "report.xml"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-W",
        "ignore::pytest.PytestUnknownMarkWarning",
        f"--junitxml={report}",
        f"--rootdir={folder}",
        str(tester.relative_to(folder)),
    ]
    result = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=1500)
    assert report.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return ElementTree.parse(report), result


@pytest.mark.slow
def test_transformers_generic_model_tests_pass_on_srn(tmp_path):
    tree, result = run_suite(tmp_path)
    cases = list(tree.iter("testcase"))
    failed = [case.get("name") for case in cases if case.find("failure") is not None or case.find("error") is not None]
    assert not failed and result.returncode == 0, f"{failed}\n{result.stdout[-6000:]}"
    skipped = [
        (case.get("name"), case.find("skipped").get("message", ""))
        for case in cases
        if case.find("skipped") is not None
    ]
    unexplained = [
        (name, message) for name, message in skipped if not any(re.search(reason, message) for reason in SKIP_REASONS)
    ]
    assert not unexplained, f"skipped for a reason that docs/zoo.md does not list: {unexplained}"
    passed = len(cases) - len(skipped)
    # A floor against a suite that silently stops running: with transformers 5.25 the JUnit report holds 67 test
    # cases that ran without a skip (pytest's own summary says 76 passed, 106 skipped).
    assert passed >= 60, f"only {passed} upstream tests ran"
    ran = {case.get("name") for case in cases if case.find("skipped") is None}
    assert {
        "test_problem_types",
        "test_training_gradient_checkpointing",
        "test_gradient_checkpointing_enable_disable",
        "test_config",
        "test_save_load",
        "test_training",
        "test_can_init_all_missing_weights",
    } <= ran


def test_every_skip_reason_is_listed_in_the_docs():
    listed = ZOO_DOC.read_text()
    for reason in SKIP_REASONS:
        assert f"`` {reason} ``" in listed, reason


def test_the_installed_transformers_is_the_newest_that_pyproject_allows():
    """CI tests the newest transformers the package index serves within pyproject.toml's bounds (a fresh environment
    resolves to it; a stale one fails here, naming both versions)."""
    from importlib.metadata import version

    newest = newest_served("transformers")
    assert version("transformers") == newest, (
        f"transformers {version('transformers')} is installed, the index serves {newest} within pyproject.toml's "
        "bounds: rebuild the environment (tests/run_tests.sh does)"
    )
