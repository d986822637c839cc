"""`mtl prepare qm9` from QM9's raw files (generated here in their exact formats): PyG's features, units and skips,
Nash-MTL's split and standardisation, every validation rule (one error naming the file and the molecule, nothing
written), interrupted prepares, and the device-side batches against PyG's `Complete` + `Distance` transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtlcli.data import qm9, registry
from mtlcli.data.graphs import GraphSplit
from mtlcli.data.registry import PrepareRequest
from mtlcli.data.store import load_prepared
from mtlcli.errors import DataError
from tests.qm9_fixture import HEADER, csv_row, molecules, molfile_block, needs_geometric, write_raw

SPEC = registry.get("qm9")
TARGETS = [t.name for t in registry.QM9_TARGETS]


def prepare(raw: Path, data_dir: Path, **options: object):
    return qm9.prepare(SPEC, PrepareRequest(data_dir=data_dir, sources=[str(raw)], **options))


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return write_raw(tmp_path / "raw")


def test_prepare_reads_pyg_features_units_and_skips(raw: Path, tmp_path: Path) -> None:
    mols = molecules()
    prepared = prepare(raw, tmp_path / "data")
    assert prepared.built
    data = load_prepared(tmp_path / "data", "qm9")
    meta = data.meta
    assert meta["molecules"] == {"read": 14, "kept": 13}  # molecule 3 is uncharacterized
    assert sum(meta["counts"].values()) == 13 and meta["counts"]["val"] == meta["counts"]["test"] == 1
    # every kept molecule is in exactly one split; find methane (gdb_1) by its mu
    everything = {split: data.targets[split]["mu"] for split in ("train", "val", "test")}
    mus = np.concatenate(list(everything.values()))
    assert sorted(np.round(mus, 5)) == sorted(round(m.properties[3], 5) for i, m in enumerate(mols) if i != 2)
    split, row = next((s, int(np.flatnonzero(np.isclose(a, mols[0].properties[3]))[0]))
                      for s, a in everything.items() if np.isclose(a, mols[0].properties[3]).any())  # fmt: skip
    graph = data.graphs[split]
    start = int(graph["atoms"][:row].sum())
    assert graph["atoms"][row] == 5
    # PyG's x: one-hot H, C, N, O, F; atomic number; aromatic, sp, sp2, sp3 (unset unsanitised); attached hydrogens
    assert graph["nodes"][start].tolist() == [0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 4]
    assert graph["nodes"][start + 1].tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(graph["positions"][start], mols[0].positions[0], atol=1e-6)
    bond_start = int(graph["bond_counts"][:row].sum())
    assert graph["bond_counts"][row] == 8  # 4 bonds, both directions
    assert {tuple(b) for b in graph["bonds"][bond_start : bond_start + 8].tolist()} == {
        *((0, j, 0) for j in (1, 2, 3, 4)), *((j, 0, 0) for j in (1, 2, 3, 4))}
    # units: Hartree -> meV for homo/zpve, kcal/mol -> meV for the atomization energies, mu as it is
    p = mols[0].properties
    got = {name: float(data.targets[split][name][row]) for name in TARGETS}
    expected = {"mu": p[3], "alpha": p[4], "homo": p[5] * qm9.HAR2EV * 1000, "lumo": p[6] * qm9.HAR2EV * 1000,
                "r2": p[8], "zpve": p[9] * qm9.HAR2EV * 1000, "u0": p[15] * qm9.KCALMOL2EV * 1000,
                "u": p[16] * qm9.KCALMOL2EV * 1000, "h": p[17] * qm9.KCALMOL2EV * 1000,
                "g": p[18] * qm9.KCALMOL2EV * 1000, "cv": p[14]}  # fmt: skip
    for name in TARGETS:
        assert got[name] == pytest.approx(expected[name], rel=1e-6), name
    # standardisation: the training split's mean and unbiased std, per task
    for task in meta["tasks"]:
        values = data.targets["train"][task["name"]].astype(np.float64)
        assert task["kind"] == "regression" and task["target"] == task["name"]
        assert task["mean"] == pytest.approx(values.mean(), rel=1e-5)
        assert task["std"] == pytest.approx(values.std(ddof=1), rel=1e-5)


def test_the_split_is_seeded(raw: Path, tmp_path: Path) -> None:
    prepare(raw, tmp_path / "a", seed=0)
    prepare(raw, tmp_path / "b", seed=0)
    prepare(raw, tmp_path / "c", seed=1)
    files = [load_prepared(tmp_path / d, "qm9").meta["files"] for d in "abc"]
    assert files[0] == files[1] and files[0] != files[2]
    assert qm9.split_indices(130831, 0)["test"].size == qm9.split_indices(130831, 0)["val"].size == 10000
    assert qm9.split_indices(130831, 0)["train"].size == 110831


def test_an_existing_preparation_is_reused_and_a_dead_one_is_cleaned(raw: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stale = data_dir / ".qm9.tmp-999999999-deadbeef"  # a prepare killed half-way: its pid is gone
    stale.mkdir()
    (stale / "train_nodes.npy").write_bytes(b"partial")
    assert prepare(raw, data_dir).built
    assert not stale.exists()
    again = prepare(raw, data_dir)
    assert not again.built and again.meta["files"] == load_prepared(data_dir, "qm9").meta["files"]
    with pytest.raises(DataError, match="--force"):
        prepare(raw, data_dir, seed=5)
    assert prepare(raw, data_dir, seed=5, force=True).built


def _rewrite(raw: Path, name: str, change) -> None:
    path = raw / name
    path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")


def _sdf_blocks(raw: Path) -> list[str]:
    return [block + "$$$$\n" for block in (raw / "gdb9.sdf").read_text().split("$$$$\n")[:-1]]


def _set_field(text: str, line: int, column: int, value: str) -> str:
    """The CSV `text` with field `column` of line `line` (0-based, the header is line 0) set to `value`."""
    lines = text.splitlines()
    fields = lines[line].split(",")
    fields[column] = value
    lines[line] = ",".join(fields)
    return "\n".join(lines) + "\n"


BAD_INPUTS = {
    "truncated sdf": ("gdb9.sdf", lambda t: t[: t.rindex("M  END") - 30], ["gdb9.sdf", "molecule 14 (gdb_14)", "truncated"]),
    "sdf without the last $$$$": ("gdb9.sdf", lambda t: t[: t.rindex("$$$$")], ["gdb9.sdf", "molecule 14", "$$$$"]),
    "corrupt atom line": ("gdb9.sdf", lambda t: t.replace("    0.", "    x.", 1),
                          ["gdb9.sdf", "molecule 1 (gdb_1)", "atom line"]),
    "no atoms": ("gdb9.sdf", lambda t: t.replace("  3  2  0  0", "  0  0  0  0", 1),
                 ["gdb9.sdf", "molecule 3 (gdb_3)", "no atoms"]),
    "bond out of range": ("gdb9.sdf", lambda t: t.replace("  1  5  1  0", "  1  9  1  0", 1),
                          ["gdb9.sdf", "molecule 1 (gdb_1)", "bond 1-9"]),
    "unknown bond type": ("gdb9.sdf", lambda t: t.replace("  1  2  3  0", "  1  2  7  0", 1),
                          ["gdb9.sdf", "molecule 4 (gdb_4)", "bond type 7"]),
    "unknown element": ("gdb9.sdf", lambda t: t.replace(" N   0", " Cl  0", 1), ["gdb9.sdf", "molecule 2 (gdb_2)", "'Cl'"]),
    "sdf with a molecule more": ("gdb9.sdf", lambda t: t + t[: t.index("$$$$") + 5], ["gdb9.sdf", "more molecules", "14 rows"]),
    "csv with a row more": ("gdb9.sdf.csv", lambda t: t + t.splitlines()[1].replace("gdb_1,", "gdb_15,") + "\n",
                            ["gdb9.sdf", "14 molecules", "15 rows", "disagree"]),
    "truncated csv": ("gdb9.sdf.csv", lambda t: t[: t.rstrip().rindex(",")],
                      ["gdb9.sdf.csv", "molecule 14 (gdb_14)", "19 columns"]),
    "nan in a target": ("gdb9.sdf.csv", lambda t: _set_field(t, 5, 4, "nan"),
                        ["gdb9.sdf.csv", "molecule 5 (gdb_5)", "mu is nan"]),
    "inf in a target": ("gdb9.sdf.csv", lambda t: _set_field(t, 7, 19, "inf"),
                        ["gdb9.sdf.csv", "molecule 7 (gdb_7)", "g298_atom is inf"]),
    "text in a target": ("gdb9.sdf.csv", lambda t: _set_field(t, 2, 6, "abc"),
                         ["gdb9.sdf.csv", "molecule 2 (gdb_2)", "not a number"]),
    "csv of another layout": ("gdb9.sdf.csv", lambda t: t.replace("mol_id,A,B,C", "id,A,B,C", 1), ["gdb9.sdf.csv", "header"]),
    "bad uncharacterized line": ("uncharacterized.txt", lambda t: t.replace("      3   C", "     99   C", 1),
                                 ["uncharacterized.txt", "line 10", "1..14"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_every_bad_input_is_one_error_naming_the_file_and_molecule(raw: Path, tmp_path: Path, case: str) -> None:
    name, change, needles = BAD_INPUTS[case]
    _rewrite(raw, name, change)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as info:
        prepare(raw, data_dir)
    message = info.value.message
    for needle in needles:
        assert needle in message, (needle, message)
    assert not data_dir.exists() or not [p for p in data_dir.iterdir() if not p.name.endswith(".lock")]  # nothing written


def test_a_missing_raw_file_and_no_source_are_clear_errors(raw: Path, tmp_path: Path) -> None:
    (raw / "uncharacterized.txt").unlink()
    with pytest.raises(DataError, match=r"uncharacterized.txt not found"):
        prepare(raw, tmp_path / "data")
    with pytest.raises(DataError, match="--source"):
        qm9.prepare(SPEC, PrepareRequest(data_dir=tmp_path / "data"))


def test_the_sdf_reader_takes_the_exact_record_layout(tmp_path: Path) -> None:
    mols = molecules(3)
    path = tmp_path / "gdb9.sdf"
    path.write_text("".join(molfile_block(m) for m in mols) + "\n\n", encoding="utf-8")  # trailing blank lines
    from mtlcli.data.molfile import read_sdf

    read = list(read_sdf(path))
    assert [m.name for m in read] == ["gdb_1", "gdb_2", "gdb_3"]
    assert read[0].bonds == [(0, 1, 0), (0, 2, 0), (0, 3, 0), (0, 4, 0)]
    assert read[0].positions == mols[0].positions
    assert HEADER.split(",") == list(qm9.COLUMNS) and csv_row(mols[0]).startswith("gdb_1,")


# ----------------------------------------------------------------------------- batches on the device
def _reference_batch(split: GraphSplit, rows: list[int]):
    """PyG's Batch of the molecules `rows` after Nash-MTL's transforms (Complete() then Distance(norm=False))."""
    from torch_geometric.data import Batch, Data
    from torch_geometric.transforms import Distance
    from torch_geometric.utils import remove_self_loops

    def complete(data: Data) -> Data:  # Nash-MTL's experiments/quantum_chemistry/utils.py `Complete`
        n = data.num_nodes
        row = torch.arange(n).view(-1, 1).repeat(1, n).view(-1)
        col = torch.arange(n).repeat(n)
        attr = data.edge_attr.new_zeros(n * n, data.edge_attr.size(1))
        attr[data.edge_index[0] * n + data.edge_index[1]] = data.edge_attr
        data.edge_index, data.edge_attr = remove_self_loops(torch.stack([row, col]), attr)
        return data

    graphs = []
    for r in rows:
        nodes = slice(int(split.node_start[r]), int(split.node_start[r] + split.atoms[r]))
        bonds = split.bonds[int(split.bond_start[r]) : int(split.bond_start[r] + split.bond_counts[r])].long()
        data = Data(x=split.nodes[nodes].float(), pos=split.positions[nodes], edge_index=bonds[:, :2].t().contiguous(),
                    edge_attr=torch.nn.functional.one_hot(bonds[:, 2], 4).float())  # fmt: skip
        graphs.append(Distance(norm=False)(complete(data)))
    return Batch.from_data_list(graphs)


@needs_geometric
def test_a_batch_is_pygs_complete_graph_with_distances(raw: Path, tmp_path: Path) -> None:
    prepare(raw, tmp_path / "data")
    data = load_prepared(tmp_path / "data", "qm9")
    split = GraphSplit.create({k: torch.from_numpy(np.array(a)) for k, a in data.graphs["train"].items()},
                              {k: torch.from_numpy(np.array(a)) for k, a in data.targets["train"].items()},
                              torch.device("cpu"))  # fmt: skip
    for rows in ([4, 0, 2], list(range(len(split))), [1]):
        batch, targets = split.batch(torch.tensor(rows))
        reference = _reference_batch(split, rows)
        assert torch.equal(batch.x, reference.x) and torch.equal(batch.batch, reference.batch)
        assert torch.equal(batch.edge_index, reference.edge_index)
        torch.testing.assert_close(batch.edge_attr, reference.edge_attr)
        assert len(batch) == len(rows)
        assert torch.equal(targets["mu"], split.targets["mu"][torch.tensor(rows)])
    sliced, _ = split.batch(slice(2, 5))
    assert torch.equal(sliced.edge_index, split.batch(torch.tensor([2, 3, 4]))[0].edge_index)


@needs_geometric
def test_synthetic_molecules_batch_like_prepared_ones() -> None:
    from mtlcli.data.synthetic import synthetic_dataset

    data = synthetic_dataset("qm9", seed=1, counts={"train": 6, "val": 2, "test": 2})
    assert data.is_graph and data.count("train") == 6 and set(data.targets["train"]) == set(TARGETS)
    split = GraphSplit.create({k: torch.from_numpy(a) for k, a in data.graphs["train"].items()},
                              {k: torch.from_numpy(a) for k, a in data.targets["train"].items()}, torch.device("cpu"))
    batch, _ = split.batch(torch.tensor([5, 1]))
    reference = _reference_batch(split, [5, 1])
    assert torch.equal(batch.edge_index, reference.edge_index)
    torch.testing.assert_close(batch.edge_attr, reference.edge_attr)
