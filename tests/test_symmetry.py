"""Space groups, symmetry operations, projections and the symmetry-preserving refiner (hf_crystal.symmetry)."""

import numpy as np
import pytest
import torch
from factories import rocksalt
from pymatgen.core import Lattice, Structure

from hf_crystal.evaluation.symmetry import group_metrics, space_group_chi2, symmetry_metrics
from hf_crystal.refiner import CrystalFlowScheduler, CrystalRefinerPipeline, CSPNetModel, refine
from hf_crystal.symmetry import (
    SymmetryOperations,
    SymmetryProjector,
    crystal_system,
    project_structure,
    space_group,
    structurally_valid,
    symmetrize,
    symmetrize_structures,
    symmetry_operations,
)


def perovskite() -> Structure:
    return Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(3.9), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
    )


def wurtzite() -> Structure:
    return Structure.from_spacegroup(
        "P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
    )


def monoclinic() -> Structure:
    """C2/m with atoms on 4i and the general 8j position, primitive cell (6 atoms)."""
    conventional = Structure.from_spacegroup(
        "C2/m", Lattice.monoclinic(6.1, 4.2, 5.3, 104.0), ["Li", "O"], [[0.1, 0, 0.3], [0.2, 0.3, 0.75]]
    )
    return conventional.get_primitive_structure()


SYMMETRIC = {
    "rock salt": (rocksalt, 225),
    "perovskite": (perovskite, 221),
    "wurtzite": (wurtzite, 186),
    "monoclinic": (monoclinic, 12),
}


def perturbed(structure: Structure, seed: int = 0, coords: float = 0.01, lattice: float = 0.003) -> Structure:
    """Atoms moved by about `coords` Å in each direction, lattice vectors by about `lattice` Å."""
    rng = np.random.default_rng(seed)
    matrix = structure.lattice.matrix + rng.normal(0, lattice, (3, 3))
    cart = structure.cart_coords + rng.normal(0, coords, (len(structure), 3))
    return Structure(Lattice(matrix), structure.species, cart, coords_are_cartesian=True)


def torus_gap(a: np.ndarray, b: np.ndarray) -> float:
    d = a - b
    return float(np.abs(d - np.round(d)).max())


# --- space groups and metrics -------------------------------------------------------------------------------------


def test_space_group_known_answers():
    nacl = rocksalt()
    assert space_group(nacl, 0.1) == space_group(nacl, 0.01) == 225
    assert (
        crystal_system(225) == "cubic"
        and crystal_system(1) == "triclinic"
        and crystal_system(186) == "hexagonal"
    )
    distorted = nacl.copy()
    distorted.translate_sites([0], [0.02, 0, 0], frac_coords=False)  # one atom 0.02 Å off its site
    assert space_group(distorted, 0.1) == 225
    assert space_group(distorted, 0.01) != 225
    twin = Structure(nacl.lattice, ["Na", *nacl.species], [[0.005, 0, 0], *nacl.frac_coords])  # 0.03 Å apart
    assert space_group(twin, 0.1) is None  # undetermined: two Na closer than symprec


def test_chi2_and_rates_known_answers():
    groups = [225, 225, 1, 62]
    assert space_group_chi2(groups, groups) == 0.0
    # samples 1, 1, 2 against reference 1, 2 (group 62 is not in the reference, left out): 2 (1/6)^2 / (1/2)
    assert space_group_chi2([1, 1, 2, 62, None], [1, 2]) == pytest.approx(1 / 9)
    assert np.isnan(space_group_chi2([62], [1, 2]))
    out = group_metrics([1, 1, None, 225], [225, 221, 1, 194], 0.1)
    assert out["p1_rate_sp0.1"] == 0.5 and out["undetermined_rate_sp0.1"] == 0.25
    assert out["p1_or_undetermined_rate_sp0.1"] == 0.75 and out["tetragonal_or_higher_rate_sp0.1"] == 0.25
    low, high = out["p1_rate_ci95_sp0.1"]
    assert low < 0.5 < high and high - low > 0.5  # Wilson interval of 2 of 4
    assert out["crystal_systems_sp0.1"]["triclinic"] == pytest.approx(2 / 3)
    assert out["reference_crystal_systems_sp0.1"]["cubic"] == 0.5 and out["reference_p1_rate_sp0.1"] == 0.25


