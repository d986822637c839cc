"""`mtl prepare qm9`: QM9's raw files -> molecular graphs and 11 standardised regression targets.

The raw files are those PyTorch Geometric's `QM9` reads (torch_geometric/datasets/qm9.py, `QM9.process`):
`gdb9.sdf` (a V2000 molfile per molecule), `gdb9.sdf.csv` (a row per molecule: mol_id and 19 properties) and
`uncharacterized.txt` (the 3054 molecules that failed the geometry consistency check, skipped). As there:
  - node features x [atoms, 11]: one-hot H, C, N, O, F; atomic number; aromatic, sp, sp2, sp3; attached hydrogens.
    PyG reads the molfile with RDKit unsanitised, which leaves aromaticity and hybridisation unset: those four
    columns are 0 there, and here;
  - bonds: single, double, triple, aromatic (RDKit's order), stored per direction; 3-D positions in Angstrom;
  - targets in PyG's units (Hartree -> eV, kcal/mol -> eV) at the 11 indices of Nash-MTL and FAMO
    (experiments/quantum_chemistry/utils.py, `target_idx = [0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]`: the gap is
    left out; U0, U, H, G are the atomization energies), stored in the units their tables print: meV for
    `multiply_indx` (HOMO, LUMO, ZPVE, U0, U, H, G), so MAE in those units is what `abs_error` reads;
  - the split of Nash-MTL's trainer.py (`dataset.shuffle()`, test = the first 10000, val = the next 10000, train =
    the rest), here by a permutation seeded with `--seed` (theirs draws from torch's generator after the model's
    initialisation); fewer than 100000 molecules hold out a tenth each for val and test;
  - each target standardised by the training split's mean and (unbiased) std (`--scale-y True`, their default):
    meta.json keeps both, the loss compares standardised values, the metrics the values in their units.
Every molecule of the three files is validated before anything is written; a problem is one DataError naming the file
and the molecule. The arrays are written into a temporary directory renamed into place (`store.install_prepared`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli import __version__
from mtlcli.data import molfile
from mtlcli.data.registry import QM9_TARGETS, DatasetSpec, Prepared, PrepareRequest, one_source
from mtlcli.data.store import (
    GRAPH_ARRAYS,
    building,
    exclusive_prepare,
    existing_meta,
    install_prepared,
    read_meta,
    remove_stale_temps,
)
from mtlcli.errors import DataError
from mtlcli.io import sha256_file

NAME = "qm9"
SDF, CSV, UNCHARACTERIZED = "gdb9.sdf", "gdb9.sdf.csv", "uncharacterized.txt"
COLUMNS = ("mol_id", "A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "u0", "u298", "h298", "g298",
           "cv", "u0_atom", "u298_atom", "h298_atom", "g298_atom")  # fmt: skip
HAR2EV = 27.211386246  # torch_geometric/datasets/qm9.py
KCALMOL2EV = 0.04336414
ELEMENTS = {"H": (0, 1), "C": (1, 6), "N": (2, 7), "O": (3, 8), "F": (4, 9)}  # symbol -> (one-hot column, atomic number)
NODE_FEATURES = 11
EDGE_FEATURES = 5  # 4 bond types + the distance (Nash-MTL: Complete() then Distance(norm=False))
HELD_OUT = 10000  # molecules in val and in test (Nash-MTL's trainer.py)
HEADER_LINES, FOOTER_LINES = 9, 2  # uncharacterized.txt, as PyG slices it: `split('\n')[9:-2]`
_REDOWNLOAD = "download the raw files again (see `mtl prepare --help`)"


def _unit_factor(column: str) -> float:
    """From the CSV's unit to the one the tables print: PyG's conversion, then eV -> meV where Nash-MTL multiplies."""
    unit = next(t.unit for t in QM9_TARGETS if t.column == column)
    to_ev = HAR2EV if column in ("homo", "lumo", "gap", "zpve", "u0", "u298", "h298", "g298") else 1.0
    to_ev = KCALMOL2EV if column.endswith("_atom") else to_ev
    return to_ev * (1000.0 if unit == "meV" else 1.0)


@dataclass(frozen=True)
class Molecules:
    """The kept molecules: node features uint8 [V, 11], positions float32 [V, 3], atoms per molecule [N], bonds uint8
    [E, 3] (source, target, type; both directions, indices local to the molecule), bonds per molecule [N], targets
    float64 [N, 11] in the table's units, and each molecule's 1-based index in the raw files."""

    nodes: np.ndarray
    positions: np.ndarray
    atoms: np.ndarray
    bonds: np.ndarray
    bond_counts: np.ndarray
    targets: np.ndarray
    index: np.ndarray
    read: int


def read_targets(path: Path) -> tuple[list[str], np.ndarray]:
    """mol_id and the 19 property columns of gdb9.sdf.csv, float64 [N, 19] in the CSV's units; every value finite."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}", hint=_REDOWNLOAD) from None
    lines = text.splitlines()
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    if [h.lower() for h in header] != [c.lower() for c in COLUMNS]:
        raise DataError(f"{path}: the header is {','.join(header)[:120]!r}, expected {','.join(COLUMNS)}", hint=_REDOWNLOAD)
    ids, rows = [], []
    for number, line in enumerate(lines[1:], start=1):
        if not line.strip():
            if any(rest.strip() for rest in lines[number + 1 :]):
                raise DataError(f"{path}: line {number + 1} is empty, between molecules", hint=_REDOWNLOAD)
            break
        fields = line.split(",")
        label = f"{path}: molecule {number} ({fields[0].strip()}), line {number + 1}"
        if len(fields) != len(COLUMNS):
            raise DataError(f"{label}: {len(fields)} columns, expected {len(COLUMNS)} (truncated?)", hint=_REDOWNLOAD)
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise DataError(f"{label}: a property is not a number", hint=_REDOWNLOAD) from None
        bad = next((c for c, v in zip(COLUMNS[1:], values, strict=True) if not math.isfinite(v)), None)
        if bad is not None:
            raise DataError(f"{label}: {bad} is {values[COLUMNS.index(bad) - 1]} (every target must be a finite number)",
                            hint=_REDOWNLOAD)  # fmt: skip
        ids.append(fields[0].strip())
        rows.append(values)
    if not rows:
        raise DataError(f"{path} holds no molecule", hint=_REDOWNLOAD)
    return ids, np.asarray(rows, dtype=np.float64)


