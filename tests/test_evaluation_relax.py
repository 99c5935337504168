"""Batched CHGNet relaxation: agreement with CHGNet's StructOptimizer, failures reported, cache resume."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from threadpoolctl import threadpool_limits

chgnet = pytest.importorskip("chgnet")

from hf_crystal.evaluation.relax import BatchedRelaxer, RelaxationError  # noqa: E402

FMAX, STEPS = 0.1, 8


@pytest.fixture(scope="module")
def model():
    """CHGNet (on one torch thread, as every test: conftest.one_torch_thread)."""
    from chgnet.model import CHGNet

    return CHGNet.load(verbose=False, use_device="cpu")


def _rattled() -> list[Structure]:
    rng = np.random.default_rng(3)
    cells = [
        Structure(Lattice.cubic(5.5), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure(),
        Structure(Lattice.cubic(5.5), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
    ]
    return [
        Structure(
            s.lattice, s.species, s.cart_coords + rng.normal(0, 0.05, (len(s), 3)), coords_are_cartesian=True
        )
        for s in cells
    ]


def test_batched_energies_match_sequential_struct_optimizer(model):
    from chgnet.model import StructOptimizer

    structures = _rattled()
    batched = BatchedRelaxer(model, fmax=FMAX, max_steps=STEPS, batch_size=2).relax(
        structures, progress=False
    )
    optimizer = StructOptimizer(model, optimizer_class="FIRE", use_device="cpu")
    for s, b in zip(structures, batched, strict=True):
        with threadpool_limits(limits=1, user_api="blas"):
            seq = optimizer.relax(s, fmax=FMAX, steps=STEPS, verbose=False)
        assert b.error is None
        assert b.energy == pytest.approx(seq["trajectory"].energies[-1], abs=1e-4)
        assert b.steps == len(seq["trajectory"]) - 2  # initial state, one per step, final repeat
        assert b.structure.lattice.volume == pytest.approx(seq["final_structure"].volume, rel=1e-4)
        assert b.energy <= b.initial_energy + 1e-6
    assert batched[0].converged or batched[0].steps == STEPS


def test_failures_are_reported_not_raised(model):
    isolated = Structure(Lattice.cubic(12.0), ["Na"], [[0, 0, 0]])  # no neighbour within CHGNet's cutoff
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    collapsed = Structure(Lattice.cubic(1.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    good = _rattled()[0]
    results = BatchedRelaxer(model, fmax=FMAX, max_steps=3, batch_size=3).relax(
        [isolated, disordered, good, collapsed], progress=False
    )
    assert "graph" in results[0].error and results[0].structure is None and np.isnan(results[0].energy)
    assert "disordered" in results[1].error
    assert results[2].error is None and np.isfinite(results[2].energy)
    assert "too dense" in results[3].error


def test_cache_makes_a_rerun_resume(model, tmp_path):
    structures = _rattled()[:1]
    first = BatchedRelaxer(model, fmax=FMAX, max_steps=3, cache_dir=tmp_path).relax(
        structures, progress=False
    )
    assert len(list(tmp_path.rglob("*.json"))) == 1

    class Exploding(BatchedRelaxer):
        def _forward(self, graphs):
            raise AssertionError("a cached structure must not be recomputed")

    again = Exploding(model, fmax=FMAX, max_steps=3, cache_dir=tmp_path).relax(structures, progress=False)
    assert again[0].cached and again[0].energy == first[0].energy
    assert again[0].structure == first[0].structure
    # Other settings are another cache key: relaxed anew.
    BatchedRelaxer(model, fmax=0.2, max_steps=3, cache_dir=tmp_path).relax(structures, progress=False)
    assert len(list(tmp_path.rglob("*.json"))) == 2


def test_bad_settings_raise(model):
    with pytest.raises(RelaxationError, match="optimizer"):
        BatchedRelaxer(model, optimizer="BFGSLineSearch")
    with pytest.raises(RelaxationError):
        BatchedRelaxer(model, fmax=0)


def test_fast_frechet_filter_equals_ase():
    """Same positions, forces and FIRE trajectory as ASE's FrechetCellFilter (EMT copper, sheared cell)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from hf_crystal.evaluation.relax import FastFrechetCellFilter

    rng = np.random.default_rng(0)
    atoms = bulk("Cu", "fcc", a=3.7) * (2, 1, 1)
    atoms.set_cell(atoms.cell @ (np.eye(3) + 0.05 * rng.normal(size=(3, 3))), scale_atoms=True)
    atoms.rattle(0.05, seed=1)
    copy = atoms.copy()
    atoms.calc, copy.calc = EMT(), EMT()
    reference, fast = FrechetCellFilter(atoms), FastFrechetCellFilter(copy)
    ref_opt, fast_opt = FIRE(reference, logfile=None), FIRE(fast, logfile=None)
    with threadpool_limits(limits=1, user_api="blas"):  # 3x3 LAPACK calls: threads only cost time
        _compare(atoms, copy, reference, fast, ref_opt, fast_opt)


def _compare(atoms, copy, reference, fast, ref_opt, fast_opt):
    for _ in range(10):
        np.testing.assert_allclose(fast.get_positions(), reference.get_positions(), atol=1e-10)
        np.testing.assert_allclose(fast.get_forces(), reference.get_forces(), atol=1e-10)
        ref_opt.step()
        fast_opt.step()
    assert copy.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(fast.stress, reference.stress, atol=1e-12)


# --- chgnet_fast: one forward, one backward, the same numbers as CHGNet --------------------------------------


