"""transformers' generic model tests (`tests/test_modeling_common.py`, `tests/test_configuration_common.py`), as they
ship in the sdist of the installed transformers, laid out to run against SRN.

`build_suite(folder)` writes, under `folder`, the package `tests` that transformers' in-tree model tests live in:
the sdist's `tests/*.py` unchanged, SRN's model tester ([`srn_transformers_tester`], ours) as
`tests/models/srn/test_modeling_srn.py` where an in-tree model's tester sits, and the three helper modules that
`test_modeling_common.py` and `test_configuration_common.py` import from sub-folders of transformers' test tree that
the sdist does not ship:

- `tests/exporters/test_export.py`: `ExportTesterMixin`, the base class of `ModelTesterMixin` that holds the
  torch.export / ONNX / ExecuTorch tests. Written as an empty class: those tests are not run here (SRN's own export
  tests are `tests/test_export.py`).
- `tests/generation/test_utils.py`: `GenerationTesterMixin`, which `ModelTesterMixin` only looks for with
  `issubclass` (SRN does not generate, so its tester does not inherit it). An empty class.
- `tests/utils/test_configuration_utils.py`: `config_common_kwargs`, one non-default value for every common field of
  `PreTrainedConfig` (what `ConfigTester.check_config_arguments_init` passes and reads back). Written from the
  installed `PreTrainedConfig`'s fields, refusing to run when a field has no value here.

Nothing of transformers' is kept in this repository: the sdist is downloaded by pip ([`sdist.fetch_sdist`]).
"""

import dataclasses
import shutil
from pathlib import Path

from transformers import PreTrainedConfig

from .sdist import fetch_sdist

TESTER = Path(__file__).with_name("srn_transformers_tester.py")

# One value, not the default, for each common field of PreTrainedConfig. The fields that transformers' own
# `test_config_common_kwargs_is_complete` leaves out (the version stamp, the encoder-decoder switch) are left out too.
COMMON_VALUES = {
    "architectures": ["SRNForImageClassification"],
    "output_hidden_states": True,
    "return_dict": False,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
NOT_COMMON = ("transformers_version", "is_encoder_decoder")


def config_common_kwargs() -> dict:
    """COMMON_VALUES, checked against the installed PreTrainedConfig: every field covered, none at its default."""
    defaults = PreTrainedConfig().__dict__
    fields = [field.name for field in dataclasses.fields(PreTrainedConfig) if field.name not in NOT_COMMON]
    missing = sorted(set(fields) - set(COMMON_VALUES))
    if missing:
        raise RuntimeError(f"PreTrainedConfig has fields with no test value in COMMON_VALUES: {missing}")
    at_default = [key for key, value in COMMON_VALUES.items() if defaults.get(key) == value]
    if at_default:
        raise RuntimeError(f"COMMON_VALUES sets fields to their default: {at_default}")
    return {key: COMMON_VALUES[key] for key in fields}


HELPERS = {
    "exporters/test_export.py": (
        '"""Not in the sdist: the torch.export / ONNX / ExecuTorch tests are not run against SRN."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "generation/test_utils.py": (
        '"""Not in the sdist: SRN does not generate; test_modeling_common only checks issubclass."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
}


def build_suite(folder: Path) -> Path:
    """Lays out transformers' test package with SRN's tester under `folder`; returns the tester's path."""
    source = fetch_sdist("transformers") / "tests"
    tests = Path(folder) / "tests"
    tests.mkdir(parents=True)
    for module in source.glob("*.py"):
        shutil.copy(module, tests / module.name)
    helpers = dict(HELPERS)
    helpers["utils/test_configuration_utils.py"] = (
        '"""Not in the sdist: one non-default value per common field of PreTrainedConfig."""\n\n'
        f"config_common_kwargs = {config_common_kwargs()!r}\n"
    )
    helpers["models/srn/test_modeling_srn.py"] = TESTER.read_text()
    for relative, text in helpers.items():
        path = tests / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in [tests, *[path for path in tests.rglob("*") if path.is_dir()]]:
        (package / "__init__.py").touch()
    return tests / "models" / "srn" / "test_modeling_srn.py"
