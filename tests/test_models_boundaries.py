"""Boundaries of fastprune.models that no other test pinned down (only output shapes were, and
global pooling makes those come out right for almost any network): a mutation audit found each
change passing the suite. Where each stage halves the resolution, how many blocks a stage has,
that a fresh block is an identity, build_model's in_channels and options, and model specs of
nested callables."""

import sys
import types

import pytest
import torch
from torch import nn

from fastprune.errors import ConfigError
from fastprune.models import BasicBlock, SmallResNet, build_model, load_model_factory, model_spec_of, resnet18_small


def _output_sizes(model, modules, x):
    """The spatial size of each of `modules`' outputs for the input x."""
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[1:]))) for m in modules]
    model.eval()
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return sizes


@pytest.mark.parametrize("stem_stride, first", [(1, 32), (2, 16)])
def test_stem_stride_and_every_later_stage_halve_the_resolution(stem_stride, first):
    model = SmallResNet(widths=(8, 16, 32), blocks=2, stem_stride=stem_stride)
    assert len(model.stages) == 6  # blocks=2 applies to every stage
    sizes = _output_sizes(model, list(model.stages), torch.zeros(1, 3, 32, 32))
    assert sizes == [(8, first, first)] * 2 + [(16, first // 2, first // 2)] * 2 + [(32, first // 4, first // 4)] * 2


def test_blocks_per_stage_may_differ():
    model = SmallResNet(widths=(8, 16), blocks=(1, 3))
    assert [block.conv2.out_channels for block in model.stages] == [8, 16, 16, 16]


def test_resnet18_small_keeps_the_full_resolution_through_its_first_stage():
    """The 3x3 stride-1 stem and no max-pool: a 32x32 image reaches layer1 at 32x32 (the ImageNet
    stem had shrunk it to 8x8)."""
    pytest.importorskip("torchvision")
    model = resnet18_small(1, num_classes=7)
    sizes = _output_sizes(model, [model.layer1, model.layer4], torch.zeros(1, 1, 32, 32))
    assert sizes == [(64, 32, 32), (512, 4, 4)]


def test_a_fresh_block_is_an_identity():
    """The last BN of each residual branch starts at zero, so a fresh block passes (non-negative)
    inputs through unchanged: the point of the initialization for short schedules."""
    torch.manual_seed(0)
    model = SmallResNet(widths=(8, 16), blocks=2)
    model.eval()
    with torch.no_grad():
        for block in model.stages:  # identity shortcuts and the projecting one alike
            x = torch.rand(2, block.conv1.in_channels, 6, 6)
            torch.testing.assert_close(block(x), torch.relu(block.shortcut(x)))
        x = torch.rand(2, 8, 6, 6)
        torch.testing.assert_close(model.stages[0](x), x)  # non-negative input: unchanged
    assert all(not block.bn2.weight.detach().any() for block in model.stages)


def test_a_basic_block_that_changes_the_width_at_stride_1_projects_its_shortcut():
    block = BasicBlock(8, 16, stride=1)
    assert block(torch.zeros(1, 8, 5, 5)).shape == (1, 16, 5, 5)


def test_build_model_passes_in_channels_and_refuses_resnet18_options():
    model = build_model("small_resnet", in_channels=1, num_classes=4, widths=(8,))
    model.eval()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 4)
    with pytest.raises(ValueError, match=r"resnet18 takes no options, got \['widths'\]"):
        build_model("resnet18", widths=(8,))


@pytest.fixture
def nested_module(monkeypatch):
    module = types.ModuleType("fastprune_audit_models")

    class Net:
        @staticmethod
        def small(num_classes):
            return nn.Linear(3, num_classes)

    Net.__module__ = Net.small.__module__ = module.__name__
    Net.__qualname__, Net.small.__qualname__ = "Net", "Net.small"
    module.Net = Net
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def test_a_nested_callables_spec_names_its_full_path_and_loads_back(nested_module):
    """A result file records model_spec_of(factory); a resume loads it with load_model_factory."""
    spec = model_spec_of(nested_module.Net.small)
    assert spec == "fastprune_audit_models:Net.small"
    assert load_model_factory(spec) is nested_module.Net.small
    assert build_model(spec, num_classes=6)(torch.zeros(1, 3)).shape == (1, 6)


def test_a_factory_without_num_classes_is_a_config_error_before_it_is_called(nested_module):
    called = []
    nested_module.make = lambda classes: called.append(classes) or nn.Linear(3, classes)
    with pytest.raises(ConfigError, match=r"must accept num_classes="):
        build_model("fastprune_audit_models:make", num_classes=3)
    assert called == []


@pytest.mark.parametrize("spec", ["mymodels", "mymodels:", ":make"])
def test_a_spec_without_module_or_callable_says_what_is_expected(spec):
    with pytest.raises(ConfigError, match="expected MODULE:CALLABLE, such as mymodels:make"):
        load_model_factory(spec)
