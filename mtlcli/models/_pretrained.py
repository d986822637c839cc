"""torchvision's ImageNet weights from the torch.hub cache, with one clear error when they cannot be had.

Shared by the encoders that start from ImageNet (the dilated ResNet-50 of Cityscapes, the ResNet-18 of Office):
where the file is cached, and the download-or-read with a DataError that says where to put the file offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torchvision.models import WeightsEnum

from mtlcli.errors import DataError


def hub_path(weights: WeightsEnum) -> Path:
    """Where torch.hub caches `weights`: torch.hub.get_dir()/checkpoints/<file name of the URL>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def reason(exc: BaseException) -> str:
    """The exception's type and first line (torch's messages can run over many lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__


def fetch_state(weights: WeightsEnum, path: Path, network: str, offline_hint: str = "") -> Any:
    """`weights`' state dict, read from the cache `path` or downloaded into it. DataError naming the file when it
    is there but unreadable, or the URL and where to put the file when it cannot be downloaded."""
    url, cached = weights.url, path.is_file()
    try:
        return weights.get_state_dict(progress=False, check_hash=True, map_location="cpu", weights_only=True)
    except Exception as exc:  # downloading raises URLError/OSError/RuntimeError; unpickling a bad file, nearly anything
        if cached or path.is_file():
            raise DataError(
                f"cannot read the {network} ImageNet weights file {path}: {reason(exc)}",
                hint=f"delete it to download it again, or replace it with a good copy of {url}",
            ) from None
        raise DataError(
            f"cannot download the {network} ImageNet weights from {url}: {reason(exc)}",
            hint=f"without internet, download {url} elsewhere and put it at {path} "
            f"(torch.hub.get_dir()/checkpoints; set TORCH_HOME to change it: $TORCH_HOME/hub/checkpoints){offline_hint}",
        ) from None
