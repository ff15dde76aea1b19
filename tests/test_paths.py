"""Path safety: annotation paths stay inside the dataset root, archives inside the cache,
report runs inside their output folder."""
from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pytest

from smearlab.data import DataError, open_dataset
from smearlab.data.formats import bbbc041, coco, iml, voc, yolo
from smearlab.data.imageio import write_image
from smearlab.data.open import extract
from smearlab.report.runner import run_report

REPO = Path(__file__).resolve().parents[1]


def _image(path, h=40, w=60):
    write_image(path, np.full((h, w, 3), 90, np.uint8))
    return path


@pytest.fixture
def layout(tmp_path):
    """``tmp/outside.png`` (a real image the loaders must never reach) and ``tmp/data/``."""
    outside = _image(tmp_path / "outside.png")
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    _image(root / "images" / "inside.png")
    (root / "images" / "link.png").symlink_to(outside)
    return root, outside


def _names(root: Path, outside: Path) -> list[str]:
    """Escaping names: ``..``, ``..`` after a folder, a link out of the root, absolute paths."""
    return ["../outside.png", "images/../../outside.png", "images/link.png", str(outside),
            "/../outside.png", "..\\..\\outside.png" if os.sep == "\\" else "images/../../../etc/passwd"]


def _assert_inside(ds, root: Path, outside: Path):
    for s in ds:
        assert s.path is None or s.path.resolve().is_relative_to(root.resolve()), s.path
        assert s.path is None or s.path.resolve() != outside.resolve()


def _bbbc(root, names):
    return [{"image": {"pathname": n, "shape": {"r": 40, "c": 60}}, "objects": []} for n in names]


def test_bbbc041_pathnames_cannot_leave_the_root(layout):
    root, outside = layout
    names = _names(root, outside)
    path = root / "train.json"
    path.write_text(json.dumps(_bbbc(root, ["/images/inside.png", *names])))
    ds = bbbc041.load(path)
    _assert_inside(ds, root, outside)
    assert [s.image_id for s in ds] == ["inside"]
    assert len(ds.skipped) == len(names) and all(s.path == str(path) for s in ds.skipped)
    reasons = {s.record: s.reason for s in ds.skipped}
    assert all("escapes" in reasons[f"entry {i}"] for i in (1, 2, 3, 5, 6))  # .., a link, /..
    # an absolute pathname means the root (BBBC041 writes /images/x.png): never the file outside
    assert reasons["entry 4"].startswith("image file not found")
    unchecked = bbbc041.load(path, check_images=False)
    _assert_inside(unchecked, root, outside)
    assert len(unchecked) == 2 and len(unchecked.skipped) == 5
    with pytest.raises(DataError, match=r"train\.json \[entry 1\]: image path escapes"):
        bbbc041.load(path, strict=True)


def test_iml_image_names_cannot_leave_the_root(layout):
    root, outside = layout
    (root / "IML_Malaria").mkdir()
    _image(root / "IML_Malaria" / "inside.png")
    (root / "IML_Malaria" / "link.png").symlink_to(outside)
    names = ["../outside.png", "../../outside.png", "link.png", str(outside), "/etc/passwd"]
    path = root / "annotations.json"
    path.write_text(json.dumps([{"image_name": n, "objects": []} for n in ["inside.png", *names]]))
    ds = iml.load(path, check_images=False)
    _assert_inside(ds, root, outside)
    assert [s.image_id for s in ds] == ["inside"]
    reasons = [s.reason for s in ds.skipped]
    assert len(reasons) == len(names)
    assert all("escapes" in r for r in reasons[:3])
    assert all("absolute image_name refused" in r for r in reasons[3:])


def test_coco_file_names_cannot_leave_the_root(layout):
    root, outside = layout
    names = _names(root, outside)
    images = [{"id": i, "file_name": n} for i, n in enumerate(["images/inside.png", *names])]
    path = root / "gt.json"
    path.write_text(json.dumps({"images": images, "categories": [{"id": 1, "name": "c"}]}))
    ds = coco.load(path)
    _assert_inside(ds, root, outside)
    assert [s.image_id for s in ds] == ["inside"]
    got = {s.record: s.reason for s in ds.skipped}
    assert len(got) == len(names)
    assert got["image id 1"].startswith("file_name escapes the image root")
    assert got["image id 3"].startswith("file_name escapes")  # the link
    assert got["image id 4"].startswith("absolute file_name refused")
    assert got["image id 5"].startswith("absolute file_name refused")
    with pytest.raises(DataError, match=r"gt\.json \[image id 1\]"):
        coco.load(path, strict=True)
    # an explicit image_root is a root too
    assert len(coco.load(path, image_root=root / "images").skipped) == len(images)


