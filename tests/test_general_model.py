"""Contracts of the general surrogate (training.general): any binning, several conditions, alpha harmonics.

Parametrised over the binnings the zoo covers (dataset 1 photons with its
ragged layers, dataset 2, a small uniform one) and over symmetric and
harmonic decoders. Untrained networks are enough: the contracts are
structural (layout, energy total, threshold, rotation with phi, symmetry
where no harmonic is asked for).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastsim.geometry import CylindricalGeometry, Layer, default_geometry, load_detector  # noqa: E402
from training.data import ResponseFit  # noqa: E402
from training.general import (  # noqa: E402
    Conditioning,
    GeneralDecoder,
    GeneralVAE,
    VoxelLayout,
    fit_general_spot_spread,
    measure_alpha_symmetry,
)
from training.model import ModelConfig  # noqa: E402

THRESHOLD = 0.01515
RESPONSE = ResponseFit((math.log(0.9), 0.0), (math.log(0.05), 0.0))


def photon_binning() -> CylindricalGeometry:
    return load_detector("1-photons")[0]


def small_uniform() -> CylindricalGeometry:
    return CylindricalGeometry(tuple(Layer((0.0, 5.0, 10.0, 20.0), 8) for _ in range(4)))


BINNINGS = {"dataset-1-photons": photon_binning, "dataset-2": default_geometry, "small": small_uniform}


def make_decoder(geometry: CylindricalGeometry, orders=(), *, theta: bool = True, kappa: float = 0.5,
                 seed: int = 0) -> GeneralDecoder:
    torch.manual_seed(seed)
    conditioning = Conditioning(1e3, 1e6, math.radians(60.0) if theta else 0.0, phi=bool(orders) or theta)
    config = ModelConfig(latent_dim=4, hidden=32, n_hidden=2, encoder_hidden=32, architecture="voxels",
                         alpha_harmonics=tuple(orders))
    vae = GeneralVAE(config, VoxelLayout(geometry), conditioning)
    if vae.harmonic_head is not None:  # an untrained head is near 0: make the structure visible
        with torch.no_grad():
            vae.harmonic_head.bias.normal_(0.0, 1.0)
    layout = vae.layout
    return GeneralDecoder(vae, RESPONSE, threshold=THRESHOLD, noise_kappa=np.full(layout.n_layers, kappa)).eval()


def conditions(n: int, energy: float = 5e4, theta: float = 0.4, phi: float = 1.0) -> torch.Tensor:
    return torch.tensor([[energy, theta, phi]] * n, dtype=torch.float32)


@pytest.mark.parametrize("name", sorted(BINNINGS))
def test_layout_places_every_voxel_in_its_own_slot(name):
    geometry = BINNINGS[name]()
    layout = VoxelLayout(geometry)
    assert len(np.unique(layout.slot_of_voxel)) == geometry.n_voxels
    showers = np.random.default_rng(1).random((3, geometry.n_voxels)).astype(np.float32)
    slots = layout.to_slots(showers)
    np.testing.assert_array_equal(slots.reshape(3, -1)[:, layout.slot_of_voxel], showers)
    assert slots.sum() == pytest.approx(showers.sum(), rel=1e-6)  # the padding holds nothing
    assert layout.padded == (not geometry.uniform)


def test_dataset_1_photon_layout_keeps_the_layers_with_voxels():
    layout = VoxelLayout(photon_binning())
    assert layout.n_voxels == 368
    assert list(layout.n_alpha) == [1, 10, 10, 1, 1]
    assert list(layout.n_radial) == [8, 16, 19, 5, 5]
    assert layout.n_rings == 53


@pytest.mark.parametrize("orders", [(), (2, 4), (1, 2)])
@pytest.mark.parametrize("name", sorted(BINNINGS))
def test_showers_sum_to_the_response_and_respect_the_threshold(name, orders):
    geometry = BINNINGS[name]()
    decoder = make_decoder(geometry, orders)
    z = torch.randn(64, decoder.latent_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        showers = decoder(z, conditions(64))
        _, total = decoder.voxel_means(z[:, :4], conditions(64))
    assert showers.shape == (64, geometry.n_voxels)
    assert (showers >= 0).all()
    assert ((showers == 0) | (showers >= THRESHOLD)).all()
    np.testing.assert_allclose(showers.sum(1).numpy(), total[:, 0].numpy(), rtol=1e-4)
    again = decoder(z, conditions(64))
    assert torch.equal(showers, again)  # the noise is a function of the seed latents


@pytest.mark.parametrize("orders", [(), (1, 2)])
@pytest.mark.parametrize("name", sorted(BINNINGS))
def test_voxel_noise_has_the_gamma_mean_and_variance_in_every_layout(name, orders):
    # One decoded mean shower, many noise seeds: each voxel scatters around its mean with variance
    # kappa * mean, whether the noise is drawn in the (layer, alpha, radial) block or per voxel.
    geometry = BINNINGS[name]()
    kappa = 0.05
    decoder = make_decoder(geometry, orders, kappa=kappa)
    n = 4000
    z = torch.zeros(n, decoder.latent_dim)
    z[:, 4:] = torch.rand(n, 2, generator=torch.Generator().manual_seed(11)) * 100.0
    with torch.no_grad():
        showers = decoder(z, conditions(n, energy=1e6)).double()
        means, _ = decoder.voxel_means(z[:1, :4], conditions(1, energy=1e6))
    means = means[0].double()
    big = means > 30 * kappa  # Gamma shapes above 30: the threshold and the clamps play no part
    assert big.sum() > 0.2 * geometry.n_voxels
    pulls = ((showers.mean(0) - means)[big] / torch.sqrt(kappa * means[big] / n)).numpy()
    var_ratio = (showers.var(0)[big] / (kappa * means[big])).numpy()
    assert np.abs(pulls).max() < 6.0  # each voxel's own mean, within its standard error
    assert abs(np.median(var_ratio) - 1.0) < 0.06
    assert var_ratio.min() > 0.75 and var_ratio.max() < 1.25
    # Distinct seeds per voxel: neighbouring voxels do not move together.
    a, b = showers[:, big.nonzero()[0, 0]], showers[:, big.nonzero()[1, 0]]
    assert abs(np.corrcoef(a.numpy(), b.numpy())[0, 1]) < 0.1


def layer_sparsity_spread(showers: torch.Tensor, geometry: CylindricalGeometry) -> np.ndarray:
    """Standard deviation over showers of each layer's fraction of voxels above threshold."""
    spreads, start = [], 0
    for layer in geometry.layers:
        if layer.n_voxels:
            block = showers[:, start:start + layer.n_voxels]
            spreads.append(float((block >= THRESHOLD).double().mean(1).std()))
        start += layer.n_voxels
    return np.array(spreads)


