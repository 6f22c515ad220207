"""transformers' model linter (`transformers-mlinter`, the rules every in-tree modeling file passes) on SRN's two
remote-code files, with its default rules. Where a rule cannot apply, the exception stands next to the code
(`# trf-ignore: ...` with the reason)."""

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "srn_hf"


def test_configuration_and_modeling_pass_transformers_model_linter():
    files = [str(PACKAGE / "configuration_srn.py"), str(PACKAGE / "modeling_srn.py")]
    result = subprocess.run(
        [sys.executable, "-m", "mlinter", "--no-progress", "--no-cache", *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip().endswith("OK")


def test_the_linter_finds_a_violation_when_there_is_one(tmp_path):
    """The same call fails on a modeling file with an nn.Sequential: the test above can fail."""
    bad = tmp_path / "modeling_bad.py"
    source = (PACKAGE / "modeling_srn.py").read_text()
    bad.write_text(
        source.replace(
            "self.attention_trunk = SRNAttentionTrunk(attention_channels)",
            "self.attention_trunk = nn.Sequential(SRNAttentionTrunk(attention_channels))",
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mlinter", "--no-progress", "--no-cache", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "TRF036" in result.stdout + result.stderr
