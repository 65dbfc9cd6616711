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


# ---------------------------------------------------------------------------- CaloChallenge datasets and materials
import json  # noqa: E402

from fastsim.geometry import (  # noqa: E402
    DATASET_BINNINGS,
    MaterialGeometry,
    load_detector,
    material_path,
)


@pytest.mark.parametrize(
    ("name", "n_voxels", "ids", "bins"),
    [("1-photons", 368, (0, 1, 2, 3, 12), [(1, 8), (10, 16), (10, 19), (1, 5), (1, 5)]),
     ("1-pions", 533, (0, 1, 2, 3, 12, 13, 14), [(1, 8), (10, 10), (10, 10), (1, 5), (10, 15), (10, 16), (1, 10)]),
     ("2", 6480, tuple(range(45)), [(16, 9)] * 45),
     ("3", 40500, tuple(range(45)), [(50, 18)] * 45)],
)
def test_calochallenge_binnings_ship_with_their_geometry_files(name, n_voxels, ids, bins):
    binning, material = load_detector(name)
    assert binning.n_voxels == n_voxels and binning.layer_ids == ids
    assert [(la.n_alpha, la.n_radial) for la in binning.layers] == bins
    assert tuple(la.binning_id for la in material.readout_layers) == ids
    assert binning.uniform == (name in ("2", "3"))
    # the geometry file beside the packaged binning has the same name stem
    from importlib import resources

    folder = resources.files("fastsim").joinpath("data")
    assert folder.joinpath(material_path(DATASET_BINNINGS[name]).name).is_file()


def test_dataset_geometry_depths():
    # Si-W: 45 x 3.4 mm / 4.22 mm = 36.3 X0; ATLAS-like barrel: 22.3 X0 of accordion behind 2.3 X0 of dead
    # material and the presampler, then 1.5 + 4.1 + 1.8 lambda of tile
    _, siw = load_detector("2")
    assert siw.depth_x0 == pytest.approx(36.26, abs=0.01) and siw.shower_medium.name == "si-w"
    assert siw.readout_layers[0].thickness_x0 == 3.4 / 4.22
    _, atlas = load_detector("1-pions")
    em = [la.thickness_x0 for la in atlas.layers if la.medium.name == "pb-lar"]
    assert em == pytest.approx([4.3, 16.0, 2.0])
    tile = [la.thickness_lambda for la in atlas.layers if la.medium.name == "fe-scint"]
    assert tile == pytest.approx([1.5, 4.1, 1.8])
    assert [la.name for la in atlas.readout_layers][:4] == ["presampler", "EM strips (EMB1)", "EM middle (EMB2)", "EM back (EMB3)"]
    assert sum(la.thickness_x0 for la in atlas.layers[:3]) == pytest.approx(1.7 + 11.0 / 140.0 + 0.6)


def test_layer_ids_survive_an_xml_round_trip_with_empty_layers(tmp_path):
    binning, _ = load_detector("1-photons")
    text = binning.to_xml_string()
    assert text.count("<Layer") == 13 and text.count('r_edges="0"') == 8  # ids 4-11 written empty
    assert CylindricalGeometry.from_xml(text) == binning
    back = CylindricalGeometry.from_dict(binning.to_dict())
    assert back.layers == binning.layers and back.layer_ids == binning.layer_ids


def test_material_round_trip_through_json(tmp_path):
    _, material = load_detector("1-photons")
    path = tmp_path / "m.geometry.json"
    path.write_text(material.to_json_string())
    back = MaterialGeometry.from_file(path)
    assert back.layers == material.layers and back.shower_medium == material.shower_medium


def _material_doc():
    return json.loads(_data_text("binning_dataset_1_photons.geometry.json"))


def _data_text(name):
    from importlib import resources

    return resources.files("fastsim").joinpath("data", name).read_text(encoding="utf-8")


BAD_MATERIALS = {
    "format": (lambda d: d.update(format="other/2"), "format must be 'fastsim-geometry/1'"),
    "no name": (lambda d: d.update(name=""), "name must be a non-empty string"),
    "shower medium": (lambda d: d.update(shower_medium="lead"), "shower_medium must name one of the media"),
    "unknown medium": (lambda d: d["layers"][1].update(medium="water"), r"layers\[1\]: medium must name one of the media"),
    "two thicknesses": (lambda d: d["layers"][1].update(thickness_x0=0.1), r"layers\[1\]: give exactly one of thickness_mm"),
    "negative": (lambda d: d["layers"][3].update(thickness_x0=-4.3), r"layers\[3\]: thickness_x0 must be a number > 0, got -4.3"),
    "no sampling fraction": (lambda d: d["layers"][3].pop("sampling_fraction"), r"layers\[3\]: sampling_fraction must be a number > 0"),
    "fraction above 1": (lambda d: d["layers"][3].update(sampling_fraction=1.5), "sampling_fraction must be in"),
    "bad id": (lambda d: d["layers"][3].update(id="one"), "id must be the binning layer id"),
    "ids out of order": (lambda d: d["layers"][3].update(id=7), r"readout layer ids must increase with depth, got \[0, 7, 2"),
    "medium constant": (lambda d: d["media"]["pb-lar"].update(x0_mm=0), r"media.pb-lar: x0_mm must be a number > 0, got 0"),
    "medium typo": (lambda d: d["media"]["pb-lar"].update(x0=19.6), r"unknown keys \['x0'\]"),
    "layer typo": (lambda d: d["layers"][3].update(thickness=1), r"unknown keys \['thickness'\]"),
    "no layers": (lambda d: d.update(layers=[]), "layers must be a non-empty list"),
}


@pytest.mark.parametrize("name", BAD_MATERIALS)
def test_malformed_material_file_is_a_clear_error(name, tmp_path):
    change, message = BAD_MATERIALS[name]
    doc = _material_doc()
    change(doc)
    path = tmp_path / "bad.geometry.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(GeometryError, match=message) as info:
        MaterialGeometry.from_file(path)
    assert str(path) in str(info.value) and isinstance(info.value, DataError)


def test_material_file_missing_or_not_json(tmp_path):
    with pytest.raises(GeometryError, match="nope.geometry.json'?: file not found"):
        MaterialGeometry.from_file(tmp_path / "nope.geometry.json")
    (tmp_path / "x.geometry.json").write_text("{not json")
    with pytest.raises(GeometryError, match="x.geometry.json'?: not JSON"):
        MaterialGeometry.from_file(tmp_path / "x.geometry.json")


def test_load_detector_needs_the_geometry_file_beside_the_binning(tmp_path):
    xml = tmp_path / "b.xml"
    xml.write_text(_data_text("binning_dataset_1_pions.xml"))
    with pytest.raises(GeometryError, match=r"b.xml'?: its geometry file .*b.geometry.json'? \(materials per layer\) is missing"):
        load_detector(xml)
    (tmp_path / "b.geometry.json").write_text(_data_text("binning_dataset_1_photons.geometry.json"))
    with pytest.raises(GeometryError, match=r"5 readout layers \[0, 1, 2, 3, 12\], but the binning has 7 layers"):
        load_detector(xml)
    (tmp_path / "b.geometry.json").write_text(_data_text("binning_dataset_1_pions.geometry.json"))
    binning, material = load_detector(str(xml))
    assert binning.n_voxels == 533 and len(material.readout_layers) == 7
    with pytest.raises(GeometryError, match="expected a dataset name .* got 'b.h5'"):
        load_detector("b.h5")
    with pytest.raises(GeometryError, match="missing.xml'?: file not found"):
        load_detector(tmp_path / "missing.xml")
