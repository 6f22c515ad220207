"""What transformers checks of every in-tree vision model, run against SRN on a small timm backbone.

Save/load round trips (also from a state dict, sharded, offloaded, in bfloat16), the initialisation of every weight,
batching equivalence, determinism, hidden states, the loss first in tuples, training with and without gradient
checkpointing, head resizing, problem types, torch.compile and torch.export.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import small_srn
from transformers import AutoModel, AutoModelForImageClassification, Trainer, TrainingArguments

import srn_hf
from srn_hf import SRNConfig, SRNForImageClassification
from srn_hf.modeling_srn import LabelMapConv, SRNImageClassifierOutput, SRNModelOutput

LABELS = dict(enumerate(["person", "dog", "car", "kite", "boat"]))
SIZE = 64  # resnet10t at 64 x 64: X is 4 x 4, F 2 x 2, K = 4
REPOSITORY = Path(__file__).resolve().parents[2]


def make_model(**config_fields) -> SRNForImageClassification:
    return small_srn(LABELS, image_size=SIZE, **config_fields)


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def multi_hot(batch: int = 3) -> torch.Tensor:
    labels = torch.zeros(batch, len(LABELS))
    labels[torch.arange(batch), torch.arange(batch) % len(LABELS)] = 1
    return labels


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("srn")
    model.save_pretrained(folder)
    with torch.no_grad():
        logits = model(images()).logits
    return folder, logits


def assert_same_outputs(loaded, logits, atol=1e-6):
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images()).logits.float(), logits, atol=atol, rtol=atol)


# --- outputs ---------------------------------------------------------------------------------------------------


def test_base_model_and_classifier_return_their_own_output_classes(model):
    pixel_values = images()
    with torch.no_grad():
        base = model.srn(pixel_values)
        head = model(pixel_values, labels=multi_hot())
    assert isinstance(base, SRNModelOutput) and "loss" not in SRNModelOutput.__dataclass_fields__
    assert isinstance(head, SRNImageClassifierOutput) and list(head.keys())[0] == "loss"
    for field in ("logits", "cls_logits", "att_logits", "sr_logits", "attention_maps", "confidence_maps"):
        torch.testing.assert_close(head[field], base[field])
    assert srn_hf.SRNOutput is SRNModelOutput  # the former name, still what forward_heads returns


def test_loss_comes_first_in_tuples(model):
    pixel_values, labels = images(), multi_hot()
    with torch.no_grad():
        as_tuple = model(pixel_values, labels=labels, return_dict=False)
        as_dict = model(pixel_values, labels=labels)
        without_labels = model(pixel_values, return_dict=False)
    assert as_tuple[0].ndim == 0 and torch.equal(as_tuple[0], as_dict.loss)
    assert torch.equal(as_tuple[1], as_dict.logits) and len(as_tuple) == len(as_dict.to_tuple())
    assert torch.equal(without_labels[0], as_dict.logits)  # no loss: the logits come first


def test_hidden_states_from_the_call_and_from_the_config(model):
    pixel_values = images()
    with torch.no_grad():
        plain = model(pixel_values)
        asked = model(pixel_values, output_hidden_states=True)
        features, classifier_features = model.srn.forward_backbone(pixel_values)
    assert plain.hidden_states is None
    channels = model.srn.backbone.feature_info.channels()
    assert [state.shape[1] for state in asked.hidden_states] == channels  # every stage of resnet10t, in order
    assert [state.shape[-1] for state in asked.hidden_states] == [
        SIZE // r for r in model.srn.backbone.feature_info.reduction()
    ]
    torch.testing.assert_close(asked.hidden_states[-1], classifier_features)
    torch.testing.assert_close(asked.hidden_states[-2], features)
    torch.testing.assert_close(asked.logits, plain.logits)

    from_config = make_model(output_hidden_states=True)
    with torch.no_grad():
        outputs = from_config(pixel_values, return_dict=False)
        base = from_config.srn(pixel_values)
    assert len(outputs[-1]) == len(channels) and len(base.hidden_states) == len(channels)


def test_batching_equivalence_and_determinism(model):
    pixel_values = images(4)
    with torch.no_grad():
        batched = model(pixel_values)
        again = model(pixel_values)
        one_by_one = [model(pixel_values[index : index + 1]) for index in range(4)]
    for field in ("logits", "att_logits", "attention_maps", "confidence_maps"):
        assert torch.equal(batched[field], again[field])
        torch.testing.assert_close(
            torch.cat([single[field] for single in one_by_one]), batched[field], atol=1e-5, rtol=1e-4
        )


# --- initialisation ----------------------------------------------------------------------------------------------


def label_layer_stds(model) -> list[float]:
    return [
        layer.weight.std().item()
        for layer in model.srn.label_layers()
        if not isinstance(layer, torch.nn.Conv2d) or isinstance(layer, LabelMapConv)
    ]


def test_every_weight_is_initialised_and_attention_starts_uniform():
    config = SRNConfig(backbone="resnet10t", id2label=LABELS, image_size=SIZE, num_labels=len(LABELS))
    model = SRNForImageClassification(config).eval()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert tensor.device.type == "cpu" and torch.isfinite(tensor).all(), name
    for std in label_layer_stds(model):  # f_cls, Z, S and f_sr's linear layer start small
        assert std == pytest.approx(config.initializer_range, rel=0.25)
    with torch.no_grad():
        attention_maps = model(images()).attention_maps
    side = attention_maps.shape[-1]
    torch.testing.assert_close(attention_maps, torch.full_like(attention_maps, 1 / side**2), atol=2e-3, rtol=0.2)


# --- save and load -----------------------------------------------------------------------------------------------


def test_round_trip_and_from_a_state_dict(saved, model):
    folder, logits = saved
    assert_same_outputs(SRNForImageClassification.from_pretrained(folder), logits, atol=0)
    assert_same_outputs(AutoModelForImageClassification.from_pretrained(folder), logits, atol=0)
    loaded = SRNForImageClassification.from_pretrained(None, config=model.config, state_dict=model.state_dict())
    assert_same_outputs(loaded, logits, atol=0)
    base = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(base(images()).logits, logits, atol=0, rtol=0)


def test_sharded_checkpoint(tmp_path, model, saved):
    _, logits = saved
    model.save_pretrained(tmp_path, max_shard_size="500KB")
    shards = sorted(path.name for path in tmp_path.glob("model-*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    assert_same_outputs(SRNForImageClassification.from_pretrained(tmp_path), logits, atol=0)


def test_bfloat16_and_device_map_auto(saved):
    folder, logits = saved
    half = SRNForImageClassification.from_pretrained(folder, dtype=torch.bfloat16).eval()
    assert {parameter.dtype for parameter in half.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        outputs = half(images().to(torch.bfloat16))
    assert outputs.logits.dtype == torch.bfloat16
    torch.testing.assert_close(outputs.logits.float(), logits, atol=0.1, rtol=0.1)
    placed = SRNForImageClassification.from_pretrained(folder, device_map="auto")
    assert {parameter.device.type for parameter in placed.parameters()} == {"cpu"}
    assert_same_outputs(placed, logits)


def test_offload_to_disk(saved, tmp_path):
    """accelerate's hooks bring each weight in for its module's own forward: no weight is read from outside."""
    folder, logits = saved
    offloaded = SRNForImageClassification.from_pretrained(folder, device_map={"": "disk"}, offload_folder=tmp_path)
    assert any(parameter.device.type == "meta" for parameter in offloaded.parameters())  # really offloaded
    assert_same_outputs(offloaded, logits)


def test_remote_code_loads_with_the_repository_off_sys_path(saved, tmp_path):
    folder, logits = saved
    torch.save(images(), tmp_path / "images.pt")
    script = textwrap.dedent(
        f"""
        import sys
        import os
        # The repository itself off the path (its virtualenv, which may lie inside it, stays: torch comes from there).
        sys.path = [
            path
            for path in sys.path
            if path not in ("", ".") and os.path.realpath(path) != {str(REPOSITORY.resolve())!r}
        ]
        sys.modules["srn_hf"] = None  # an installed copy cannot serve either: only the folder's code may
        import torch
        from transformers import AutoModel, AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            outputs = model(torch.load({str(tmp_path / "images.pt")!r}), output_hidden_states=True)
            torch.save(
                [outputs.logits, base(torch.load({str(tmp_path / "images.pt")!r})).logits],
                {str(tmp_path / "out.pt")!r},
            )
        print(type(base).__name__, type(model).__name__, type(outputs).__name__, len(outputs.hidden_states))
        """
    )
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["SRNModel", "SRNForImageClassification", "SRNImageClassifierOutput", "5"]
    remote_logits, remote_base_logits = torch.load(tmp_path / "out.pt")
    assert torch.equal(remote_logits, logits) and torch.equal(remote_base_logits, logits)


# --- head resizing and label sets --------------------------------------------------------------------------------


def test_num_labels_puts_a_new_head_on_a_checkpoint(saved, model):
    folder, _ = saved
    for load in (SRNForImageClassification.from_pretrained, AutoModelForImageClassification.from_pretrained):
        new = load(folder, num_labels=42, ignore_mismatched_sizes=True)
        assert new.config.num_labels == 42 and new.config.id2label[41] == "LABEL_41"
        assert new.srn.classifier.out_features == 42 and new.srn.spatial_regularization.conv1[0].in_channels == 42
        torch.testing.assert_close(new.srn.backbone.conv1[0].weight, model.srn.backbone.conv1[0].weight)
        for std in label_layer_stds(new):
            assert std == pytest.approx(new.config.initializer_range, rel=0.25)
        with pytest.raises(RuntimeError, match="num_labels=42: .* another label set .* ignore_mismatched_sizes=True"):
            load(folder, num_labels=42)  # transformers' error class for mismatched sizes, as in-tree models
    same = SRNForImageClassification.from_pretrained(folder, num_labels=len(LABELS))  # the same size: no new labels
    assert same.config.id2label == LABELS


def test_another_label_set_of_the_same_size_is_reinitialised_like_a_new_model(saved, model):
    folder, _ = saved
    renamed = {index: f"tag{index}" for index in range(len(LABELS))}
    with pytest.raises(ValueError, match="another label set"):
        SRNForImageClassification.from_pretrained(folder, id2label=renamed)
    new = SRNForImageClassification.from_pretrained(folder, id2label=renamed, ignore_mismatched_sizes=True)
    assert not torch.equal(new.srn.confidence.conv.weight, model.srn.confidence.conv.weight)
    for std in label_layer_stds(new):  # the small init of post_init, not PyTorch's default
        assert std == pytest.approx(new.config.initializer_range, rel=0.25)


# --- problem types and bad configs -------------------------------------------------------------------------------


def test_single_label_and_regression_losses_are_transformers_own_on_the_fused_logits():
    pixel_values, classes, targets = images(), torch.tensor([0, 2, 1]), torch.randn(3, len(LABELS))
    for problem_type, labels, expected in (
        ("single_label_classification", classes, torch.nn.functional.cross_entropy),
        ("regression", targets, torch.nn.functional.mse_loss),
    ):
        model = make_model()
        model.config.problem_type = problem_type
        outputs = model(pixel_values, labels=labels)
        torch.testing.assert_close(outputs.loss, expected(outputs.logits, labels))
        assert outputs.attention_maps.shape[1] == len(LABELS)  # the attention maps stay per label
        outputs.loss.backward()
    multi_label = make_model()(pixel_values, labels=multi_hot(3))  # the default: SRN's joint loss L(y) + L(y_att)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(
        multi_label.loss, bce(multi_label.logits, multi_hot(3)) + bce(multi_label.att_logits, multi_hot(3))
    )


@pytest.mark.parametrize(
    "problem_type, labels, message",
    [
        (
            "single_label_classification",
            torch.zeros(3, 5),
            r"labels has shape \(3, 5\), expected \(3,\) for problem_type='single_label",
        ),
        (
            "single_label_classification",
            torch.zeros(3),
            "labels has dtype torch.float32, expected integer class indices",
        ),
        ("regression", torch.zeros(3), r"labels has shape \(3,\), expected \(3, 5\) for problem_type='regression'"),
        (
            "multi_label_classification",
            torch.zeros(3, dtype=torch.long),
            r"labels has shape \(3,\), expected \(3, 5\) for problem_type='multi_label",
        ),
    ],
)
def test_labels_of_the_wrong_shape_for_the_problem_type_are_refused_in_one_line(problem_type, labels, message):
    model = make_model()
    model.config.problem_type = problem_type
    with pytest.raises(ValueError, match=message) as refusal:
        model(images(), labels=labels)
    assert "\n" not in str(refusal.value)


def test_an_unknown_problem_type_is_refused():
    with pytest.raises(ValueError, match="problem_type='ranking' is not one of multi_label_classification"):
        SRNConfig(backbone="resnet10t", id2label=LABELS, problem_type="ranking")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"alpha": "x"}, "alpha='x' is not of type float"),
        ({"alpha": -0.1}, r"alpha=-0.1 must lie in \[0, 1\]"),
        ({"threshold": 1.5}, r"threshold=1.5 must lie in \[0, 1\]"),
        ({"label_thresholds": {"dog": 1.2}}, r"label_thresholds\['dog'\]=1.2 must lie in \[0, 1\]"),
        ({"label_thresholds": {"dog": "high"}}, r"label_thresholds=\{'dog': 'high'\} is not of type"),
        ({"backbone": "resnet1O1"}, "backbone='resnet1O1' is not a timm model name"),
        ({"num_labels": 3}, "num_labels=3 does not match id2label, which names 5 labels"),
    ],
)
def test_bad_config_values_are_value_errors_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        SRNConfig(**{"backbone": "resnet10t", "id2label": LABELS, **fields})


# --- training and gradient checkpointing -------------------------------------------------------------------------


def gradients(model, pixel_values, labels) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(pixel_values, labels=labels).loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


@pytest.mark.parametrize("backbone", ["resnet10t", "vit_tiny_patch16_224"])
def test_gradient_checkpointing_gives_identical_gradients(backbone):
    kwargs = {"backbone_kwargs": {"dynamic_img_size": True}} if backbone.startswith("vit") else {}
    model = make_model(backbone=backbone, **kwargs).train()
    pixel_values, labels = images(2), multi_hot(2)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    plain = gradients(model, pixel_values, labels)
    model.load_state_dict(state)  # the same batch-norm statistics for the second pass
    model.activation_checkpointing_enable()  # transformers 5's name; gradient_checkpointing_enable is its alias
    assert model.srn.gradient_checkpointing and model.is_activation_checkpointing
    checkpointed = gradients(model, pixel_values, labels)
    assert set(plain) == set(checkpointed) and all(torch.count_nonzero(grad) for grad in plain.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    model.activation_checkpointing_disable()
    assert not model.srn.gradient_checkpointing and not model.is_activation_checkpointing


def test_checkpointing_makes_every_resnet_block_and_both_srn_branches_a_segment():
    model = make_model().train()
    with pytest.warns(FutureWarning, match="activation_checkpointing_enable"):
        model.gradient_checkpointing_enable()  # the deprecated name still works
    segments = []
    checkpoint_function = model.srn._gradient_checkpointing_func
    recorded = lambda function, *inputs: segments.append(function) or checkpoint_function(function, *inputs)  # noqa: E731
    layers = [model.srn, model.srn.attention, model.srn.confidence, model.srn.spatial_regularization]
    for layer in layers:
        layer._gradient_checkpointing_func = recorded
    model(images(2), labels=multi_hot(2)).loss.backward()
    backbone = model.srn.backbone
    blocks = [
        block for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4) for block in stage
    ]
    assert all(any(segment is block for segment in segments) for block in blocks)
    branches = [
        layer for layer in layers[1:] if any(getattr(segment, "args", ())[:1] == (layer,) for segment in segments)
    ]
    assert branches == layers[1:]  # f_att, the confidence maps and f_sr: transformers' GradientCheckpointingLayers
    assert backbone.act1 not in segments  # in place: runs as it is
    with torch.no_grad():
        segments.clear()
        model(images(2))
    assert not segments  # no gradients, no checkpoints


def test_trainer_trains_with_gradient_checkpointing(tmp_path):
    model = make_model().train()
    data = [{"pixel_values": image, "labels": label} for image, label in zip(images(8), multi_hot(8))]
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=0.05,
        activation_checkpointing=True,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
    )
    before = {name: tensor.clone() for name, tensor in model.named_parameters()}
    result = Trainer(model=model, args=arguments, train_dataset=data).train()
    assert model.srn.gradient_checkpointing
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = [name for name, tensor in model.named_parameters() if not torch.equal(tensor, before[name])]
    assert (
        any(name.startswith("srn.backbone.") for name in changed) and "srn.spatial_regularization.fc.weight" in changed
    )


# --- compile and export ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager(model):
    pixel_values = images(2)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        eager, fast = model(pixel_values), compiled(pixel_values)
    for field in ("logits", "attention_maps"):
        torch.testing.assert_close(fast[field], eager[field], atol=1e-4, rtol=1e-4)


def test_torch_export_with_a_dynamic_batch(model):
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (images(2),), dynamic_shapes=({0: batch},), strict=False)
    for size in (1, 3):
        pixel_values = images(size, seed=size)
        with torch.no_grad():
            expected = model(pixel_values)
        outputs = exported.module()(pixel_values)
        torch.testing.assert_close(outputs["logits"], expected.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(outputs["attention_maps"], expected.attention_maps, atol=1e-5, rtol=1e-5)


# --- import ------------------------------------------------------------------------------------------------------


def test_import_builds_no_config_and_asks_timm_nothing():
    script = textwrap.dedent(
        """
        import timm, transformers
        calls = []
        for name in ("is_model", "list_models", "get_pretrained_cfg", "create_model"):
            setattr(timm, name, lambda *args, _name=name, **kwargs: calls.append(_name))
        post_init = transformers.PreTrainedConfig.__post_init__
        transformers.PreTrainedConfig.__post_init__ = lambda self, **kwargs: calls.append(type(self).__name__)
        import srn_hf
        transformers.PreTrainedConfig.__post_init__ = post_init
        print(calls, "srn_resnet101" in timm.models._registry._model_entrypoints)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPOSITORY, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["[]", "True"]
