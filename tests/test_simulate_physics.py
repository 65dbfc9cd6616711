"""The simulator beyond normal-incidence electrons: photons, inclined incidence, substructure, datasets 1 and 3.

Each test names the textbook figure it checks. Showers are few and low in energy;
the heavier ones are marked slow (they still run in ``make test``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fastsim.geometry import CylindricalGeometry, Layer, MaterialGeometry, load_detector
from training.simulate import PHOTON_CONVERSION_X0, SIW, _radial_shape, _spot_count, simulate

DS2 = load_detector("2")
X0_PER_LAYER = 3.4 / SIW.x0_mm


def _cog_x0(showers, geometry=DS2[0]):
    """Per-shower longitudinal centre of gravity (X0 from the front face) on a 45 x 0.806 X0 stack."""
    layers = geometry.reshape(showers).sum(axis=(2, 3), dtype=np.float64)
    return (layers * (np.arange(geometry.n_layers) + 0.5)).sum(axis=1) / layers.sum(axis=1) * X0_PER_LAYER


# ---------------------------------------------------------------------------- the 3D engine
def _zscore(a, b):
    return (a.mean(axis=0) - b.mean(axis=0)) / np.sqrt(a.var(axis=0) / len(a) + b.var(axis=0) / len(b))


@pytest.mark.parametrize("energy", ["2GeV", "20GeV"])
def test_3d_engine_is_the_original_simulator_at_normal_incidence(energy):
    # theta = 1e-9 rad runs the 3D spot engine (sub-steps, projection) instead of the per-layer original:
    # the same GFlash shower in distribution (response, longitudinal profile, ring profile, hit voxels)
    geometry, _ = DS2
    runs = [simulate(600, energy, seed=20, theta=theta) for theta in (0.0, 1e-9)]
    features = []
    for energies, showers in runs:
        cube = geometry.reshape(showers).astype(np.float64) / energies[:, None, None, None]
        features.append((cube.sum(axis=(1, 2, 3)), cube.sum(axis=(2, 3)), cube.sum(axis=(1, 2)),
                         (showers > 0).sum(axis=1).astype(np.float64)))
    (r0, l0, g0, h0), (r1, l1, g1, h1) = features
    assert abs(_zscore(r0, r1)) < 4.5
    used = l0.mean(axis=0) > 1e-3
    assert np.abs(_zscore(l0[:, used], l1[:, used])).max() < 4.5
    assert np.abs(_zscore(g0, g1)).max() < 4.5
    assert abs(_zscore(h0, h1)) < 4.5
    assert 0.9 < r1.std() / r0.std() < 1.1


# ---------------------------------------------------------------------------- photons
def test_photon_showers_start_nine_sevenths_x0_later():
    # PDG Review "Passage of particles through matter": a high-energy photon's pair-production
    # mean free path is 9/7 X0, so its shower is the electron's shifted by 9/7 = 1.286 X0 on average
    _, electrons = simulate(800, "10GeV", seed=21)
    _, photons = simulate(800, "10GeV", seed=21, particle="photon")
    shift = _cog_x0(photons).mean() - _cog_x0(electrons).mean()
    assert shift == pytest.approx(PHOTON_CONVERSION_X0, abs=0.2)  # measured 1.28 X0; standard error 0.07
    # the exponential conversion depth adds its variance (9/7)^2 to the centre of gravity's
    excess = _cog_x0(photons).var() - _cog_x0(electrons).var()
    assert excess == pytest.approx(PHOTON_CONVERSION_X0**2, rel=0.3)  # measured 1.46 (late conversions leak)


def test_photon_centre_of_gravity_grows_one_x0_per_e_fold():
    # Rossi / PDG: t_max = ln(E / E_c) + C_gamma, so the centre of gravity moves 1 X0 per e-fold of energy
    _, low = simulate(400, "2GeV", seed=22, particle="photon")
    _, high = simulate(100, "200GeV", seed=22, particle="photon")
    slope = (_cog_x0(high).mean() - _cog_x0(low).mean()) / math.log(100.0)
    assert 0.85 < slope < 1.1  # measured 0.97


def test_positrons_are_electrons():
    # above a few GeV e+ and e- showers are indistinguishable (annihilation in flight is negligible)
    e_minus = simulate(4, "5GeV", seed=3)
    e_plus = simulate(4, "5GeV", seed=3, particle=-11)
    assert np.array_equal(e_minus[1], e_plus[1])


# ---------------------------------------------------------------------------- inclined incidence
# a fine readout with a large radius, so widths are not set by the binning: 45 Si-W layers,
# 36 sectors, 40 log-spaced rings out to 2 m
FINE = CylindricalGeometry(
    tuple(Layer(tuple(np.concatenate([[0.0], np.geomspace(0.3, 2000.0, 40)])), 36) for _ in range(45)),
    layer_thickness_mm=3.4,
)


_QUARTILE_RNG = np.random.default_rng(0)  # shared by every call, in test order


def _quartiles_along_across(showers, geometry, rng=_QUARTILE_RNG, draws=8):
    """Energy-weighted quartiles of x (along phi = 0) and y (across) of the mean shower, all layers:
    each voxel's energy spread uniformly over its area by Monte Carlo."""
    mean = showers.astype(np.float64).mean(axis=0)
    xs, ys, ws = [], [], []
    for part, layer in zip(geometry.layer_slices(), geometry.layers, strict=False):
        energy = mean[part].reshape(layer.n_alpha, layer.n_radial)
        edges = np.asarray(layer.r_edges)
        for _ in range(draws):
            r = np.sqrt(edges[:-1] ** 2 + rng.random(energy.shape) * (edges[1:] ** 2 - edges[:-1] ** 2))
            a = -np.pi + (np.arange(layer.n_alpha)[:, None] + rng.random(energy.shape)) * (2 * np.pi / layer.n_alpha)
            xs.append((r * np.cos(a)).ravel())
            ys.append((r * np.sin(a)).ravel())
            ws.append(energy.ravel() / draws)
    weights = np.concatenate(ws)

    def quantiles(values):
        order = np.argsort(values)
        cdf = np.cumsum(weights[order]) / weights.sum()
        return np.interp([0.25, 0.5, 0.75], cdf, values[order])

    return quantiles(np.concatenate(xs)), quantiles(np.concatenate(ys))


