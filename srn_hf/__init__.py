"""srn_hf: the Spatial Regularization Network (SRN, CVPR 2017) for multi-label image classification.

`import srn_hf` registers SRN with transformers' Auto classes (and with timm and the pipelines, where those
modules are present).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_srn import SRNConfig
from .modeling_srn import SRNForImageClassification, SRNModel, SRNOutput, SRNPreTrainedModel

AutoConfig.register(SRNConfig.model_type, SRNConfig, exist_ok=True)
AutoModel.register(SRNConfig, SRNModel, exist_ok=True)
AutoModelForImageClassification.register(SRNConfig, SRNForImageClassification, exist_ok=True)

# save_pretrained copies configuration_srn.py and modeling_srn.py beside the weights (remote code).
SRNConfig.register_for_auto_class()
SRNModel.register_for_auto_class("AutoModel")
SRNForImageClassification.register_for_auto_class("AutoModelForImageClassification")

# The multi-label pipeline (`pipeline("multi-label-image-classification", ...)`) and the timm entries
# (`timm.create_model("srn_resnet101", ...)`), registered on import.
from transformers.pipelines import PIPELINE_REGISTRY  # noqa: E402

from . import timm_srn  # noqa: E402,F401
from .pipeline_srn import TASK as PIPELINE_TASK  # noqa: E402
from .pipeline_srn import MultiLabelImageClassificationPipeline  # noqa: E402
from .timm_srn import SRNTimm, create_timm_srn  # noqa: E402

PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK,
    pipeline_class=MultiLabelImageClassificationPipeline,
    pt_model=AutoModelForImageClassification,
    type="image",
)

__all__ = ["SRNConfig", "SRNModel", "SRNForImageClassification", "SRNOutput", "SRNPreTrainedModel"]
__all__ += ["MultiLabelImageClassificationPipeline", "SRNTimm", "create_timm_srn"]
__version__ = "0.1.0"
