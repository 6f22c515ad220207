"""srn_hf: the Spatial Regularization Network (SRN, CVPR 2017) for multi-label image classification.

`import srn_hf` registers SRN with transformers (AutoConfig, AutoModel, AutoModelForImageClassification, the
`multi-label-image-classification` pipeline) and with timm (`timm.create_model("srn_resnet101", ...)`).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_srn import SRNConfig
from .modeling_srn import (
    SRNForImageClassification,
    SRNImageClassifierOutput,
    SRNModel,
    SRNModelOutput,
    SRNOutput,
    SRNPreTrainedModel,
)
from .pipeline_srn import TASK as PIPELINE_TASK
from .pipeline_srn import MultiLabelImageClassificationPipeline
from .timm_srn import SRNTimm, create_timm_srn  # registers the timm entries

AutoConfig.register(SRNConfig.model_type, SRNConfig, exist_ok=True)
AutoModel.register(SRNConfig, SRNModel, exist_ok=True)
AutoModelForImageClassification.register(SRNConfig, SRNForImageClassification, exist_ok=True)

# save_pretrained copies configuration_srn.py and modeling_srn.py beside the weights (remote code).
SRNConfig.register_for_auto_class()
SRNModel.register_for_auto_class("AutoModel")
SRNForImageClassification.register_for_auto_class("AutoModelForImageClassification")

PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK,
    pipeline_class=MultiLabelImageClassificationPipeline,
    pt_model=AutoModelForImageClassification,
    type="image",
)

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
]
__version__ = "0.1.0"