def with_spot_energies(decoder: GeneralDecoder, spot_mev: float, spread: float | None) -> GeneralDecoder:
    n_layers = decoder.vae.layout.n_layers
    decoder.spot_coeffs = torch.tensor([[math.log(spot_mev)] * n_layers] + [[0.0] * n_layers] * 2)
    decoder.spot_spread = None if spread is None else torch.full((n_layers, 1, 1), spread)
    return decoder


def test_spot_spread_makes_a_layers_voxels_empty_or_full_together():
    # Real showers' voxels of a layer are empty or full together (few or many energy spots); a per-shower,
    # per-layer log-normal spot energy gives that spread, drawn from the seed latents like the rest.
    geometry = photon_binning()
    n = 3000
    z = torch.randn(n, 6, generator=torch.Generator().manual_seed(4))
    z[:, :4] = 0.0  # one mean shower: what is left is the noise
    with torch.no_grad():
        plain = with_spot_energies(make_decoder(geometry, theta=False), 300.0, None)(z, conditions(n)[:, :1])
        zero = with_spot_energies(make_decoder(geometry, theta=False), 300.0, 0.0)(z, conditions(n)[:, :1])
        wide = with_spot_energies(make_decoder(geometry, theta=False), 300.0, 1.0)
        spread = wide(z, conditions(n)[:, :1])
        again = wide(z, conditions(n)[:, :1])
    assert torch.equal(zero, plain)  # sigma 0 is no spread at all
    assert torch.equal(spread, again)  # a function of the seed latents
    # the 160- and 190-voxel layers
    ratio = layer_sparsity_spread(spread, geometry)[[1, 2]] / layer_sparsity_spread(plain, geometry)[[1, 2]]
    assert (ratio > 1.5).all(), ratio
    np.testing.assert_allclose(spread.sum(1).numpy(), plain.sum(1).numpy(), rtol=1e-5)  # totals kept


