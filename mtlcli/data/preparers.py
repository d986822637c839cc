"""How each registered dataset is prepared (`mtl prepare`): the numpy/torch side of the dataset registry.

`mtlcli.data.registry` describes every dataset without importing numpy or torch; this module imports each
dataset's module for its `prepare(spec, request) -> Prepared`. A test checks that both list the same names.
"""

from __future__ import annotations

from collections.abc import Callable

from mtlcli.data import celeba, cityscapes, cityscapes_mtan, nyuv2, office, qm9, table
from mtlcli.data.prepare import prepare_paired
from mtlcli.data.registry import DATASETS, DatasetSpec, Prepared, PrepareRequest

Preparer = Callable[[DatasetSpec, PrepareRequest], Prepared]

PREPARERS: dict[str, Preparer] = {
    "multimnist": prepare_paired,
    "multifashion": prepare_paired,
    "multi-fashion-mnist": prepare_paired,
    "celeba": celeba.prepare,
    "cityscapes": cityscapes.prepare,
    "cityscapes-mtan": cityscapes_mtan.prepare,
    "nyuv2": nyuv2.prepare,
    "qm9": qm9.prepare,
    "office-31": office.prepare,
    "office-home": office.prepare,
    "table": table.prepare_table,
}


def prepare_dataset(name: str, request: PrepareRequest) -> Prepared:
    """Build dataset `name` (a registry name) as `request` asks."""
    return PREPARERS[name](DATASETS[name], request)