@pytest.mark.slow
def test_inclined_showers_stretch_by_one_over_cos_theta_along_phi():
    # an inclined shower cut by a layer plane: its lateral profile is stretched by 1/cos(theta)
    # along the azimuth of incidence and unchanged across it (geometry of an oblique section)
    widths = {}
    for degrees in (0, 30, 60):
        _, showers = simulate(200, "20GeV", seed=23, geometry=FINE, theta=f"{degrees}deg")
        qx, qy = _quartiles_along_across(showers, FINE)
        widths[degrees] = (qx[2] - qx[0], qy[2] - qy[0], qx[1], qy[1])
    across_0 = widths[0][1]
    for degrees in (30, 60):
        along, across, median_x, median_y = widths[degrees]
        assert across == pytest.approx(across_0, rel=0.03)  # measured within 1 %
        ratio = along / across
        if degrees == 30:
            # measured 1.15 (1/cos 30 = 1.155)
            assert ratio == pytest.approx(1 / math.cos(math.radians(30)), rel=0.1)
        else:
            # measured 1.98 (1/cos 60 = 2): the development across the oblique cut changes it by ~1 %;
            # it shows in the per-layer centroids (next test)
            assert 1.95 < ratio < 2.2
        # the centroid stays on the track
        assert abs(median_x) < 0.03 * along and abs(median_y) < 0.03 * across


@pytest.mark.slow
def test_the_two_sides_along_phi_see_different_depths():
    # a layer crossed at 60 deg sees, on the side where the track is heading (+x at phi = 0),
    # the shower at a depth sin(60) cos(60) x / X0 later than on the axis: before the maximum that
    # side holds more energy, after it less. Per-layer centroids swing from +x to -x.
    geometry, material = load_detector("3")
    _, showers = simulate(300, "20GeV", seed=24, geometry=geometry, material=material, theta="60deg")
    x, y, _, _, _ = geometry.voxel_centres()
    cube = showers.astype(np.float64).reshape(300, 45, -1)
    layer_energy = cube.sum(axis=(0, 2))
    centre_x = (cube.sum(axis=0) * x.reshape(45, -1)).sum(axis=1) / np.maximum(layer_energy, 1e-9)
    centre_y = (cube.sum(axis=0) * y.reshape(45, -1)).sum(axis=1) / np.maximum(layer_energy, 1e-9)
    peak = int(layer_energy.argmax())  # layer 3: 7 X0 along the track at 1.6 X0 per layer
    # measured +4.9 mm (layer 0) to +0.7 mm (layer 4), then -2 mm (layer 8) to -11 mm (layer 13)
    assert centre_x[: peak + 1].min() > 0.3 and centre_x[peak + 5 : peak + 11].max() < -1.0
    # nothing across phi: measured |y| < 0.1 mm where |x| is 1-11 mm
    span = slice(0, peak + 11)
    assert np.abs(centre_y[span]).mean() < 0.05 * np.abs(centre_x[span]).mean()
    # the whole shower's centroid stays near the track
    total = cube.sum(axis=(0, 1))
    assert abs((total * x[:total.size]).sum() / total.sum()) < 0.3


