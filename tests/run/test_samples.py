"""cpsnake.run.samples: discovery, sample sheets, deterministic batches, the samples table."""

from __future__ import annotations

import pytest

from cpsnake.errors import CpsnakeError
from cpsnake.run import batch, samples


def test_batches_follow_names_count_and_pixel_budget():
    sizes = [("c", 30), ("a", 10), ("b", 10), ("d", 500), ("e", 10), ("f", 10), ("g", 10)]
    got = batch.form_batches(sizes, max_pixels=60, max_images=3)
    # sorted names; a batch closes at 3 images or before the budget is passed; d (500 > 60) stands alone
    assert got == [["a", "b", "c"], ["d"], ["e", "f", "g"]]
    assert batch.form_batches(list(reversed(sizes)), max_pixels=60, max_images=3) == got
    assert batch.form_batches(sizes, max_pixels=10**9, max_images=100) == [sorted(n for n, _ in sizes)]
    assert batch.form_batches([], max_pixels=1, max_images=1) == []


def test_discover_folder_and_glob(tmp_path):
    for name in ("b.tif", "a.png", "c.ome.tif", ".hidden.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.tif").write_bytes(b"x")
    assert [s.sample for s in samples.discover(str(tmp_path))] == ["a", "b", "c"]
    assert [s.sample for s in samples.discover(str(tmp_path / "**" / "*.tif"))] == ["b", "c", "d"]


def test_discover_refuses_two_files_of_one_name(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "a.tif").write_bytes(b"x")
    (tmp_path / "x" / "a.png").write_bytes(b"x")
    with pytest.raises(CpsnakeError, match="two files named 'a'"):
        samples.discover(str(tmp_path / "**" / "*.*"))
    with pytest.raises(CpsnakeError, match="found no image files"):
        samples.discover(str(tmp_path / "nothing*"))


@pytest.mark.parametrize("sep", ["\t", ","])
def test_sheet_with_per_image_options(tmp_path, sep):
    sheet = tmp_path / "s.tsv"
    sheet.write_text(
        sep.join(["sample", "path", "channels", "diameter", "pixel_size"])
        + "\n"
        + sep.join(["grey", "img/g.tif", "", "", ""])
        + "\n"
        + sep.join(["rgb", "/abs/r.tif", '"1,0"' if sep == "," else "1,0", "17", "0.5"])
        + "\n"
    )
    got = samples.read_sheet(sheet)
    assert [s.sample for s in got] == ["grey", "rgb"]
    assert got[0].path == str(tmp_path / "img" / "g.tif") and got[0].channels is None and got[0].diameter is None
    assert got[1].path == "/abs/r.tif" and got[1].channels == [1, 0] and got[1].diameter == 17.0
    assert got[1].pixel_size == 0.5


@pytest.mark.parametrize(
    "body, pattern",
    [
        ("sample\tfile\na\tx.tif\n", "expected at least 'sample' and 'path'"),
        ("sample\tpath\tcolour\na\tx.tif\tred\n", "unknown column"),
        ("sample\tpath\na b\tx.tif\n", "line 2: sample name 'a b'"),
        ("sample\tpath\na\tx.tif\na\ty.tif\n", "line 3: sample 'a' appears twice"),
        ("sample\tpath\tchannels\na\tx.tif\t0,0\n", "channels '0,0'"),
        ("sample\tpath\tdiameter\na\tx.tif\t-3\n", "diameter '-3'"),
        ("sample\tpath\tpixel_size\na\tx.tif\tnan\n", "pixel_size 'nan'"),
        ("sample\tpath\n", "no rows"),
        ("", "empty sample sheet"),
    ],
)
def test_bad_sheets_are_one_line_errors(tmp_path, body, pattern):
    sheet = tmp_path / "s.tsv"
    sheet.write_text(body)
    with pytest.raises(CpsnakeError, match=pattern) as err:
        samples.read_sheet(sheet)
    assert "\n" not in str(err.value) and str(sheet) in str(err.value)


def test_table_round_trip(tmp_path):
    rows = [
        samples.Sample(
            "a",
            "/x/a.tif",
            channels=[0, 2],
            diameter=12.5,
            pixel_size=0.25,
            height=10,
            width=20,
            channels_in_file=3,
            planes=1,
            dtype="uint16",
            pixels=200,
            batch="b0001",
        ),
        samples.Sample("b", "/x/b.tif", status="failed", reason="b.tif: not an image"),
    ]
    samples.write_table(tmp_path / "t.tsv", rows)
    assert samples.read_table(tmp_path / "t.tsv") == rows