def test_symmetry_metrics_of_a_set_against_itself():
    sets = [rocksalt(), perovskite(), wurtzite()]
    metrics, groups, reference = symmetry_metrics(sets, sets)
    assert groups[0.1] == reference[0.1] == [225, 221, 186]
    assert metrics["sg_chi2_sp0.1"] == metrics["sg_chi2_sp0.01"] == 0.0
    assert metrics["p1_rate_sp0.1"] == 0.0 and metrics["n_space_groups_sp0.01"] == 3


# --- operations and projections -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SYMMETRIC))
def test_projection_restores_the_group_and_is_idempotent(name):
    build, number = SYMMETRIC[name]
    ideal = build()
    noisy = perturbed(ideal, seed=1)
    assert space_group(noisy, 1e-3) != number  # the perturbation breaks the group at a tight tolerance
    operations = symmetry_operations(noisy, 0.1)
    once = project_structure(noisy, operations)
    assert space_group(once, 1e-5) == number
    exact = symmetry_operations(once, 1e-5)
    reference = symmetry_operations(ideal, 1e-5)
    assert {r.tobytes() for r in exact.rotations} == {r.tobytes() for r in reference.rotations}
    twice = project_structure(once, operations)
    assert torus_gap(twice.frac_coords, once.frac_coords) < 1e-6
    assert np.allclose(twice.lattice.parameters, once.lattice.parameters, atol=1e-6)
    assert twice.species == noisy.species and len(twice) == len(noisy)


def test_atom_maps_are_species_keeping_permutations():
    ops = symmetry_operations(perovskite(), 0.01)
    species = np.array([site.specie.Z for site in perovskite()])
    assert len(ops.rotations) == 48 and ops.space_group == 221
    for row in ops.atom_map:
        assert sorted(row) == list(range(5)) and (species[row] == species).all()


def test_batched_projector_matches_one_at_a_time():
    noisy = [perturbed(build(), seed=k) for k, (build, _) in enumerate(SYMMETRIC.values())]
    operations = [symmetry_operations(s, 0.1) for s in noisy]
    projector = SymmetryProjector([*operations, None], [*map(len, noisy), 2])
    free = Structure(
        Lattice.from_parameters(4, 5, 6, 80, 95, 100), ["Li", "O"], [[0.1, 0.2, 0.3], [0.6, 0.4, 0.9]]
    )
    coords = torch.cat([torch.as_tensor(s.frac_coords % 1) for s in [*noisy, free]])
    projected = projector.project_coords(coords)
    start = 0
    for s, ops in zip(noisy, operations, strict=True):
        alone = project_structure(s, ops).frac_coords
        assert torus_gap(projected[start : start + len(s)].numpy(), alone) < 1e-9
        start += len(s)
    assert torus_gap(projected[start:].numpy(), free.frac_coords) < 1e-12  # no operations: unchanged


def test_identity_operations_change_nothing():
    nacl = rocksalt()
    same = project_structure(nacl, SymmetryOperations.identity(len(nacl)))
    assert torus_gap(same.frac_coords, nacl.frac_coords) < 1e-12


def test_symmetrize_ladder():
    assert symmetrize(perturbed(perovskite()), 0.1).case == "tolerance"
    nacl = rocksalt()
    # Two Na 0.05 Å apart: spglib finds no group at 0.1 (same species closer than symprec), one at 0.01.
    twin = Structure(nacl.lattice, ["Na", *nacl.species], [[0.5 + 0.05 / 5.64, 0.5, 0.0], *nacl.frac_coords])
    result = symmetrize(twin, 0.1)
    assert result.case == "tolerance/10" and len(result.structure) == len(twin)
    assert result.structure.get_distance(0, 2) == pytest.approx(0.05, abs=1e-6)
    # Two Na on one spot: no group at any tolerance, the structure is left as it is.
    on_top = Structure(nacl.lattice, ["Na", *nacl.species], [nacl.frac_coords[0], *nacl.frac_coords])
    result = symmetrize(on_top, 0.1)
    assert result.case == "plain" and result.operations is None and result.structure is on_top
    # A triclinic cell without inversion: the identity alone, the structure itself, no lower rung tried.
    lattice = Lattice.from_parameters(4.1, 5.3, 6.2, 81, 97, 104)
    p1 = Structure(lattice, ["Na", "Cl", "K"], [[0.0, 0.0, 0.0], [0.31, 0.17, 0.52], [0.63, 0.71, 0.09]])
    result = symmetrize(p1, 0.1)
    assert result.case == "tolerance" and result.operations.space_group == 1 and result.structure is p1


