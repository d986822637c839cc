"""A reader of SD files of V2000 molfile blocks (CTfile format): atoms, 3-D positions and bonds of each molecule.

Enough of the format for QM9's `gdb9.sdf` (Ramakrishnan et al. 2014, as MoleculeNet ships it): a header of three
lines (the first is the molecule's name), the counts line (`aaabbb ... V2000`), `aaa` atom lines (x, y, z in
columns 1-30, the element symbol in 32-34), `bbb` bond lines (first atom, second atom, bond type in columns 1-9,
1-based atoms), property lines up to `M  END`, data items, and `$$$$` closing the record. Every record is checked;
a problem is one `DataError` naming the file, the molecule (its 1-based position and name) and the line.
PyTorch Geometric reads the same file with RDKit (`SDMolSupplier(removeHs=False, sanitize=False)`,
torch_geometric/datasets/qm9.py, `QM9.process`): the bond types here are RDKit's single, double, triple, aromatic.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mtlcli.errors import DataError

END_OF_RECORD = "$$$$"
END_OF_PROPERTIES = "M  END"
BOND_TYPES = {1: 0, 2: 1, 3: 2, 4: 3}  # molfile bond type -> index: single, double, triple, aromatic (RDKit's BondType)


@dataclass(frozen=True)
class Molecule:
    """One record: its name, element symbols, positions [(x, y, z)] in Angstrom and bonds [(i, j, type index)], 0-based."""

    name: str
    symbols: list[str]
    positions: list[tuple[float, float, float]]
    bonds: list[tuple[int, int, int]]


def read_sdf(path: Path) -> Iterator[Molecule]:
    """The molecules of an SD file in order; DataError on the first record that is not a complete V2000 molfile."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}", hint="download gdb9.sdf again") from None
    lines = text.splitlines()
    line, number = 0, 0
    while line < len(lines):
        if not lines[line].strip() and all(not rest.strip() for rest in lines[line:]):
            return  # blank lines after the last record
        number += 1
        molecule, line = _read_record(path, lines, line, number)
        yield molecule


def _read_record(path: Path, lines: list[str], start: int, number: int) -> tuple[Molecule, int]:
    """The record starting at line `start` (0-based) and the line after its `$$$$`."""
    name = lines[start].strip()

    def fail(at: int, what: str) -> DataError:
        label = f"molecule {number}" + (f" ({name})" if name else "")
        hint = f"the file is corrupt or truncated: download {path.name} again"
        return DataError(f"{path}: {label}, line {at + 1}: {what}", hint=hint)

    counts_at = start + 3
    if counts_at >= len(lines):
        raise fail(len(lines) - 1, "the file ends inside the record's header (truncated)")
    counts = lines[counts_at]
    try:
        n_atoms, n_bonds = int(counts[0:3]), int(counts[3:6])
    except ValueError:
        raise fail(counts_at, f"expected a V2000 counts line, found {counts.strip()[:40]!r}") from None
    if "V2000" not in counts:
        raise fail(counts_at, f"not a V2000 molfile counts line: {counts.strip()[:40]!r}")
    if n_atoms < 1:
        raise fail(counts_at, "the molecule has no atoms")
    if n_bonds < 0:
        raise fail(counts_at, f"negative bond count {n_bonds}")
    first_bond = counts_at + 1 + n_atoms
    if first_bond + n_bonds > len(lines):
        raise fail(len(lines) - 1, f"the file ends before the record's {n_atoms} atoms and {n_bonds} bonds (truncated)")
    symbols, positions = [], []
    for at in range(counts_at + 1, first_bond):
        row = lines[at]
        try:
            xyz = (float(row[0:10]), float(row[10:20]), float(row[20:30]))
        except ValueError:
            raise fail(at, f"expected an atom line (x, y, z, element), found {row.strip()[:40]!r}") from None
        symbol = row[31:34].strip()
        if not all(math.isfinite(v) for v in xyz) or not symbol:
            raise fail(at, f"expected an atom line with finite coordinates and an element, found {row.strip()[:40]!r}")
        symbols.append(symbol)
        positions.append(xyz)
    bonds, seen = [], set()
    for at in range(first_bond, first_bond + n_bonds):
        row = lines[at]
        try:
            i, j, kind = int(row[0:3]), int(row[3:6]), int(row[6:9])
        except ValueError:
            raise fail(at, f"expected a bond line (atom, atom, type), found {row.strip()[:40]!r}") from None
        if not (1 <= i <= n_atoms and 1 <= j <= n_atoms) or i == j:
            raise fail(at, f"bond {i}-{j} does not join two different atoms of 1..{n_atoms}")
        if kind not in BOND_TYPES:
            raise fail(at, f"bond type {kind} is not single, double, triple or aromatic (1-4)")
        pair = (min(i, j), max(i, j))
        if pair in seen:
            raise fail(at, f"atoms {i} and {j} are bonded twice")
        seen.add(pair)
        bonds.append((i - 1, j - 1, BOND_TYPES[kind]))
    at = first_bond + n_bonds
    while at < len(lines) and lines[at].rstrip() != END_OF_PROPERTIES:
        if lines[at].rstrip() == END_OF_RECORD:
            raise fail(at, f"the record closes without {END_OF_PROPERTIES!r}")
        at += 1
    while at < len(lines) and lines[at].rstrip() != END_OF_RECORD:
        at += 1
    if at >= len(lines):
        raise fail(len(lines) - 1, f"the file ends before the record's {END_OF_RECORD!r} (truncated)")
    return Molecule(name, symbols, positions, bonds), at + 1
