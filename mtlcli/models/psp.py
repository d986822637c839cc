"""Pyramid pooling head (Zhao et al. 2017, "Pyramid Scene Parsing Network", CVPR), the per-task Cityscapes decoder
of Sener & Koltun (2018), "Multi-Task Learning as Multi-Objective Optimization" (NeurIPS), as in their
multi_task/models/pspnet.py (`SegmentationDecoder`, adapted from CSAILVision/semantic-segmentation-pytorch).

For each pooling scale s in (1, 2, 3, 6): AdaptiveAvgPool2d(s) -> 1x1 conv (no bias) to `branch_channels` ->
BatchNorm -> ReLU, upsampled bilinearly back to the feature map's size; the four branches are concatenated
with the feature map (in_channels + 4 * branch_channels channels: 4096 at 2048 and 512) -> 3x3 conv (no bias)
to `branch_channels` -> BatchNorm -> ReLU -> 1x1 conv (with bias) to `out_channels`. Layers keep PyTorch's
default initialisation, as in the authors' code. At (2048 -> 19, 512) the head has 23,083,539 parameters
(4 x 1,049,600 in the pyramid, 18,875,392 in the 3x3 conv + BatchNorm, 9,747 in the classifier).

Differences from the authors' decoder: the output is raw (no log-softmax: our losses take logits) and is
upsampled bilinearly to `output_size` (the input image size); the authors instead compared the 1/8-resolution
output with labels downsampled to 1/8 (pass the feature map's size as `output_size` to do the same: the
upsampling is then skipped).

Batch size 1: the 1x1-pooled branch gives one value per channel per image, so its BatchNorm cannot compute
batch statistics for a single image in training mode (PyTorch raises "Expected more than 1 value per channel
when training"). Rather than change the architecture (e.g. drop that BatchNorm or use its running statistics
silently), `forward` raises a ValueError saying so; train with batches of at least 2 and drop a last batch
of size 1. Evaluation mode takes any batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlcli.models.registry import DilatedResNetOptions

__all__ = ["POOL_SCALES", "PSPHead"]

POOL_SCALES = (1, 2, 3, 6)


class PSPHead(nn.Module):
    """[B, in_channels, h, w] features -> [B, out_channels, *output_size] raw predictions."""

    def __init__(self, in_channels: int, out_channels: int, output_size: tuple[int, int], branch_channels: int = 512) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("branch_channels", branch_channels)):
            if value < 1:
                raise ValueError(f"PSP head {name} must be >= 1, got {value}")
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"PSP head output_size must be (height, width) with both >= 1, got {output_size}")
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.ppm = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(scale),
                nn.Conv2d(in_channels, branch_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(branch_channels),
                nn.ReLU(inplace=True),
            )
            for scale in POOL_SCALES
        )
        self.conv_last = nn.Sequential(
            nn.Conv2d(in_channels + len(POOL_SCALES) * branch_channels, branch_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch_channels, out_channels, kernel_size=1),
        )

    def forward(self, features: Tensor) -> Tensor:
        if self.training and features.shape[0] < 2:
            raise ValueError(
                f"PSP head in training mode needs a batch of at least 2, got {features.shape[0]}: the BatchNorm "
                "after its 1x1 pyramid pooling has one value per channel per image (drop a last batch of size 1)"
            )
        size = features.shape[-2:]
        pyramid = [features]
        pyramid += [F.interpolate(branch(features), size=size, mode="bilinear", align_corners=False) for branch in self.ppm]
        out = self.conv_last(torch.cat(pyramid, dim=1))
        if tuple(out.shape[-2:]) != self.output_size:
            out = F.interpolate(out, size=self.output_size, mode="bilinear", align_corners=False)
        return out


def build_head(channels: int, outputs: int, shape: tuple[int, int, int], o: DilatedResNetOptions) -> nn.Module:
    """The registry's head of `resnet50-dilated`: a PSP head upsampling to the input's height and width."""
    return PSPHead(channels, outputs, output_size=(shape[1], shape[2]), branch_channels=o.head_width)