def _hand_made() -> list[Structure]:
    """Small crystals of different sizes: a one-atom cell (bonds to its own images), rock salt, a
    perovskite, a sheared and rattled silicon supercell, and a sparse cell without any angle."""
    rng = np.random.default_rng(7)
    si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]]) * (2, 1, 1)
    si = Structure(
        Lattice(si.lattice.matrix @ (np.eye(3) + 0.03 * rng.normal(size=(3, 3)))),
        si.species,
        si.frac_coords + rng.normal(0, 0.01, (len(si), 3)),
    )
    return [
        Structure(Lattice.cubic(2.9), ["Fe"], [[0, 0, 0]]),
        Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(
            Lattice.cubic(3.9),
            ["Sr", "Ti", "O", "O", "O"],
            [[0] * 3, [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        ),
        si,
        Structure(Lattice.cubic(5.0), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]]),  # bonds >= 4.3 Å
    ]


def _assert_same(ours: dict, reference: dict) -> None:
    assert float(ours["e"]) == pytest.approx(float(reference["e"]), abs=1e-5)  # eV/atom
    np.testing.assert_allclose(ours["f"], reference["f"], atol=1e-4)  # eV/Å
    np.testing.assert_allclose(ours["s"], reference["s"], atol=1e-3)  # GPa


@pytest.mark.parametrize("factored", [True, False])
def test_fast_chgnet_matches_chgnet(model, factored):
    """Energies, forces and stresses equal CHGNet's predict_structure, in one batch of crystals of
    different sizes and one at a time (no cross-talk between the structures of a batch)."""
    from hf_crystal.evaluation.chgnet_fast import FastCHGNet

    structures = _hand_made() + _rattled()
    fast = FastCHGNet(model, factored=factored)
    batch = fast.predict_structures(structures)
    for s, ours in zip(structures, batch, strict=True):
        _assert_same(ours, model.predict_structure(s, task="efs"))
        alone = fast.predict_structures([s])[0]
        assert float(alone["e"]) == pytest.approx(float(ours["e"]), abs=1e-6)
        np.testing.assert_allclose(alone["f"], ours["f"], atol=2e-5)
        np.testing.assert_allclose(alone["s"], ours["s"], atol=2e-4)
    assert fast.predict([]) == []


def test_fast_graph_is_chgnets_graph(model):
    """Same directed edges (centre, neighbour, image), undirected pairing and angles as CHGNet's converter."""
    from hf_crystal.evaluation.chgnet_fast import FastCHGNet

    fast = FastCHGNet(model)
    for s in _hand_made() + _rattled():
        ref, ours = model.graph_converter(s), fast.structure_graph(s)

        def edges(atom_graph, image):
            return [(int(a), int(b), *map(int, img)) for (a, b), img in zip(atom_graph, image, strict=True)]

        ref_edges = edges(ref.atom_graph.numpy().reshape(-1, 2), ref.neighbor_image.numpy())
        our_edges = edges(ours.atom_graph, ours.image)
        assert sorted(ref_edges) == sorted(our_edges)

        def pairs(edge_list, d2u):  # undirected edge -> its two directed edges, as edge tuples
            groups: dict[int, list] = {}
            for e, u in zip(edge_list, d2u, strict=True):
                groups.setdefault(int(u), []).append(e)
            return sorted(tuple(sorted(g)) for g in groups.values())

        assert pairs(ref_edges, ref.directed2undirected.numpy()) == pairs(our_edges, ours.directed2undirected)

        def angles(edge_list, bond_graph):  # (centre, first directed edge, second directed edge)
            return sorted((int(c), edge_list[int(i)], edge_list[int(j)]) for c, _, i, _, j in bond_graph)

        ref_bg = ref.bond_graph.numpy().reshape(-1, 5)
        assert angles(ref_edges, ref_bg) == angles(our_edges, ours.bond_graph)


def test_fast_graph_rejects_isolated_atoms(model):
    from hf_crystal.evaluation.chgnet_fast import FastCHGNet

    with pytest.raises(ValueError, match="isolated"):
        FastCHGNet(model).structure_graph(Structure(Lattice.cubic(12.0), ["Na"], [[0, 0, 0]]))


def test_relaxation_agrees_with_struct_optimizer_to_convergence(model):
    """A rattled, strained crystal relaxed to fmax 0.05: the same final energy as CHGNet's StructOptimizer
    within 1 meV/atom (the trajectories agree to float32 rounding)."""
    from chgnet.model import StructOptimizer

    structure = _hand_made()[3]
    result = BatchedRelaxer(model, fmax=0.05, max_steps=200).relax([structure], progress=False)[0]
    with threadpool_limits(limits=1, user_api="blas"):
        seq = StructOptimizer(model, optimizer_class="FIRE", use_device="cpu").relax(
            structure, fmax=0.05, steps=200, verbose=False
        )
    assert result.error is None and result.converged
    assert result.energy_per_atom == pytest.approx(seq["trajectory"].energies[-1] / len(structure), abs=1e-3)
    assert result.energy_drop_per_atom > 1e-3  # it did relax


def test_cache_key_carries_the_implementation(model):
    from hf_crystal.evaluation.relax import RELAX_IMPLEMENTATION, structure_key

    relaxer = BatchedRelaxer(model)
    assert relaxer.settings["implementation"] == RELAX_IMPLEMENTATION
    old = {k: v for k, v in relaxer.settings.items() if k != "implementation"}
    s = _rattled()[0]
    assert structure_key(s, relaxer.settings) != structure_key(s, old)
