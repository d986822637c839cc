"""The dense-prediction models: dilated ResNet-50 + PSP heads (Cityscapes) and the split SegNet (NYUv2)."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from mtlcli.errors import DataError
from mtlcli.models.dilated_resnet import (
    DilatedResNet50Encoder,
    dilated_resnet_input_problem,
    imagenet_weights_path,
    load_imagenet_weights,
)
from mtlcli.models.psp import PSPHead
from mtlcli.models.segnet import SegNetSplitEncoder, segnet_head, segnet_input_problem

# torchvision resnet50: 25,557,032 parameters, of which fc (Linear(2048, 1000)) holds 2,049,000.
RESNET50_WITHOUT_FC = 23_508_032
# Sener & Koltun's SegmentationDecoder(num_class=19) (multi_task/models/pspnet.py): 4 x (2048*512 + 2*512)
# + 4096*512*9 + 2*512 + (512*19 + 19).
PSP_2048_TO_19 = 23_083_539
# lorenmt/mtan im2im_pred/model_segnet_split.py (standard) = AvivNavon/nash-mtl experiments/nyuv2/models.py SegNetSplit:
# the shared SegNet, and the three heads (13 classes, depth, normals) without mtan's 3 logsigma parameters.
SEGNET_SHARED = 24_943_296
SEGNET_HEADS = {13: 37_773, 1: 36_993, 3: 37_123}
SEGNET_TOTAL = 25_055_185


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def torchvision_dilated_resnet50() -> torchvision.models.ResNet:
    return torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])


def assert_every_parameter_gets_a_gradient(*modules: nn.Module) -> None:
    for module in modules:
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------------------------- dilated ResNet-50


@pytest.mark.parametrize(("height", "width"), [(16, 32), (24, 40), (20, 30), (8, 8)])
@pytest.mark.parametrize(("channels", "base"), [(3, 4), (1, 8)])
def test_dilated_resnet_output_shape(height: int, width: int, channels: int, base: int) -> None:
    encoder = DilatedResNet50Encoder(in_channels=channels, width=base)
    out = encoder(torch.randn(2, channels, height, width))
    assert encoder.out_features == 32 * base
    assert out.shape == (2, 32 * base, -(-height // 8), -(-width // 8))
    assert torch.isfinite(out).all()


def test_dilated_resnet_is_torchvisions_architecture_at_width_64() -> None:
    ours = DilatedResNet50Encoder()
    reference = torchvision_dilated_resnet50()
    expected = {key: value.shape for key, value in reference.state_dict().items() if not key.startswith("fc.")}
    assert {key: value.shape for key, value in ours.state_dict().items()} == expected
    assert list(ours.state_dict()) == list(expected)
    assert count(ours) == RESNET50_WITHOUT_FC == count(reference) - count(reference.fc)
    assert ours.out_features == 2048
    reference_convs = {name: m for name, m in reference.named_modules() if isinstance(m, nn.Conv2d)}
    our_convs = {name: m for name, m in ours.named_modules() if isinstance(m, nn.Conv2d)}
    assert our_convs.keys() == reference_convs.keys()
    for name, conv in our_convs.items():
        ref = reference_convs[name]
        assert (conv.stride, conv.dilation, conv.padding) == (ref.stride, ref.dilation, ref.padding), name
    # output stride 8: no stride in layer3/layer4, dilation 2 then 4 (first blocks keep the previous dilation)
    assert [block.conv2.dilation for block in ours.layer3] == [(1, 1)] + [(2, 2)] * 5
    assert [block.conv2.dilation for block in ours.layer4] == [(2, 2), (4, 4), (4, 4)]


def test_dilated_resnet_computes_what_torchvision_computes() -> None:
    ours, reference = DilatedResNet50Encoder(), torchvision_dilated_resnet50()
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    ours.eval()
    reference.eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        expected = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(expected))))
        torch.testing.assert_close(ours(x), expected)


def test_dilated_resnet_input_channels_change_only_the_stem() -> None:
    assert count(DilatedResNet50Encoder(in_channels=3, width=4)) - count(DilatedResNet50Encoder(in_channels=1, width=4)) == (
        2 * 7 * 7 * 4
    )
    assert DilatedResNet50Encoder(in_channels=5, width=4).conv1.in_channels == 5


def test_dilated_resnet_last_layer() -> None:
    encoder = DilatedResNet50Encoder(width=4)
    layer = encoder.last_layer
    assert layer is encoder.layer4[-1].conv3
    assert any(layer is module for module in encoder.modules())
    assert isinstance(layer.weight, nn.Parameter)
    assert layer.weight.shape == (128, 32, 1, 1)


@pytest.mark.parametrize(("channels", "width"), [(0, 64), (3, 0)])
def test_dilated_resnet_invalid_arguments(channels: int, width: int) -> None:
    with pytest.raises(ValueError, match="dilated-resnet50"):
        DilatedResNet50Encoder(in_channels=channels, width=width)


def test_dilated_resnet_input_problem() -> None:
    assert dilated_resnet_input_problem((3, 256, 512)) is None
    assert dilated_resnet_input_problem((1, 8, 16)) is None
    problem = dilated_resnet_input_problem((3, 20, 32))
    assert problem is not None
    assert "multiples of 8" in problem and "20x32" in problem and "\n" not in problem
    assert "4x8" in (dilated_resnet_input_problem((3, 4, 8)) or "")
    assert "channel" in (dilated_resnet_input_problem((0, 16, 16)) or "")


# ------------------------------------------------------------------------------------------------------- PSP head


def test_psp_head_parameter_count_is_the_authors_decoder() -> None:
    head = PSPHead(2048, 19, (256, 512))
    assert count(head) == PSP_2048_TO_19
    assert head.conv_last[0].in_channels == 4096
    assert [branch[0].output_size for branch in head.ppm] == [1, 2, 3, 6]


@pytest.mark.parametrize(
    ("features", "output_size"), [((2, 4), (16, 32)), ((3, 5), (24, 40)), ((3, 5), (3, 5)), ((6, 6), (7, 9))]
)
def test_psp_head_output_size(features: tuple[int, int], output_size: tuple[int, int]) -> None:
    head = PSPHead(16, 3, output_size, branch_channels=8)
    out = head(torch.randn(2, 16, *features))
    assert out.shape == (2, 3, *output_size)
    assert torch.isfinite(out).all()


def test_psp_head_at_the_feature_size_does_not_resample() -> None:
    head = PSPHead(16, 3, (3, 5), branch_channels=8).eval()
    features = torch.randn(2, 16, 3, 5)
    with torch.no_grad():
        pyramid = [features] + [
            nn.functional.interpolate(branch(features), size=(3, 5), mode="bilinear", align_corners=False) for branch in head.ppm
        ]
        torch.testing.assert_close(head(features), head.conv_last(torch.cat(pyramid, dim=1)))


def test_psp_head_batch_of_one() -> None:
    head = PSPHead(16, 3, (16, 16), branch_channels=8)
    with pytest.raises(ValueError, match="batch of at least 2"):
        head(torch.randn(1, 16, 2, 2))
    head.eval()
    assert head(torch.randn(1, 16, 2, 2)).shape == (1, 3, 16, 16)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "output_size", "branch"),
    [(0, 3, (8, 8), 8), (4, 0, (8, 8), 8), (4, 3, (0, 8), 8), (4, 3, (8, 8), 0)],
)
def test_psp_head_invalid_arguments(in_channels: int, out_channels: int, output_size: tuple[int, int], branch: int) -> None:
    with pytest.raises(ValueError, match="PSP head"):
        PSPHead(in_channels, out_channels, output_size, branch_channels=branch)


def test_dilated_resnet_and_psp_heads_gradient_flow() -> None:
    encoder = DilatedResNet50Encoder(width=4)
    heads = {"S": PSPHead(128, 19, (16, 32), 8), "I": PSPHead(128, 2, (16, 32), 8), "D": PSPHead(128, 1, (16, 32), 8)}
    z = encoder(torch.randn(2, 3, 16, 32))
    loss = sum((head(z) * torch.randn(2, head.conv_last[-1].out_channels, 16, 32)).sum() for head in heads.values())
    loss.backward()
    assert_every_parameter_gets_a_gradient(encoder, *heads.values())


# ------------------------------------------------------------------------------------------ ImageNet weights loading


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh TORCH_HOME in which every download fails (no network is ever attempted)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    return tmp_path / "torch" / "hub"


def test_imagenet_weights_path_is_torch_hubs(hub_dir: Path) -> None:
    assert imagenet_weights_path() == hub_dir / "checkpoints" / "resnet50-0676ba61.pth"
    assert torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url.endswith("/resnet50-0676ba61.pth")


def test_load_imagenet_weights_reads_the_cached_file(hub_dir: Path) -> None:
    state = torchvision.models.resnet50(weights=None).state_dict()
    path = hub_dir / "checkpoints" / "resnet50-0676ba61.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    encoder = DilatedResNet50Encoder()
    load_imagenet_weights(encoder)
    loaded = encoder.state_dict()
    assert loaded.keys() == {key for key in state if not key.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_load_imagenet_weights_without_network(hub_dir: Path) -> None:
    with pytest.raises(DataError) as info:
        load_imagenet_weights(DilatedResNet50Encoder())
    expected = str(hub_dir / "checkpoints" / "resnet50-0676ba61.pth")
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in info.value.message
    assert info.value.hint is not None
    assert expected in info.value.hint and "TORCH_HOME" in info.value.hint


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint", "truncated"])
def test_load_imagenet_weights_unreadable_file(hub_dir: Path, content: bytes | str) -> None:
    path = hub_dir / "checkpoints" / "resnet50-0676ba61.pth"
    path.parent.mkdir(parents=True)
    if content == "truncated":
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match="cannot read") as info:
        load_imagenet_weights(DilatedResNet50Encoder())
    assert str(path) in info.value.message


def test_load_imagenet_weights_wrong_network_in_file(hub_dir: Path) -> None:
    path = hub_dir / "checkpoints" / "resnet50-0676ba61.pth"
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(DataError, match="does not hold torchvision's ResNet-50 weights") as info:
        load_imagenet_weights(DilatedResNet50Encoder())
    assert str(path) in info.value.message
    assert "missing keys (first: layer1.0.conv3.weight)" in info.value.message
    assert "tensors of the wrong shape (first: layer1.0.conv1.weight)" in info.value.message


@pytest.mark.parametrize(("channels", "width"), [(3, 32), (1, 64)])
def test_load_imagenet_weights_needs_the_pretrained_architecture(hub_dir: Path, channels: int, width: int) -> None:
    with pytest.raises(DataError, match="width 64") as info:
        load_imagenet_weights(DilatedResNet50Encoder(in_channels=channels, width=width))
    assert info.value.hint is not None
    assert not (hub_dir / "checkpoints").exists()  # refused before any look-up or download


# ------------------------------------------------------------------------------------------------- split SegNet


@pytest.mark.parametrize(("channels", "height", "width"), [(3, 32, 64), (1, 64, 32), (3, 96, 128)])
def test_segnet_output_shape(channels: int, height: int, width: int) -> None:
    encoder = SegNetSplitEncoder(in_channels=channels, width=4)
    z = encoder(torch.randn(2, channels, height, width))
    assert encoder.out_features == 4
    assert z.shape == (2, 4, height, width)
    assert (z >= 0).all()  # z is the output of the last decoder layer's ReLU
    for outputs in (13, 1, 3):
        assert segnet_head(4, outputs)(z).shape == (2, outputs, height, width)


def test_segnet_parameter_count_matches_the_reference() -> None:
    encoder = SegNetSplitEncoder()
    heads = {outputs: segnet_head(64, outputs) for outputs in SEGNET_HEADS}
    assert count(encoder) == SEGNET_SHARED
    assert {outputs: count(head) for outputs, head in heads.items()} == SEGNET_HEADS
    assert count(encoder) + sum(count(head) for head in heads.values()) == SEGNET_TOTAL
    assert encoder.out_features == 64


def test_segnet_layers_are_vgg16_mirrored() -> None:
    encoder = SegNetSplitEncoder(width=2)
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 26 and len([m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]) == 26
    assert all(conv.kernel_size == (3, 3) and conv.bias is not None for conv in convs)
    encoder_channels = [(c.in_channels, c.out_channels) for c in encoder.encoder_block.modules() if isinstance(c, nn.Conv2d)]
    decoder_channels = [(c.in_channels, c.out_channels) for c in encoder.decoder_block.modules() if isinstance(c, nn.Conv2d)]
    assert encoder_channels == [(3, 2), (2, 4), (4, 8), (8, 16), (16, 16)]
    assert decoder_channels == [(2, 2), (4, 2), (8, 4), (16, 8), (16, 16)]
    assert [len(list(b.modules())) for b in encoder.conv_block_enc] == [4, 4, 9, 9, 9]  # 1, 1, 2, 2, 2 conv layers


def test_segnet_last_layer_produces_z() -> None:
    encoder = SegNetSplitEncoder(width=4)
    layer = encoder.last_layer
    assert isinstance(layer, nn.Conv2d) and any(layer is module for module in encoder.modules())
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.shape == (4, 4, 3, 3)
    outputs: list[torch.Tensor] = []
    layer.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    encoder.eval()
    with torch.no_grad():
        z = encoder(torch.randn(2, 3, 32, 32))
        bn = encoder.conv_block_dec[0][1]
        torch.testing.assert_close(z, torch.relu(bn(outputs[0])))


def test_segnet_heads_output_raw_values() -> None:
    head = segnet_head(4, 13)
    assert [type(m) for m in head.children()] == [nn.Conv2d, nn.Conv2d]
    assert [m.kernel_size for m in head.children()] == [(3, 3), (1, 1)]
    z = torch.rand(2, 4, 8, 8)
    with torch.no_grad():
        logits = head(z)
        torch.testing.assert_close(logits, head[1](head[0](z)))
        assert not torch.allclose(logits.exp().sum(dim=1), torch.ones(2, 8, 8))  # not (log-)probabilities
        assert not torch.allclose(segnet_head(4, 3)(z).norm(dim=1), torch.ones(2, 8, 8))  # normals not normalised


def test_segnet_gradient_flow() -> None:
    encoder = SegNetSplitEncoder(width=4)
    heads = {outputs: segnet_head(4, outputs) for outputs in (13, 1, 3)}
    z = encoder(torch.randn(2, 3, 32, 32))
    loss = sum((head(z) * torch.randn(2, outputs, 32, 32)).sum() for outputs, head in heads.items())
    loss.backward()
    assert_every_parameter_gets_a_gradient(encoder, *heads.values())


def test_segnet_input_problem() -> None:
    assert segnet_input_problem((3, 288, 384)) is None
    assert segnet_input_problem((1, 32, 32)) is None
    problem = segnet_input_problem((3, 100, 128))
    assert problem is not None
    assert "multiples of 32" in problem and "100x128" in problem and "\n" not in problem
    assert "16x32" in (segnet_input_problem((3, 16, 32)) or "")
    assert "channel" in (segnet_input_problem((0, 32, 32)) or "")
    with pytest.raises(ValueError, match="multiples of 32"):
        SegNetSplitEncoder(width=2)(torch.randn(2, 3, 48, 64))


@pytest.mark.parametrize(("channels", "width"), [(0, 64), (3, 0)])
def test_segnet_invalid_arguments(channels: int, width: int) -> None:
    with pytest.raises(ValueError, match="segnet-split"):
        SegNetSplitEncoder(in_channels=channels, width=width)
