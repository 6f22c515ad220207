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

__all__ = ["SRNConfig", "SRNModel", "SRNForImageClassification", "SRNOutput", "SRNPreTrainedModel"]
__version__ = "0.1.0"