def test_spot_spread_fit_recovers_the_spread_of_a_known_decoder():
    geometry = photon_binning()
    truth = with_spot_energies(make_decoder(geometry, theta=False, seed=2), 300.0, 0.7)
    rng = np.random.default_rng(5)
    energy = np.exp(rng.uniform(math.log(1e4), math.log(1e6), 3000)).astype(np.float32)[:, None]
    z = torch.randn(len(energy), truth.latent_dim, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        reference = truth(z, torch.as_tensor(energy)).numpy()
    fitted = with_spot_energies(make_decoder(geometry, theta=False, seed=2), 300.0, None)
    sigma, coeffs = fit_general_spot_spread(fitted, energy, reference, threshold=THRESHOLD, seed=3, n_bins=3,
                                            per_bin=1000)
    assert sigma.shape == (5,) and coeffs.shape == (3, 5)
    np.testing.assert_allclose(sigma[[1, 2]].numpy(), 0.7, atol=0.15)
    np.testing.assert_allclose(coeffs[0, [1, 2]].numpy(), math.log(300.0), atol=0.3)


@pytest.mark.parametrize("name", sorted(BINNINGS))
def test_without_harmonics_the_sectors_of_a_ring_share_one_mean(name):
    geometry = BINNINGS[name]()
    decoder = make_decoder(geometry, ())
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        means, _ = decoder.voxel_means(z, conditions(8))
    start = 0
    for layer in geometry.layers:
        block = means[:, start:start + layer.n_voxels].view(8, layer.n_alpha, layer.n_radial)
        torch.testing.assert_close(block, block[:, :1].expand_as(block))
        start += layer.n_voxels


@pytest.mark.parametrize("orders", [(2, 4), (1, 2, 3)])
def test_harmonic_means_turn_with_phi(orders):
    """Turning phi by one sector turns the mean shower by one sector: rotation equivariance."""
    geometry = small_uniform()
    decoder = make_decoder(geometry, orders)
    n_alpha = geometry.layers[0].n_alpha
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        base, _ = decoder.voxel_means(z, conditions(4, phi=0.3))
        turned, _ = decoder.voxel_means(z, conditions(4, phi=0.3 + 2 * math.pi / n_alpha))
    shape = (4, geometry.n_layers, n_alpha, -1)
    torch.testing.assert_close(turned.view(shape), torch.roll(base.view(shape), 1, dims=2), rtol=1e-4, atol=1e-3)
    # ... and the structure is real: sectors differ.
    assert float(base.view(shape).std(2).max()) > 0.05 * float(base.max())


@pytest.mark.parametrize("orders", [(1, 2, 3, 4), (2,)])
@pytest.mark.parametrize("name", sorted(BINNINGS))
def test_decoder_means_are_the_trained_softmax_in_every_layout(name, orders):
    """The exported decoder's sector weights (basis turned by phi, bound and padding in one MatMul)
    give the means of the VAE's own factorisation: layer x ring x sector softmax of the training loss."""
    decoder = make_decoder(BINNINGS[name](), orders)
    vae = decoder.vae
    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(12))
    cond = conditions(32)
    cond[:, 2] = torch.rand(32, generator=torch.Generator().manual_seed(13)) * 2 * math.pi
    with torch.no_grad():
        means, total = decoder.slot_means(z, cond)
        latent = z @ decoder.prior_chol_t + vae.prior_features(cond) @ decoder.prior_mean
        _, layer_logp, ring_logp, sector_logits = vae.decode(latent, cond)
        expected = torch.exp(layer_logp[:, :, None, None] + ring_logp[:, :, None, :] + vae.sector_logp(sector_logits))
    torch.testing.assert_close(means, expected * total.view(-1, 1, 1, 1), rtol=2e-5, atol=1e-6)
    assert (means.sum(2)[:, ~torch.as_tensor(vae.layout.ring_mask)] == 0).all()  # padded rings stay empty
    if vae.layout.padded:
        assert (means[:, ~torch.as_tensor(vae.layout.sector_mask)] == 0).all()  # so do padded sectors


