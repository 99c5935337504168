"""CHGNet energies, forces and stresses for many crystals: one batched forward, one backward, no double graph.

CHGNet's own ``CHGNet.forward`` (chgnet 0.4) takes two ``torch.autograd.grad`` calls with
``create_graph=True`` (forces, then stress): it builds the graph of the gradients, which training needs
and inference never uses, and walks the energy graph twice. Here the same modules compute the same
energy, and one ``torch.autograd.grad`` call without ``create_graph`` returns dE/d(positions) and
dE/d(strain) together. The installed package is not modified; its modules and weights are used, and
three things are reimplemented around them:

* the featurisation (``BatchedGraph.from_graphs`` loops over the graphs in Python): here it is one set
  of tensor operations over the concatenated batch, with each structure's strained lattice gathered per
  atom and per bond;
* the graph construction (``CrystalGraphConverter``: pymatgen neighbour list, C graph, Python line
  graph): here the same pymatgen neighbour list (``find_points_in_spheres``, CHGNet's cutoffs and
  tolerance) and NumPy for the rest: a directed edge is paired with its reverse (``j -> i``, opposite
  image), undirected edges are numbered in the order CHGNet numbers them, and the line graph holds the
  same angles (every ordered pair of distinct short directed edges sharing a centre atom; CHGNet's
  ``<=``/``<`` cutoff tests are kept);
* the interaction blocks (``_factored_energy``, for the configuration of the pretrained CHGNet; other
  configurations go through ``CHGNet._compute`` with forces and stress switched off): the same
  arithmetic with fewer multiply-adds, see the comment above ``factored_supported``.

Sums come in another order, so results agree with CHGNet to float32 rounding, not bit for bit (tests:
energies 1e-5 eV/atom, forces 1e-4 eV/Å, stresses 1e-3 GPa). On one CPU thread, 64 rattled MP-20
crystals took a quarter of the CPU time of ``CHGNet.predict_graph(task="efs")``.

Units and conventions are CHGNet's: ``e`` in eV/atom for the intensive pretrained model, ``f`` = -dE/dx
in eV/Å, ``s`` = (1/V) dE/dε in GPa (``CHGNet.predict_graph``'s keys). Not computed: magnetic moments
(``m``: a separate head on the penultimate atom features, no influence on energy, forces or stress),
site energies and features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

# CHGNet's eV/Å^3 -> GPa factor (chgnet.model.model.CHGNet._compute).
EV_A3_TO_GPA = 160.21766208
# CHGNet's neighbour-list tolerance (CrystalGraphConverter.forward -> Structure.get_neighbor_list).
NEIGHBOR_TOL = 1e-8


@dataclass
class CrystalArrays:
    """One crystal's CHGNet graph as NumPy arrays (the content of a ``chgnet.graph.CrystalGraph``).

    ``atom_graph`` [E, 2] directed edges (centre, neighbour), ``image`` [E, 3] the neighbour's cell,
    ``directed2undirected`` [E], ``undirected2directed`` [U], ``bond_graph`` [A, 5] angles (centre atom,
    undirected and directed index of the first bond, of the second bond).
    """

    atomic_numbers: np.ndarray
    frac_coords: np.ndarray
    lattice: np.ndarray
    atom_graph: np.ndarray
    image: np.ndarray
    directed2undirected: np.ndarray
    undirected2directed: np.ndarray
    bond_graph: np.ndarray

    @property
    def n_atoms(self) -> int:
        return len(self.atomic_numbers)


def crystal_graph(
    numbers: Sequence[int],
    positions: np.ndarray,
    cell: np.ndarray,
    *,
    atom_graph_cutoff: float = 6.0,
    bond_graph_cutoff: float = 3.0,
) -> CrystalArrays:
    """CHGNet's graph of a periodic crystal (cartesian ``positions`` in Å, ``cell`` rows = lattice vectors).

    Raises ValueError for an atom without neighbour within ``atom_graph_cutoff`` (CHGNet's converter
    with ``on_isolated_atoms="error"``) or an incomplete neighbour list.
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    numbers = np.asarray(numbers, dtype=np.int64)
    cart = np.ascontiguousarray(positions, dtype=float)
    lattice = np.ascontiguousarray(cell, dtype=float)
    n = len(numbers)
    center, neighbor, image, distance = find_points_in_spheres(
        cart,
        cart,
        r=float(atom_graph_cutoff),
        pbc=np.ones(3, dtype=np.int64),
        lattice=lattice,
        tol=NEIGHBOR_TOL,
    )
    keep = ~((center == neighbor) & (distance <= NEIGHBOR_TOL))
    center, neighbor = center[keep].astype(np.int64), neighbor[keep].astype(np.int64)
    image, distance = np.round(image[keep]).astype(np.int64), distance[keep]
    isolated = n - len(np.unique(center))
    if isolated:
        raise ValueError(
            f"{isolated} isolated atom(s) with atom_graph_cutoff={atom_graph_cutoff}: "
            "CHGNet calculation would go wrong"
        )

    # Pair each directed edge (i, j, image) with its reverse (j, i, -image).
    n_edges = len(center)
    span = int(np.abs(image).max(initial=0)) + 1
    base = 2 * span + 1
    if float(n) ** 2 * float(base) ** 3 >= 2.0**62:
        raise ValueError("neighbour list too large to index")

    def key(a, b, img):
        shifted = img + span
        return ((a * n + b) * base + shifted[:, 0]) * base**2 + shifted[:, 1] * base + shifted[:, 2]

    forward = key(center, neighbor, image)
    backward = key(neighbor, center, -image)
    order = np.argsort(forward, kind="stable")
    pos = np.minimum(np.searchsorted(forward, backward, sorter=order), n_edges - 1)
    reverse = order[pos]
    if n_edges and not np.array_equal(forward[reverse], backward):
        raise ValueError("directed edges are not complete (an edge without its reverse)")

    # Undirected edges numbered by their first directed edge, as CHGNet's Graph.add_edge does.
    first = np.arange(n_edges) < reverse
    directed2undirected = np.empty(n_edges, dtype=np.int64)
    directed2undirected[first] = np.arange(int(first.sum()))
    directed2undirected[~first] = directed2undirected[reverse[~first]]
    undirected2directed = np.flatnonzero(first)

    # Angles: ordered pairs (a, b), a != b, of directed edges with the same centre. CHGNet takes a from
    # the undirected edges with length <= cutoff (the length of their first directed edge) and b among
    # the directed edges with length < cutoff.
    a_edges = np.flatnonzero(distance[undirected2directed][directed2undirected] <= bond_graph_cutoff)
    b_edges = np.flatnonzero(distance < bond_graph_cutoff)
    b_edges = b_edges[np.argsort(center[b_edges], kind="stable")]
    counts = np.bincount(center[b_edges], minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    per_a = counts[center[a_edges]]
    a_rep = np.repeat(a_edges, per_a)
    offsets = np.arange(len(a_rep)) - np.repeat(np.cumsum(per_a) - per_a, per_a)
    b_rep = b_edges[np.repeat(starts[center[a_edges]], per_a) + offsets]
    distinct = a_rep != b_rep
    a_rep, b_rep = a_rep[distinct], b_rep[distinct]
    bond_graph = np.stack(
        [center[a_rep], directed2undirected[a_rep], a_rep, directed2undirected[b_rep], b_rep], axis=1
    ).reshape(-1, 5)

    return CrystalArrays(
        atomic_numbers=numbers,
        frac_coords=cart @ np.linalg.inv(lattice),  # pymatgen's Lattice.get_fractional_coords
        lattice=lattice,
        atom_graph=np.stack([center, neighbor], axis=1).reshape(-1, 2),
        image=image,
        directed2undirected=directed2undirected,
        undirected2directed=undirected2directed,
        bond_graph=bond_graph,
    )


class FastCHGNet:
    """Batched CHGNet energies, forces and stresses with a single backward pass (see the module docstring).

    Args:
        model: a ``chgnet.model.CHGNet`` (its weights and modules are used as they are).
        factored: run the interaction blocks through ``_factored_energy`` (default: whenever the model's
            configuration is the one it reproduces, as the pretrained CHGNet's) rather than
            ``CHGNet._compute``.
        max_edges: directed edges per model pass (``predict`` splits larger batches between structures).
    """

    def __init__(self, model, *, factored: bool | None = None, max_edges: int = 12_000):
        self.model = model
        self.max_edges = int(max_edges)
        supported = factored_supported(model)
        if factored and not supported:
            raise ValueError("this CHGNet configuration has no factored interaction path")
        self.factored = supported if factored is None else factored
        converter = model.graph_converter
        self.atom_graph_cutoff = float(converter.atom_graph_cutoff)
        self.bond_graph_cutoff = float(converter.bond_graph_cutoff)

    def graph(self, numbers, positions, cell) -> CrystalArrays:
        """The graph of one crystal, with the model's cutoffs."""
        return crystal_graph(
            numbers,
            positions,
            cell,
            atom_graph_cutoff=self.atom_graph_cutoff,
            bond_graph_cutoff=self.bond_graph_cutoff,
        )

    def structure_graph(self, structure) -> CrystalArrays:
        """The graph of a pymatgen ``Structure``."""
        return self.graph(
            [site.specie.Z for site in structure], structure.cart_coords, structure.lattice.matrix
        )

    def predict_structures(self, structures) -> list[dict[str, np.ndarray]]:
        """``predict`` on pymatgen structures."""
        return self.predict([self.structure_graph(s) for s in structures])

    def predict(self, graphs: Sequence[CrystalArrays]) -> list[dict[str, np.ndarray]]:
        """Energy ``e`` (eV/atom if the model is intensive), forces ``f`` (eV/Å), stress ``s`` (GPa).

        The graphs go through the model in chunks of about ``max_edges`` directed edges (whole
        structures; the results do not depend on the chunking): on one CPU thread, 64 MP-20 crystals
        (35k edges) in one pass took 10% more time than in chunks of 8-16k edges, whose intermediate
        tensors stay in cache.
        """
        out: list[dict[str, np.ndarray]] = []
        start, edges = 0, 0
        for k, graph in enumerate(graphs):
            edges += len(graph.atom_graph)
            if edges >= self.max_edges or k == len(graphs) - 1:
                out.extend(self._predict_chunk(graphs[start : k + 1]))
                start, edges = k + 1, 0
        return out

    def _predict_chunk(self, graphs: Sequence[CrystalArrays]) -> list[dict[str, np.ndarray]]:
        with torch.enable_grad():
            energy, forces, stress, n_atoms = self._compute(graphs)
        energy = energy.numpy()
        forces = np.split(forces.numpy(), np.cumsum(n_atoms)[:-1])
        stress = stress.numpy()
        return [{"e": energy[k], "f": forces[k], "s": stress[k]} for k in range(len(graphs))]

    def _compute(self, graphs: Sequence[CrystalArrays]):
        from chgnet.graph.crystalgraph import TORCH_DTYPE
        from chgnet.model.model import BatchedGraph

        model = self.model
        model.eval()
        device = next(model.parameters()).device
        n_atoms = np.array([g.n_atoms for g in graphs])
        n_edges = np.array([len(g.atom_graph) for g in graphs])
        n_undirected = np.array([len(g.undirected2directed) for g in graphs])
        atom_offset = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
        edge_offset = np.concatenate([[0], np.cumsum(n_edges)[:-1]])
        und_offset = np.concatenate([[0], np.cumsum(n_undirected)[:-1]])
        batch = np.arange(len(graphs))

        def cat(arrays, dtype, offsets=None):
            if offsets is not None:
                arrays = [a + o for a, o in zip(arrays, offsets, strict=True)]
            return torch.from_numpy(np.concatenate(arrays).astype(dtype)).to(device)

        atomic_numbers = cat([g.atomic_numbers for g in graphs], np.int64)
        frac = cat([g.frac_coords for g in graphs], np.float32)
        lattice = torch.from_numpy(np.stack([g.lattice for g in graphs]).astype(np.float32)).to(device)
        atom_owners = torch.from_numpy(np.repeat(batch, n_atoms)).to(device)
        edge_owners = torch.from_numpy(np.repeat(batch, n_edges)).to(device)
        atom_graph = cat([g.atom_graph for g in graphs], np.int64, atom_offset)
        image = cat([g.image for g in graphs], np.float32)
        directed2undirected = cat([g.directed2undirected for g in graphs], np.int64, und_offset)
        undirected2directed = cat([g.undirected2directed for g in graphs], np.int64, edge_offset)
        angle_offsets = [
            np.array([a, u, e, u, e]) for a, u, e in zip(atom_offset, und_offset, edge_offset, strict=True)
        ]
        bond_graph = cat([g.bond_graph for g in graphs], np.int64, angle_offsets)

        # Positions and strain with gradients: forces = -dE/dx, stress = (1/V) dE/dε (as CHGNet).
        strain = torch.zeros((len(graphs), 3, 3), dtype=TORCH_DTYPE, device=device, requires_grad=True)
        strained = torch.bmm(lattice, torch.eye(3, dtype=TORCH_DTYPE, device=device) + strain)
        positions = torch.einsum("ni,nij->nj", frac, strained[atom_owners])
        neighbors = positions[atom_graph[:, 1]] + torch.einsum("ei,eij->ej", image, strained[edge_owners])
        bond_vectors = positions[atom_graph[:, 0]] - neighbors
        bond_lengths = torch.norm(bond_vectors, dim=1)
        bond_vectors = bond_vectors / bond_lengths[:, None]
        undirected_lengths = torch.index_select(bond_lengths, 0, undirected2directed)
        expansion = model.bond_basis_expansion
        bond_bases_ag = expansion.rbf_expansion_ag(undirected_lengths)
        if len(bond_graph):
            angle_bases = model.angle_basis_expansion(
                torch.index_select(bond_vectors, 0, bond_graph[:, 2]),
                torch.index_select(bond_vectors, 0, bond_graph[:, 4]),
            )
            batched_bond_graph = bond_graph[:, [0, 1, 3]]
        else:
            angle_bases = batched_bond_graph = torch.tensor([], device=device)
        with torch.no_grad():
            volumes = torch.linalg.det(lattice.double()).to(TORCH_DTYPE)

        if self.factored:
            energy = _factored_energy(
                model,
                atomic_numbers=atomic_numbers,
                atom_owners=atom_owners,
                n_graphs=len(graphs),
                bond_bases_ag=bond_bases_ag,
                undirected_lengths=undirected_lengths,
                angle_bases=angle_bases,
                atom_graph=atom_graph,
                bond_graph=batched_bond_graph,
                directed2undirected=directed2undirected,
            )
        else:
            graph = BatchedGraph(
                atomic_numbers=atomic_numbers,
                bond_bases_ag=bond_bases_ag,
                bond_bases_bg=expansion.rbf_expansion_bg(undirected_lengths),
                angle_bases=angle_bases,
                batched_atom_graph=atom_graph,
                batched_bond_graph=batched_bond_graph,
                atom_owners=atom_owners,
                directed2undirected=directed2undirected,
                atom_positions=[positions],
                strains=[strain],
                volumes=volumes,
            )
            energy = model._compute(graph)["e"]  # per atom if intensive, composition model not included
        counts = torch.from_numpy(n_atoms).to(device=device, dtype=energy.dtype)
        weights = counts if model.is_intensive else torch.ones_like(energy)
        grad_positions, grad_strain = torch.autograd.grad(energy, [positions, strain], grad_outputs=weights)
        forces = -grad_positions
        stress = grad_strain * (EV_A3_TO_GPA / volumes)[:, None, None]

        energy = energy.detach()
        if model.composition_model is not None:
            with torch.no_grad():
                shims = [
                    SimpleNamespace(
                        atomic_number=torch.from_numpy(g.atomic_numbers.astype(np.int32)).to(device)
                    )
                    for g in graphs
                ]
                energy = energy + model.composition_model(shims)
        return energy.cpu(), forces.detach().cpu(), stress.detach().cpu(), n_atoms


# --- The interaction blocks, factored --------------------------------------------------------------------
#
# CHGNet's convolutions (chgnet.model.layers) gather atom, bond and angle features onto every edge or
# angle, concatenate them and apply a gated MLP whose first layers are Linear: on the concatenation
# [x_1[i_1], ..., x_k[i_k]] a Linear is sum_k (x_k W_k^T)[i_k] + b. Projecting each feature table first
# (atoms and undirected bonds are 10-60x fewer than directed edges and angles) and gathering the
# projections does the same arithmetic with a fraction of the multiply-adds, forward and backward; the
# core and gate first layers share one matrix product. The last AngleUpdate is skipped: CHGNet computes
# it, but no later layer reads the angle features it returns. Everything else (embeddings, basis
# expansions, activations, layer norms, second layers, mlp_out, residuals, readout) is the model's own
# modules.


def factored_supported(model) -> bool:
    """Whether ``_factored_energy`` reproduces ``model._compute``'s energy (the pretrained CHGNet does)."""
    try:
        from chgnet.model.functions import GatedMLP
        from chgnet.model.layers import AngleUpdate, AtomConv, BondConv
    except ImportError:
        return False

    def gated(module) -> bool:
        return isinstance(module, GatedMLP) and all(
            _first_linear(mlp) is not None for mlp in (module.mlp_core, module.mlp_gate)
        )

    try:
        return (
            model.mlp_first
            and all(type(layer) is AtomConv and gated(layer.twoBody_atom) for layer in model.atom_conv_layers)
            and all(type(layer) is BondConv and gated(layer.twoBody_bond) for layer in model.bond_conv_layers)
            and all(type(layer) is AngleUpdate and gated(layer.twoBody_bond) for layer in model.angle_layers)
        )
    except (AttributeError, TypeError):
        return False


def _first_linear(mlp):
    """Index of the first Linear in a chgnet ``MLP`` (only Dropouts before it), else None."""
    for k, layer in enumerate(mlp.layers):
        if isinstance(layer, torch.nn.Linear):
            return k
        if not isinstance(layer, torch.nn.Dropout):
            return None
    return None


def _gated_mlp(module, parts):
    """``module(cat([x[index] for x, index in parts], dim=1))`` (a chgnet ``GatedMLP``), factored.

    ``parts``: (features, index or None[, pre]) in the order of the concatenation; a features tensor may
    come in several parts (it is projected once). With ``pre`` (a weight matrix), the part is
    ``features @ pre.T`` (a bias-free Linear folded into this projection).
    """
    core_layers, gate_layers = module.mlp_core.layers, module.mlp_gate.layers
    k_core, k_gate = _first_linear(module.mlp_core), _first_linear(module.mlp_gate)
    core0, gate0 = core_layers[k_core], gate_layers[k_gate]
    hidden = core0.out_features
    weight = torch.cat([core0.weight, gate0.weight])  # [2 hidden, input]
    bias = None
    if core0.bias is not None or gate0.bias is not None:
        bias = torch.cat(
            [
                core0.bias if core0.bias is not None else core0.weight.new_zeros(hidden),
                gate0.bias if gate0.bias is not None else gate0.weight.new_zeros(gate0.out_features),
            ]
        )
    # Column blocks of the weight per distinct features tensor; each tensor is projected once.
    blocks: dict[int, list] = {}
    col = 0
    for features, index, *pre in parts:
        pre = pre[0] if pre else None
        width = features.shape[1] if pre is None else pre.shape[0]
        blocks.setdefault(id(features), [features, []])[1].append((col, width, index, pre))
        col += width
    rows = weight.shape[0]

    def block(c, w, pre):
        return weight[:, c : c + w] if pre is None else weight[:, c : c + w] @ pre

    terms = []
    for features, uses in blocks.values():
        if len(uses) == 1 and uses[0][2] is None:  # the bias goes with an ungathered projection
            c, w, _, pre = uses[0]
            terms.insert(0, torch.nn.functional.linear(features, block(c, w, pre), bias))
            bias = None
            continue
        stacked = torch.cat([block(c, w, pre) for c, w, _, pre in uses])
        pieces = torch.nn.functional.linear(features, stacked).split(rows, dim=1)
        for piece, (_, _, index, _) in zip(pieces, uses, strict=True):
            terms.append(piece if index is None else torch.index_select(piece, 0, index))
    # Summed in place into a fresh tensor (no autograd node here saves its output).
    hidden_in = terms[0] + terms[1] if len(terms) > 1 else terms[0]
    for term in terms[2:]:
        hidden_in.add_(term)
    if bias is not None:
        hidden_in = hidden_in + bias
    core, gate = hidden_in.split([hidden, rows - hidden], dim=1)
    for layer in core_layers[k_core + 1 :]:
        core = layer(core)
    for layer in gate_layers[k_gate + 1 :]:
        gate = layer(gate)
    if module.norm is not None:
        core, gate = module.bn1(core), module.bn2(gate)
    return module.activation(core) * module.sigmoid(gate)


def _scatter_sum(values, index, n_rows: int):
    return values.new_zeros((n_rows, values.shape[1])).index_add_(0, index, values)


def _finish(layer, new, old, norm):
    """mlp_out, residual and normalisation, as at the end of chgnet's AtomConv/BondConv/AngleUpdate."""
    if getattr(layer, "use_mlp_out", False):
        new = layer.mlp_out(new)
    if layer.resnet:
        new = new + old
    if norm is not None:
        new = norm(new)
    return new


def _factored_energy(
    model,
    *,
    atomic_numbers,
    atom_owners,
    n_graphs: int,
    bond_bases_ag,
    undirected_lengths,
    angle_bases,
    atom_graph,
    bond_graph,
    directed2undirected,
):
    """``model._compute(graph)["e"]`` (forces and stress off) with the interaction blocks factored.

    The bond graph (BondConv, AngleUpdate) only reads and writes the bonds that are in an angle (those
    shorter than the bond-graph cutoff with a neighbouring short bond, a tenth of the atom-graph bonds
    in MP-20 crystals): CHGNet's BondConv adds ``mlp_out(0) = 0`` to every other bond. That holds when
    ``mlp_out`` has no bias and no bond norm follows (the pretrained CHGNet 0.3.0); otherwise every bond
    is updated, as in CHGNet.
    """
    atom_feas = model.atom_embedding(atomic_numbers - 1)
    bond_feas = model.bond_embedding(bond_bases_ag)
    bond_weights_ag = model.bond_weights_ag(bond_bases_ag)
    has_angles = len(angle_bases) != 0
    n_atoms = len(atom_feas)
    if has_angles:
        angle_feas = model.angle_embedding(angle_bases)
        # The first BondConv and AngleUpdate project the embedded angles: fold the (bias-free) embedding
        # into their projections (31 instead of 64 input columns on every angle).
        embedding = model.angle_embedding
        first_angles = (angle_feas, None)
        if isinstance(embedding, torch.nn.Linear) and embedding.bias is None:
            first_angles = (angle_bases, None, embedding.weight)
        angle_center = bond_graph[:, 0]
        if all(_only_updates_own_rows(layer) for layer in model.bond_conv_layers):
            in_angles, pair = torch.unique(bond_graph[:, 1:3], return_inverse=True)
            bond_i, bond_j = pair[:, 0], pair[:, 1]  # indices into in_angles
        else:
            in_angles = torch.arange(len(bond_feas), device=bond_feas.device)
            bond_i, bond_j = bond_graph[:, 1], bond_graph[:, 2]
        n_angle_bonds = len(in_angles)
        bond_weights_bg = model.bond_weights_bg(
            model.bond_basis_expansion.rbf_expansion_bg(torch.index_select(undirected_lengths, 0, in_angles))
        )
    center, neighbor = atom_graph[:, 0], atom_graph[:, 1]

    def atom_conv(layer, atom_feas, bond_feas):
        messages = _gated_mlp(
            layer.twoBody_atom, [(atom_feas, center), (bond_feas, directed2undirected), (atom_feas, neighbor)]
        )
        messages = messages * torch.index_select(bond_weights_ag, 0, directed2undirected)
        return _finish(layer, _scatter_sum(messages, center, n_atoms), atom_feas, layer.atom_norm)

    def angle_parts(atom_feas, angle_bond_feas, angles):
        return [(angle_bond_feas, bond_i), (angle_bond_feas, bond_j), angles, (atom_feas, angle_center)]

    n_conv = len(model.atom_conv_layers)
    for idx, (atom_layer, bond_layer, angle_layer) in enumerate(
        zip(model.atom_conv_layers[:-1], model.bond_conv_layers, model.angle_layers, strict=False)
    ):
        atom_feas = atom_conv(atom_layer, atom_feas, bond_feas)
        if has_angles and bond_layer is not None:
            angle_bond_feas = torch.index_select(bond_feas, 0, in_angles)
            angles = first_angles if idx == 0 else (angle_feas, None)
            update = _gated_mlp(bond_layer.twoBody_bond, angle_parts(atom_feas, angle_bond_feas, angles))
            update = update * torch.index_select(bond_weights_bg, 0, bond_i)
            update = update * torch.index_select(bond_weights_bg, 0, bond_j)
            angle_bond_feas = _finish(
                bond_layer, _scatter_sum(update, bond_i, n_angle_bonds), angle_bond_feas, bond_layer.bond_norm
            )
            bond_feas = torch.index_copy(bond_feas, 0, in_angles, angle_bond_feas)
            # The angle features after the last bond convolution are read by no later layer.
            if angle_layer is not None and idx < n_conv - 2:
                new_angle = _gated_mlp(
                    angle_layer.twoBody_bond, angle_parts(atom_feas, angle_bond_feas, angles)
                )
                angle_feas = _finish(angle_layer, new_angle, angle_feas, angle_layer.angle_norm)
    atom_feas = atom_conv(model.atom_conv_layers[-1], atom_feas, bond_feas)
    if model.readout_norm is not None:
        atom_feas = model.readout_norm(atom_feas)
    site_energies = model.mlp(atom_feas)
    energy = _scatter_sum(site_energies, atom_owners, n_graphs).view(-1)
    if model.is_intensive:
        energy = energy / torch.bincount(atom_owners, minlength=n_graphs)
    return energy


def _only_updates_own_rows(bond_layer) -> bool:
    """Whether a chgnet BondConv leaves the bonds it aggregates nothing into unchanged."""
    if bond_layer is None or bond_layer.bond_norm is not None:
        return False
    if not getattr(bond_layer, "use_mlp_out", False):
        return True
    return all(getattr(layer, "bias", None) is None for layer in bond_layer.mlp_out.layers)
