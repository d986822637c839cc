"""A miniature NYUv2 release in MTAN's on-disk format: one real .npy file per sample and kind.

`make_nyuv2_source` writes `train/{image,label,depth,normal}/<i>.npy` and `val/...` (as a folder or inside
an unopened nyuv2.zip) with the release's conventions: images float64 [H, W, 3] in [0, 1] (multiples of
1/255), labels float64 [H, W] in 0..12 with -1 = not labelled, depth float64 [H, W, 1] with 0 = invalid,
normals float64 [H, W, 3] of unit length with all-zero = invalid. `FakeNYUv2.expected` says what a correct
prepare must produce from them, computed here independently of `mtlcli.data.nyuv2`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("image", "label", "depth", "normal")
RELEASE_SPLITS = ("train", "val")
CLASSES = 13
Sample = dict[str, np.ndarray]  # kind -> the array of its .npy file


@dataclass(frozen=True)
class FakeNYUv2:
    """A written release: the --source path, where train/ and val/ are, and every sample's arrays."""

    path: Path  # pass this as --source
    root: Path  # the folder holding train/ and val/, or the zip
    zipped: bool
    prefix: str  # zip only: the members' path up to train/ and val/
    samples: dict[str, dict[str, Sample]]  # release split -> stem -> kind -> array

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def hw(self) -> tuple[int, int]:
        first = next(iter(self.samples["train"].values()))
        return first["label"].shape

    def file(self, split: str, kind: str, stem: str | int) -> Path:
        """The .npy file of one sample and kind (folder layout)."""
        return self.root / split / kind / f"{stem}.npy"

    def stems(self, split: str) -> list[str]:
        """The sample stems of a release split in numeric order."""
        return sorted(self.samples[split], key=int)

    def held_out(self, seed: int) -> list[str]:
        """The train stems a prepare with `seed` holds out for validation: a seeded 10% (at least 1), sorted."""
        stems = self.stems("train")
        count = max(1, round(0.1 * len(stems)))
        chosen = np.random.default_rng(seed).permutation(len(stems))[:count]
        return [stems[i] for i in sorted(chosen)]

    def split_stems(self, seed: int) -> dict[str, tuple[str, list[str]]]:
        """Prepared split -> (release split, stems in order)."""
        held = self.held_out(seed)
        train = [s for s in self.stems("train") if s not in held]
        return {"train": ("train", train), "val": ("train", held), "test": ("val", self.stems("val"))}

    def expected(self, seed: int = 0, hw: tuple[int, int] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """The arrays of each prepared split (images at size `hw`: bilinear antialias, compare within 1)."""
        result = {}
        for split, (release_split, stems) in self.split_stems(seed).items():
            samples = [convert(self.samples[release_split][stem], hw) for stem in stems]
            result[split] = {key: np.stack([s[key] for s in samples]) for key in samples[0]}
        return result


def convert(sample: Sample, hw: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """One sample as prepared: uint8 image, uint8 classes (-1 -> 255), depth 0 -> NaN, normals [3, H, W], 0 -> NaN."""
    image = torch.from_numpy(sample["image"]).permute(2, 0, 1)[None].double()
    label = torch.from_numpy(sample["label"])[None, None]
    depth = torch.from_numpy(sample["depth"]).permute(2, 0, 1)[None]
    normal = torch.from_numpy(sample["normal"]).permute(2, 0, 1)[None]
    if hw is not None and tuple(hw) != tuple(label.shape[-2:]):
        image = F.interpolate(image, size=hw, mode="bilinear", antialias=True, align_corners=False)
        label, depth, normal = (F.interpolate(t, size=hw, mode="nearest-exact") for t in (label, depth, normal))
    image_np = (image[0].permute(1, 2, 0).double().numpy() * 255).round().clip(0, 255).astype(np.uint8)
    label_np = label[0, 0].numpy()
    depth_np = depth[0, 0].numpy()
    normal_np = normal[0].numpy()
    invalid = (normal_np == 0).all(axis=0)
    return {
        "images": image_np,
        "segmentation": np.where(label_np == -1, 255, label_np).astype(np.uint8),
        "depth": np.where(depth_np == 0, np.nan, depth_np).astype(np.float32),
        "normal": np.where(invalid[None], np.nan, normal_np).astype(np.float32),
    }


def make_sample(rng: np.random.Generator, hw: tuple[int, int], dtype: type = np.float64) -> Sample:
    """Random arrays with the release's conventions; each holds some -1 labels, zero depths and zero normals."""
    h, w = hw
    image = rng.integers(0, 256, size=(h, w, 3)) / 255.0
    label = rng.integers(0, CLASSES, size=(h, w)).astype(np.float64)
    label[rng.random((h, w)) < 0.1] = -1
    label[0, 0], label[0, 1], label[0, 2] = -1, 0, CLASSES - 1
    depth = rng.uniform(0.5, 10.0, size=(h, w, 1))
    depth[rng.random((h, w)) < 0.1] = 0
    depth[1, 1] = 0
    normal = rng.normal(size=(h, w, 3))
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[rng.random((h, w)) < 0.1] = 0
    normal[2, 2] = 0
    return {kind: value.astype(dtype) for kind, value in zip(KINDS, (image, label, depth, normal), strict=True)}


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    """The bytes of a .npy file holding `array`."""
    with BytesIO() as handle:
        np.save(handle, array, allow_pickle=allow_pickle)
        return handle.getvalue()


def make_nyuv2_source(
    root: Path,
    *,
    n_train: int = 10,
    n_val: int = 4,
    hw: tuple[int, int] = (48, 64),
    seed: int = 0,
    zipped: bool = False,
    subfolder: bool = False,
    dtype: type = np.float64,
) -> FakeNYUv2:
    """Write a release with samples 0..n-1 of each split into `root` (or `root/nyuv2/`, or `root/nyuv2.zip`)."""
    rng = np.random.default_rng(seed)
    samples = {
        split: {str(i): make_sample(rng, hw, dtype) for i in range(n)} for split, n in (("train", n_train), ("val", n_val))
    }
    root.mkdir(parents=True, exist_ok=True)
    if zipped:
        archive_path, prefix = root / "nyuv2.zip", "nyuv2/"
        with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for split, by_stem in samples.items():
                for stem, sample in by_stem.items():
                    for kind in KINDS:
                        archive.writestr(f"{prefix}{split}/{kind}/{stem}.npy", npy_bytes(sample[kind]))
        return FakeNYUv2(path=root, root=archive_path, zipped=True, prefix=prefix, samples=samples)
    tree = root / "nyuv2" if subfolder else root
    for split, by_stem in samples.items():
        for kind in KINDS:
            (tree / split / kind).mkdir(parents=True, exist_ok=True)
        for stem, sample in by_stem.items():
            for kind in KINDS:
                np.save(tree / split / kind / f"{stem}.npy", sample[kind], allow_pickle=False)
    return FakeNYUv2(path=root, root=tree, zipped=False, prefix="", samples=samples)
