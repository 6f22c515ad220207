"""srn_hf: the Spatial Regularization Network (SRN, CVPR 2017) for multi-label image classification.

`import srn_hf` registers SRN with transformers (AutoConfig, AutoModel, AutoModelForImageClassification, the
`multi-label-image-classification` pipeline) and with timm (`timm.create_model("srn_resnet101", ...)`); the
`srn-hf` command does so after parsing its arguments (`register`), so that its `--help` answers at once.
"""

import sys
from pathlib import Path


def register() -> None:
    """Registers SRN with transformers (Auto classes, auto_map for remote code, the pipeline task) and with timm.

    `import srn_hf` calls it; the `srn-hf` command calls it after parsing its arguments (so that `--help` answers
    without importing torch). Calling it again does nothing new.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
    from transformers.pipelines import PIPELINE_REGISTRY

    from . import timm_srn  # noqa: F401  (registers the timm entries)
    from .configuration_srn import SRNConfig
    from .modeling_srn import SRNForImageClassification, SRNModel
    from .pipeline_srn import TASK, MultiLabelImageClassificationPipeline

    AutoConfig.register(SRNConfig.model_type, SRNConfig, exist_ok=True)
    AutoModel.register(SRNConfig, SRNModel, exist_ok=True)
    AutoModelForImageClassification.register(SRNConfig, SRNForImageClassification, exist_ok=True)

    # save_pretrained copies configuration_srn.py and modeling_srn.py beside the weights (remote code).
    SRNConfig.register_for_auto_class()
    SRNModel.register_for_auto_class("AutoModel")
    SRNForImageClassification.register_for_auto_class("AutoModelForImageClassification")

    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=MultiLabelImageClassificationPipeline,
        pt_model=AutoModelForImageClassification,
        type="image",
    )


# The `srn-hf` console script imports only the argument parser (srn_hf.cli) until the arguments are parsed.
if Path((getattr(sys, "argv", None) or [""])[0]).stem != "srn-hf":
    from .configuration_srn import SRNConfig
    from .modeling_srn import (
        SRNForImageClassification,
        SRNImageClassifierOutput,
        SRNModel,
        SRNModelOutput,
        SRNOutput,
        SRNPreTrainedModel,
    )
    from .pipeline_srn import TASK as PIPELINE_TASK  # noqa: F401 (srn_hf.PIPELINE_TASK: the pipeline task's name)
    from .pipeline_srn import MultiLabelImageClassificationPipeline
    from .timm_srn import SRNTimm, create_timm_srn

    register()

__all__ = [
    "SRNConfig",
    "SRNModel",
    "SRNForImageClassification",
    "SRNModelOutput",
    "SRNImageClassifierOutput",
    "SRNOutput",
    "SRNPreTrainedModel",
    "MultiLabelImageClassificationPipeline",
    "SRNTimm",
    "create_timm_srn",
    "register",
]
__version__ = "0.1.0"
