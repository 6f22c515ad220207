"""SRN's model tester for transformers' generic model tests, in the form of transformers' in-tree vision models'.

Not collected by this repository's pytest: `transformers_suite.build_suite` writes it as
`tests/models/srn/test_modeling_srn.py` of transformers' test package (from the sdist of the installed version),
where its relative imports find `test_modeling_common` and `test_configuration_common`, and
`test_transformers_suite.py` runs it. A tiny SRN over timm's `test_resnet` (stride-16 X of 2 x 2 at 32 x 32).
"""

import unittest

import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, MODEL_MAPPING_NAMES
from transformers.testing_utils import require_torch, torch_device

from srn_hf import SRNConfig, SRNForImageClassification, SRNModel

from ...test_configuration_common import ConfigTester
from ...test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

# The generic tests tell a base model from a classifier by transformers' tables of in-tree model names; SRN's classes
# enter them under its model type, as `srn_hf` registers them with AutoModel and AutoModelForImageClassification.
MODEL_MAPPING_NAMES.setdefault("srn", "SRNModel")
MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.setdefault("srn", "SRNForImageClassification")


class SRNModelTester:
    def __init__(self, parent, batch_size=3, image_size=32, num_channels=3, num_labels=3, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_channels = num_channels
        self.num_labels = num_labels
        self.is_training = is_training

    def get_config(self):
        # The generic training and checkpointing tests pass class indices of shape (B,) as labels (upstream's
        # `_prepare_for_class`): the tester's SRN is single-label there. `test_problem_types` runs all three problem
        # types; SRN's default, multi-label training, is tested by the package's own tests (test_zoo_transformers.py).
        return SRNConfig(
            problem_type="single_label_classification",
            backbone="test_resnet",
            image_size=self.image_size,
            num_channels=self.num_channels,
            attention_channels=8,
            regularization_channels=4,
            regularization_out_channels=8,
            num_labels=self.num_labels,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.num_labels)  # class indices
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_model(self, config, pixel_values, labels):
        model = SRNModel(config).to(torch_device).eval()
        with torch.no_grad():
            result = model(pixel_values)
        side = -(-self.image_size // 16)  # X at stride 16
        expected = (self.batch_size, self.num_labels, side, side)
        self.parent.assertEqual(result.attention_maps.shape, expected)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))

    def create_and_check_for_image_classification(self, config, pixel_values, labels):
        model = SRNForImageClassification(config).to(torch_device).eval()
        with torch.no_grad():
            result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))
        self.parent.assertEqual(result.loss.shape, ())


@require_torch
class SRNModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (SRNModel, SRNForImageClassification)
    pipeline_model_mapping = {"image-feature-extraction": SRNModel, "image-classification": SRNForImageClassification}
    test_resize_embeddings = False
    has_attentions = False
    test_torch_exportable = False

    def setUp(self):
        self.model_tester = SRNModelTester(self)
        self.config_tester = ConfigTester(self, config_class=SRNConfig, has_text_modality=False, common_properties=[])

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_hidden_states_output(self):
        """`hidden_states`: the backbone's feature maps, one per timm stage down to F (stride 32), shallowest first."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        stages = len(SRNModel(config).backbone.feature_info)
        for model_class in self.all_model_classes:
            for by_config in (False, True):
                config.output_hidden_states = by_config
                model = model_class(config).to(torch_device).eval()
                with torch.no_grad():
                    outputs = model(**inputs_dict, **({} if by_config else {"output_hidden_states": True}))
                self.assertEqual(len(outputs.hidden_states), stages)
                self.assertEqual(outputs.hidden_states[-1].shape[-2:], (1, 1))  # 32 x 32 at stride 32

    @unittest.skip(reason="SRN, like transformers' ResNet, has no input or output embeddings")
    def test_model_get_set_embeddings(self):
        pass

    def test_for_image_classification(self):
        self.model_tester.create_and_check_for_image_classification(*self.model_tester.prepare_config_and_inputs())