def test_a_ring_whose_logits_underflow_is_left_empty_not_nan():
    decoder = make_decoder(default_geometry(), (1, 2))
    with torch.no_grad():
        decoder.vae.harmonic_head.bias.mul_(500.0)  # amplitudes of hundreds: exp(-2 B) underflows
        z = torch.randn(8, decoder.latent_dim, generator=torch.Generator().manual_seed(14))
        showers = decoder(z, conditions(8))
        _, total = decoder.slot_means(z[:, :4], conditions(8))
    assert torch.isfinite(showers).all()
    torch.testing.assert_close(showers.sum(1), total[:, 0], rtol=1e-4, atol=0.0)


def test_phi_wraps_with_its_period():
    decoder = make_decoder(small_uniform(), (2,))
    z = torch.randn(4, decoder.latent_dim, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        a = decoder(z, conditions(4, phi=1.0))
        b = decoder(z, conditions(4, phi=1.0 + 2 * math.pi))
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-2)


def test_loss_is_the_voxel_cross_entropy():
    """At the decoder's own distribution the shape term equals its entropy; a point mass costs more."""
    geometry = small_uniform()
    decoder = make_decoder(geometry, (2,))
    vae = decoder.vae
    cond = conditions(16)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    try:
        _check_cross_entropy(vae, cond)
    finally:
        torch.set_grad_enabled(True)


def _check_cross_entropy(vae, cond):
    mean, _ = vae.encode(cond, torch.zeros(16, 1), torch.full((16, 4, 8, 3), 1.0 / 96))
    v_hat, layer_logp, ring_logp, logits = vae.decode(mean, cond)
    logp = layer_logp[:, :, None, None] + ring_logp[:, :, None, :] + vae.sector_logp(logits)
    own = torch.exp(logp)
    terms = vae.loss(cond, v_hat.detach(), own.detach(), beta=0.0, u_weight=0.0, shape_weight=1.0, sample=False)
    entropy = -(own * logp).sum((1, 2, 3)).mean()
    torch.testing.assert_close(terms["shape"], entropy, rtol=1e-4, atol=1e-4)
    point = torch.zeros_like(own)
    point[:, 0, 0, 0] = 1.0
    worse = vae.loss(cond, v_hat.detach(), point, beta=0.0, u_weight=0.0, shape_weight=1.0, sample=False)
    assert float(worse["shape"]) > float(terms["shape"])


@pytest.mark.parametrize("bad, message", [
    ({"alpha_harmonics": [0]}, "alpha_harmonics"),
    ({"alpha_harmonics": [2, 2]}, "alpha_harmonics"),
    ({"alpha_harmonics": [2]}, 'architecture = "voxels"'),
    ({"architecture": "transformer"}, "architecture"),
    ({"sparsity_spread": True}, "sparsity_spread"),
    ({"sparsity_spread": True, "architecture": "voxels", "voxel_noise": "none"}, "sparsity_spread"),
])
def test_model_config_refuses_bad_structure(bad, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**bad)


def test_harmonics_need_the_azimuth():
    config = ModelConfig(architecture="voxels", alpha_harmonics=(2,))
    with pytest.raises(ValueError, match="incident_phi"):
        GeneralVAE(config, VoxelLayout(small_uniform()), Conditioning(1e3, 1e6, 1.0, phi=False))


def test_int_harmonics_mean_orders_one_to_k():
    assert ModelConfig(architecture="voxels", alpha_harmonics=3).harmonic_orders == (1, 2, 3)
    assert ModelConfig(architecture="voxels", alpha_harmonics=[2, 4]).harmonic_orders == (2, 4)


