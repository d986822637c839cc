"""A miniature Cityscapes release in the official on-disk formats: real PNGs in the official folders or zips.

`make_cityscapes_source` writes leftImg8bit (8-bit RGB), gtFine labelIds (8-bit gray) and instanceIds (16-bit
gray) and disparity (16-bit gray) PNGs for tiny frames, and `FakeCityscapes.expected` computes what a correct
prepare must produce from them: the label maps, offsets and disparity by deliberately slow per-pixel loops
written independently of `mtlcli.data.cityscapes`; the images by the documented resize (torchvision's
antialiased bilinear), since that is the definition and not something to re-derive.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

PACKAGES = ("leftImg8bit", "gtFine", "disparity")
SUFFIX = {
    "image": ("leftImg8bit", "_leftImg8bit.png"),
    "label": ("gtFine", "_gtFine_labelIds.png"),
    "instance": ("gtFine", "_gtFine_instanceIds.png"),
    "disparity": ("disparity", "_disparity.png"),
}

# by name, as in cityscapesScripts' labels.py (written out again on purpose: the fixture checks the module's table)
ID = {
    "unlabeled": 0, "ego vehicle": 1, "rectification border": 2, "out of roi": 3, "static": 4, "dynamic": 5,
    "ground": 6, "road": 7, "sidewalk": 8, "parking": 9, "rail track": 10, "building": 11, "wall": 12, "fence": 13,
    "guard rail": 14, "bridge": 15, "tunnel": 16, "pole": 17, "polegroup": 18, "traffic light": 19,
    "traffic sign": 20, "vegetation": 21, "terrain": 22, "sky": 23, "person": 24, "rider": 25, "car": 26,
    "truck": 27, "bus": 28, "caravan": 29, "trailer": 30, "train": 31, "motorcycle": 32, "bicycle": 33,
}  # fmt: skip
TRAIN_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CATEGORY_OF = {
    "flat": ("road", "sidewalk", "parking", "rail track"),
    "construction": ("building", "wall", "fence", "guard rail", "bridge", "tunnel"),
    "object": ("pole", "polegroup", "traffic light", "traffic sign"),
    "nature": ("vegetation", "terrain"),
    "sky": ("sky",),
    "human": ("person", "rider"),
    "vehicle": ("car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle"),
}
CATEGORIES = tuple(CATEGORY_OF)
THING_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
NAME_OF = {v: k for k, v in ID.items()}
STUFF = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic sign", "vegetation", "terrain", "parking",
    "guard rail", "bridge", "polegroup", "rail track", "tunnel", "static", "dynamic", "ground", "unlabeled",
)  # fmt: skip


@dataclass
class FakeFrame:
    """One frame's source pixels, exactly as written."""

    split: str  # the release's split: train, val (or test, which prepare ignores)
    city: str
    stem: str
    image: np.ndarray  # uint8 [H, W, 3]
    label: np.ndarray  # uint8 [H, W] label ids
    instance: np.ndarray  # uint16 [H, W] instance ids
    disparity: np.ndarray  # uint16 [H, W] raw disparity PNG values

    def member(self, part: str) -> str:
        package, suffix = SUFFIX[part]
        return f"{package}/{self.split}/{self.city}/{self.stem}{suffix}"


@dataclass
class FakeCityscapes:
    """A written release: the --source dir, its frames per release split and which packages are zipped."""

    path: Path
    frames: dict[str, list[FakeFrame]]
    zipped: tuple[str, ...] = field(default_factory=tuple)

    def __fspath__(self) -> str:
        return str(self.path)

    def file(self, frame: FakeFrame, part: str) -> Path:
        """The path of a frame's file (folder layout)."""
        return self.path / frame.member(part)

    def zip_path(self, package: str) -> Path:
        return self.path / f"{package}_trainvaltest.zip"

    def stems(self, split: str) -> list[str]:
        return [f.stem for f in self.frames[split]]

    def frame(self, stem: str) -> FakeFrame:
        return next(f for frames in self.frames.values() for f in frames if f.stem == stem)

    def expected(self, stems: list[str], size: int) -> dict[str, np.ndarray]:
        """The arrays a correct prepare holds for these frames (in this order) at height `size`."""
        frames = [self.frame(s) for s in stems]
        outs = [expected_frame(f, size, 2 * size) for f in frames]
        return {key: np.stack([o[key] for o in outs]) for key in ("images", "semantic", "category", "instance", "disparity")}


# ----------------------------------------------------------------------------- the slow reference
def nearest_slow(source: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest neighbour by pixel centres: output (i, j) samples the source pixel under its centre."""
    h, w = source.shape[:2]
    out = np.zeros((height, width, *source.shape[2:]), dtype=source.dtype)
    for i in range(height):
        for j in range(width):
            out[i, j] = source[math.floor((i + 0.5) * h / height), math.floor((j + 0.5) * w / width)]
    return out


def semantic_slow(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, categories) pixel by pixel, 255 where ignored."""
    semantic = np.full(labels.shape, 255, dtype=np.uint8)
    category = np.full(labels.shape, 255, dtype=np.uint8)
    for (i, j), label in np.ndenumerate(labels):
        name = NAME_OF.get(int(label))
        if name in TRAIN_CLASSES:
            semantic[i, j] = TRAIN_CLASSES.index(name)
        for c, members in enumerate(CATEGORY_OF.values()):
            if name in members:
                category[i, j] = c
    return semantic, category


def offsets_slow(ids: np.ndarray) -> np.ndarray:
    """float32 [2, H, W]: centroid minus position for pixels of individual thing instances, NaN elsewhere."""
    pixels: dict[int, list[tuple[int, int]]] = {}
    for (i, j), value in np.ndenumerate(ids):
        value = int(value)
        if value >= 1000 and NAME_OF.get(value // 1000) in THING_CLASSES:
            pixels.setdefault(value, []).append((i, j))
    out = np.full((2, *ids.shape), np.nan, dtype=np.float32)
    for members in pixels.values():
        cy = sum(i for i, _ in members) / len(members)
        cx = sum(j for _, j in members) / len(members)
        for i, j in members:
            out[0, i, j] = cy - i
            out[1, i, j] = cx - j
    return out


def disparity_slow(raw: np.ndarray) -> np.ndarray:
    out = np.full(raw.shape, np.nan, dtype=np.float32)
    for (i, j), p in np.ndenumerate(raw):
        if p > 0:
            out[i, j] = (int(p) - 1) / 256.0
    return out


def expected_frame(frame: FakeFrame, height: int, width: int) -> dict[str, np.ndarray]:
    image = torch.from_numpy(frame.image).permute(2, 0, 1)
    resized = tvf.resize(image, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)
    semantic, category = semantic_slow(nearest_slow(frame.label, height, width))
    return {
        "images": resized.permute(1, 2, 0).numpy(),
        "semantic": semantic,
        "category": category,
        "instance": offsets_slow(nearest_slow(frame.instance, height, width)),
        "disparity": disparity_slow(nearest_slow(frame.disparity, height, width)),
    }


# ----------------------------------------------------------------------------- writing PNGs
def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of uint8 [H, W, 3] (8-bit RGB), uint8 [H, W] (8-bit gray) or uint16 [H, W] (16-bit gray, Pillow I;16)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(pixels))


def _frame(rng: np.random.Generator, split: str, city: str, index: int, hw: tuple[int, int]) -> FakeFrame:
    """Stuff bands, void pixels, a few thing instances (some overlapping), a crowd and a caravan, invalid disparity."""
    h, w = hw
    stem = f"{city}_{index:06d}_{19 + 7 * index:06d}"
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.full((h, w), ID["road"], dtype=np.uint8)
    label[: h // 4] = ID["sky"]
    label[h // 4 : h // 2] = ID["building"]
    label[h // 2 : h // 2 + 2, : w // 3] = ID["vegetation"]
    label[h // 2 : h // 2 + 2, w // 3 :] = ID["sidewalk"]
    label[-2:] = ID["ego vehicle"]
    scatter = rng.random((h, w)) < 0.08
    label[scatter] = [ID[n] for n in rng.choice(STUFF, size=int(scatter.sum()))]
    instance = label.astype(np.uint16)
    count: dict[int, int] = {}
    for _ in range(int(rng.integers(2, 6))):
        name = str(rng.choice(THING_CLASSES))
        rh, rw = int(rng.integers(3, max(4, h // 3))), int(rng.integers(4, max(5, w // 4)))
        y, x = int(rng.integers(0, h - rh)), int(rng.integers(0, w - rw))
        label[y : y + rh, x : x + rw] = ID[name]
        instance[y : y + rh, x : x + rw] = ID[name] * 1000 + count.get(ID[name], 0)
        count[ID[name]] = count.get(ID[name], 0) + 1
    label[h // 2 + 2 : h // 2 + 5, 2:8] = ID["car"]  # a crowd (cargroup): the label id only, no instance
    instance[h // 2 + 2 : h // 2 + 5, 2:8] = ID["car"]
    label[h // 2 + 2 : h // 2 + 5, -8:-2] = ID["caravan"]  # an instance of a class without a trainId
    instance[h // 2 + 2 : h // 2 + 5, -8:-2] = ID["caravan"] * 1000
    disparity = rng.integers(1, 40000, (h, w), dtype=np.uint16)
    disparity[: h // 4] = 0  # no disparity in the sky
    disparity[rng.random((h, w)) < 0.1] = 0
    disparity[0, -1] = 65535  # the largest value a 16-bit PNG holds
    return FakeFrame(split, city, stem, image, label, instance, disparity)


def make_cityscapes_source(
    root: Path,
    *,
    cities: dict[str, tuple[str, ...]] | None = None,
    frames: dict[str, int] | None = None,
    size: tuple[int, int] = (32, 64),
    zipped: bool | tuple[str, ...] = False,
    seed: int = 0,
) -> FakeCityscapes:
    """Write a tiny release into `root`: `frames[split]` frames per city of `cities[split]`, H x W = `size`.

    `zipped`: True writes the three official zips instead of folders; a tuple zips only those packages.
    A release test split (all void, as officially) is written too; prepare must ignore it.
    """
    cities = cities or {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau"), "test": ("berlin",)}
    frames = frames or {"train": 5, "val": 2, "test": 1}
    zips = PACKAGES if zipped is True else tuple(zipped or ())
    rng = np.random.default_rng(seed)
    written: dict[str, list[FakeFrame]] = {}
    for split, names in cities.items():
        written[split] = []
        for city in names:
            for k in range(frames.get(split, 0)):
                frame = _frame(rng, split, city, k, size)
                if split == "test":
                    frame.label[:] = 0
                    frame.instance[:] = 0
                written[split].append(frame)
        written[split].sort(key=lambda f: f.stem)
    files: dict[str, dict[str, bytes]] = {p: {} for p in PACKAGES}
    for split_frames in written.values():
        for frame in split_frames:
            for part in SUFFIX:
                files[SUFFIX[part][0]][frame.member(part)] = png_bytes(getattr(frame, part))
            color = np.zeros((*size, 3), dtype=np.uint8)  # gtFine also holds colour images and polygons: ignored
            files["gtFine"][frame.member("label").replace("_labelIds.png", "_color.png")] = png_bytes(color)
            files["gtFine"][frame.member("label").replace("_labelIds.png", "_polygons.json")] = b'{"objects": []}'
    root.mkdir(parents=True, exist_ok=True)
    for package, members in files.items():
        if package in zips:
            with zipfile.ZipFile(root / f"{package}_trainvaltest.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr("README", b"The Cityscapes Dataset (miniature test copy)\n")
                archive.writestr("license.txt", b"test data\n")
                for member, data in sorted(members.items()):
                    archive.writestr(member, data)
        else:
            for member, data in members.items():
                (root / member).parent.mkdir(parents=True, exist_ok=True)
                (root / member).write_bytes(data)
    return FakeCityscapes(path=root, frames=written, zipped=zips)
