"""Cylindrical geometry: the default dataset-2 layout, flattening order, XML and dict round trips, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastsim.errors import DataError, OutputError
from fastsim.geometry import CylindricalGeometry, GeometryError, Layer, default_geometry

DS2_EDGES = (0.0, 4.65, 9.3, 13.95, 18.6, 23.25, 27.9, 32.55, 37.2, 41.85)

# CaloChallenge style: empty layers written as r_edges="0", layers binned differently,
# an extra attribute the challenge files carry, and the Layers one level below the root.
CHALLENGE_STYLE_XML = """<?xml version="1.0"?>
<Bins>
  <Bin pid="22" name="photon" etaMin="0" etaMax="130">
    <Layer id="0" r_edges="0,5,10,30,50,100,200,400,600" n_bin_alpha="1" alpha_offset="0"/>
    <Layer id="1" r_edges="0,1,4,7,10,15,30,50,90,150,200" n_bin_alpha="10"/>
    <Layer id="2" r_edges="0" n_bin_alpha="1"/>
    <Layer id="3" r_edges="0" n_bin_alpha="1"/>
    <Layer id="4" r_edges="0,50,100,200,400,600" n_bin_alpha="1"/>
  </Bin>
</Bins>
"""


def test_default_geometry_is_dataset_2():
    g = default_geometry()
    assert (g.n_layers, g.n_voxels, g.uniform) == (45, 6480, True)
    assert g.layer_thickness_mm == 3.4 and g.particle == "electron"
    assert all(layer.r_edges == DS2_EDGES and layer.n_alpha == 16 for layer in g.layers)
    assert (g.layers[0].n_radial, g.layers[0].n_voxels) == (9, 144)
    assert g.layer_slices()[0] == slice(0, 144) and g.layer_slices()[-1] == slice(6336, 6480)


def test_default_geometry_ships_as_package_data():
    from importlib import resources

    text = resources.files("fastsim").joinpath("data", "binning_dataset_2.xml").read_text()
    assert CylindricalGeometry.from_xml(text) == default_geometry()


def test_voxel_centres_follow_layer_alpha_radial_order():
    g = default_geometry()
    x, y, r, alpha, layer = g.voxel_centres()
    assert all(a.shape == (6480,) for a in (x, y, r, alpha, layer))
    # voxel 0: layer 0, first alpha sector, innermost ring; radial index runs fastest
    assert r[0] == pytest.approx(2.325) and r[1] == pytest.approx(6.975) and r[8] == pytest.approx(39.525)
    assert alpha[0] == pytest.approx(-math.pi + math.pi / 16) and alpha[8] == alpha[0]
    assert alpha[9] == pytest.approx(-math.pi + 3 * math.pi / 16) and r[9] == r[0]
    assert layer[143] == 0 and layer[144] == 1 and layer[-1] == 44
    np.testing.assert_allclose(np.hypot(x, y), r)
    np.testing.assert_allclose(np.arctan2(y, x), alpha, atol=1e-12)


def test_reshape_matches_flattening_order():
    g = default_geometry()
    showers = np.zeros((2, g.n_voxels), dtype=np.float32)
    flat = (7 * 16 + 3) * 9 + 5  # layer 7, alpha 3, radial 5
    showers[1, flat] = 42.0
    cube = g.reshape(showers)
    assert cube.shape == (2, 45, 16, 9)
    assert cube[1, 7, 3, 5] == 42.0 and cube.sum() == 42.0
    _, _, _, _, layer = g.voxel_centres()
    assert layer[flat] == 7


GEOMETRIES = {
    "dataset-2": default_geometry(),
    "non-uniform": CylindricalGeometry(
        (Layer((0.0, 2.0, 5.5), 4), Layer((0.0, 1.0, 3.0, 9.0, 27.0), 1), Layer((0.5, 1.25), 7)),
        layer_thickness_mm=2.5,
        particle="photon",
    ),
    "single-layer": CylindricalGeometry((Layer((0.0, 0.1 + 0.2), 3),), layer_thickness_mm=0.1),
}


@pytest.mark.parametrize("name", GEOMETRIES)
def test_xml_round_trip(name, tmp_path):
    g = GEOMETRIES[name]
    path = g.to_xml(tmp_path / "binning.xml")
    assert CylindricalGeometry.from_xml(path) == g
    assert CylindricalGeometry.from_xml(str(path)) == g
    assert CylindricalGeometry.from_xml(g.to_xml_string()) == g
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("name", GEOMETRIES)
def test_dict_round_trip(name):
    g = GEOMETRIES[name]
    d = g.to_dict()
    assert d["kind"] == "cylindrical" and d["layer_thickness_mm"] == g.layer_thickness_mm
    assert [(tuple(la["r_edges"]), la["n_alpha"]) for la in d["layers"]] == [(la.r_edges, la.n_alpha) for la in g.layers]
    back = CylindricalGeometry.from_dict(d)
    assert back.layers == g.layers and back.layer_thickness_mm == g.layer_thickness_mm


def test_challenge_style_xml_skips_empty_layers_and_keeps_binnings():
    g = CylindricalGeometry.from_xml(CHALLENGE_STYLE_XML)
    assert g.n_layers == 3 and g.particle == "photon" and not g.uniform
    assert [(la.n_alpha, la.n_radial) for la in g.layers] == [(1, 8), (10, 10), (1, 5)]
    assert g.n_voxels == 8 + 100 + 5
    assert g.layer_slices() == [slice(0, 8), slice(8, 108), slice(108, 113)]
    _, _, r, alpha, layer = g.voxel_centres()
    assert r[:8].tolist() == [2.5, 7.5, 20.0, 40.0, 75.0, 150.0, 300.0, 500.0]
    assert np.all(alpha[:8] == 0.0)  # one sector: centre at 0
    assert np.bincount(layer).tolist() == [8, 100, 5]
    with pytest.raises(GeometryError, match="different binnings"):
        g.reshape(np.zeros((1, g.n_voxels)))


def test_particle_selection_among_several_bins():
    two = CHALLENGE_STYLE_XML.replace(
        "</Bins>", '<Bin pid="211" name="pion"><Layer id="0" r_edges="0,1,2" n_bin_alpha="2"/></Bin></Bins>'
    )
    assert CylindricalGeometry.from_xml(two, particle="pion").n_voxels == 4
    assert CylindricalGeometry.from_xml(two, particle="photon").n_voxels == 113
    with pytest.raises(GeometryError, match="several particles"):
        CylindricalGeometry.from_xml(two)
    with pytest.raises(GeometryError, match="no Bin for particle 'kaon'"):
        CylindricalGeometry.from_xml(two, particle="kaon")


BAD_XML = {
    "not xml": ("<Bins><Bin", "cannot parse"),
    "no layers": ("<Bins><Bin name='e'/></Bins>", "no <Layer> elements"),
    "all empty": ('<Bins><Bin name="e"><Layer id="0" r_edges="0"/></Bin></Bins>', "every layer is empty"),
    "decreasing edges": ('<Bins><Bin name="e"><Layer id="3" r_edges="0,5,2" n_bin_alpha="4"/></Bin></Bins>', "id=3.*strictly increasing"),
    "text edges": ('<Bins><Bin name="e"><Layer id="0" r_edges="0,a" /></Bin></Bins>', "r_edges must be numbers"),
    "missing edges": ('<Bins><Bin name="e"><Layer id="0" n_bin_alpha="4"/></Bin></Bins>', "no r_edges"),
    "bad alpha": ('<Bins><Bin name="e"><Layer id="0" r_edges="0,1" n_bin_alpha="x"/></Bin></Bins>', "n_bin_alpha must be an integer"),
    "zero alpha": ('<Bins><Bin name="e"><Layer id="0" r_edges="0,1" n_bin_alpha="0"/></Bin></Bins>', "n_alpha must be an integer >= 1"),
}


@pytest.mark.parametrize("name", BAD_XML)
def test_malformed_xml_is_a_clear_error(name):
    text, message = BAD_XML[name]
    with pytest.raises(GeometryError, match=message) as info:
        CylindricalGeometry.from_xml(text)
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)


def test_missing_xml_file_names_the_path(tmp_path):
    with pytest.raises(GeometryError, match="nope.xml.*file not found"):
        CylindricalGeometry.from_xml(tmp_path / "nope.xml")


BAD_DICTS = {
    "not a dict": ([1, 2], "expected a dict"),
    "wrong kind": ({"kind": "cartesian", "layers": [{"r_edges": [0, 1]}]}, "expected 'cylindrical'"),
    "no layers": ({"kind": "cylindrical", "layers": []}, "non-empty list"),
    "one edge": ({"layers": [{"r_edges": [0, 1]}, {"r_edges": [0]}]}, r"layers\[1\].*at least 2 edges"),
    "negative edge": ({"layers": [{"r_edges": [-1, 1]}]}, ">= 0 mm"),
    "float alpha": ({"layers": [{"r_edges": [0, 1], "n_alpha": 1.5}]}, "n_alpha"),
    "bad thickness": ({"layers": [{"r_edges": [0, 1]}], "layer_thickness_mm": 0}, "layer_thickness_mm must be > 0"),
}


@pytest.mark.parametrize("name", BAD_DICTS)
def test_malformed_dict_is_a_clear_error(name):
    data, message = BAD_DICTS[name]
    with pytest.raises(GeometryError, match=message):
        CylindricalGeometry.from_dict(data)


def test_reshape_rejects_wrong_width():
    with pytest.raises(GeometryError, match=r"shape \(N, 6480\)"):
        default_geometry().reshape(np.zeros((3, 6479)))


def test_writing_xml_into_a_missing_directory_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="no_dir/b.xml.*cannot write"):
        default_geometry().to_xml(tmp_path / "no_dir" / "b.xml")
