"""pytest plugin that points timm's own `tests/test_models.py` (from its sdist, unchanged) at SRN's timm entries.

Loaded with `-p upstream.timm_models` before the test file is collected, because the file parametrizes its tests by
calling timm's model listing at import time:
- `timm.list_models` / `timm.list_pretrained` list only the entries named in `SRN_TIMM_MODELS` (comma-separated);
- SRN's timm module joins every `module=` list, the way timm's file selects the models whose `forward_intermediates`
  and `features_only=True` (feature getter) it checks (its `FEAT_INTER_FILTERS`);
- tests that are not parametrized by one of those entries (written for one named in-tree model) are deselected.
"""

import os

import timm
import timm.models

import srn_hf.timm_srn

ENTRIES = tuple(os.environ["SRN_TIMM_MODELS"].split(","))
MODULE = srn_hf.timm_srn.__name__.rsplit(".", 1)[-1]  # the module name timm's registry gives the entries

_list_models, _list_pretrained = timm.list_models, timm.list_pretrained


def selected(names: list[str]) -> list[str]:
    return [name for name in names if name.split(".")[0] in ENTRIES]


def list_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False, include_tags=None):
    if module:
        module = [module, MODULE] if isinstance(module, str) else [*module, MODULE]
    return selected(_list_models(filter, module, pretrained, exclude_filters, name_matches_cfg, include_tags))


def list_pretrained(filter="", exclude_filters=""):
    return selected(_list_pretrained(filter, exclude_filters))


for namespace in (timm, timm.models):
    namespace.list_models, namespace.list_pretrained = list_models, list_pretrained


def pytest_collection_modifyitems(config, items):
    kept = [
        item for item in items if getattr(item, "callspec", None) and item.callspec.params.get("model_name") in ENTRIES
    ]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept
