"""The MultiMNIST family's names and geometry (torch- and numpy-free: the dataset registry reads them)."""

from __future__ import annotations

from dataclasses import dataclass

CANVAS = 36
ITEM = 28
OFFSET = 6
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class PairedSpec:
    """A two-task overlay dataset: which raw source feeds the left and the right item."""

    name: str
    left: str
    right: str
    description: str

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.left, self.right)))


SPECS: dict[str, PairedSpec] = {
    "multimnist": PairedSpec("multimnist", "mnist", "mnist", "two MNIST digits (Sener & Koltun 2018)"),
    "multifashion": PairedSpec(
        "multifashion", "fashion-mnist", "fashion-mnist", "two Fashion-MNIST items (Lin et al. 2019)"
    ),
    "multi-fashion-mnist": PairedSpec(
        "multi-fashion-mnist", "mnist", "fashion-mnist", "an MNIST digit and a Fashion-MNIST item (Lin et al. 2019)"
    ),
}
TASKS = ("left", "right")