def test_structurally_valid_decides_as_the_evaluation():
    from hf_crystal.evaluation.validity import structure_validity

    nacl = rocksalt()
    cubic = Lattice.cubic(5.0)
    cases = {
        "rock salt": (nacl, True),
        "two Na 0.05 Å apart": (
            Structure(nacl.lattice, ["Na", *nacl.species], [[0.5 + 0.05 / 5.64, 0.5, 0], *nacl.frac_coords]),
            False,
        ),
        "a pair 0.1 Å apart across the cell's face": (
            Structure(cubic, ["Li", "O"], [[0.01, 0, 0], [0.99, 0, 0]]),
            False,
        ),
        "an atom 0.45 Å from its own image": (
            Structure(Lattice.tetragonal(5.0, 0.45), ["Li"], [[0, 0, 0]]),
            False,
        ),
        "a skewed cell, pair 0.6 Å apart": (
            Structure(Lattice.from_parameters(3, 3, 8, 90, 90, 150), ["Li", "O"], [[0, 0, 0], [0, 0, 0.075]]),
            True,
        ),
        "a cell 0.3 Å thick (checked by the evaluation's search)": (
            Structure(Lattice.from_parameters(4, 4, 0.3, 90, 90, 90), ["Li"], [[0, 0, 0]]),
            False,
        ),
    }
    for name, (structure, valid) in cases.items():
        assert structurally_valid(structure) == structure_validity(structure) == valid, name


def test_last_projection_restores_a_clamped_lattice():
    """Primitive rock salt has angles of 60°, at the edge of the refiner's angle interval (59.9°, 120.1°): a flow
    that leaves the interval is clamped and only nearly symmetric; the batch's last projection makes it exact."""
    primitive = rocksalt().get_primitive_structure()
    batch = symmetrize_structures([primitive], 0.1)
    clamped = Structure(
        Lattice.from_parameters(*primitive.lattice.abc, 60.4, 59.9, 59.9),
        primitive.species,
        primitive.frac_coords,
    )
    assert space_group(clamped, 1e-3) != 225
    assert space_group(batch.project([clamped])[0], 1e-5) == 225


# --- the symmetry-preserving refiner ------------------------------------------------------------------------------

TINY = dict(hidden_dim=16, edge_dim=8, num_layers=1, time_dim=8, num_freqs=4)


