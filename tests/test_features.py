"""Shower features: hand-computed values on tiny geometries, streaming, thresholds, the voxel spectrum."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from fastsim.dataset import open_showers
from fastsim.errors import DataError
from fastsim.geometry import CylindricalGeometry, Layer, default_geometry
from fastsim.validation.features import (
    DEFAULT_THRESHOLD_MEV,
    ShowerFeatures,
    compute_features,
    shower_features,
    voxel_energy_edges,
    voxel_energy_histogram,
)
from helpers.distortions import small_geometry
from training.simulate import simulate

# Two layers, 4 alpha sectors (centres -3pi/4, -pi/4, pi/4, 3pi/4), rings 0-2-4 mm (centres 1, 3 mm).
TINY = CylindricalGeometry((Layer((0.0, 2.0, 4.0), 4), Layer((0.0, 2.0, 4.0), 4)), layer_thickness_mm=3.4)
S = math.sqrt(0.5)


def tiny_shower(deposits: dict[tuple[int, int, int], float]) -> np.ndarray:
    """One shower on TINY from {(layer, alpha, ring): MeV}."""
    shower = np.zeros((1, 2, 4, 2))
    for index, energy in deposits.items():
        shower[(0, *index)] = energy
    return shower.reshape(1, -1)


def test_single_deposit_has_the_voxel_centre_and_zero_width():
    f = shower_features([100.0], tiny_shower({(0, 2, 1): 5.0}), TINY)
    assert f.total_energy[0] == pytest.approx(5.0)
    assert f.response[0] == pytest.approx(0.05)
    np.testing.assert_allclose(f.layer_energy[0], [5.0, 0.0])
    # alpha centre pi/4, ring centre 3 mm.
    assert f.centre_x[0, 0] == pytest.approx(3 * S)
    assert f.centre_y[0, 0] == pytest.approx(3 * S)
    assert f.centre_r[0, 0] == pytest.approx(3.0)
    assert f.width_x[0, 0] == f.width_y[0, 0] == f.width_r[0, 0] == pytest.approx(0.0, abs=1e-7)
    assert f.longitudinal_centre[0] == pytest.approx(1.7)
    assert f.longitudinal_width[0] == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(f.sparsity[0], [1 / 8, 0.0])
    assert f.max_voxel_energy[0] == pytest.approx(5.0)


def test_two_deposits_give_mean_and_standard_deviation():
    # Equal deposits at alpha pi/4 and 3pi/4, ring 1 mm: x = +-S, y = S.
    f = shower_features([10.0], tiny_shower({(0, 2, 0): 1.0, (0, 3, 0): 1.0}), TINY)
    assert f.centre_x[0, 0] == pytest.approx(0.0, abs=1e-12)
    assert f.centre_y[0, 0] == pytest.approx(S)
    assert f.width_x[0, 0] == pytest.approx(S)
    assert f.width_y[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert f.centre_r[0, 0] == pytest.approx(1.0)
    # Rings 1 and 3 mm with weights 1 and 3: mean 2.5, sd sqrt(3)/2.
    g = shower_features([10.0], tiny_shower({(1, 0, 0): 1.0, (1, 0, 1): 3.0}), TINY)
    assert g.centre_r[0, 1] == pytest.approx(2.5)
    assert g.width_r[0, 1] == pytest.approx(math.sqrt(3) / 2)


def test_longitudinal_centre_and_width():
    # 1 MeV in layer 0 (depth 1.7 mm), 3 MeV in layer 1 (5.1 mm): mean 4.25, sd 3.4 sqrt(3)/4.
    f = shower_features([10.0], tiny_shower({(0, 0, 0): 1.0, (1, 1, 1): 3.0}), TINY)
    assert f.longitudinal_centre[0] == pytest.approx(4.25)
    assert f.longitudinal_width[0] == pytest.approx(3.4 * math.sqrt(3) / 4)


def test_voxels_below_threshold_count_as_empty():
    below = DEFAULT_THRESHOLD_MEV / 2
    f = shower_features([10.0], tiny_shower({(0, 0, 0): 1.0, (0, 2, 1): below, (1, 1, 0): below}), TINY)
    assert f.total_energy[0] == pytest.approx(1.0)
    np.testing.assert_allclose(f.sparsity[0], [1 / 8, 0.0])
    assert f.centre_x[0, 0] == pytest.approx(math.cos(-3 * math.pi / 4))
    # With threshold 0 the small deposits count.
    g = shower_features([10.0], tiny_shower({(0, 0, 0): 1.0, (0, 2, 1): below}), TINY, threshold=0.0)
    assert g.total_energy[0] == pytest.approx(1.0 + below)
    np.testing.assert_allclose(g.sparsity[0], [2 / 8, 0.0])


def test_an_empty_layer_has_centre_and_width_zero():
    f = shower_features([10.0], tiny_shower({(0, 1, 1): 2.0}), TINY)
    assert f.centre_x[0, 1] == f.width_x[0, 1] == f.centre_r[0, 1] == 0.0


def test_default_geometry_alpha_bins_start_at_minus_pi():
    geometry = default_geometry()
    shower = np.zeros((1, geometry.n_voxels))
    shower[0, 0] = 10.0  # layer 0, alpha bin 0 (centre -pi + pi/16), ring 0 (centre 2.325 mm)
    f = shower_features([1000.0], shower, geometry)
    alpha = -math.pi + math.pi / 16
    assert f.centre_x[0, 0] == pytest.approx(2.325 * math.cos(alpha))
    assert f.centre_y[0, 0] == pytest.approx(2.325 * math.sin(alpha))
    assert f.centre_y[0, 0] < 0 and f.centre_x[0, 0] < 0


def test_layers_with_different_binnings():
    geometry = CylindricalGeometry((Layer((0.0, 10.0), 1), Layer((0.0, 2.0, 4.0), 4)))
    shower = np.zeros((1, geometry.n_voxels))
    shower[0, 0] = 4.0  # the single voxel of layer 0: alpha centre -pi + pi = 0, r 5 mm -> x = 5
    shower[0, 1 + 2 * 2 + 1] = 2.0  # layer 1, alpha pi/4, ring 3 mm
    f = shower_features([10.0], shower, geometry)
    np.testing.assert_allclose(f.layer_energy[0], [4.0, 2.0])
    assert f.centre_x[0, 0] == pytest.approx(5.0)
    assert f.centre_r[0, 1] == pytest.approx(3.0)
    np.testing.assert_allclose(f.sparsity[0], [1.0, 1 / 8])


def test_streaming_over_a_file_in_chunks_equals_the_in_memory_result(tmp_path):
    geometry = small_geometry()
    energies, showers = simulate(230, "1GeV:100GeV", seed=7, geometry=geometry)
    whole = shower_features(energies, showers, geometry)
    path = tmp_path / "showers.h5"
    with h5py.File(path, "w") as f:
        f["incident_energies"] = energies[:, None]
        f["showers"] = showers
    with open_showers(path, geometry=geometry) as source:
        streamed = compute_features(source, geometry, chunk_size=17)
    in_memory = compute_features((energies, showers), geometry, chunk_size=64, stop=100)
    for name in ("total_energy", "layer_energy", "centre_x", "width_y", "width_r", "longitudinal_width", "sparsity"):
        np.testing.assert_allclose(getattr(streamed, name), getattr(whole, name), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(getattr(in_memory, name), getattr(whole, name)[:100], rtol=1e-12, err_msg=name)
    assert streamed.n == 230 and in_memory.n == 100


def test_features_of_simulated_showers_are_physical():
    geometry = small_geometry()
    energies, showers = simulate(300, "1GeV:100GeV", seed=8, geometry=geometry)
    f = shower_features(energies, showers, geometry)
    assert np.all(f.response > 0) and np.all(f.response < 1.5)
    assert np.all(f.width_x >= 0) and np.all(f.width_r >= 0)
    assert np.all((f.sparsity >= 0) & (f.sparsity <= 1))
    # The showers are centred on the axis: the mean x and y centres are ~0 in the busiest layer.
    peak = int(np.argmax(f.layer_energy.mean(axis=0)))
    assert abs(f.centre_x[:, peak].mean()) < 0.3 and abs(f.centre_y[:, peak].mean()) < 0.3
    # Higher energies put their maximum deeper.
    low, high = energies < 5_000, energies > 50_000
    assert f.longitudinal_centre[high].mean() > f.longitudinal_centre[low].mean() + 2.0


def test_feature_matrix_columns_and_subsets():
    geometry = small_geometry(n_layers=3)
    energies, showers = simulate(20, "10GeV", seed=9, geometry=geometry)
    f = shower_features(energies, showers, geometry)
    matrix, names = f.matrix()
    assert matrix.shape == (20, 3 + 8 * 3) and len(names) == matrix.shape[1]
    assert names[:3] == ["e_ratio", "longitudinal_centre", "longitudinal_width"]
    np.testing.assert_allclose(matrix[:, 0], f.response)
    classifier, names_c = f.matrix(for_classifier=True)
    assert names_c[0] == "log10_incident_energy" and classifier.shape[1] == matrix.shape[1] + 1
    np.testing.assert_allclose(classifier[:, 0], 4.0)
    subset = f.take(slice(5, 8))
    assert isinstance(subset, ShowerFeatures) and subset.n == 3
    np.testing.assert_array_equal(subset.width_x, f.width_x[5:8])


def test_voxel_energy_histogram_counts_values_inside_the_edges_over_chunks():
    geometry = small_geometry()
    energies, showers = simulate(150, "1GeV:100GeV", seed=10, geometry=geometry)
    edges = voxel_energy_edges(showers.max())
    assert edges.size == 51 and edges[0] == pytest.approx(DEFAULT_THRESHOLD_MEV)
    values = showers.astype(np.float64).ravel()
    expected, _ = np.histogram(values[(values >= edges[0]) & (values <= edges[-1])], bins=edges)
    counts = voxel_energy_histogram((energies, showers), edges, chunk_size=13)
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == np.count_nonzero(values >= edges[0])


@pytest.mark.parametrize(
    ("energies", "showers", "match"),
    [
        ([10.0], np.zeros((1, 7)), r"showers: expected shape \(N, 16\)"),
        ([10.0, 20.0], np.zeros((1, 16)), "one energy per shower"),
        ([-1.0], np.zeros((1, 16)), "positive energies"),
    ],
)
def test_bad_inputs_are_clear_errors(energies, showers, match):
    with pytest.raises(DataError, match=match):
        shower_features(energies, showers, TINY)


def test_an_empty_source_is_a_clear_error():
    with pytest.raises(DataError, match="empty"):
        compute_features((np.zeros(0), np.zeros((0, 16))), TINY)
