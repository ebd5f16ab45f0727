"""Label images -> QuPath GeoJSON (:mod:`cpsnake.export.geojson`)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage as ndi
from synthetic import hard_shapes

from cpsnake.export.geojson import feature_collection, label_polygons
from cpsnake.export.roi_import import _fill_polygons
from cpsnake.io.labels import write_labels
from cpsnake.io.tiff import write_tiff
from cpsnake.steps.geojson import main


def _area(ring) -> float:
    r = np.asarray(ring, np.float64)[:-1]
    return 0.5 * float(np.dot(r[:, 0], np.roll(r[:, 1], -1)) - np.dot(np.roll(r[:, 0], -1), r[:, 1]))


def _polygons(feature) -> list:
    g = feature["geometry"]
    return [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]


def test_every_polygon_is_its_pieces_pixels():
    """Hard shapes (holes, an island in a hole, two pieces, diagonal pinches, 1-px lines, speckle in many
    pieces with holes): each polygon's area (outer ring minus holes) is its 8-connected piece's pixel count,
    its even-odd fill by pixel centres is exactly that piece, and the feature's pieces are the label's.

    Catches: a hole given to the wrong piece, a hole counted as an outer ring, rings not closed.
    """
    lab = hard_shapes()
    fc = feature_collection(lab)
    assert [f["properties"]["label"] for f in fc["features"]] == np.unique(lab[lab > 0]).tolist()
    for f in fc["features"]:
        k = f["properties"]["label"]
        pieces, n = ndi.label(lab == k, structure=np.ones((3, 3)))
        polys = _polygons(f)
        assert len(polys) == n and f["geometry"]["type"] == ("Polygon" if n == 1 else "MultiPolygon")
        covered = np.zeros(lab.shape, bool)
        for poly in polys:
            assert all(r[0] == r[-1] for r in poly)  # closed
            assert _area(poly[0]) > 0 and all(_area(h) < 0 for h in poly[1:])
            fill = _fill_polygons([np.asarray(r, np.float64) for r in poly], lab.shape)
            piece = np.unique(pieces[fill])
            assert piece.size == 1 and piece[0] > 0, f"label {k}: a polygon covers more than one piece"
            assert np.array_equal(fill, pieces == piece[0]), f"label {k}: polygon differs from its piece"
            assert sum(_area(r) for r in poly) == fill.sum()
            covered |= fill
        assert np.array_equal(covered, lab == k)


def test_holes_go_to_the_piece_around_them():
    """Two pieces of one label, each with a hole, the second inside the first's hole: each hole belongs to
    the smallest piece around it."""
    lab = np.zeros((30, 30), np.int32)
    lab[1:29, 1:29] = 4
    lab[4:26, 4:26] = 0  # the first piece's hole
    lab[8:22, 8:22] = 4  # a second piece inside it
    lab[12:18, 12:18] = 0  # with its own hole
    ids, polys = label_polygons(lab)
    assert ids.tolist() == [4] and [len(p) for p in polys[0]] == [2, 2]
    assert sorted(sum(_area(r) for r in p) for p in polys[0]) == [14 * 14 - 36, 28 * 28 - 22 * 22]


def test_cli_with_table_parses_and_carries_measurements(tmp_path):
    """`cpsnake geojson LABELS OUT --table CSV`: valid JSON (no NaN), QuPath's fields, every finite value of the
    label's row as a number, ids stable between runs and distinct between labels."""
    lab = hard_shapes()
    write_labels(tmp_path / "lab.tif", lab)
    rows = [
        {"label": k, "image": "x.tif", "Area": float((lab == k).sum()), "Mean": 1.5, "Skew": "nan"}
        for k in np.unique(lab[lab > 0]).tolist()
    ]
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "a.geojson"), "--table", str(tmp_path / "t.csv")]) == 0
    text = (tmp_path / "a.geojson").read_text()
    fc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(rows)
    for f, r in zip(fc["features"], rows):
        p = f["properties"]
        assert p["objectType"] == "detection" and p["name"] == f"{r['label']:02d}"
        assert p["measurements"] == {"Area": r["Area"], "Mean": 1.5}  # NaN left out, label and image not measurements
        assert sum(_area(ring) for poly in _polygons(f) for ring in poly) == r["Area"]
    assert len({f["id"] for f in fc["features"]}) == len(rows)
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "b.geojson"), "--table", str(tmp_path / "t.csv")]) == 0
    assert (tmp_path / "b.geojson").read_text() == text


def test_measure_writes_geojson_with_its_rows(tmp_path):
    from cpsnake.steps.measure import main as measure_main

    lab = hard_shapes()
    write_labels(tmp_path / "lab.tif", lab)
    write_tiff(tmp_path / "img.tif", np.full((1, *lab.shape), 9, np.uint8), axes="CYX")
    assert (
        measure_main(
            [
                str(tmp_path / "lab.tif"),
                str(tmp_path / "img.tif"),
                str(tmp_path / "t.csv"),
                "--geojson",
                str(tmp_path / "m.geojson"),
            ]
        )
        == 0
    )
    fc = json.loads((tmp_path / "m.geojson").read_text())
    table = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [f["properties"]["measurements"]["Area"] for f in fc["features"]] == [float(r["Area"]) for r in table]
    assert all(f["properties"]["measurements"]["Mean"] == 9 for f in fc["features"])


def test_a_label_stack_is_one_clear_line(tmp_path, capsys):
    write_labels(tmp_path / "lab.tif", np.ones((3, 8, 8), np.int32))
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "a.geojson")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2-D" in err and "cpsnake rois" in err
    assert not (tmp_path / "a.geojson").exists()


def test_global_coordinates_beyond_32767():
    """A sparse 70,000 px wide image: coordinates are the image's own pixels, however far out."""
    from synthetic import wide_labels

    lab = wide_labels()
    fc = feature_collection(lab)
    far = [f for f in fc["features"] if f["properties"]["label"] == 5][0]  # lab[20:35, 65530:65540]
    xs = [x for ring in _polygons(far)[0] for x, _ in ring]
    assert (min(xs), max(xs)) == (65530, 65540)
