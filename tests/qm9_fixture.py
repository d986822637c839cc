"""A handful of molecules as QM9's raw files, in their exact formats: gdb9.sdf (V2000 molfile blocks closed by $$$$,
as MoleculeNet's qm9.zip ships them), gdb9.sdf.csv (mol_id and the 19 properties in the CSV's units: Hartree,
kcal/mol for the atomization energies) and uncharacterized.txt (9 header lines, a line per skipped molecule
starting with its 1-based index, 2 closing lines)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

try:  # the graph extra: the encoder and the reference batches need it, the prepare tests do not
    with warnings.catch_warnings():  # its import warns about torch.jit.script (as mtlcli.models.mpnn's does)
        warnings.simplefilter("ignore", FutureWarning)
        import torch_geometric.nn  # noqa: F401

    MISSING_GEOMETRIC = ""
except ImportError as exc:
    MISSING_GEOMETRIC = f"torch_geometric cannot be imported (pip install 'mtlcli[graph]'): {exc}"
needs_geometric = pytest.mark.skipif(bool(MISSING_GEOMETRIC), reason=MISSING_GEOMETRIC)

HEADER = ("mol_id,A,B,C,mu,alpha,homo,lumo,gap,r2,zpve,u0,u298,h298,g298,cv,u0_atom,u298_atom,h298_atom,g298_atom")


@dataclass
class RawMolecule:
    name: str
    symbols: list[str]
    positions: list[tuple[float, float, float]]
    bonds: list[tuple[int, int, int]]  # 1-based atoms, molfile bond type
    properties: list[float] = field(default_factory=list)  # the 19 CSV values after mol_id


# (symbols, bonds 1-based with molfile types): methane, ammonia, water, HCN, formaldehyde, fluoromethane, ethyne, ethene
SHAPES = [
    (["C", "H", "H", "H", "H"], [(1, 2, 1), (1, 3, 1), (1, 4, 1), (1, 5, 1)]),
    (["N", "H", "H", "H"], [(1, 2, 1), (1, 3, 1), (1, 4, 1)]),
    (["O", "H", "H"], [(1, 2, 1), (1, 3, 1)]),
    (["C", "N", "H"], [(1, 2, 3), (1, 3, 1)]),
    (["C", "O", "H", "H"], [(1, 2, 2), (1, 3, 1), (1, 4, 1)]),
    (["C", "F", "H", "H", "H"], [(1, 2, 1), (1, 3, 1), (1, 4, 1), (1, 5, 1)]),
    (["C", "C", "H", "H"], [(1, 2, 3), (1, 3, 1), (2, 4, 1)]),
    (["C", "C", "H", "H", "H", "H"], [(1, 2, 2), (1, 3, 1), (1, 4, 1), (2, 5, 1), (2, 6, 1)]),
]


def molecules(n: int = 14, seed: int = 0) -> list[RawMolecule]:
    rng = np.random.default_rng(seed)
    result = []
    for i in range(n):
        symbols, bonds = SHAPES[i % len(SHAPES)]
        positions = [tuple(float(v) for v in np.round(rng.normal(0, 1.2, 3), 4)) for _ in symbols]
        a, b, c = np.round(rng.uniform(5, 300, 3), 5)
        props = [a, b, c, rng.uniform(0, 4), rng.uniform(5, 30), rng.uniform(-0.4, -0.2), rng.uniform(-0.1, 0.1), 0.0,
                 rng.uniform(20, 200), rng.uniform(0.01, 0.1), *rng.uniform(-200, -40, 4), rng.uniform(5, 20),
                 *rng.uniform(-800, -300, 4)]  # fmt: skip
        props[7] = props[6] - props[5]  # gap = lumo - homo
        result.append(RawMolecule(f"gdb_{i + 1}", list(symbols), positions, list(bonds), [float(round(p, 6)) for p in props]))
    return result


def molfile_block(m: RawMolecule) -> str:
    lines = [m.name, "     RDKit          3D", "", f"{len(m.symbols):3d}{len(m.bonds):3d}  0  0  0  0  0  0  0  0999 V2000"]
    lines += [f"{x:10.4f}{y:10.4f}{z:10.4f} {s:<3} 0  0  0  0  0  0  0  0  0  0  0  0" for s, (x, y, z) in
              zip(m.symbols, m.positions, strict=True)]  # fmt: skip
    lines += [f"{i:3d}{j:3d}{t:3d}  0" for i, j, t in m.bonds]
    lines += ["M  END", "$$$$"]
    return "\n".join(lines) + "\n"


def csv_row(m: RawMolecule) -> str:
    return ",".join([m.name, *(repr(v) for v in m.properties)])


def write_raw(folder: Path, mols: list[RawMolecule] | None = None, skip: tuple[int, ...] = (3,)) -> Path:
    """The three raw files in `folder`; `skip`: the 1-based indices uncharacterized.txt lists."""
    mols = molecules() if mols is None else mols
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gdb9.sdf").write_text("".join(molfile_block(m) for m in mols), encoding="utf-8")
    (folder / "gdb9.sdf.csv").write_text("\n".join([HEADER, *(csv_row(m) for m in mols)]) + "\n", encoding="utf-8")
    header = [" Uncharacterized molecules of QM9", "", " The geometry consistency check failed for these molecules:",
              "", " Index   GDB17-SMILES   relaxed-SMILES   deviation", "", "", "", " " + "=" * 40]  # fmt: skip
    rows = [f"{i:7d}   C   C   0.5" for i in skip]
    (folder / "uncharacterized.txt").write_text("\n".join([*header, *rows, " " + "=" * 40]) + "\n", encoding="utf-8")
    return folder