def test_inclined_material_per_layer_grows_as_one_over_cos_theta():
    # at theta the track crosses 0.806 / cos(theta) X0 per layer: the maximum moves to layer / cos
    _, normal = simulate(300, "20GeV", seed=25, theta=1e-9)
    _, inclined = simulate(300, "20GeV", seed=25, theta="60deg")
    ratio = _cog_x0(normal).mean() / _cog_x0(inclined).mean()
    assert ratio == pytest.approx(1 / math.cos(math.radians(60)), rel=0.05)  # measured 2.01


def test_phi_turns_the_inclined_shower_in_alpha():
    # the stretch follows the azimuth of incidence: at phi = 90 deg the shower is long along y
    geometry, _ = DS2
    x, y, _, _, _ = geometry.voxel_centres()
    _, showers = simulate(200, "10GeV", seed=26, theta="45deg", phi="90deg")
    mean = showers.astype(np.float64).mean(axis=0)
    width_x = np.sqrt((mean * x**2).sum() / mean.sum())
    width_y = np.sqrt((mean * y**2).sum() / mean.sum())
    assert width_y > 1.15 * width_x


def test_angle_ranges_are_recorded_per_shower():
    _energies, showers, theta, phi = simulate(300, "5GeV", seed=27, theta="0deg:60deg", phi="0:2pi", return_angles=True)
    assert theta.min() >= 0 and theta.max() <= math.radians(60) and abs(theta.mean() - math.radians(30)) < 0.06
    assert phi.min() >= 0 and phi.max() <= 2 * math.pi
    assert showers.shape == (300, 6480) and np.all(showers >= 0)


# ---------------------------------------------------------------------------- substructure
def _quiet(material: MaterialGeometry) -> MaterialGeometry:
    """The same stack without sampling fluctuations, constant term or threshold: spot statistics alone."""
    medium = dataclasses.replace(material.shower_medium, stochastic=0.0, constant=0.0, threshold_mev=0.0)
    layers = tuple(dataclasses.replace(layer, medium=medium) for layer in material.layers)
    return MaterialGeometry("quiet", "1", layers, medium)


@pytest.mark.slow
def test_substructure_groups_give_the_centroid_variance_the_law_predicts():
    # Tail spots come in groups of geometric size with mean m = E_c / E_spot sharing one position.
    # A group of m spots contributes m^2 (not m) spot variances to the centroid, so the centroid
    # variance grows by 1 + f_tail (<m^2>/<m> - 1) = 1 + f_tail (2 m - 2), where f_tail is the tail's
    # share of the spots' second moment: 0.35-0.93 over the depths tau = 0.5-3 (radial profile,
    # truncated at the 41.85 mm readout).
    geometry, material = DS2
    quiet = _quiet(material)
    x, _, _, _, _ = geometry.voxel_centres()
    edge = 41.85 / SIW.moliere_mm

    def second_moment(radius):
        return radius**2 * (np.log(1 + edge**2 / radius**2) - edge**2 / (edge**2 + radius**2))

    tau = np.linspace(0.5, 3.0, 26)
    for energy in (2e3, 20e3):
        p_core, r_core, r_tail = _radial_shape(tau, np.full_like(tau, math.log(energy / 1e3)), SIW)
        tail = (1 - p_core) * second_moment(r_tail)
        f_tail = tail / (tail + p_core * second_moment(r_core))
        m = SIW.critical_mev / (energy / _spot_count(np.array([energy]), SIW)[0])
        variance = []
        for substructure in (False, True):
            _, showers = simulate(1200, energy, seed=28, theta=1e-9, material=quiet, substructure=substructure)
            s = showers.astype(np.float64)
            variance.append(((s * x).sum(axis=1) / s.sum(axis=1)).var())
        ratio = variance[1] / variance[0]
        # measured 4.3 at 2 GeV (m = 3.4, band 2.7-5.5), 3.3 at 20 GeV (m = 2.6, band 2.1-3.9)
        assert 1 + f_tail.min() * (2 * m - 2) < ratio < 1 + f_tail.max() * (2 * m - 2), (energy, ratio, m)


