"""The refiner (hf_crystal.refiner): manifolds, batching, CSPNet symmetries, scheduler, training, pipeline, Hub."""

import math

import numpy as np
import pytest
import torch
from factories import structures
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

from hf_crystal.refiner import (
    CrystalBatch,
    CrystalFlowScheduler,
    CrystalRefinerPipeline,
    CSPNetModel,
    flow_matching_loss,
    interpolate,
    lattice_to_unconstrained,
    refine,
    remove_mean,
    sample_uniform_base,
    torus_displacement,
    unconstrained_to_angles,
    unconstrained_to_lattice,
    wrap,
)
from hf_crystal.refiner.manifold import ANGLE_MARGIN, ANGLE_MAX, ANGLE_MIN

TINY = dict(hidden_dim=32, edge_dim=16, num_layers=2, time_dim=16, num_freqs=4)
finite = st.floats(-1e3, 1e3, allow_nan=False)


def tiny_pipeline(seed: int = 0) -> CrystalRefinerPipeline:
    torch.manual_seed(seed)
    pipe = CrystalRefinerPipeline(model=CSPNetModel(**TINY), scheduler=CrystalFlowScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def circle_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torus_displacement(a, b).abs()


def small_crystals() -> list[Structure]:
    named = structures()
    return [named[k] for k in ["CsCl (cubic)", "ZnO (hexagonal)", "ZrO2 (monoclinic)", "NaCl (cubic, 8)"]]


# --- manifolds ---------------------------------------------------------------------------------------------------


def test_wrap_edge_cases_stay_in_unit_interval():
    x = torch.tensor([-1e-9, -1e-30, -0.0, 1.0, 1.0 - 2**-24, -1.0, 3.0, 2.5, -2.5], dtype=torch.float32)
    y = wrap(x)
    assert ((y >= 0) & (y < 1)).all(), y
    assert y[:4].tolist() == [0.0, 0.0, 0.0, 0.0]


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=8), st.integers(-100, 100))
def test_wrap_properties(values, k):
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor(values, dtype=dtype)
        y = wrap(x)
        assert ((y >= 0) & (y < 1)).all()
        tolerance = 1e-3 if dtype == torch.float32 else 1e-9  # x + k rounds in float32
        assert (circle_distance(wrap(x + k), y) <= tolerance).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=8))
def test_displacement_is_the_shortest_way_home(pairs):
    x0, x1 = torch.tensor(pairs, dtype=torch.float64).T
    d = torus_displacement(x0, x1)
    assert ((d >= -0.5) & (d < 0.5)).all()
    assert (circle_distance(wrap(x0 + d), x1) < 1e-9).all()
    d32 = torus_displacement(x0.float(), x1.float())
    assert ((d32 >= -0.5) & (d32 < 0.5)).all()


def test_remove_mean_per_crystal():
    index = torch.tensor([0, 0, 1, 1, 1, 2])
    v = torch.randn(6, 3)
    out = remove_mean(v, index, 3)
    for c in range(3):
        assert torch.allclose(out[index == c].mean(0), torch.zeros(3), atol=1e-6)
    assert torch.equal(out[5], torch.zeros(3))


lengths = st.floats(1e-2, 1e3)
angles = st.floats(ANGLE_MIN, ANGLE_MAX, exclude_min=True, exclude_max=True)


@settings(max_examples=300, deadline=None)
@given(st.tuples(lengths, lengths, lengths, angles, angles, angles))
def test_lattice_round_trip_over_the_domain(params):
    for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 2e-5)):
        x = torch.tensor(params, dtype=dtype)
        back = unconstrained_to_lattice(lattice_to_unconstrained(x))
        assert torch.allclose(back[:3], x[:3], rtol=tolerance, atol=0)
        # Angles are exact up to the documented clamping margin at the edges of the interval.
        expected = x[3:].clamp(ANGLE_MIN + ANGLE_MARGIN, ANGLE_MAX - ANGLE_MARGIN)
        assert torch.allclose(back[3:], expected, rtol=0, atol=tolerance * 100)
        assert (back[3:] - x[3:]).abs().max() <= ANGLE_MARGIN + tolerance * 100


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lattice_map_is_finite_everywhere(dtype):
    params = torch.tensor(
        [
            [4.0, 5.0, 6.0, 30.0, 150.0, 90.0],
            [1e-30, 1e30, 0.0, 0.0, 180.0, -45.0],
            [3.0, 3.0, 3.0, 1e9, -1e9, math.inf],
        ],
        dtype=dtype,
    )
    z = lattice_to_unconstrained(params)
    assert torch.isfinite(z).all()
    back = unconstrained_to_lattice(z)
    assert ((back[:, 3:] > ANGLE_MIN) & (back[:, 3:] < ANGLE_MAX)).all()
    assert torch.allclose(back[0, 3:], torch.tensor([ANGLE_MIN, ANGLE_MAX, 90.0], dtype=dtype), atol=2e-3)