def test_voc_filename_is_only_a_name(layout):
    root, outside = layout
    (root / "Annotations").mkdir()
    (root / "images" / "link.png").unlink()
    for stem, filename in [("a", "../outside.png"), ("b", str(outside)), ("c", "../../../../etc/passwd")]:
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{filename}</filename></annotation>")
    for check in (True, False):
        ds = voc.load(root, check_images=check)
        _assert_inside(ds, root, outside)
        if check:
            assert len(ds) == 0 and sum("image file not found" in s.reason for s in ds.skipped) == 3
            assert all("image file not found" in s.reason or "no annotation file names" in s.reason
                       for s in ds.skipped)  # the folder's own images no file names are said too
        else:  # kept without an image: the name is looked up inside the image folder only
            assert [s.path.name for s in ds] == ["outside.png", "outside.png", "passwd"]


def test_yolo_reads_no_paths_from_its_yaml_or_list_files(tmp_path):
    outside = _image(tmp_path / "outside.png")
    root = tmp_path / "data"
    _image(root / "images" / "a.png")
    (root / "train.txt").write_text(f"{outside}\n../outside.png\n")
    (root / "data.yaml").write_text(f"path: /\ntrain: {root / 'train.txt'}\nval: ../../etc\nnames: [c]\n")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ds = yolo.load(root)
    assert [s.path for s in ds] == [root / "images" / "a.png"]
    _assert_inside(ds, root, outside)


# -- archives -------------------------------------------------------------------------------
def _tar(path, members):
    """A .tar.gz of ``(TarInfo fields, bytes or None)``."""
    with tarfile.open(path, "w:gz") as tf:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for k, v in fields.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