def test_substructure_adds_correlated_fluctuations_and_keeps_the_mean_shower():
    geometry, _ = DS2
    x, _, _, _, _ = geometry.voxel_centres()
    columns = x.reshape(45, -1)
    results = {}
    for substructure in (False, True):
        energies, showers = simulate(1000, "2GeV", seed=29, theta=1e-9, substructure=substructure)
        cube = showers.astype(np.float64).reshape(1000, 45, -1)
        layer_energy = cube.sum(axis=2)
        layer_centre = (cube * columns).sum(axis=2) / np.maximum(layer_energy, 1e-9)
        centre = (cube * columns).sum(axis=(1, 2)) / cube.sum(axis=(1, 2))
        width = np.sqrt((cube * columns**2).sum(axis=(1, 2)) / cube.sum(axis=(1, 2)) - centre**2)
        # a group spans ~1 layer (0.5 X0): the centroids of neighbouring layers move together
        near = np.mean([np.corrcoef(layer_centre[:, k], layer_centre[:, k + 1])[0, 1] for k in range(2, 11)])
        results[substructure] = dict(
            response=showers.sum(axis=1) / energies, centre_sd=centre.std(), width_sd=width.std(), near=near,
            profile=layer_energy.mean(axis=0) / layer_energy.mean(axis=0).sum(),
        )
    plain, grouped = results[False], results[True]
    # on top of spot and sampling statistics: measured +15 % centroid and +7 % width spread
    assert grouped["centre_sd"] > 1.10 * plain["centre_sd"]
    assert grouped["width_sd"] > 1.05 * plain["width_sd"]
    # lateral and longitudinal fluctuations correlated: measured -0.03 without, +0.10 with
    assert abs(plain["near"]) < 0.04 and grouped["near"] > plain["near"] + 0.04
    # the mean shower is the same GFlash shower: response and longitudinal profile
    assert grouped["response"].mean() == pytest.approx(plain["response"].mean(), abs=0.01)
    assert np.abs(grouped["profile"] - plain["profile"])[:20].max() < 0.01


# ---------------------------------------------------------------------------- datasets 1 and 3
def _resolution_fit(energies_gev, responses):
    """(a, b) of sigma/E = a / sqrt(E) (+) b, least squares in 1/E."""
    rel_var = np.array([r.var() / r.mean() ** 2 for r in responses])
    design = np.vstack([1.0 / np.asarray(energies_gev), np.ones(len(energies_gev))]).T
    a2, b2 = np.linalg.lstsq(design, rel_var, rcond=None)[0]
    return math.sqrt(max(a2, 0.0)), math.sqrt(max(b2, 0.0))


@pytest.mark.slow
def test_dataset_1_photons_containment_and_resolution():
    # ATLAS-like Pb-LAr: 10 %/sqrt(E) sampling plus ~2.3 X0 of dead material in front, which
    # costs a few % of the energy at low E (PDG: energy lost before the calorimeter falls with E)
    geometry, material = load_detector("1-photons")
    assert geometry.n_voxels == 368
    energies_gev, responses = (5, 20, 50), []
    for e in energies_gev:
        energies, showers = simulate(300, f"{e}GeV", seed=30, geometry=geometry, material=material, particle="photon")
        responses.append(showers.sum(axis=1, dtype=np.float64) / energies)
        if e == 20:
            # PDG: ~90 % of an EM shower's energy lies within one Moliere radius (39.6 mm in Pb-LAr)
            middle = geometry.layers[2]
            rings = showers[:, geometry.layer_slices()[2]].reshape(-1, middle.n_alpha, middle.n_radial).sum(axis=(0, 1))
            inside = rings[: middle.r_edges.index(40.0)].sum() / rings.sum()
            assert 0.85 < inside < 0.95  # measured 0.886
    means = [r.mean() for r in responses]
    assert 0.95 < means[0] < means[1] < means[2] < 1.0  # measured 0.972, 0.986, 0.992
    a, _ = _resolution_fit(energies_gev, responses)
    assert 0.09 < a < 0.15  # measured 0.12


