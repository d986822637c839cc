"""A split of molecular graphs on the device: concatenated node and bond tensors with offsets, batched by tensor ops.

`GraphSplit.batch(index)` builds what PyTorch Geometric's `DataLoader` hands Nash-MTL's and FAMO's QM9 network after
their transform `Complete()` then `Distance(norm=False)` (experiments/quantum_chemistry/trainer.py, utils.py): the
molecules' nodes stacked, the complete graph of each molecule without self-loops (edges ordered by source then
target, as `Complete` orders them), each edge's features the one-hot bond type (zeros between atoms not bonded) and
the distance |pos[target] - pos[source]| in Angstrom, and the batch vector. Everything stays on the device; the
batch's sizes (nodes, edges, bonds) are read once per batch, since variable-size graphs need them to be allocated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from mtlcli.data.device import EpochPlan

BOND_TYPES = 4


def first_molecules(arrays: dict[str, Tensor], n: int) -> dict[str, Tensor]:
    """The graph arrays (store.GRAPH_ARRAYS) of a split's first `n` molecules."""
    atoms, bond_counts = arrays["atoms"][:n], arrays["bond_counts"][:n]
    nodes, bonds = int(atoms.sum()), int(bond_counts.sum())
    return {"nodes": arrays["nodes"][:nodes], "positions": arrays["positions"][:nodes], "atoms": atoms,
            "bonds": arrays["bonds"][:bonds], "bond_counts": bond_counts}  # fmt: skip


@dataclass
class GraphBatch:
    """A batch of graphs as PyG's `Batch`: x [V, F] float, edge_index [2, E], edge_attr [E, 5], batch [V] (the graph
    of each node) and the number of graphs; `len` is the number of graphs (the batch's rows)."""

    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    batch: Tensor
    num_graphs: int

    def __len__(self) -> int:
        return self.num_graphs

    def to(self, device: torch.device) -> GraphBatch:
        return GraphBatch(self.x.to(device), self.edge_index.to(device), self.edge_attr.to(device), self.batch.to(device),
                          self.num_graphs)  # fmt: skip


@dataclass
class GraphSplit:
    """A split ready for training: the store's graph arrays (store.GRAPH_ARRAYS) and target arrays [N] by name, on
    `device`, with each molecule's first node and first bond."""

    nodes: Tensor
    positions: Tensor
    atoms: Tensor
    bonds: Tensor
    bond_counts: Tensor
    targets: dict[str, Tensor]
    device: torch.device
    node_start: Tensor
    bond_start: Tensor

    @classmethod
    def create(cls, arrays: dict[str, Tensor], targets: dict[str, Tensor], device: torch.device) -> GraphSplit:
        moved = {key: array.to(device) for key, array in arrays.items()}
        atoms, bond_counts = moved["atoms"].long(), moved["bond_counts"].long()
        return cls(
            nodes=moved["nodes"],
            positions=moved["positions"].float(),
            atoms=atoms,
            bonds=moved["bonds"],
            bond_counts=bond_counts,
            targets={name: t.to(device) for name, t in targets.items()},
            device=device,
            node_start=torch.cumsum(atoms, 0) - atoms,
            bond_start=torch.cumsum(bond_counts, 0) - bond_counts,
        )

    def __len__(self) -> int:
        return int(self.atoms.shape[0])

    @contextlib.contextmanager
    def feed(self, plan: EpochPlan) -> Iterator[Iterator[tuple[GraphBatch, dict[str, Tensor]]]]:
        """The batches of `plan` (this rank's rows of each step), in order, as `DeviceSplit.feed` gives them
        (molecules live on the device: nothing to read ahead)."""
        yield (self.batch(index) for index in plan.indices())

    def batch(self, index: Tensor | slice) -> tuple[GraphBatch, dict[str, Tensor]]:
        """The molecules `index` (rows of the split) as one graph batch, and their targets by name."""
        if isinstance(index, slice):
            index = torch.arange(len(self), device=self.device)[index]
        index = index.to(self.device)
        atoms, bond_counts = self.atoms[index], self.bond_counts[index]
        sizes = torch.stack([atoms.sum(), (atoms * (atoms - 1)).sum(), bond_counts.sum()]).tolist()  # the one host read
        n_nodes, n_edges, n_bonds = (int(v) for v in sizes)
        graphs = len(index)
        arange = torch.arange(graphs, device=self.device)
        graph = arange.repeat_interleave(atoms, output_size=n_nodes)  # the batch vector
        first = torch.cumsum(atoms, 0) - atoms  # each molecule's first node in the batch
        local = torch.arange(n_nodes, device=self.device) - first[graph]
        node = self.node_start[index][graph] + local
        x = self.nodes[node].float()
        pos = self.positions[node]
        # the complete graph: node v sends to the other atoms of its molecule, in order
        degree = (atoms - 1)[graph]
        edge_first = torch.cumsum(degree, 0) - degree
        source = torch.arange(n_nodes, device=self.device).repeat_interleave(degree, output_size=n_edges)
        k = torch.arange(n_edges, device=self.device) - edge_first[source]
        target = first[graph[source]] + k + (k >= local[source]).long()
        edge_attr = torch.zeros(n_edges, BOND_TYPES + 1, device=self.device)
        # bond types on the edges that are bonds (each bond is stored in both directions)
        bond_graph = arange.repeat_interleave(bond_counts, output_size=n_bonds)
        bond_first = torch.cumsum(bond_counts, 0) - bond_counts
        bond = self.bond_start[index][bond_graph] + torch.arange(n_bonds, device=self.device) - bond_first[bond_graph]
        a, b, kind = self.bonds[bond].long().unbind(1)
        edge = edge_first[first[bond_graph] + a] + b - (b > a).long()
        edge_attr[edge, kind] = 1.0
        edge_attr[:, BOND_TYPES] = (pos[target] - pos[source]).norm(p=2, dim=-1)
        batch = GraphBatch(x, torch.stack([source, target]), edge_attr, graph, graphs)
        return batch, {name: array[index] for name, array in self.targets.items()}
