"""The refiner's vector field: a CSPNet-style message-passing network (DiffCSP's CSPNet as used by FlowMM).

Each crystal is a fully connected graph of its atoms (self edges included, so a one-atom crystal is fine);
crystals in one batch never interact. Edge features are Fourier features of the fractional differences
`F_j - F_i` with integer frequencies, so the network is invariant to a common fractional translation and to
wrapping by construction, and equivariant to permutations of the atoms.

Changes from DiffCSP/FlowMM, for CPU throughput: the Fourier features are embedded once per forward (not in every
layer), the first edge-MLP layer is split into per-node and per-crystal terms computed before gathering to the
edges, and messages have their own (smaller) width `edge_dim`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from hf_crystal.refiner.manifold import remove_mean

# Times in [0, 1] are scaled to [0, TIME_SCALE] before the sinusoidal embedding (the range diffusers' embedding
# of integer timesteps is made for).
TIME_SCALE = 1000.0
# Crystal-level context: the 6 unconstrained lattice parameters and the log of the number of atoms (FlowMM
# represents the number of atoms too: the lattice lengths scale with it).
CONTEXT_DIM = 7


@dataclass
class CSPNetOutput(BaseOutput):
    """Predicted velocities.

    Args:
        coord_velocity (`torch.Tensor` of shape `(N, 3)`):
            Velocity of the fractional coordinates (fractions of a cell per unit time), mean-free per crystal.
        lattice_velocity (`torch.Tensor` of shape `(B, 6)`):
            Velocity of the lattice parameters in the unconstrained space (log lengths, mapped angles).
    """

    coord_velocity: torch.Tensor
    lattice_velocity: torch.Tensor


class _Graph(NamedTuple):
    """Fully connected graphs inside each crystal; edges sorted by source atom, `degree` (N,) edges per atom."""

    src: torch.Tensor
    dst: torch.Tensor
    degree: torch.Tensor
    order: torch.Tensor  # atoms grouped by crystal (for pooling)
    counts: torch.Tensor  # atoms per crystal


def _build_graph(crystal_index: torch.Tensor, n_crystals: int) -> _Graph:
    """Every ordered pair (i, j) of atoms of the same crystal, vectorised (no loop over crystals)."""
    counts = torch.bincount(crystal_index, minlength=n_crystals)
    order = torch.argsort(crystal_index, stable=True)
    first_atom = torch.cumsum(counts, 0) - counts  # position in `order` of each crystal's first atom
    degree = counts[crystal_index]
    src = torch.repeat_interleave(torch.arange(len(crystal_index), device=crystal_index.device), degree)
    first_edge = torch.cumsum(degree, 0) - degree
    rank = torch.arange(len(src), device=src.device) - torch.repeat_interleave(first_edge, degree)
    dst = order[torch.repeat_interleave(first_atom[crystal_index], degree) + rank]
    return _Graph(src, dst, degree, order, counts)


class CSPLayer(nn.Module):
    """One message-passing layer: mean over neighbours of SiLU(source + target + crystal + edge terms), then a
    residual node MLP."""

    def __init__(self, hidden_dim: int, edge_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.node_to_edge = nn.Linear(hidden_dim, 2 * edge_dim)
        self.context_to_edge = nn.Linear(CONTEXT_DIM, edge_dim, bias=False)
        self.node_mlp = nn.Sequential(
            nn.Linear(hidden_dim + edge_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )

    def forward(
        self,
        hidden: torch.Tensor,
        context: torch.Tensor,
        edge_features: torch.Tensor,
        graph: _Graph,
        crystal_index: torch.Tensor,
    ) -> torch.Tensor:
        x = self.norm(hidden)
        source, target = self.node_to_edge(x).chunk(2, dim=-1)
        source = source + self.context_to_edge(context).index_select(0, crystal_index)
        messages = source.index_select(0, graph.src) + target.index_select(0, graph.dst)
        messages += edge_features
        aggregated = torch.segment_reduce(nn.functional.silu(messages), "mean", lengths=graph.degree)
        return hidden + self.node_mlp(torch.cat([x, aggregated], dim=-1))


class CSPNetModel(ModelMixin, ConfigMixin):
    """Vector field of the crystal flow: (atom types, fractional coordinates, lattice, time) -> velocities.

    Args:
        hidden_dim (`int`): Width of the atom features.
        edge_dim (`int`): Width of the edge messages (the cost per edge scales with it).
        num_layers (`int`): Message-passing layers.
        time_dim (`int`): Width of the sinusoidal time embedding.
        num_freqs (`int`): Fourier frequencies k = 1..num_freqs of the fractional differences.
        max_atomic_number (`int`): Largest atomic number of the atom-type embedding (118: every element an LLM
            can write, even those absent from the training data).

    FlowMM's size is hidden 512, 6 layers, time 256, 128 frequencies; the defaults are CPU-sized (see
    benchmarks/bench_refiner.py).
    """

    @register_to_config
    def __init__(
        self,
        hidden_dim: int = 128,
        edge_dim: int = 32,
        num_layers: int = 4,
        time_dim: int = 64,
        num_freqs: int = 16,
        max_atomic_number: int = 118,
    ):
        super().__init__()
        self.atom_embedding = nn.Embedding(max_atomic_number + 1, hidden_dim)
        self.time_embedding = nn.Sequential(nn.Linear(time_dim, hidden_dim), nn.SiLU())
        self.node_in = nn.Linear(2 * hidden_dim, hidden_dim)
        # sin(2 pi k x + phase) with phase 0 then pi/2: the sines and cosines of all frequencies in one op.
        frequencies = 2 * math.pi * torch.arange(1, num_freqs + 1, dtype=torch.float32).repeat(2)
        phases = torch.repeat_interleave(torch.tensor([0.0, math.pi / 2]), num_freqs)
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.register_buffer("phases", phases, persistent=False)
        self.edge_embedding = nn.Sequential(nn.Linear(6 * num_freqs, edge_dim), nn.SiLU())
        self.layers = nn.ModuleList([CSPLayer(hidden_dim, edge_dim) for _ in range(num_layers)])
        self.final_norm = nn.LayerNorm(hidden_dim)
        # No bias: a constant coordinate velocity would be a common translation, removed anyway (FlowMM).
        self.coord_out = nn.Linear(hidden_dim, 3, bias=False)
        self.lattice_out = nn.Sequential(
            nn.Linear(hidden_dim + CONTEXT_DIM, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 6)
        )

    def forward(
        self,
        atom_types: torch.Tensor,
        frac_coords: torch.Tensor,
        lattice: torch.Tensor,
        timestep: torch.Tensor | float,
        crystal_index: torch.Tensor,
        return_dict: bool = True,
    ) -> CSPNetOutput | tuple[torch.Tensor, torch.Tensor]:
        """Velocities at time `timestep`.

        Args:
            atom_types (`torch.LongTensor` of shape `(N,)`): Atomic numbers.
            frac_coords (`torch.Tensor` of shape `(N, 3)`): Fractional coordinates.
            lattice (`torch.Tensor` of shape `(B, 6)`): Unconstrained lattice parameters.
            timestep (`torch.Tensor` of shape `(B,)`, or a scalar): Flow time in [0, 1].
            crystal_index (`torch.LongTensor` of shape `(N,)`): Crystal of each atom, in [0, B); every crystal
                has at least one atom.
            return_dict (`bool`): Return a `CSPNetOutput` rather than a tuple.
        """
        n_crystals = lattice.shape[0]
        graph = _build_graph(crystal_index, n_crystals)
        context = torch.cat([lattice, graph.counts.clamp(min=1).to(lattice.dtype).log()[:, None]], dim=-1)

        time = torch.as_tensor(timestep, dtype=lattice.dtype, device=lattice.device).expand(n_crystals)
        time_features = get_timestep_embedding(
            time, self.config.time_dim, flip_sin_to_cos=True, downscale_freq_shift=0, scale=TIME_SCALE
        ).to(lattice.dtype)
        time_embedding = self.time_embedding(time_features).index_select(0, crystal_index)
        hidden = self.node_in(torch.cat([self.atom_embedding(atom_types), time_embedding], -1))

        edge_features = self.edge_embedding(self._fourier_features(frac_coords, graph))
        for layer in self.layers:
            hidden = layer(hidden, context, edge_features, graph, crystal_index)

        hidden = self.final_norm(hidden)
        coord_velocity = remove_mean(self.coord_out(hidden), crystal_index, n_crystals)
        pooled = torch.segment_reduce(hidden.index_select(0, graph.order), "mean", lengths=graph.counts)
        lattice_velocity = self.lattice_out(torch.cat([pooled, context], dim=-1))
        if not return_dict:
            return coord_velocity, lattice_velocity
        return CSPNetOutput(coord_velocity=coord_velocity, lattice_velocity=lattice_velocity)

    def _fourier_features(self, frac_coords: torch.Tensor, graph: _Graph) -> torch.Tensor:
        """sin and cos of 2 pi k (F_j - F_i), k = 1..num_freqs, per edge: (E, 6 num_freqs).

        Integer frequencies make the features periodic, so wrapping a coordinate does not change them.
        """
        diff = frac_coords.index_select(0, graph.dst) - frac_coords.index_select(0, graph.src)
        return torch.addcmul(self.phases, diff[:, :, None], self.frequencies).sin().flatten(1)