@pytest.mark.slow
def test_dataset_3_containment_and_resolution():
    # the dataset-2 Si-W stack read out 6x finer: the same containment; sampling term 16.5 %/sqrt(E)
    # plus the 15 keV threshold acting on smaller voxels
    geometry, material = load_detector("3")
    assert geometry.n_voxels == 40500
    energies_gev, responses = (5, 20, 50), []
    for e in energies_gev:
        energies, showers = simulate(250, f"{e}GeV", seed=31, geometry=geometry, material=material)
        responses.append(showers.sum(axis=1, dtype=np.float64) / energies)
    assert all(0.97 < r.mean() < 1.0 for r in responses)  # measured 0.988, 0.994, 0.990
    a, _ = _resolution_fit(energies_gev, responses)
    assert 0.15 < a < 0.21  # measured 0.17 (0.19 with another seed: 250 showers per point)


def test_dataset_1_pions_binning_takes_electrons_into_the_tile_layers():
    geometry, material = load_detector("1-pions")
    assert geometry.n_voxels == 533 and geometry.layer_ids == (0, 1, 2, 3, 12, 13, 14)
    energies, showers = simulate(100, "20GeV", seed=32, geometry=geometry, material=material)
    parts = geometry.layer_slices()
    fractions = np.array([showers[:, p].sum() for p in parts]) / showers.sum()
    # 22.3 X0 of accordion hold the shower; the tile sees its last per mille
    assert fractions[1] + fractions[2] > 0.97 and 0 < fractions[4] < 0.01
    assert 0.95 < (showers.sum(axis=1) / energies).mean() < 1.0


# ---------------------------------------------------------------------------- reproducibility
# Dataset-2 electrons at normal incidence without substructure are the original simulator's showers.
# Pinned as values with float tolerances, not as a digest of the bytes: numpy's exp, log and sin take
# different SIMD paths on different CPUs (AVX-512 vs AVX2), so the same code gives showers that differ
# in the last bits from one machine to another -- a digest taken on one failed on the other with the
# simulator unchanged. A change of the physics moves these values by far more than the tolerances.
GOLDEN = {
    "spots": {"sums": [255997.075, 257922.421, 34699.318, 6566.539], "nonzero": 400148,
              "total": 45512597.888220936},
    "binned": {"sums": [253523.198, 262801.912, 35289.059, 6595.903], "nonzero": 399864,
               "total": 45594903.77173759},
}
GOLDEN_ENERGIES = [260021.20778639143, 265352.0023740413, 35154.15660764259, 7201.1878533350855]


@pytest.mark.parametrize("method", ["spots", "binned"])
def test_dataset_2_electrons_are_the_original_showers(method):
    energies, showers = simulate(300, "1GeV:1TeV", seed=5, method=method)
    golden = GOLDEN[method]
    np.testing.assert_allclose(energies[:4].ravel(), GOLDEN_ENERGIES, rtol=1e-12)
    np.testing.assert_allclose(showers.sum(axis=1, dtype=np.float64)[:4], golden["sums"], rtol=1e-5)
    assert float(showers.sum(dtype=np.float64)) == pytest.approx(golden["total"], rel=1e-5)
    assert abs(int((showers > 0).sum()) - golden["nonzero"]) <= golden["nonzero"] * 1e-3
    # and the bundled dataset-2 geometry file describes the same stack
    energies2, showers2 = simulate(300, "1GeV:1TeV", seed=5, method=method, geometry=DS2[0], material=DS2[1])
    assert np.array_equal(showers, showers2) and np.array_equal(energies, energies2)


def test_general_engine_golden_values():
    # photons, inclined, substructure on dataset 1: pinned so a change is deliberate
    geometry, material = load_detector("1-photons")
    _energies, showers, theta, _phi = simulate(
        3, "10GeV:100GeV", seed=7, geometry=geometry, material=material, particle="photon",
        theta="0deg:60deg", phi="0:2pi", substructure=True, return_angles=True,
    )
    np.testing.assert_allclose(theta, GENERAL_GOLDEN["theta"], rtol=1e-12)
    np.testing.assert_allclose(showers.sum(axis=1, dtype=np.float64), GENERAL_GOLDEN["sums"], rtol=1e-6)


GENERAL_GOLDEN = {
    "theta": [0.18787355273822512, 0.36239469160215787, 0.9928731953399778],
    "sums": [42877.62200410421, 78159.61474360389, 58585.47843427118],
}
