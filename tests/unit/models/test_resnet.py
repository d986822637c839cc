"""The CIFAR-style ResNet-18 encoder (the authors' CelebA model) and its linear head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlcli.models import build_model
from mtlcli.models.resnet import ResNet18CifarEncoder, resnet_head

# isl-org/MultiObjectiveOptimization multi_task/models/multi_faces_resnet.py, ResNet(BasicBlock, [2, 2, 2, 2])
# with its linear layer commented out; = kuangliu/pytorch-cifar ResNet18 (11,173,962) minus Linear(512, 10) (5,130).
AUTHORS_ENCODER_PARAMETERS = 11_168_832


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_matches_the_authors_encoder() -> None:
    encoder = ResNet18CifarEncoder(in_channels=3, input_size=64)
    assert count(encoder) == AUTHORS_ENCODER_PARAMETERS
    assert encoder.out_features == 2048  # 2x2x512
    # one input channel: only the stem conv changes (3x3xwidth weights per input channel)
    assert (
        count(ResNet18CifarEncoder(in_channels=1, input_size=64, width=4))
        == count(ResNet18CifarEncoder(in_channels=3, input_size=64, width=4)) - 2 * 9 * 4
    )


@pytest.mark.parametrize(("size", "cells"), [(32, 1), (64, 4), (96, 9)])
def test_out_features_formula(size: int, cells: int) -> None:
    for width in (4, 8):
        assert ResNet18CifarEncoder(in_channels=3, input_size=size, width=width).out_features == 8 * width * cells


@pytest.mark.parametrize(("channels", "size"), [(3, 32), (3, 64), (1, 32), (1, 96)])
def test_forward_shape(channels: int, size: int) -> None:
    encoder = ResNet18CifarEncoder(in_channels=channels, input_size=size, width=4)
    z = encoder(torch.randn(2, channels, size, size))
    assert z.shape == (2, encoder.out_features)
    assert torch.isfinite(z).all()


@pytest.mark.parametrize(("size", "width"), [(48, 4), (16, 4), (0, 4), (64, 0)])
def test_invalid_arguments(size: int, width: int) -> None:
    with pytest.raises(ValueError, match="resnet18-cifar"):
        ResNet18CifarEncoder(in_channels=3, input_size=size, width=width)


def test_no_max_pool_first_stage_keeps_resolution() -> None:
    encoder = ResNet18CifarEncoder(in_channels=3, input_size=32, width=4)
    shapes: dict[str, torch.Size] = {}
    for name in ("stem", "layer1", "layer2", "layer3", "layer4"):
        module = getattr(encoder, name)
        module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, out.shape))
    encoder(torch.randn(2, 3, 32, 32))
    assert shapes == {
        "stem": (2, 4, 32, 32),
        "layer1": (2, 4, 32, 32),
        "layer2": (2, 8, 16, 16),
        "layer3": (2, 16, 8, 8),
        "layer4": (2, 32, 4, 4),
    }
    assert not any(isinstance(m, nn.MaxPool2d) for m in encoder.modules())


def test_last_layer_is_the_last_blocks_second_conv() -> None:
    encoder = ResNet18CifarEncoder(in_channels=3, input_size=32, width=4)
    last = encoder.last_layer
    assert isinstance(last, nn.Conv2d) and last is encoder.layer4[-1].conv2
    assert any(last is m for m in encoder.modules())
    assert last.weight.shape == (32, 32, 3, 3)
    encoder(torch.randn(2, 3, 32, 32)).sum().backward()
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0


def test_resnet_head_is_one_linear_layer() -> None:
    head = resnet_head(2048, 2)
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (2048, 2)


def test_initialisation_is_deterministic_and_torchvision_like() -> None:
    torch.manual_seed(3)
    a = ResNet18CifarEncoder(in_channels=3, input_size=32, width=4).state_dict()
    torch.manual_seed(3)
    b = ResNet18CifarEncoder(in_channels=3, input_size=32, width=4).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    encoder = ResNet18CifarEncoder(in_channels=3, input_size=32, width=4)
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
        if isinstance(module, nn.Conv2d):
            assert module.bias is None


def test_through_the_registry() -> None:
    model = build_model(encoder="resnet18-cifar", num_classes={"a": 2, "b": 3}, input_shape=(3, 32, 32), options={"width": 4})
    z, outputs = model(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 32)
    assert {name: out.shape for name, out in outputs.items()} == {"a": (2, 2), "b": (2, 3)}
    assert all(isinstance(model.heads[name], nn.Linear) for name in ("a", "b"))
    # GradNorm's use: the gradient of a task loss on the last shared layer's weight
    weight = model.last_shared_layer().weight
    (grad,) = torch.autograd.grad(outputs["a"].sum(), weight)
    assert grad.shape == weight.shape


def test_through_the_registry_independent_and_errors() -> None:
    model = build_model(
        encoder="resnet18-cifar", num_classes={"a": 2, "b": 2}, input_shape=(1, 32, 32), options={"width": 4}, independent=True
    )
    z, outputs = model(torch.randn(2, 1, 32, 32))
    assert z.shape == (2, 64)
    assert {name: out.shape for name, out in outputs.items()} == {"a": (2, 2), "b": (2, 2)}
    with pytest.raises(ValueError, match="square"):
        build_model(encoder="resnet18-cifar", num_classes={"a": 2}, input_shape=(3, 32, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model(encoder="resnet18-cifar", num_classes={"a": 2}, input_shape=(3, 28, 28))