def read_uncharacterized(path: Path, count: int) -> set[int]:
    """The 1-based indices uncharacterized.txt lists (its lines after the 9 header lines, before the 2 last)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}", hint=_REDOWNLOAD) from None
    skip = set()
    for number, line in enumerate(lines[HEADER_LINES:-FOOTER_LINES], start=HEADER_LINES + 1):
        first = line.split()[0] if line.split() else ""
        if not first.isdigit() or not 1 <= int(first) <= count:
            raise DataError(f"{path}: line {number} does not start with a molecule index of 1..{count}: {line.strip()[:40]!r}",
                            hint=_REDOWNLOAD)  # fmt: skip
        skip.add(int(first))
    return skip


def node_features(molecule: molfile.Molecule, sdf: Path, number: int) -> np.ndarray:
    """x [atoms, 11] of PyG's QM9: one-hot element, atomic number, aromatic/sp/sp2/sp3 (0: unset without RDKit's
    sanitisation), and the number of hydrogens bonded to each atom."""
    x = np.zeros((len(molecule.symbols), NODE_FEATURES), dtype=np.uint8)
    for i, symbol in enumerate(molecule.symbols):
        if symbol not in ELEMENTS:
            raise DataError(f"{sdf}: molecule {number} ({molecule.name}): atom {i + 1} is {symbol!r}, expected one of "
                            f"{', '.join(ELEMENTS)}", hint=_REDOWNLOAD)  # fmt: skip
        column, atomic_number = ELEMENTS[symbol]
        x[i, column] = 1
        x[i, 5] = atomic_number
    for i, j, _ in molecule.bonds:
        x[j, 10] += molecule.symbols[i] == "H"
        x[i, 10] += molecule.symbols[j] == "H"
    return x


def read_molecules(source: Path) -> Molecules:
    """Read and validate every molecule of the three raw files; the characterized ones, in the files' order."""
    sdf, csv, uncharacterized = source / SDF, source / CSV, source / UNCHARACTERIZED
    ids, table = read_targets(csv)
    skip = read_uncharacterized(uncharacterized, len(ids))
    columns = [COLUMNS.index(t.column) - 1 for t in QM9_TARGETS]
    factors = np.array([_unit_factor(t.column) for t in QM9_TARGETS])
    nodes, positions, atoms, bonds, bond_counts, kept = [], [], [], [], [], []
    number = 0
    for number, molecule in enumerate(molfile.read_sdf(sdf), start=1):
        if number > len(ids):
            raise DataError(f"{sdf} holds more molecules than the {len(ids)} rows of {csv}", hint=_REDOWNLOAD)
        x = node_features(molecule, sdf, number)
        if number in skip:
            continue
        directed = [(i, j, t) for i, j, t in molecule.bonds] + [(j, i, t) for i, j, t in molecule.bonds]
        nodes.append(x)
        positions.append(np.asarray(molecule.positions, dtype=np.float32))
        atoms.append(len(x))
        bonds.append(np.asarray(directed, dtype=np.uint8).reshape(-1, 3))
        bond_counts.append(len(directed))
        kept.append(number)
    if number != len(ids):
        raise DataError(f"{sdf} holds {number} molecules, {csv} {len(ids)} rows: the counts disagree", hint=_REDOWNLOAD)
    if max((a for a in atoms), default=0) > 255:
        raise DataError(f"{sdf}: a molecule has more than 255 atoms; QM9's have at most 29", hint=_REDOWNLOAD)
    index = np.asarray(kept, dtype=np.int64)
    return Molecules(
        nodes=np.concatenate(nodes) if nodes else np.zeros((0, NODE_FEATURES), np.uint8),
        positions=np.concatenate(positions) if positions else np.zeros((0, 3), np.float32),
        atoms=np.asarray(atoms, dtype=np.int64),
        bonds=np.concatenate(bonds) if bonds else np.zeros((0, 3), np.uint8),
        bond_counts=np.asarray(bond_counts, dtype=np.int64),
        targets=table[index - 1][:, columns] * factors,
        index=index,
        read=number,
    )


