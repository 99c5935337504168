"""Coverage, Wasserstein distances, uniqueness and novelty on tiny sets with known answers."""

import numpy as np
import pytest
from factories import rocksalt
from pymatgen.core import Composition, Lattice, Structure

from hf_crystal.evaluation.coverage import coverage, fingerprints, structure_fingerprint
from hf_crystal.evaluation.distributions import distribution_distances, wasserstein
from hf_crystal.evaluation.novelty import novel_flags, unique_flags


def _cscl():
    return Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _zno():
    return Structure.from_spacegroup(
        "P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
    )


def test_coverage_known_answer_on_fingerprint_arrays():
    # Reference A, B; samples near A (twice) and one far from everything.
    ref_s = np.array([[0.0, 0.0], [1.0, 1.0]])
    ref_c = np.array([[0.0], [2.0]])
    gen_s = np.array([[0.1, 0.0], [0.0, 0.1], [5.0, 5.0]])
    gen_c = np.array([[0.0], [0.0], [0.0]])
    out = coverage(gen_s, gen_c, ref_s, ref_c, struct_cutoff=0.4, comp_cutoff=10.0)
    assert out["cov_recall"] == pytest.approx(0.5)  # A recalled, B not (structure distance 1.35 > 0.4)
    assert out["cov_precision"] == pytest.approx(2 / 3)
    # A composition far away (after standardising on the reference, 0 -> -1, 2 -> +1; 50 -> +49) blocks a hit.
    far_c = np.array([[50.0], [0.0], [0.0]])
    assert coverage(gen_s, far_c, ref_s, ref_c)["cov_precision"] == pytest.approx(1 / 3)


def test_failed_fingerprints_count_in_the_precision_denominator():
    ref_s, ref_c = np.zeros((1, 2)), np.zeros((1, 1))
    gen_s = np.array([[0.0, 0.0], [np.nan, np.nan]])
    gen_c = np.array([[0.0], [np.nan]])
    assert coverage(gen_s, gen_c, ref_s, ref_c)["cov_precision"] == pytest.approx(0.5)
    assert coverage(gen_s, gen_c, ref_s, ref_c, n_generated=4)["cov_precision"] == pytest.approx(0.25)


def test_real_fingerprints_full_coverage_of_a_set_by_itself():
    structures = [rocksalt(), _cscl(), _zno()]
    s_fp, c_fp, ok = fingerprints(structures)
    assert ok.all() and s_fp.shape[0] == 3 and c_fp.shape[0] == 3
    out = coverage(s_fp, c_fp, s_fp, c_fp)
    assert out["cov_recall"] == 1.0 and out["cov_precision"] == 1.0
    # The fingerprint is a property of the crystal: a translated copy gives the same vector.
    moved = rocksalt()
    moved.translate_sites(range(len(moved)), [0.13, 0.2, 0.31])
    np.testing.assert_allclose(structure_fingerprint(moved), s_fp[0], atol=1e-8)
    # Rocksalt (octahedral) and CsCl (cubic) coordination differ by more than the 0.4 cutoff.
    assert np.linalg.norm(s_fp[0] - s_fp[1]) > 0.4


def test_wasserstein_known_answers():
    assert wasserstein(np.array([1, 2]), np.array([2, 3])) == pytest.approx(1.0)
    assert np.isnan(wasserstein(np.array([]), np.array([1.0])))
    nacl = rocksalt()
    expanded = nacl.copy()
    expanded.scale_lattice(nacl.volume * 2)  # half the density
    out = distribution_distances([expanded], [nacl])
    assert out["wdist_density"] == pytest.approx(nacl.density / 2)
    assert out["wdist_nary"] == 0.0
    assert (
        distribution_distances([Structure(Lattice.cubic(3), ["Cu"], [[0, 0, 0]])], [nacl])["wdist_nary"]
        == 1.0
    )


def test_uniqueness_with_duplicates_translations_and_supercells():
    nacl = rocksalt()
    moved = nacl.copy()
    moved.translate_sites(range(len(moved)), [0.25, 0.1, 0.0])
    primitive = nacl.get_primitive_structure()
    assert unique_flags([nacl, _cscl(), moved, primitive, nacl * (2, 1, 1), _zno()]) == [
        True,
        True,
        False,
        False,
        False,
        True,
    ]


