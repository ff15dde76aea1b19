"""User errors of ``smearlab data`` and ``smearlab report``: one ``error:`` line, exit code 2,
nothing run. Also the dataset layouts ``smearlab data`` finds on its own: splits of YOLO and
COCO datasets, a dataset one folder down, one DSB2018 image folder."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_notebook
from PIL import Image

from smearlab import cli
from smearlab.data import DataError, detect_format, formats, load
from smearlab.data.formats import dsb2018
from smearlab.report.runner import check_parameter_type, declared_parameters, run_report
from smearlab.report.sweep import load_sweep

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_non_root = pytest.mark.skipif(AS_ROOT, reason="root reads and writes whatever the permissions say")

PARAMS = "quick = True\nseed = 0\nepochs = 4\nlr = 0.01\nname = 'x'\nflags = [1]\nopts = {}\nmetrics_path = None"


def _error_line(capsys) -> str:
    """The one line a failed command wrote to stderr (and nothing else there)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _png(path: Path, hw=(20, 30), value=120, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = hw if mode == "L" else (*hw, len(mode))
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)
    return path


def _yolo(root: Path, splits=("train", "val")) -> Path:
    """A YOLO dataset: one image per split (two in ``train``), one box each."""
    (root).mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("names: [cell]\n")
    for split in splits:
        for i in range(2 if split == "train" else 1):
            sub = Path(split) if split else Path()
            _png(root / "images" / sub / f"{split or 'img'}{i}.png")
            label = root / "labels" / sub / f"{split or 'img'}{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("0 0.5 0.5 0.2 0.2\n")
    return root


def _coco(path: Path, n_images=1, image_dir: Path | None = None) -> Path:
    """A COCO file of ``n_images`` images (written into ``image_dir``, default beside it)."""
    image_dir = image_dir or path.parent
    images = []
    for i in range(n_images):
        _png(image_dir / f"{path.stem}_{i}.png")
        images.append({"id": i + 1, "file_name": f"{path.stem}_{i}.png", "width": 30, "height": 20})
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 6, 5]} for i in range(n_images)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}))
    return path


def _dsb_sample(folder: Path, masks=True) -> Path:
    """One DSB2018 image folder ``<id>/images/<id>.png`` (+ two nucleus masks)."""
    _png(folder / "images" / f"{folder.name}.png", mode="RGBA")
    if masks:
        for k, (y, x) in enumerate([(2, 3), (10, 15)]):
            m = np.zeros((20, 30), np.uint8)
            m[y:y + 4, x:x + 5] = 255
            (folder / "masks").mkdir(exist_ok=True)
            Image.fromarray(m).save(folder / "masks" / f"m{k}.png")
    return folder