# --- batching ----------------------------------------------------------------------------------------------------


def test_batch_round_trip_keeps_atoms_and_geometry():
    inputs = list(structures().values())
    batch = CrystalBatch.from_structures(inputs, dtype=torch.float64)
    assert batch.num_crystals == len(inputs) and batch.num_atoms.tolist() == [len(s) for s in inputs]
    assert ((batch.frac_coords >= 0) & (batch.frac_coords < 1)).all()
    for before, after in zip(inputs, batch.to_structures(), strict=True):
        assert [site.specie for site in after] == [site.specie for site in before]
        assert after.lattice.volume == pytest.approx(before.lattice.volume, rel=1e-6)
        assert before.matches(after)


def test_batch_rejects_disordered_structures():
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    with pytest.raises(ValueError, match="disordered"):
        CrystalBatch.from_structures([disordered])


# --- model -------------------------------------------------------------------------------------------------------


def random_inputs(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    n = len(index)
    return dict(
        atom_types=torch.randint(1, 90, (n,), generator=g),
        frac_coords=torch.rand((n, 3), generator=g, dtype=torch.float64),
        lattice=torch.randn((len(sizes), 6), generator=g, dtype=torch.float64),
        timestep=torch.rand(len(sizes), generator=g, dtype=torch.float64),
        crystal_index=index,
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CSPNetModel(**TINY).double().eval()


def test_model_output_shapes_and_mean_free_coordinates(model):
    inputs = random_inputs([3, 1, 5])
    out = model(**inputs)
    assert out.coord_velocity.shape == (9, 3) and out.lattice_velocity.shape == (3, 6)
    assert torch.allclose(out.coord_velocity[:3].sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.equal(out.coord_velocity[3], torch.zeros(3, dtype=torch.float64))  # one atom: no motion
    coord, lattice = model(**inputs, return_dict=False)
    assert torch.equal(coord, out.coord_velocity) and torch.equal(lattice, out.lattice_velocity)


def test_model_is_permutation_equivariant(model):
    inputs = random_inputs([4, 6])
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    permuted = dict(inputs)
    for key in ("atom_types", "frac_coords", "crystal_index"):
        permuted[key] = inputs[key][perm]
    out, out_p = model(**inputs), model(**permuted)
    assert torch.allclose(out_p.coord_velocity, out.coord_velocity[perm], atol=1e-10)
    assert torch.allclose(out_p.lattice_velocity, out.lattice_velocity, atol=1e-10)


def test_model_is_invariant_to_a_common_translation(model):
    inputs = random_inputs([4, 6])
    shift = torch.tensor([[0.3, -0.7, 0.55], [0.9, 0.1, -0.25]], dtype=torch.float64)
    shifted = dict(inputs, frac_coords=wrap(inputs["frac_coords"] + shift[inputs["crystal_index"]]))
    out, out_s = model(**inputs), model(**shifted)
    assert torch.allclose(out_s.coord_velocity, out.coord_velocity, atol=1e-9)
    assert torch.allclose(out_s.lattice_velocity, out.lattice_velocity, atol=1e-9)


def test_crystals_in_one_batch_do_not_interact(model):
    both = random_inputs([4, 6])
    out = model(**both)
    for c, atoms in ((0, slice(0, 4)), (1, slice(4, 10))):
        alone = model(
            atom_types=both["atom_types"][atoms],
            frac_coords=both["frac_coords"][atoms],
            lattice=both["lattice"][c : c + 1],
            timestep=both["timestep"][c : c + 1],
            crystal_index=torch.zeros(atoms.stop - atoms.start, dtype=torch.long),
        )
        assert torch.allclose(alone.coord_velocity, out.coord_velocity[atoms], atol=1e-10)
        assert torch.allclose(alone.lattice_velocity, out.lattice_velocity[c : c + 1], atol=1e-10)


# --- scheduler and path ------------------------------------------------------------------------------------------


def pair(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x0 = (torch.rand((len(index), 3), generator=g), torch.randn((len(sizes), 6), generator=g))
    x1 = (torch.rand((len(index), 3), generator=g), torch.randn((len(sizes), 6), generator=g))
    return x0, x1, index


def integrate(scheduler, velocity, x0, steps):
    scheduler.set_timesteps(steps)
    state = x0
    for t in scheduler.timesteps:
        state = scheduler.step(velocity, t, state, return_dict=False)
        assert ((state[0] >= 0) & (state[0] < 1)).all()
    return state


@pytest.mark.parametrize("steps", [1, 3, 10, 100])
def test_scheduler_lands_on_the_target(steps):
    x0, x1, index = pair([3, 5, 1])
    target = interpolate(x0, x1, torch.zeros(3), index)
    raw = torus_displacement(x0[0], x1[0])
    scheduler = CrystalFlowScheduler()

    coords, lattice = integrate(scheduler, (raw, target.lattice_velocity), x0, steps)
    assert (circle_distance(coords, x1[0]) < 1e-5).all()
    assert torch.allclose(lattice, x1[1], atol=1e-5)

    # The mean-free target velocity lands on x1 up to a common translation of each crystal.
    coords, _ = integrate(scheduler, (target.coord_velocity, target.lattice_velocity), x0, steps)
    offset = remove_mean(torus_displacement(coords, x1[0]), index, 3)
    assert offset.abs().max() < 1e-5


def test_interpolate_endpoints_and_path():
    x0, x1, index = pair([2, 4])
    start = interpolate(x0, x1, torch.zeros(2), index)
    end = interpolate(x0, x1, torch.ones(2), index)
    assert torch.allclose(start.frac_coords, wrap(x0[0])) and torch.allclose(start.lattice, x0[1])
    assert (circle_distance(end.frac_coords, x1[0]) < 1e-6).all() and torch.allclose(end.lattice, x1[1])
    middle = interpolate(x0, x1, torch.tensor([0.25, 0.5]), index)
    d = torus_displacement(x0[0], x1[0])
    expected = wrap(x0[0] + torch.tensor([0.25, 0.5])[index, None] * d)
    assert (circle_distance(middle.frac_coords, expected) < 1e-6).all()
    assert torch.allclose(middle.coord_velocity, remove_mean(d, index, 2))


def test_scheduler_anti_annealing_and_contract(tmp_path):
    scheduler = CrystalFlowScheduler(anti_annealing_slope=4.0, anti_annealing_offset=0.25)
    scheduler.set_timesteps(2)
    x = (torch.full((1, 3), 0.1), torch.zeros(1, 6))
    v = (torch.full((1, 3), 0.1), torch.ones(1, 6))
    first = scheduler.step(v, scheduler.timesteps[0], x)  # t = 0: before the offset, plain Euler
    assert torch.allclose(first.frac_coords, torch.full((1, 3), 0.15))
    second = scheduler.step(v, scheduler.timesteps[1], (first.frac_coords, first.lattice))
    assert torch.allclose(second.frac_coords, torch.full((1, 3), 0.15 + 0.5 * 0.1 * (1 + 4.0 * 0.25)))
    assert torch.allclose(second.lattice, torch.ones(1, 6))
    with pytest.raises(ValueError, match="complete"):
        scheduler.step(v, 1.0, x)
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="next element"):
        scheduler.step(v, 0.5, x)

    scheduler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").exists()
    assert CrystalFlowScheduler.from_pretrained(tmp_path).config.anti_annealing_slope == 4.0


def test_uniform_base_sample():
    num_atoms = torch.tensor([2, 7, 1])
    coords, lattice, index = sample_uniform_base(
        num_atoms, math.log(5.0), 0.2, torch.Generator().manual_seed(0)
    )
    assert coords.shape == (10, 3) and lattice.shape == (3, 6) and index.tolist() == [0, 0] + [1] * 7 + [2]
    assert ((coords >= 0) & (coords < 1)).all()
    params = unconstrained_to_lattice(lattice)
    assert ((params[:, 3:] > ANGLE_MIN) & (params[:, 3:] < ANGLE_MAX)).all()
    assert ((params[:, :3] > 2) & (params[:, :3] < 12)).all()
    assert torch.allclose(unconstrained_to_angles(lattice[:, 3:]), params[:, 3:])


# --- training ----------------------------------------------------------------------------------------------------


def mean_free_distance(coords, target, index, n_crystals):
    """RMS torus distance after removing each crystal's common translation (the model cannot see it)."""
    return remove_mean(torus_displacement(coords, target), index, n_crystals).square().mean().sqrt().item()


def test_training_lowers_the_loss_and_refinement_moves_toward_targets():
    """FlowLLM-style pairs: x0 is a noisy copy of x1 (fixed pairs, two per crystal), atom i paired with atom i."""
    torch.manual_seed(0)
    data = CrystalBatch.from_structures(small_crystals() * 2)
    index, n = data.crystal_index, data.num_crystals
    g = torch.Generator().manual_seed(1)
    x0 = (
        wrap(data.frac_coords + 0.06 * torch.randn(data.frac_coords.shape, generator=g)),
        data.lattice + 0.1 * torch.randn(data.lattice.shape, generator=g),
    )
    x1 = (data.frac_coords, data.lattice)
    model = CSPNetModel(hidden_dim=64, edge_dim=32, num_layers=2, time_dim=16, num_freqs=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        t = torch.rand(n)
        target = interpolate(x0, x1, t, index)
        loss = flow_matching_loss(
            model(data.atom_types, target.frac_coords, target.lattice, t, index), target
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-30:]) < 0.2 * np.mean(losses[:30])

    pipe = CrystalRefinerPipeline(model=model.eval(), scheduler=CrystalFlowScheduler())
    with torch.no_grad():
        refined = pipe._integrate(data.replace(frac_coords=x0[0], lattice=x0[1]), 20)
    before = mean_free_distance(x0[0], x1[0], index, n)
    assert mean_free_distance(refined.frac_coords, x1[0], index, n) < 0.5 * before
    assert (refined.lattice - x1[1]).square().mean() < 0.5 * (x0[1] - x1[1]).square().mean()


# --- pipeline, saving, Hub ---------------------------------------------------------------------------------------


def assert_same_structures(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.species == y.species
        np.testing.assert_allclose(x.frac_coords, y.frac_coords, atol=1e-6)
        np.testing.assert_allclose(x.lattice.parameters, y.lattice.parameters, rtol=1e-6)


def test_pipeline_save_load_round_trip(tmp_path):
    pipe = tiny_pipeline()
    inputs = small_crystals()
    expected = pipe(inputs, num_inference_steps=5, batch_size=3).structures
    pipe.save_pretrained(tmp_path)
    loaded = CrystalRefinerPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.model, CSPNetModel) and isinstance(loaded.scheduler, CrystalFlowScheduler)
    assert loaded.model.config.hidden_dim == TINY["hidden_dim"]
    assert_same_structures(loaded(inputs, num_inference_steps=5).structures, expected)
    assert_same_structures(refine(inputs, tmp_path, num_steps=5), expected)
    assert pipe(inputs, num_inference_steps=5, return_dict=False)[0][0].species == inputs[0].species
    assert pipe([], num_inference_steps=5).structures == []


def test_push_to_hub_and_load_by_id(hub_server):
    pipe = tiny_pipeline(seed=3)
    inputs = small_crystals()
    expected = pipe(inputs, num_inference_steps=4).structures
    repo_id = hub_server.repo_id("refiner")
    pipe.push_to_hub(repo_id)
    loaded = CrystalRefinerPipeline.from_pretrained(repo_id)
    assert_same_structures(loaded(inputs, num_inference_steps=4).structures, expected)
    assert_same_structures(refine(inputs, repo_id, num_steps=4, revision="main"), expected)


def test_refine_never_changes_atom_types_or_counts():
    inputs = list(structures().values())
    # An LLM can write any angle: Niggli reduction and the clamped angle map keep this finite.
    inputs.append(
        Structure(
            Lattice.from_parameters(4.0, 5.0, 6.0, 40.0, 100.0, 130.0), ["Li", "O"], [[0] * 3, [0.5] * 3]
        )
    )
    refined = refine(inputs, tiny_pipeline(), num_steps=3, batch_size=4)
    for before, after in zip(inputs, refined, strict=True):
        assert [site.specie for site in after] == [site.specie for site in before]
        assert np.isfinite(after.lattice.matrix).all() and np.isfinite(after.frac_coords).all()
        assert ((after.frac_coords >= 0) & (after.frac_coords < 1)).all()
