"""The message-passing network of Nash-MTL and FAMO on QM9, on PyTorch Geometric (the `graph` extra).

Nash-MTL (experiments/quantum_chemistry/models.py, `Net`, commit cce1840; FAMO's copy is the same), after PyG's
examples/qm9_nn_conv.py (Gilmer et al. 2017): x -> Linear(11, dim) + ReLU; 3 rounds of an edge network
NNConv(dim, dim, Linear(5, 128) - ReLU - Linear(128, dim * dim), aggr="mean") + ReLU, then a GRU(dim, dim) cell;
Set2Set(dim, processing_steps=3) per molecule; Linear(2 dim, dim) + ReLU: z [B, dim] (the paper's representation,
`return_representation=True`). Heads: Linear(dim, 1) per target. PyTorch's default initialisation.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mtlcli.errors import MtlError
from mtlcli.models.registry import MPNNOptions

EDGE_FEATURES = 5  # bond type one-hot (4) and the distance
EDGE_HIDDEN = 128


def _geometric() -> Any:
    """torch_geometric.nn, or one error naming the extra that installs it."""
    try:
        with warnings.catch_warnings():  # its import warns about torch.jit.script, which it uses
            warnings.simplefilter("ignore", FutureWarning)
            import torch_geometric.nn as geometric
    except ImportError:
        raise MtlError(
            "model.encoder mpnn needs PyTorch Geometric, which is not installed",
            hint="install the graph extra: pip install 'mtlcli[graph]'",
        ) from None
    return geometric


class MPNNEncoder(nn.Module):
    """Graph batch (`mtlcli.data.graphs.GraphBatch`) -> z [graphs, dim]."""

    def __init__(self, *, node_features: int, dim: int = 64, steps: int = 3, set2set_steps: int = 3) -> None:
        super().__init__()
        geometric = _geometric()
        self.lin0 = nn.Linear(node_features, dim)
        edge_net = nn.Sequential(nn.Linear(EDGE_FEATURES, EDGE_HIDDEN), nn.ReLU(), nn.Linear(EDGE_HIDDEN, dim * dim))
        self.conv = geometric.NNConv(dim, dim, edge_net, aggr="mean")
        self.gru = nn.GRU(dim, dim)
        self.set2set = geometric.Set2Set(dim, processing_steps=set2set_steps)
        self.lin1 = nn.Linear(2 * dim, dim)
        self.steps = steps
        self.out_features = dim

    @property
    def last_layer(self) -> nn.Module:
        return self.lin1  # Nash-MTL's `last_shared_parameters`

    def forward(self, graphs: Any) -> Tensor:
        out = F.relu(self.lin0(graphs.x))
        h = out.unsqueeze(0)
        for _ in range(self.steps):
            m = F.relu(self.conv(out, graphs.edge_index, graphs.edge_attr))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        pooled = self.set2set(out, graphs.batch, dim_size=graphs.num_graphs)
        return F.relu(self.lin1(pooled))


def build_encoder(shape: tuple[int, int, int], o: MPNNOptions) -> nn.Module:
    """The registry's `mpnn` encoder; `shape` is (node features, 1, 1) for a graph dataset."""
    return MPNNEncoder(node_features=shape[0], dim=o.dim, steps=o.steps, set2set_steps=o.set2set_steps)


def build_head(features: int, outputs: int, _shape: tuple[int, int, int], _o: MPNNOptions) -> nn.Module:
    """The registry's `mpnn` head: Linear(z, outputs), as Nash-MTL's `head_i`."""
    return nn.Linear(features, outputs)