# -- smearlab data: wrong arguments ------------------------------------------------------------
def test_unknown_format_names_the_option_and_lists_the_formats(tmp_path, capsys):
    assert cli.main(["data", str(tmp_path), "--format", "pascal"]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: --format pascal: unknown format") and "format=" not in line
    assert all(f in line for f in formats.FORMATS)


def test_unreadable_folder_is_one_error_line(tmp_path, capsys, monkeypatch):
    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(formats, "find_dataset", refuse)
    assert cli.main(["data", str(tmp_path)]) == 2
    assert _error_line(capsys) == f"error: {tmp_path}: Permission denied"


@needs_non_root
def test_unreadable_folder_for_real(tmp_path, capsys):
    locked = _yolo(tmp_path / "locked")
    locked.chmod(0)
    try:
        assert cli.main(["data", str(locked)]) == 2
    finally:
        locked.chmod(0o755)
    line = _error_line(capsys)
    assert "locked" in line and "Permission denied" in line


def test_named_format_that_finds_nothing_is_an_error(tmp_path, capsys):
    root = _yolo(tmp_path / "yolo")
    with pytest.raises(DataError, match="no images found as dsb2018") as e:
        load(root, format="dsb2018")
    assert "records skipped" in str(e.value) and "the files look like yolo" in str(e.value)
    assert cli.main(["data", str(root), "--format", "dsb2018"]) == 2
    assert "no images found as dsb2018" in _error_line(capsys)
    assert len(load(root, format="yolo")) == 3  # the right name still loads


# -- splits -------------------------------------------------------------------------------------
def test_yolo_split(tmp_path, capsys):
    root = _yolo(tmp_path / "y")
    assert len(load(root, split="train")) == 2 and len(load(root / "data.yaml", split="val")) == 1
    assert cli.main(["data", str(root), "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 1
    assert cli.main(["data", str(root), "--split", "test"]) == 2
    assert "no split 'test'" in (line := _error_line(capsys)) and "available splits: train, val" in line
    flat = _yolo(tmp_path / "flat", splits=("",))
    with pytest.raises(DataError, match="has no splits"):
        load(flat, split="train")
    with pytest.raises(DataError, match="expected the name of a split"):
        load(root, split="../y")


def test_split_of_a_format_without_splits(tmp_path, capsys):
    folder = _dsb_sample(tmp_path / "abc")
    assert cli.main(["data", str(folder), "--split", "train"]) == 2
    assert "dsb2018 datasets have no splits" in _error_line(capsys)


@pytest.mark.parametrize("layout", ["{s}.json", "instances_{s}.json", "annotations/instances_{s}.json",
                                    "{s}/_annotations.coco.json"])
def test_coco_folder_split(tmp_path, capsys, layout):
    root = tmp_path / "coco"
    for split, n in (("train", 2), ("val", 1)):
        path = root / layout.format(s=split)
        image_dir = root / split if path.parent.name == "annotations" else None  # official COCO layout
        _coco(path, n, image_dir)
    assert detect_format(root) == "coco"  # the Roboflow layout too: not class folders train/, val/
    ds = load(root, split="train")
    assert len(ds) == 2 and not ds.skipped and ds.name == "coco/train"
    assert cli.main(["data", str(root), "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 1
    assert cli.main(["data", str(root)]) == 2  # two files: which one?
    line = _error_line(capsys)
    assert "holds 2 COCO files" in line and "--split (train, val)" in line
    assert cli.main(["data", str(root), "--split", "test"]) == 2
    assert "no COCO file for split 'test'" in (line := _error_line(capsys)) and "available splits: train, val" in line


def test_coco_folder_with_one_file_needs_no_split(tmp_path):
    _coco(tmp_path / "c" / "gt.json", 2)
    (tmp_path / "c" / "notes.json").write_text("{}")  # not COCO: ignored
    assert len(load(tmp_path / "c")) == 2
    with pytest.raises(DataError, match="one COCO file is one split already"):
        load(tmp_path / "c" / "gt.json", split="train")


# -- where the dataset is -----------------------------------------------------------------------
def test_dataset_one_folder_down_is_found(tmp_path, caplog):
    repo = tmp_path / "repo"
    _yolo(repo / "BCCD")
    (repo / "README.md").write_text("# a cloned repository\n")
    (repo / ".git").mkdir()
    with caplog.at_level(logging.INFO, logger="smearlab.data"):
        assert detect_format(repo) == "yolo"
        ds = load(repo)
    assert len(ds) == 3 and ds.root == repo / "BCCD"
    assert "using its sub-folder BCCD" in caplog.text


def test_several_datasets_one_folder_down_are_named(tmp_path, capsys):
    _yolo(tmp_path / "repo" / "one")
    _coco(tmp_path / "repo" / "two" / "gt.json")
    assert cli.main(["data", str(tmp_path / "repo")]) == 2
    line = _error_line(capsys)
    assert "2 sub-folders hold one: one (yolo), two (coco); pass one of them" in line


def test_nothing_anywhere_still_says_what_was_looked_for(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="cannot detect the dataset format.*here or in a sub-folder; "
                                        "name the format with --format"):
        detect_format(tmp_path)


def test_one_dsb2018_image_folder(tmp_path):
    folder = _dsb_sample(tmp_path / "abc123")
    assert detect_format(folder) == "dsb2018"  # not an ImageFolder of classes images/ and masks/
    (s,) = ds = load(folder)
    assert ds.format == "dsb2018" and ds.class_names == ["nucleus"] and len(s) == 2
    assert s.masks.shape == (2, 20, 30)
    test_layout = _dsb_sample(tmp_path / "def456", masks=False)  # stage1_test: images/ only
    assert detect_format(test_layout) == "dsb2018"
    (s,) = dsb2018.load(test_layout)
    assert len(s) == 0
    renamed = tmp_path / "renamed"
    folder.rename(renamed)
    with pytest.raises(DataError, match=r"no images/renamed\.png.*abc123\.png"):
        dsb2018.load(renamed)


# -- smearlab report ----------------------------------------------------------------------------
@pytest.fixture
def nbdir(tmp_path):
    d = tmp_path / "notebooks"
    d.mkdir()
    write_notebook(d / "03_detection.ipynb", "raise RuntimeError('a kernel ran')", params=PARAMS)
    return d


def _report(nbdir, out, *extra):
    return cli.main(["report", "--notebooks", str(nbdir), "--out", str(out), "--no-html", *extra])


def test_out_that_is_a_file(nbdir, tmp_path, capsys):
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    assert _report(nbdir, out) == 2
    assert _error_line(capsys) == f"error: --out {out}: is a file, not a folder"


def test_out_that_cannot_be_created(nbdir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self == out:
            raise PermissionError(13, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert _report(nbdir, out) == 2
    assert _error_line(capsys) == f"error: --out {out}: cannot create the folder (Permission denied)"


@needs_non_root
def test_read_only_out_for_real(nbdir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert _report(nbdir, out) == 2
    finally:
        out.chmod(0o755)
    assert "cannot write in the folder" in _error_line(capsys)
    assert not list(out.iterdir())


@pytest.mark.parametrize("text, problem", [
    ("[1, 2]", "a JSON list, not an object"),
    ('{"notebooks": 3}', "no 'notebooks' mapping"),
    ('{"notebooks": {"01_x": "ok"}}', "notebook entry '01_x'"),
    ('{"notebooks": {"01_x": {"status": "ok", "seconds": "fast"}}}', "notebook entry '01_x'"),
    ("{not json", "malformed JSON"),
])
def test_out_holding_another_index_json(nbdir, tmp_path, capsys, text, problem):
    out = tmp_path / "run"
    out.mkdir()
    (out / "index.json").write_text(text)
    assert _report(nbdir, out) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {out / 'index.json'}: the --out folder holds an index.json that is not "
                           "a smearlab run index")
    assert problem in line and "choose another --out or remove the file" in line
    assert sorted(p.name for p in out.iterdir()) == ["index.json"]  # nothing ran, nothing overwritten


@pytest.mark.parametrize("param, message", [
    ("epochs=abc", "--param epochs=abc: 03_detection declares epochs as int (default 4), got the text 'abc'"),
    ("epochs=true", "declares epochs as int (default 4), got the boolean true"),
    ("lr=[1]", "declares lr as float (default 0.01), got the list [1]"),
    ("quick=1", "parameter 'quick' is set by --profile: give that option instead"),
    ("name=true", "declares name as str (default 'x'), got the boolean true (true and false are booleans"),
    ("name=1.10", "declares name as str (default 'x'), got the number 1.1 (a number: quote the value to pass "
                  "the text as typed)"),
    ("flags=3", "declares flags as list (default [1]), got the number 3"),
    ("opts=[a]", "declares opts as dict (default {}), got the list [a]"),
])
def test_param_of_the_wrong_type_is_refused_before_any_kernel(nbdir, tmp_path, capsys, param, message):
    out = tmp_path / "run"
    assert _report(nbdir, out, "--param", param) == 2
    assert message in _error_line(capsys)
    assert not out.exists()  # refused before the run folder (or any kernel) was made


def test_param_types_are_checked_beside_an_unreadable_notebook(nbdir, tmp_path, capsys):
    """One unreadable notebook stopped every --param check (a wrong type reached the others)."""
    (nbdir / "04_broken.ipynb").write_text("{ not json")
    out = tmp_path / "run"
    assert _report(nbdir, out, "--param", "epochs=abc") == 2
    assert "declares epochs as int" in _error_line(capsys) and not out.exists()


@pytest.mark.parametrize("name, value", [
    ("epochs", 8), ("epochs", 2.5), ("lr", 1), ("lr", 1e-3), ("quick", False), ("name", "y"),
    ("flags", [1, 2]), ("opts", {"a": 1}), ("metrics_path", [1]), ("epochs", None),
])
def test_param_types_that_are_accepted(nbdir, name, value):
    spec = declared_parameters(nbdir / "03_detection.ipynb")[name]
    check_parameter_type(f"--param {name}", name, value, "03_detection", spec)


def test_a_date_like_value_is_text():
    """YAML 1.1's timestamps are not read: a date became a date object no notebook parameter or JSON
    index could hold (a bare TypeError and an empty run folder)."""
    from smearlab.report.runner import load_yaml, parse_param
    assert parse_param("when=2024-01-01") == ("when", "2024-01-01")
    assert load_yaml("grid: {when: [2024-01-01, 2001-12-14t21:59:43.10-05:00]}") == {
        "grid": {"when": ["2024-01-01", "2001-12-14t21:59:43.10-05:00"]}}


def test_annotated_parameter_and_unevaluable_default(tmp_path):
    nb = tmp_path / "01_a.ipynb"
    write_notebook(nb, "", params="size: int = None\nroot = Path('x')\nmetrics_path = None")
    specs = declared_parameters(nb)
    with pytest.raises(ValueError, match="declares size as int"):
        check_parameter_type("--param size=big", "size", "big", "01_a", specs["size"])
    check_parameter_type("--param root=[1]", "root", [1], "01_a", specs["root"])  # not checked


def test_sweep_values_of_the_wrong_type(nbdir, tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("notebook: 03\ngrid: {epochs: [2, many]}\n")
    with pytest.raises(ValueError, match=r"s\.yaml: grid value many of 'epochs': 03_detection declares "
                                         r"epochs as int \(default 4\), got the text 'many'"):
        load_sweep(spec, nbdir)
    spec.write_text("notebook: 03\nparameters: {lr: fast}\ngrid: {epochs: [2, 3]}\n")
    out = tmp_path / "sweep"
    assert cli.main(["report", "--sweep", str(spec), "--notebooks", str(nbdir), "--out", str(out)]) == 2
    assert "parameters: lr=fast: 03_detection declares lr as float" in _error_line(capsys)
    assert not out.exists()


def test_sweep_out_that_is_a_file(nbdir, tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("notebook: 03\ngrid: {epochs: [2, 3]}\n")
    out = tmp_path / "out.txt"
    out.write_text("x")
    assert cli.main(["report", "--sweep", str(spec), "--notebooks", str(nbdir), "--out", str(out)]) == 2
    assert _error_line(capsys) == f"error: --out {out}: is a file, not a folder"


def test_run_report_checks_types_too(nbdir, tmp_path):
    with pytest.raises(ValueError, match="got the text 'abc'"):
        run_report("quick", out=tmp_path / "r", notebook_dir=nbdir, parameters={"epochs": "abc"})


# -- the benchmark scripts: the same one line for a wrong data path (benchmarks/_common.run_benchmark) --

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _benchmark_scripts():
    return sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "_common.py")


def test_every_benchmark_script_ends_through_run_benchmark():
    """Each script's entry point is ``run_benchmark(main)``; threads.py and loading.py keep
    ``sys.exit(main())`` because their worker processes must not load _common (it sets the OpenMP
    wait policy that threads.py measures with and without)."""
    workers = {"threads.py", "loading.py"}
    for path in _benchmark_scripts():
        tail = path.read_text().rstrip().splitlines()[-1].strip()
        expected = "sys.exit(main())" if path.name in workers else "run_benchmark(main)"
        assert tail == expected, f"{path.name} ends with {tail!r}"


@pytest.mark.parametrize("script, option, shown", [
    ("detection_cbc.py", "--data", "{p}: path does not exist"),
    ("segmentation_dsb.py", "--data", "{p}: path does not exist"),
    ("domain_adaptation.py", "--pbc", "{p}: path does not exist"),
    ("loading.py", "--data-root", "{p}: none of the datasets was found"),
])
def test_benchmark_with_a_wrong_data_path_is_one_error_line(tmp_path, script, option, shown):
    missing = tmp_path / "no-such-folder"
    extra = ["--part", "central"] if script == "domain_adaptation.py" else []
    run = subprocess.run([sys.executable, str(BENCHMARKS / script), option, str(missing), *extra],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert f"error: {shown.format(p=missing)}" in run.stderr.splitlines()[-1]


def test_data_summarises_annotations_without_their_images_when_asked(shared_data, capsys):
    """The BBBC041 annotations alone read 'images: 0' and exited 0; they hold the image sizes."""
    from smearlab.cli import main
    path = shared_data / "bbbc041_annotations"
    assert main(["data", str(path), "--show-skips", "0"]) != 0
    capsys.readouterr()
    assert main(["data", str(path), "--no-image-check", "--show-skips", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 120 and out["objects"] == 5922
    assert main(["data", "synthetic", "--no-image-check"]) != 0


def test_predict_threads_keep_the_wait_policy_the_user_set(monkeypatch, capsys):
    """`smearlab predict --threads N` replaced OMP_WAIT_POLICY=ACTIVE by PASSIVE."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    assert cli.main(["predict", "model", "--threads", "2"]) == 2  # refused after the environment is set
    assert "give image files" in _error_line(capsys)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["OMP_NUM_THREADS"] == "2"


def test_a_notebook_that_stops_early_with_sys_exit_is_a_failure(tmp_path):
    """papermill takes sys.exit(0) for a clean end: a notebook whose later cells never ran (its
    record of figures among them) was reported ok."""
    import nbformat
    d = tmp_path / "nbs"
    d.mkdir()
    write_notebook(d / "01_a.ipynb", "import sys\nsys.exit(0)")
    nb = nbformat.read(d / "01_a.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("x = 1"))
    nbformat.write(nb, d / "01_a.ipynb")
    index = run_report("quick", notebook_dir=d, out=tmp_path / "out", html_export=False, timeout=120)
    r = index["notebooks"]["01_a"]
    assert r["status"] == "failed" and "stopped before its cell 'x = 1'" in r["error"]
    write_notebook(d / "01_a.ipynb", "x = 1")   # every cell ran
    assert run_report("quick", notebook_dir=d, out=tmp_path / "o2", html_export=False,
                      timeout=120)["notebooks"]["01_a"]["status"] == "ok"


def test_mapping_keys_that_are_not_text_are_refused(tmp_path):
    """papermill writes every key as text: --param 'params={1: 0.5}' reached the notebook as
    {'1': 0.5} while the index recorded {1: 0.5}."""
    nb = tmp_path / "01_a.ipynb"
    write_notebook(nb, "", params="params = None\nmetrics_path = None")
    spec = declared_parameters(nb)["params"]
    with pytest.raises(ValueError, match="mapping key 1 is not text"):
        check_parameter_type("--param params={1: 0.5}", "params", {1: 0.5}, "01_a", spec)
    with pytest.raises(ValueError, match="mapping key True"):
        check_parameter_type("--param params=...", "params", [{"a": {True: 1}}], "01_a", spec)
    with pytest.raises(ValueError, match="mapping key None"):   # YAML's ~ as a key
        check_parameter_type("--param params={~: 1}", "params", {None: 1}, "01_a", spec)
    check_parameter_type("--param params={'1': 0.5}", "params", {"1": 0.5}, "01_a", spec)


def test_a_parameter_given_twice_is_refused(nbdir, tmp_path, capsys):
    assert _report(nbdir, tmp_path / "out", "--param", "epochs=3", "--param", "epochs=30") == 2
    assert _error_line(capsys) == "error: --param epochs is given 2 times; give each parameter once"