def test_conditioning_names_units_and_features():
    cond = Conditioning(1e3, 1e6, math.radians(60.0), phi=True)
    assert cond.names == ("incident_energy", "incident_theta", "incident_phi")
    specs = cond.specs()
    assert [(s.name, s.unit, s.sampling) for s in specs] == [
        ("incident_energy", "MeV", "log-uniform"), ("incident_theta", "rad", "uniform"),
        ("incident_phi", "rad", "uniform")]
    assert specs[2].period == pytest.approx(2 * math.pi) and specs[1].period is None
    assert [s.name for s in Conditioning(1e3, 1e6).specs()] == ["incident_energy"]
    features = cond.features(torch.tensor([[1e3, 0.0, 3.0], [1e6, math.radians(60.0), 1.0]]))
    torch.testing.assert_close(features, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    drawn = cond.sample(1000, np.random.default_rng(0))
    assert drawn[:, 0].min() >= 1e3 and drawn[:, 0].max() <= 1e6
    assert drawn[:, 2].min() >= 0 and drawn[:, 2].max() < 2 * math.pi


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from training.simulate import write_dataset

    folder = tmp_path_factory.mktemp("symmetry")
    inclined, _ = write_dataset(folder / "inclined.h5", 400, "20GeV:200GeV", seed=3, compression=None,
                                progress=False, theta="30deg:60deg", phi="0:2pi")
    normal, _ = write_dataset(folder / "normal.h5", 400, "20GeV:200GeV", seed=4, compression=None,
                              progress=False)
    return {"inclined": inclined, "normal": normal}


def test_symmetry_measurement_finds_the_structure_of_inclined_showers(simulated):
    inclined = measure_alpha_symmetry(simulated["inclined"], default_geometry())
    normal = measure_alpha_symmetry(simulated["normal"], default_geometry())
    assert normal["recommended"] == []
    # Layer by layer the odd orders show too: the early layers' centres lag behind the track.
    assert {1, 2} <= set(inclined["recommended"])
    for row in inclined["orders"][:2]:
        assert row["cos_max_sigma"] > 10
        # A shower mirror-symmetric about the plane of its track has no sine moments.
        assert row["sin_max_sigma"] < row["cos_max_sigma"] / 3


def test_particles_are_a_categorical_condition_seen_one_hot():
    cond = Conditioning(1e3, 1e6, math.radians(60.0), phi=True, particles=(11, 22))
    assert cond.names == ("incident_energy", "incident_theta", "incident_phi", "particle")
    particle = cond.specs()[3]
    assert (particle.sampling, particle.categories) == ("categorical", (("electron", 11.0), ("photon", 22.0)))
    rows = torch.tensor([[1e3, 0.0, 3.0, 22.0], [1e6, math.radians(60.0), 1.0, 11.0]])
    torch.testing.assert_close(cond.features(rows), torch.tensor([[-1.0, -1.0, -1.0, 1.0], [1.0, 1.0, 1.0, -1.0]]))
    torch.testing.assert_close(cond.azimuth(rows), rows[:, 2:3])
    drawn = cond.sample(2000, np.random.default_rng(0))
    assert set(np.unique(drawn[:, 3])) == {11.0, 22.0} and 0.45 < np.mean(drawn[:, 3] == 22) < 0.55
    with pytest.raises(ValueError, match="particles: expected none or two or more distinct PDG ids"):
        Conditioning(1e3, 1e6, particles=(22,))
    with pytest.raises(ValueError, match="got \\[11, 211\\]"):
        Conditioning(1e3, 1e6, particles=(11, 211))


def test_the_particle_enters_the_decoder_and_the_prior():
    torch.manual_seed(0)
    conditioning = Conditioning(1e3, 1e6, particles=(11, 22))
    config = ModelConfig(latent_dim=4, hidden=32, n_hidden=2, encoder_hidden=32, architecture="voxels")
    vae = GeneralVAE(config, VoxelLayout(small_uniform()), conditioning)
    rows = torch.tensor([[5e4, 11.0], [5e4, 22.0]])
    assert vae.prior_features(rows).shape == (2, vae.prior_mean_terms) == (2, 8)
    decoder = GeneralDecoder(vae, RESPONSE, threshold=THRESHOLD, noise_kappa=np.full(4, 0.5)).eval()
    means, _ = decoder.voxel_means(torch.zeros(2, 4), rows)
    assert not torch.allclose(means[0], means[1])  # the same latent, another particle: another shower