def tiny_refiner(**scheduler) -> CrystalRefinerPipeline:
    torch.manual_seed(0)
    pipe = CrystalRefinerPipeline(model=CSPNetModel(**TINY), scheduler=CrystalFlowScheduler(**scheduler))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_refiner_keeps_the_space_group():
    inputs = [build() for build, _ in SYMMETRIC.values()] + [rocksalt().get_primitive_structure()]
    numbers = [number for _, number in SYMMETRIC.values()] + [225]
    pipe = tiny_refiner(base_noise_std=0.05)
    out = pipe(inputs, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert out.symmetry_cases == ["tolerance"] * len(inputs)
    for before, after, number in zip(inputs, out.structures, numbers, strict=True):
        assert space_group(after, 0.01) == number
        assert after.composition == before.composition and len(after) == len(before)
    plain = pipe(
        inputs, num_inference_steps=4, generator=torch.Generator().manual_seed(0), symmetry_tolerance=None
    )
    assert plain.symmetry_cases is None
    assert [space_group(s, 0.01) for s in plain.structures] != numbers  # the flow alone breaks symmetry


def test_symmetric_refiner_is_permutation_and_translation_equivariant():
    pipe = tiny_refiner()
    structure = monoclinic()
    order = np.random.default_rng(0).permutation(len(structure))
    permuted = Structure(
        structure.lattice, [structure.species[i] for i in order], structure.frac_coords[order]
    )
    shift = np.array([0.13, 0.31, 0.57])
    moved = Structure(structure.lattice, structure.species, structure.frac_coords + shift)
    base, from_permuted, from_moved = refine([structure, permuted, moved], pipe, num_steps=3)
    assert torus_gap(from_permuted.frac_coords, base.frac_coords[order]) < 1e-4
    assert np.allclose(from_permuted.lattice.parameters, base.lattice.parameters, atol=1e-4)
    delta = from_moved.frac_coords - base.frac_coords
    assert torus_gap(delta, delta[:1]) < 1e-4  # one common translation
    assert np.allclose(from_moved.lattice.parameters, base.lattice.parameters, atol=1e-4)


def test_close_atoms_are_kept():
    nacl = rocksalt()
    twin = Structure(nacl.lattice, ["Na", *nacl.species], [[0.5 + 0.05 / 5.64, 0.5, 0.0], *nacl.frac_coords])
    assert symmetrize(twin, 0.1).case == "tolerance/10"
    out = tiny_refiner(base_noise_std=0.02)(
        [twin, rocksalt()], num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    )
    # Three steps of a tiny model leave the pair closer than 0.5 Å: the twin is refined again a rung lower
    # (tolerance/100), still invalid, then without projection; the valid rock salt is not retried.
    assert out.symmetry_cases == ["plain (retried)", "tolerance"]
    from hf_crystal.commands.refine import case_counts

    assert "tolerance: 1, " in case_counts(out.symmetry_cases)
    assert case_counts(out.symmetry_cases).endswith("plain (retried): 1")
    refined = out.structures[0]
    assert len(refined) == len(twin) and refined.composition == twin.composition
    assert np.isfinite(refined.frac_coords).all()
    assert space_group(out.structures[1], 0.01) == 225


def test_ladder_can_start_lower():
    noisy = perturbed(perovskite())
    assert symmetrize(noisy, 0.1, first="tolerance/10").case == "tolerance/10"
    assert symmetrize(noisy, 0.1, first="plain").case == "plain"
    batch = symmetrize_structures([noisy, noisy], 0.1, first=["tolerance", "tolerance/100"])
    assert batch.cases == ["tolerance", "tolerance/100"]
    # Atoms about 0.01 Å off their sites: Pm-3m at 0.1 Å, a lower group at 0.001 Å.
    assert batch.operations[0].space_group == 221 and batch.operations[1].space_group != 221
    with pytest.raises(ValueError, match="first"):
        symmetrize(noisy, 0.1, first="tolerance/1000")


def test_symmetry_tolerance_must_be_positive():
    with pytest.raises(ValueError, match="symmetry_tolerance"):
        tiny_refiner()([rocksalt()], symmetry_tolerance=0.0)


def test_refine_command_reports_symmetry_cases(tmp_path, capsys):
    from hf_crystal.commands import main
    from hf_crystal.structure_io import read_structures

    tiny_refiner(base_noise_std=0.05).save_pretrained(tmp_path / "refiner")
    source = tmp_path / "in.cif"
    source.write_text(perovskite().to(fmt="cif") + wurtzite().to(fmt="cif"))
    argv = ["refine", str(source), "--refiner", str(tmp_path / "refiner"), "--steps", "3"]
    assert main([*argv, "--out", str(tmp_path / "out.cif")]) == 0
    assert "symmetry (tolerance 0.1 Å): tolerance: 2, tolerance/10: 0" in capsys.readouterr().out
    _, refined, _ = read_structures(tmp_path / "out.cif")
    assert [space_group(s, 0.01) for s in refined] == [221, 186]
    assert (
        main([*argv, "--no-symmetry", "--symmetry-tolerance", "0.1", "--out", str(tmp_path / "x.cif")]) == 2
    )
    assert main([*argv, "--symmetry-tolerance", "0", "--out", str(tmp_path / "x.cif")]) == 2
    evaluate = ["evaluate", str(source), "--reference", str(source), "--out", str(tmp_path / "eval")]
    assert main([*evaluate, "--no-relax", "--relax-symmetry"]) == 2