EVIL = [
    ("dot-dot", [({"name": "ds/../../evil.txt"}, b"x")]),
    ("symlink out", [({"name": "ds/link", "type": tarfile.SYMTYPE, "linkname": "../../.."}, None),
                     ({"name": "ds/link/evil.txt"}, b"x")]),
    ("absolute symlink", [({"name": "ds/abs", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, None)]),
    ("hard link out", [({"name": "ds/hard", "type": tarfile.LNKTYPE, "linkname": "../../outside.txt"}, None)]),
    ("device", [({"name": "ds/dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None)]),
]


@pytest.mark.parametrize("kind, members", EVIL, ids=[k for k, _ in EVIL])
def test_tar_members_cannot_write_outside_the_cache(tmp_path, monkeypatch, kind, members):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SMEARLAB_CACHE", str(cache))
    (tmp_path / "outside.txt").write_text("keep")
    archive = _tar(tmp_path / "evil.tar.gz", [({"name": "ds/ok.txt"}, b"fine"),
                                               *[(dict(f), d) for f, d in members]])
    before = _snapshot(tmp_path)
    with pytest.raises(DataError, match=r"evil\.tar\.gz: unsafe archive member refused") as e:
        open_dataset(archive)
    assert "'" in str(e.value)  # names the member
    assert _snapshot(tmp_path) - before <= {"cache", "cache/extracted"}  # nothing kept, nothing outside
    assert not Path("/tmp/smearlab-evil-absolute.txt").exists()
    assert (tmp_path / "outside.txt").read_text() == "keep"


def test_absolute_tar_member_stays_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMEARLAB_CACHE", str(tmp_path / "cache"))
    archive = _tar(tmp_path / "abs.tar", [({"name": "/tmp/smearlab-evil-absolute.txt"}, b"x")])
    try:
        folder = extract(archive)  # the tar "data" filter strips the leading /
    except DataError as e:  # Pythons without tar filters refuse it instead
        assert "unsafe archive member refused" in str(e)
    else:
        assert (folder / "tmp" / "smearlab-evil-absolute.txt").is_file()
    assert not Path("/tmp/smearlab-evil-absolute.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "ds/../../evil.txt", "/tmp/smearlab-evil-zip.txt"])
def test_zip_members_cannot_write_outside_the_cache(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ds/ok.txt", "fine")
        zf.writestr(zipfile.ZipInfo(name), "x")
    before = _snapshot(tmp_path)
    with pytest.raises(DataError, match=r"evil\.zip: archive member escapes the folder"):
        extract(archive, into=tmp_path / "cache" / "x")
    assert _snapshot(tmp_path) - before <= {"cache"}
    assert not Path("/tmp/smearlab-evil-zip.txt").exists()


def test_safe_archive_is_extracted_once_into_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SMEARLAB_CACHE", str(cache))
    src = tmp_path / "src" / "crops"
    _image(src / "lymphocyte" / "a.png")
    with tarfile.open(tmp_path / "crops.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="crops")
    ds = open_dataset(tmp_path / "crops.tar.gz")
    assert ds.class_names == ["lymphocyte"] and ds[0].image.shape == (40, 60, 3)
    assert ds[0].path.resolve().is_relative_to(cache.resolve())
    folder = extract(tmp_path / "crops.tar.gz")
    assert folder.parent == cache / "extracted" and extract(tmp_path / "crops.tar.gz") == folder
    assert [p.name for p in (cache / "extracted").iterdir()] == [folder.name]  # no partial folders


# -- the report runner and exports ----------------------------------------------------------
EXPORTS = """\
from pathlib import Path
import numpy as np
from smearlab.data import open_dataset, save
from smearlab.export import export_coco_gt, export_coco_results, export_counts_csv
from smearlab.report import record
ds = open_dataset("synthetic-A", n=2, width=96, height=64, seed=seed)
out = Path(out_dir)
for fmt in ("voc", "yolo"):
    save(ds, out / fmt, fmt)
export_coco_gt(ds, out / "coco" / "gt.json")
preds = [{"boxes": s.boxes, "labels": s.labels, "scores": np.ones(len(s.boxes), np.float32)} for s in ds]
export_coco_results(ds, preds, out / "coco" / "results.json")
export_counts_csv(ds, preds, out / "counts.csv")
Path("relative.txt").write_text("a relative path lands in the run folder")
record({"files": len(list(out.rglob("*")))}, metrics_path)
"""


def _tree(folder: Path, skip=(".git", "__pycache__", ".pytest_cache", ".hypothesis", ".venv")) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in skip]
        out |= {os.path.join(dirpath, f) for f in filenames}
    return out


@pytest.mark.notebook
def test_report_and_exports_write_only_into_the_output_folder(tmp_path, monkeypatch):
    nbs, out, cwd = tmp_path / "nbs", tmp_path / "run", tmp_path / "cwd"
    nbs.mkdir()
    cwd.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("seed = 0\nout_dir = None\nmetrics_path = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# exports"), params, nbformat.v4.new_code_cell(EXPORTS)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbs / "01_exports.ipynb")
    monkeypatch.chdir(cwd)  # relative writes would land here
    # the places a stray write would go: the notebook folder, the working folder, the test's
    # temporary parent, and the repository's notebooks/ and reports/ (default run folder)
    # (other people's runs may write into reports/ meanwhile: there only paths naming this
    # notebook count)
    watched = [tmp_path.parent, REPO / "notebooks", REPO / "reports"]
    before = {str(w): _tree(w) for w in watched}
    index = run_report("quick", out=out, notebook_dir=nbs, device="cpu")
    assert index["failed"] == [], index["notebooks"]["01_exports"]["error"]
    assert index["notebooks"]["01_exports"]["metrics"]["files"] > 6
    new = set().union(*(_tree(w) - before[str(w)] for w in watched))
    new = {p for p in new if Path(p).is_relative_to(tmp_path.parent) or "01_exports" in p}
    stray = sorted(p for p in new if not Path(p).is_relative_to(out))
    assert stray == [], f"files written outside {out}: {stray}"
    assert {Path(p).relative_to(out).parts[0] for p in new} >= {
        "01_exports.ipynb", "01_exports.html", "01_exports.metrics.json", "index.json", "index.html", "01_exports",
        "relative.txt"}
    assert not any(Path(p).name.startswith(".") for p in new), "temporary files left behind"


def test_a_dataset_from_an_archive_of_several_entries_is_named_after_the_archive(tmp_path, monkeypatch):
    import tarfile

    from smearlab.data import open_dataset
    from smearlab.data.imageio import write_image
    monkeypatch.setenv("SMEARLAB_CACHE", str(tmp_path / "cache"))
    for cls in ("lymphocyte", "neutrophil"):
        write_image(tmp_path / "src" / cls / "a.png", np.zeros((4, 4, 3), np.uint8))
    with tarfile.open(tmp_path / "cells.tar.gz", "w:gz") as tar:
        for cls in ("lymphocyte", "neutrophil"):
            tar.add(tmp_path / "src" / cls, arcname=cls)
    ds = open_dataset(tmp_path / "cells.tar.gz")
    assert ds.name == "cells" and len(ds) == 2   # it was the cache folder's name, cells-<hash>