def test_novelty_against_training_set():
    nacl = rocksalt()
    strained = nacl.copy()
    strained.apply_strain(0.05)  # within the matcher's length tolerance: not novel
    cscl_type_nacl = Structure(Lattice.cubic(3.4), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    train = [nacl.get_primitive_structure(), _zno()]
    assert novel_flags([nacl * (1, 2, 2), strained, cscl_type_nacl, _cscl()], train) == [
        False,
        False,
        True,
        True,
    ]
    assert novel_flags([nacl], []) == [True]


def test_single_nan_features_do_not_drop_a_structure():
    """Magpie has NaN for some elements' properties (He); CDVAE maps them to 0 instead of dropping."""
    helium_like = np.array([[0.0, np.nan]])
    ref_s, gen_s = np.zeros((1, 2)), np.zeros((1, 2))
    out = coverage(gen_s, helium_like, ref_s, helium_like)
    assert out["cov_recall"] == 1.0 and out["cov_precision"] == 1.0
    s_fp, c_fp, ok = fingerprints([Structure(Lattice.cubic(3.0), ["He"], [[0, 0, 0]])])
    assert ok.all() and np.isnan(c_fp).any()
    assert coverage(s_fp, c_fp, s_fp, c_fp)["cov_recall"] == 1.0


def test_constant_reference_features_are_not_blown_up():
    """A one-element reference set (all carbon) has zero-variance Magpie features: distances stay finite."""
    carbon = Structure(Lattice.cubic(3.57), ["C"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    ref = fingerprints([carbon, carbon.copy()])
    gen = fingerprints([rocksalt()])
    out = coverage(gen[0], gen[1], ref[0], ref[1])
    assert out["cov_recall"] == 0.0 and 0 < out["amcd_precision"] < 1e4


def test_cdvae_scaler_and_cutoffs_are_the_default():
    from hf_crystal.evaluation.coverage import COV_CUTOFFS, cdvae_scaler, composition_fingerprint
    from hf_crystal.evaluation.metrics import compute_metrics, wilson_interval

    means, stds = cdvae_scaler()
    assert means.shape == stds.shape == composition_fingerprint(Composition("NaCl")).shape == (132,)
    assert means[0] == pytest.approx(21.194441759304013) and stds[-1] == pytest.approx(85.980205895116)
    assert COV_CUTOFFS == {"mp20": (0.4, 10.0), "carbon": (0.2, 4.0), "perov": (0.2, 4.0)}
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cscl = Structure(
        Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )  # 8-fold: far in structure
    result = compute_metrics([nacl], [nacl, cscl], relax=False, progress=False).metrics
    assert result["coverage_settings"] == "cutoffs 0.4 / 10.0 (CDVAE, mp20); Magpie scaler: CDVAE MP-20"
    assert result["cov_precision"] == 1.0 and result["cov_recall"] == 0.5
    # Every rate carries its 95% Wilson interval, over its own denominator (1 sample, 2 reference structures).
    assert result["cov_recall_ci95"] == pytest.approx(list(wilson_interval(1, 2)))
    for key in ("struct_valid", "comp_valid", "valid", "unique_rate", "cov_precision"):
        assert result[f"{key}_ci95"] == pytest.approx(list(wilson_interval(1, 1))), key
    # The same composition distance, by hand, with CDVAE's scaler:
    d = np.linalg.norm(np.nan_to_num((composition_fingerprint(nacl) - composition_fingerprint(cscl)) / stds))
    assert result["amcd_recall"] == pytest.approx(d / 2)
    fitted = compute_metrics([nacl], [nacl, cscl], relax=False, coverage_scaler="reference", progress=False)
    assert "fitted on the reference" in fitted.metrics["coverage_settings"]
    carbon = compute_metrics([nacl], [nacl], relax=False, coverage_dataset="carbon", progress=False)
    assert carbon.metrics["coverage_settings"].startswith("cutoffs 0.2 / 4.0")
