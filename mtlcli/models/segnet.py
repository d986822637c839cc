"""Split SegNet, the NYUv2 network of Liu, Johns & Davison (2019), "End-to-End Multi-Task Learning with
Attention" (CVPR), as in lorenmt/mtan im2im_pred/model_segnet_split.py (`--type standard`) and the
`SegNetSplit` of the Nash-MTL / CAGrad / FAMO code (AvivNavon/nash-mtl experiments/nyuv2/models.py).

Hard parameter sharing: a shared SegNet (Badrinarayanan et al. 2017) whose every layer is 3x3 conv (with
bias) -> BatchNorm -> ReLU. The VGG-16-style encoder has 5 stages of 2, 2, 3, 3, 3 such layers with
w, 2w, 4w, 8w, 8w channels, each followed by 2x2 max-pooling that keeps its indices; the symmetric decoder
max-unpools with those indices and has 5 stages of 3, 3, 3, 2, 2 layers (8w -> 4w, 4w -> 2w, 2w -> w,
w -> w, w -> w). Its last feature map is z: [B, w, H, W]. Each task head is conv 3x3 (w -> w) then conv 1x1
(w -> outputs), both with bias and nothing between them. Convs are Xavier-normal initialised with zero bias,
BatchNorm with weight 1 and bias 0, as in the reference. The attribute names (`encoder_block`,
`conv_block_enc`, `decoder_block`, `conv_block_dec`) are the reference's, so state_dict keys match its
shared part.

Parameters at w = 64 (measured on the reference's layers): 24,943,296 in the shared network, and heads of
37,773 (13 classes), 36,993 (depth) and 37,123 (normals): 25,055,185 in all; the mtan script prints 3 more
(25,055,188) as it also counts its 3 `logsigma` uncertainty weights.

Outputs: the reference applies log-softmax to the segmentation head's output and divides the normals
prediction by its L2 norm inside the network. Our heads return raw logits for segmentation and raw 3-vectors
for normals (the losses apply log-softmax and normalise), so neither is in the head.

Inputs: height and width must be multiples of 32 (five 2x2 pools; unpooling restores exact sizes only then),
e.g. NYUv2 at 288x384.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from mtlcli.models._input import SEGNET_STAGES, segnet_input_problem
from mtlcli.models.registry import SegNetOptions

__all__ = ["SegNetSplitEncoder", "segnet_head", "segnet_input_problem"]

_STAGES = SEGNET_STAGES
_ENCODER_LAYERS = (2, 2, 3, 3, 3)  # conv layers per encoder stage (VGG-16); the decoder mirrors them



def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _repeat(channels: int, layers: int) -> nn.Sequential:
    """The reference's `conv_block_*` entry: one conv layer, or a Sequential of two for the deeper stages."""
    if layers == 1:
        return _conv_bn_relu(channels, channels)
    return nn.Sequential(*(_conv_bn_relu(channels, channels) for _ in range(layers)))


def _init_reference(module: nn.Module) -> None:
    """The reference's initialisation: Xavier-normal conv weights, zero biases, BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SegNetSplitEncoder(nn.Module):
    """The shared SegNet: [B, in_channels, H, W] -> z of shape [B, width, H, W]; H and W multiples of 32."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"segnet-split needs at least 1 input channel, got {in_channels}")
        if width < 1:
            raise ValueError(f"segnet-split width must be >= 1, got {width}")
        filters = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        inputs = [in_channels, *filters[:-1]]
        # stage i: encoder_block[i] (inputs[i] -> filters[i]), then conv_block_enc[i] (filters[i] -> filters[i])
        self.encoder_block = nn.ModuleList(_conv_bn_relu(inputs[i], filters[i]) for i in range(_STAGES))
        self.conv_block_enc = nn.ModuleList(_repeat(filters[i], _ENCODER_LAYERS[i] - 1) for i in range(_STAGES))
        # decoder stage at scale i (run from i = 4 to 0): decoder_block[i] (filters[i] -> out), conv_block_dec[i] (out -> out)
        outs = [filters[0], *filters[:-1]]
        self.decoder_block = nn.ModuleList(_conv_bn_relu(filters[i], outs[i]) for i in range(_STAGES))
        self.conv_block_dec = nn.ModuleList(_repeat(outs[i], _ENCODER_LAYERS[i] - 1) for i in range(_STAGES))
        self.down_sampling = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
        self.up_sampling = nn.MaxUnpool2d(kernel_size=2, stride=2)
        self.out_features = width
        _init_reference(self)

    @property
    def last_layer(self) -> nn.Module:
        """The last conv of the shared network (in conv_block_dec[0], the last decoder layer)."""
        return cast(nn.Conv2d, cast(nn.Sequential, self.conv_block_dec[0])[0])

    def forward(self, x: Tensor) -> Tensor:
        problem = segnet_input_problem((x.shape[1], x.shape[-2], x.shape[-1]))
        if problem is not None:
            raise ValueError(problem)
        indices = []
        for encode, convs in zip(self.encoder_block, self.conv_block_enc, strict=True):
            x, index = self.down_sampling(convs(encode(x)))
            indices.append(index)
        for i in reversed(range(_STAGES)):
            x = self.conv_block_dec[i](self.decoder_block[i](self.up_sampling(x, indices[i])))
        return x


def segnet_head(in_channels: int, out_channels: int) -> nn.Module:
    """The reference's task head: conv 3x3 (in -> in) then conv 1x1 (in -> out), raw outputs (no softmax, no norm)."""
    head = nn.Sequential(
        nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )
    _init_reference(head)
    return head


def build_encoder(shape: tuple[int, int, int], o: SegNetOptions) -> nn.Module:
    """The registry's `segnet-split` encoder (sides multiples of 32)."""
    problem = segnet_input_problem(shape)
    if problem is not None:
        raise ValueError(problem)
    return SegNetSplitEncoder(in_channels=shape[0], width=o.width)


def build_head(channels: int, outputs: int, _shape: tuple[int, int, int], _o: SegNetOptions) -> nn.Module:
    """The registry's `segnet-split` head: conv 3x3 + conv 1x1."""
    return segnet_head(channels, outputs)
