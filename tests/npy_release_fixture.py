"""A miniature MTAN release (NYUv2 or Cityscapes) on disk: one real .npy file per sample and kind.

`write_release` writes `train/<kind>/<i>.npy` and `val/...` as a folder, in a subfolder or inside an unopened zip;
`FakeRelease.expected` says what a correct prepare must produce, with each dataset's fixture converting a sample
independently of `mtlcli.data` (torch's interpolate for the resizes: `nearest-exact` for targets, antialiased
bilinear for images).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

Sample = dict[str, np.ndarray]  # kind -> the array of its .npy file
Convert = Callable[[Sample, "tuple[int, int] | None"], dict[str, np.ndarray]]


@dataclass(frozen=True)
class FakeRelease:
    """A written release: the --source path, where train/ and val/ are, and every sample's arrays."""

    path: Path  # pass this as --source
    root: Path  # the folder holding train/ and val/, or the zip
    zipped: bool
    prefix: str  # zip only: the members' path up to train/ and val/
    samples: dict[str, dict[str, Sample]]  # release split -> stem -> kind -> array
    convert: Convert  # one sample as prepared (at size hw, None: the release's)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def hw(self) -> tuple[int, int]:
        first = next(iter(self.samples["train"].values()))
        return first["image"].shape[:2]

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
            samples = [self.convert(self.samples[release_split][stem], hw) for stem in stems]
            result[split] = {key: np.stack([s[key] for s in samples]) for key in samples[0]}
        return result


def resized(array: np.ndarray, hw: tuple[int, int] | None, *, image: bool = False) -> np.ndarray:
    """[H, W] or [H, W, C] at `hw`: torch's antialiased bilinear for images, `nearest-exact` otherwise."""
    if hw is None or tuple(hw) == array.shape[:2]:
        return array
    tensor = torch.from_numpy(array if array.ndim == 3 else array[..., None]).permute(2, 0, 1)[None].double()
    if image:
        out = F.interpolate(tensor, size=hw, mode="bilinear", antialias=True, align_corners=False)
    else:
        out = F.interpolate(tensor, size=hw, mode="nearest-exact")
    result = out[0].permute(1, 2, 0).numpy()
    return result if array.ndim == 3 else result[..., 0]


def prepared_image(image: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    """uint8 round(255 x) of the (resized) float image."""
    return (resized(image.astype(np.float64), hw, image=True) * 255).round().clip(0, 255).astype(np.uint8)


def prepared_label(label: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    """uint8 classes, -1 -> 255."""
    label = resized(label, hw)
    return np.where(label == -1, 255, label).astype(np.uint8)


def prepared_depth(depth: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    """float32 [H, W], 0 -> NaN."""
    depth = resized(depth, hw)[..., 0]
    return np.where(depth == 0, np.nan, depth).astype(np.float32)


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    """The bytes of a .npy file holding `array`."""
    with BytesIO() as handle:
        np.save(handle, array, allow_pickle=allow_pickle)
        return handle.getvalue()


def write_release(
    root: Path,
    samples: dict[str, dict[str, Sample]],
    convert: Convert,
    *,
    folder: str,
    zip_name: str,
    zipped: bool = False,
    subfolder: bool = False,
) -> FakeRelease:
    """Write `samples` into `root` (or `root/<folder>/`, or `root/<zip_name>` with the tree under `<folder>/`)."""
    root.mkdir(parents=True, exist_ok=True)
    if zipped:
        archive_path, prefix = root / zip_name, f"{folder}/"
        with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for split, by_stem in samples.items():
                for stem, sample in by_stem.items():
                    for kind, array in sample.items():
                        archive.writestr(f"{prefix}{split}/{kind}/{stem}.npy", npy_bytes(array))
        return FakeRelease(path=root, root=archive_path, zipped=True, prefix=prefix, samples=samples, convert=convert)
    tree = root / folder if subfolder else root
    for split, by_stem in samples.items():
        for stem, sample in by_stem.items():
            for kind, array in sample.items():
                (tree / split / kind).mkdir(parents=True, exist_ok=True)
                np.save(tree / split / kind / f"{stem}.npy", array, allow_pickle=False)
    return FakeRelease(path=root, root=tree, zipped=False, prefix="", samples=samples, convert=convert)


# ----------------------------------------------------------------------------- what the tests of a prepare share
Change = Callable[[np.ndarray], np.ndarray]


def replace_file(release: FakeRelease, split: str, kind: str, stem: int, change: bytes | Change) -> Path:
    """Overwrite one file of a folder release: with bytes as they are, or with the changed copy of its array."""
    path = release.file(split, kind, stem)
    if isinstance(change, bytes):
        path.write_bytes(change)
    else:
        array = release.samples[split][str(stem)][kind].copy()
        path.write_bytes(npy_bytes(change(array), allow_pickle=True))
    return path


def set_at(index: tuple[int, ...], value: float) -> Change:
    """A change for `replace_file`: one element set to `value`."""

    def change(array: np.ndarray) -> np.ndarray:
        array[index] = value
        return array

    return change


def loaded_splits(data_dir: Path, name: str) -> dict[str, dict[str, np.ndarray]]:
    """The prepared arrays of each split: "images" and every target."""
    from mtlcli.data.store import SPLITS, load_prepared

    data = load_prepared(data_dir, name)
    return {split: {"images": data.images[split], **data.targets[split]} for split in SPLITS}


def assert_splits_equal(data: dict[str, dict[str, np.ndarray]], expected: dict[str, dict[str, np.ndarray]]) -> None:
    """The same arrays (NaN equal to NaN) under the same keys in every split."""
    assert data.keys() == expected.keys()
    for split, arrays in expected.items():
        assert set(data[split]) == set(arrays), split
        for key, array in arrays.items():
            np.testing.assert_array_equal(data[split][key], array, err_msg=f"{split} {key}")