def split_indices(n: int, seed: int) -> dict[str, np.ndarray]:
    """test = the first `held` of a seeded permutation, val = the next `held`, train = the rest (Nash-MTL's order);
    `held` = 10000, or a tenth (at least 1) of fewer than 100000 molecules."""
    held = HELD_OUT if n >= 10 * HELD_OUT else max(1, n // 10)
    if n - 2 * held < 2:
        raise DataError(f"QM9 needs at least 4 characterized molecules (2 to train on), got {n}", hint=_REDOWNLOAD)
    order = np.random.default_rng(seed).permutation(n)
    return {"train": order[2 * held :], "val": order[held : 2 * held], "test": order[:held]}


def standardization(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each target's mean and unbiased std over the training molecules (Nash-MTL: `y.mean(0)`, `y.std(0)`)."""
    mean, std = targets.mean(axis=0), targets.std(axis=0, ddof=1)
    flat = [t.name for t, s in zip(QM9_TARGETS, std, strict=True) if not s > 0]
    if flat:
        raise DataError(f"QM9 target(s) {', '.join(flat)} take a single value over the training split; nothing to learn",
                        hint=_REDOWNLOAD)  # fmt: skip
    return mean, std


def split_arrays(molecules: Molecules, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The graph arrays (store.GRAPH_ARRAYS) and the target arrays of molecules `rows`, in that order."""
    node_start = np.concatenate([[0], np.cumsum(molecules.atoms)])
    bond_start = np.concatenate([[0], np.cumsum(molecules.bond_counts)])
    node_rows = np.concatenate([np.arange(node_start[r], node_start[r + 1]) for r in rows])
    bond_rows = np.concatenate([np.arange(bond_start[r], bond_start[r + 1]) for r in rows])
    arrays = {
        "nodes": molecules.nodes[node_rows],
        "positions": molecules.positions[node_rows],
        "atoms": molecules.atoms[rows],
        "bonds": molecules.bonds[bond_rows],
        "bond_counts": molecules.bond_counts[rows],
    }
    assert tuple(arrays) == GRAPH_ARRAYS
    for column, target in enumerate(QM9_TARGETS):
        arrays[target.name] = molecules.targets[rows, column].astype(np.float32)
    return arrays


def prepare_qm9(spec: DatasetSpec, request: PrepareRequest, source: Path | None) -> Prepared:
    """Build `data_dir/qm9` from the raw files unless it is already there with this seed."""
    started = time.monotonic()
    if request.workers is not None:
        raise DataError(f"--workers applies to datasets decoded from images (celeba), not to {spec.name}")
    if request.size not in (None, spec.default_size):
        raise DataError(f"--size applies to image datasets; {spec.name} holds molecules", hint="leave --size out")
    data_dir, seed = request.data_dir, request.seed
    target = data_dir / NAME
    existing = existing_meta(target, size=spec.default_size, seed=seed, force=request.force)
    if existing is not None:
        return Prepared(path=target, built=False, meta=existing)
    if source is None:
        raise DataError(f"{spec.name} is read from its raw files: pass --source DIR", hint=spec.how_to_get)
    missing = [name for name in (SDF, CSV, UNCHARACTERIZED) if not (source / name).is_file()]
    if missing:
        raise DataError(f"--source {source}: {', '.join(missing)} not found there", hint=spec.how_to_get)
    molecules = read_molecules(source)  # everything validated before anything is written
    rows = split_indices(len(molecules.atoms), seed)
    mean, std = standardization(molecules.targets[rows["train"]])
    data_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_prepare(data_dir, NAME):
        remove_stale_temps(data_dir, NAME)
        with building(data_dir, NAME) as partial:
            for split, chosen in rows.items():
                for key, array in split_arrays(molecules, chosen).items():
                    # inside the temporary directory that install_prepared renames into place when complete
                    np.save(partial / f"{split}_{key}.npy", np.ascontiguousarray(array), allow_pickle=False)
            meta = _meta(spec, source, molecules, rows, mean, std, seed)
            meta["prepare_seconds"] = round(time.monotonic() - started, 3)
            install_prepared(partial, target, meta)
    return Prepared(path=target, built=True, meta=read_meta(target) or meta)


def _meta(spec: DatasetSpec, source: Path, molecules: Molecules, rows: dict[str, np.ndarray], mean: np.ndarray,
          std: np.ndarray, seed: int) -> dict[str, Any]:  # fmt: skip
    tasks = [
        {"name": t.name, "num_classes": 1, "target": t.name, "kind": "regression", "mean": float(m), "std": float(s),
         "unit": t.unit, "column": t.column, "description": t.description}
        for t, m, s in zip(QM9_TARGETS, mean, std, strict=True)
    ]  # fmt: skip
    return {
        "dataset": spec.name,
        "description": spec.description,
        "input": "graph",
        "tasks": tasks,
        "targets": {t.name: {"kind": "value"} for t in QM9_TARGETS},
        "seed": seed,
        "size": spec.default_size,
        "node_features": NODE_FEATURES,
        "edge_features": EDGE_FEATURES,
        "counts": {split: len(chosen) for split, chosen in rows.items()},
        "molecules": {"read": molecules.read, "kept": len(molecules.index)},
        "construction": {
            "split": "seeded permutation: test = first held, val = next held, train = the rest (Nash-MTL trainer.py)",
            "held_out": len(rows["test"]),
            "standardisation": "training split mean and unbiased std per target",
            "features": "PyG QM9.process (RDKit unsanitised: aromatic and hybridisation 0)",
            "edges": "complete graph without self-loops; bond one-hot (4) and distance, built per batch",
        },
        "sources": {name: {"sha256": sha256_file(source / name)} for name in (SDF, CSV, UNCHARACTERIZED)},
        "created_by": f"mtlcli {__version__}, numpy {np.__version__}",
    }


def prepare(spec: DatasetSpec, request: PrepareRequest) -> Prepared:
    """The registry's prepare of QM9 (`mtl prepare qm9 --source DIR`)."""
    return prepare_qm9(spec, request, one_source(spec, request))
