"""Models for small images (28x28 Fashion-MNIST / MNIST, 32x32 CIFAR).

Two families:

* ``SmallResNet``: a CIFAR-style pre-activation-free ResNet (He et al. 2016, section 4.2) with
  configurable widths and blocks per stage. Small enough to train on a 2-core CPU in minutes;
  the reference recipe's model (``fastprune.train.RECIPE.model``).
* ``resnet18_small``: torchvision's ResNet-18 with the ImageNet stem (7x7 stride-2 conv + max-pool,
  which shrinks a 32x32 image to 8x8 before the first block) replaced by a 3x3 stride-1 conv and no
  pooling, the usual adaptation for CIFAR-sized inputs.

Both accept any spatial size (global average pooling at the end), so 28x28 and 32x32 work alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "SmallResNet", "resnet18_small", "build_model", "load_model_factory"]


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet for small images: stem conv, one stage per width, global pool, linear head.

    Args:
        in_channels: 3 (default) for every store fastprune writes, gray datasets included: they
            are stored as RGB; 1 only for tensors built elsewhere.
        num_classes: size of the output layer.
        widths: channels of each stage; every stage after the first halves the resolution.
        blocks: BasicBlocks per stage (an int applies to every stage). ``widths=(16, 32, 64)``
            with ``blocks=3`` is the classic ResNet-20.
        stem_stride: 2 halves the resolution in the stem, which makes the network ~4x cheaper;
            on 28x28 inputs a 14x14 first stage still leaves enough resolution. The benchmark
            recipe (``fastprune train``/``bench``, the README's headline) uses 2; the default 1
            costs ~4x as much per sample.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        blocks: int | Sequence[int] = 1,
        stem_stride: int = 1,
    ):
        super().__init__()
        if isinstance(blocks, int):
            blocks = [blocks] * len(widths)
        if len(blocks) != len(widths):
            raise ValueError(f"blocks ({len(blocks)}) and widths ({len(widths)}) differ in length")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if stage == 0 else 2
            for block in range(count):
                stages.append(BasicBlock(channels, width, stride if block == 0 else 1))
                channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18_small(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 28x28 / 32x32 inputs.
    Needs torchvision (the ``vision`` extra)."""
    from .errors import require

    model = require("torchvision.models", "vision", "the resnet18 model").resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    _init_weights(model)
    return model


def _init_weights(model: nn.Module) -> None:
    """Kaiming init for convs; zero the last BN of each residual branch so every block starts as
    an identity, which makes short (few-epoch) schedules train faster (Goyal et al. 2017)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    for module in model.modules():
        bn2 = getattr(module, "bn2", None)
        if isinstance(bn2, nn.BatchNorm2d) and hasattr(module, "conv2"):
            nn.init.zeros_(bn2.weight)


def build_model(name: str = "small_resnet", *, in_channels: int = 3, num_classes: int = 10,
                **options) -> nn.Module:
    """Build a model by name: ``"small_resnet"`` (options go to SmallResNet), ``"resnet18"``, or
    ``"MODULE:CALLABLE"``, a function of yours called as ``CALLABLE(num_classes=...)`` (its module
    is imported, so it must be on ``sys.path`` / ``PYTHONPATH``; ``options`` do not apply to it)."""
    if ":" in name:
        return _build_user_model(name, num_classes)
    if name == "small_resnet":
        return SmallResNet(in_channels, num_classes, **options)
    if name == "resnet18":
        if options:
            raise ValueError(f"resnet18 takes no options, got {sorted(options)}")
        return resnet18_small(in_channels, num_classes)
    raise ValueError(f"unknown model {name!r}; expected 'small_resnet', 'resnet18' or MODULE:CALLABLE")


def _installed(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def load_model_factory(spec: str):
    """The callable ``spec`` ("MODULE:CALLABLE", the callable may be dotted: "pkg.mod:Net.small")
    names; a :class:`~fastprune.ConfigError` naming what is missing otherwise."""
    import importlib

    from .errors import ConfigError

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"model {spec!r}: expected MODULE:CALLABLE, such as mymodels:make")
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:  # ModuleNotFoundError too, and a module whose own imports fail
        # torchvision absent (not a typo in its module path, not a broken install): name the extra
        if module_name.split(".")[0] == "torchvision" and not _installed("torchvision"):
            raise ConfigError(f"model {spec!r} needs torchvision, which is not installed: "
                              'pip install "fastprune[vision]"') from None
        raise ConfigError(f"model {spec!r}: cannot import {module_name!r} ({exc}); put its folder on "
                          "PYTHONPATH (or sys.path)") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"model {spec!r}: module {module_name!r} has no {attribute!r}") from None
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"model {spec!r}: {attribute!r} is a {type(target).__name__}, not a callable")
    return target


def _build_user_model(spec: str, num_classes: int) -> nn.Module:
    return build_user_model(load_model_factory(spec), num_classes, spec)


def build_user_model(factory, num_classes: int, spec: str | None = None) -> nn.Module:
    """``factory(num_classes=num_classes)``, checked to be an nn.Module (``spec``: its name in errors)."""
    from .errors import ConfigError

    spec = spec or model_spec_of(factory)
    try:  # a factory that cannot take num_classes= is the option's fault, not a bug inside the model
        inspect.signature(factory).bind(num_classes=num_classes)
    except TypeError as exc:
        raise ConfigError(f"model {spec!r} must accept num_classes= (it is called as "
                          f"{spec.rsplit(':', 1)[-1]}(num_classes={num_classes})): {exc}") from None
    except ValueError:  # no signature to read (some builtins): let the call say
        pass
    model = factory(num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec!r}: returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def model_spec_of(factory) -> str:
    """The "MODULE:CALLABLE" a result file records for a model function passed as an object."""
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', type(factory).__name__)}"
