"""The report runner: parameters, metrics, HTML, index, failures that do not stop the run."""
import json

import nbformat
import numpy as np
import pytest
from helpers import write_notebook

from smearlab import cli
from smearlab.report import record
from smearlab.report.runner import find_notebooks, notebook_parameters, run_report


_notebook = write_notebook


@pytest.fixture
def nbdir(tmp_path):
    d = tmp_path / "notebooks"
    d.mkdir()
    _notebook(d / "01_good.ipynb",
              "from smearlab.report import record\nrecord({'quick': quick, 'seed': seed, 'x': 1.5}, metrics_path)")
    _notebook(d / "02_bad.ipynb", "raise RuntimeError('boom in cell')")
    _notebook(d / "03_after.ipynb",
              "from smearlab.report import record\nrecord({'ran': True}, metrics_path)")
    (d / "notes.ipynb").write_text("{}")  # not numbered: ignored
    return d


def test_find_notebooks_orders_numbered_only(nbdir):
    assert [p.stem for p in find_notebooks(nbdir)] == ["01_good", "02_bad", "03_after"]


def test_profiles_and_data_root(tmp_path):
    q = notebook_parameters("01_eda", "quick")
    assert q["quick"] is True and "dataset" not in q
    f = notebook_parameters("01_eda", "full", data_root=tmp_path, device="cpu", seed=3)
    assert f["quick"] is False and f["device"] == "cpu" and f["seed"] == 3
    assert f["dataset"].endswith("cbc/Training")
    with pytest.raises(ValueError, match="unknown profile"):
        notebook_parameters("01_eda", "fast")


def test_failing_notebook_marked_and_others_run(nbdir, tmp_path):
    out = tmp_path / "run"
    index = run_report("quick", out=out, notebook_dir=nbdir, seed=7)
    nbs = index["notebooks"]
    assert nbs["01_good"]["status"] == "ok"
    assert nbs["01_good"]["metrics"] == {"quick": True, "seed": 7, "x": 1.5}
    assert nbs["02_bad"]["status"] == "failed" and "boom in cell" in nbs["02_bad"]["error"]
    assert nbs["03_after"]["status"] == "ok" and nbs["03_after"]["metrics"] == {"ran": True}
    assert index["failed"] == ["02_bad"]
    for name in ("01_good", "02_bad", "03_after"):
        assert (out / f"{name}.ipynb").exists() and (out / f"{name}.html").exists()
    # the failed notebook is kept executed up to the error, with the traceback in it
    bad = nbformat.read(out / "02_bad.ipynb", as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in bad.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
    on_disk = json.loads((out / "index.json").read_text())
    assert on_disk["failed"] == ["02_bad"]
    html = (out / "index.html").read_text()
    assert "02_bad" in html and "failed" in html
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_rerun_only_failed_keeps_other_entries(nbdir, tmp_path):
    out = tmp_path / "run"
    run_report("quick", out=out, notebook_dir=nbdir)
    _notebook(nbdir / "02_bad.ipynb", "from smearlab.report import record\nrecord({'fixed': 1}, metrics_path)")
    index = run_report("quick", out=out, notebook_dir=nbdir, notebooks=["02"])
    assert index["ran"] == ["02_bad"]
    assert index["failed"] == []
    assert set(index["notebooks"]) == {"01_good", "02_bad", "03_after"}
    assert index["notebooks"]["02_bad"]["metrics"] == {"fixed": 1}


def test_each_entry_records_the_commit_that_ran_it(nbdir, tmp_path, monkeypatch):
    """A partial rerun gave the index the new commit, and the entries it kept carried none: results
    of an older commit read as the new code's."""
    from smearlab.report import runner
    out = tmp_path / "run"
    monkeypatch.setattr(runner, "git_commit", lambda: "0ld")
    run_report("quick", out=out, notebook_dir=nbdir, html_export=False)
    monkeypatch.setattr(runner, "git_commit", lambda: "n3w")
    index = run_report("quick", out=out, notebook_dir=nbdir, notebooks=["02"], html_export=False)
    commits = {k: v["git_commit"] for k, v in index["notebooks"].items()}
    assert commits == {"01_good": "0ld", "02_bad": "n3w", "03_after": "0ld"} and index["git_commit"] == "n3w"
    assert all(v["date"] for v in index["notebooks"].values())
    assert "| 01_good | ok |" in (out / "RESULTS.md").read_text() and "| 0ld |" in (out / "RESULTS.md").read_text()
    assert "<td>0ld</td>" in (out / "index.html").read_text()


def test_a_rerun_that_dies_leaves_no_earlier_result_as_its_own(nbdir, tmp_path, monkeypatch):
    """A job killed while re-running a notebook (out of memory, a scheduler's time limit) left the
    notebook's earlier entry in index.json, which a sweep then counted as this run's result."""
    from smearlab.report import runner
    out = tmp_path / "run"
    run_report("quick", out=out, notebook_dir=nbdir, notebooks=["01", "03"], html_export=False)

    def killed(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "run_notebook", killed)
    with pytest.raises(KeyboardInterrupt):
        run_report("quick", out=out, notebook_dir=nbdir, notebooks=["01"], html_export=False)
    index = json.loads((out / "index.json").read_text())
    assert set(index["notebooks"]) == {"03_after"}  # 01's earlier result is gone, 03's kept


def test_unreadable_notebook_is_a_failure_not_a_crash(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    (d / "01_broken.ipynb").write_text("{ this is not json")
    index = run_report("quick", out=tmp_path / "run", notebook_dir=d, html_export=False)
    assert index["failed"] == ["01_broken"]
    assert index["notebooks"]["01_broken"]["notebook"] is None


def test_cli_exit_code_says_whether_all_passed(nbdir, tmp_path, capsys):
    rc = cli.main(["report", "--notebooks", str(nbdir), "--out", str(tmp_path / "r1"), "--only", "01",
                   "--no-html"])
    assert rc == 0
    rc = cli.main(["report", "--notebooks", str(nbdir), "--out", str(tmp_path / "r2"), "--only", "02_bad",
                   "--no-html"])
    assert rc == 1
    assert "1 failed" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no notebook"):
        run_report("quick", out=tmp_path / "r3", notebook_dir=nbdir, notebooks=["99"])
    capsys.readouterr()
    rc = cli.main(["report", "--notebooks", str(nbdir), "--out", str(tmp_path / "r3"), "--only", "99"])
    assert rc == 2 and "error: no notebook '99'" in capsys.readouterr().err  # a message, not a traceback
    assert not (tmp_path / "r3").exists()


def test_record_writes_json_atomically(tmp_path):
    p = tmp_path / "m.json"
    assert record({"a": 1, "b": {"c": 2.0}}, p) == {"a": 1, "b": {"c": 2.0}}
    assert json.loads(p.read_text()) == {"a": 1, "b": {"c": 2.0}}


def test_run_records_command_hardware_and_results_summary(nbdir, tmp_path):
    import shlex

    out = tmp_path / "run"
    index = run_report("quick", out=out, notebook_dir=nbdir, seed=5, html_export=False)
    assert index["hardware"] and "cores" in index["hardware"]
    argv = shlex.split(index["command"])
    assert argv[:2] == ["smearlab", "report"]
    assert cli.build_parser().parse_args(argv[1:]).seed == 5
    summary = (out / "RESULTS.md").read_text()
    for text in (index["command"], index["hardware"], index["date"], "02_bad", "**failed**",
                 "| x | 1.5 |", "| seed | 5 |"):
        assert text in summary, text
    # the recorded command reproduces the run
    (out / "index.json").unlink()
    assert cli.main(argv[1:]) == 1  # 02_bad fails again
    again = json.loads((out / "index.json").read_text())
    assert again["notebooks"]["01_good"]["metrics"] == index["notebooks"]["01_good"]["metrics"]
    assert again["command"] == index["command"]


def test_relative_out_from_the_repository_root_keeps_the_metrics(nbdir, tmp_path, monkeypatch, capsys):
    """README command 1 passes a relative run folder while each kernel runs inside it: the
    metrics must still land beside the notebooks and reach the index and RESULTS.md."""
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    rc = cli.main(["report", "--notebooks", str(nbdir), "--out", "reports/run1", "--only", "01", "03",
                   "--no-html"])
    assert rc == 0
    out = repo / "reports" / "run1"
    assert (out / "01_good.metrics.json").is_file()
    assert not (out / "reports").exists(), "metrics written relative to the kernel's folder"
    index = json.loads((out / "index.json").read_text())
    assert index["notebooks"]["01_good"]["metrics"]["x"] == 1.5
    assert "x: 1.5" in (out / "index.html").read_text()
    assert "| x | 1.5 |" in (out / "RESULTS.md").read_text()


def test_notebook_without_metrics_says_so(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    _notebook(d / "01_silent.ipynb", "x = 1")
    out = tmp_path / "run"
    run_report("quick", out=out, notebook_dir=d, html_export=False)
    assert "no metrics recorded" in (out / "index.html").read_text()
    assert "no metrics recorded" in (out / "RESULTS.md").read_text()


def test_kernels_start_with_sleeping_threads_and_the_thread_count_asked_for(tmp_path, monkeypatch):
    from smearlab.core.threads import started_with, thread_environment
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    d = tmp_path / "nbs"
    d.mkdir()
    _notebook(d / "01_env.ipynb", "import os\nfrom smearlab.report import record\n"
              "record({'wait': os.environ.get('OMP_WAIT_POLICY'), 'threads': os.environ.get('OMP_NUM_THREADS')}, "
              "metrics_path)")
    index = run_report("quick", out=tmp_path / "a", notebook_dir=d, html_export=False)
    assert index["notebooks"]["01_env"]["metrics"] == {"wait": "PASSIVE", "threads": None}
    index = run_report("quick", out=tmp_path / "b", notebook_dir=d, html_export=False, threads=1)
    assert index["notebooks"]["01_env"]["metrics"] == {"wait": "PASSIVE", "threads": "1"}
    assert "--threads 1" in index["command"] and index["threads"] == 1
    import os
    assert "OMP_WAIT_POLICY" not in os.environ  # the runner's own environment is restored
    with started_with(None) as env:
        assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with started_with(None) as env:  # a policy the user chose is kept
        assert env == {} and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    with started_with(2) as env:  # ... with a thread count asked for too (it became PASSIVE)
        assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"} and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    from smearlab.core.files import json_text
    assert json_text({np.int64(3): 1, tmp_path / "a": [{np.int32(1): 2}]}) == json_text({3: 1, str(tmp_path / "a"): [{1: 2}]})
    with pytest.raises(ValueError, match="threads"):
        thread_environment(0)


def test_one_report_folder_holds_one_set_of_settings(nbdir, tmp_path):
    """A re-run of some notebooks with another profile, seed, data root or parameters relabelled
    the kept results of the earlier run with the new settings."""
    out = tmp_path / "run"
    run_report("quick", out=out, notebook_dir=nbdir, notebooks=["01", "03"], html_export=False)
    for kw, what in ((dict(profile="full"), "profile"), (dict(seed=5), "seed"),
                     (dict(data_root=tmp_path), "data_root")):
        with pytest.raises(ValueError, match=f"made with {what}"):
            run_report(kw.pop("profile", "quick"), out=out, notebook_dir=nbdir, notebooks=["01"],
                       html_export=False, **kw)
    index = run_report("full", out=out, notebook_dir=nbdir, notebooks=["01", "03"], html_export=False)
    assert index["profile"] == "full" and index["seed"] == 0    # every result re-made: allowed
    # an index of before the settings were recorded kept the data root as typed (relative)
    older = tmp_path / "older"
    run_report("quick", out=older, notebook_dir=nbdir, notebooks=["01", "03"], html_export=False, data_root=tmp_path)
    data = json.loads((older / "index.json").read_text())
    import os
    data["data_root"] = os.path.relpath(tmp_path)
    for key in ("seed", "parameters"):
        data.pop(key)
    (older / "index.json").write_text(json.dumps(data))
    run_report("quick", out=older, notebook_dir=nbdir, notebooks=["01"], html_export=False, data_root=tmp_path)


def test_a_bad_thread_count_is_refused_before_anything_is_written(nbdir, tmp_path):
    out = tmp_path / "run"
    run_report("quick", out=out, notebook_dir=nbdir, notebooks=["01"], html_export=False)
    before = (out / "index.json").read_text()
    with pytest.raises(ValueError, match="--threads"):
        run_report("quick", out=out, notebook_dir=nbdir, notebooks=["01"], html_export=False, threads=0)
    assert (out / "index.json").read_text() == before        # the earlier result was deleted first


def test_a_failed_rerun_leaves_no_earlier_notebook_or_page(nbdir, tmp_path):
    out = tmp_path / "run"
    run_report("quick", out=out, notebook_dir=nbdir, notebooks=["01"])
    assert (out / "01_good.ipynb").exists() and (out / "01_good.html").exists()
    (nbdir / "01_good.ipynb").write_text("{ broken")
    index = run_report("quick", out=out, notebook_dir=nbdir, notebooks=["01"])
    assert index["failed"] == ["01_good"]
    assert not (out / "01_good.ipynb").exists() and not (out / "01_good.html").exists()


def test_the_runners_own_parameters_are_refused_and_a_parameter_of_several_types_is_open(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    write_notebook(d / "01_a.ipynb", "from smearlab.report import record\nrecord({'augment': augment}, metrics_path)",
                   params="quick = True\nseed = 0\ndevice = 'auto'\nmetrics_path = None\naugment: object = True")
    for name, option in (("quick", "--profile"), ("seed", "--seed"), ("device", "--device")):
        with pytest.raises(ValueError, match=f"set by {option}"):
            run_report("quick", out=tmp_path / "r", notebook_dir=d, parameters={name: False})
    index = run_report("quick", out=tmp_path / "r", notebook_dir=d, parameters={"augment": "stain"}, html_export=False)
    assert index["notebooks"]["01_a"]["metrics"] == {"augment": "stain"} and index["parameters"] == {"augment": "stain"}


def test_notebooks_run_in_the_series_order_whatever_the_order_asked(nbdir, tmp_path):
    """Asked "09 03", 09 counted with the model 03 had written in an earlier run."""
    index = run_report("quick", out=tmp_path / "run", notebook_dir=nbdir, notebooks=["03", "01"], html_export=False)
    assert index["ran"] == ["01_good", "03_after"]


def test_a_stopped_rerun_leaves_no_page_listing_the_notebook_as_done(nbdir, tmp_path, monkeypatch):
    from smearlab.report import runner
    out = tmp_path / "run"
    run_report("quick", out=out, notebook_dir=nbdir, notebooks=["01", "03"], html_export=False)
    assert "01_good" in (out / "RESULTS.md").read_text()

    def killed(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "run_notebook", killed)
    with pytest.raises(KeyboardInterrupt):
        run_report("quick", out=out, notebook_dir=nbdir, notebooks=["01"], html_export=False)
    for page in ("RESULTS.md", "index.html"):
        text = (out / page).read_text()
        assert "01_good" not in text and "03_after" in text, page


def test_a_notebook_whose_kernel_died_says_so_at_its_top(tmp_path):
    """papermill marks a cell that raised; a kernel that died left a notebook that read as a clean run."""
    d = tmp_path / "notebooks"
    d.mkdir()
    _notebook(d / "01_dies.ipynb", "import os\nos._exit(1)")
    index = run_report("quick", out=tmp_path / "run", notebook_dir=d, html_export=True)
    assert index["failed"] == ["01_dies"]
    nb = nbformat.read(tmp_path / "run" / "01_dies.ipynb", as_version=4)
    assert nb.metadata["papermill"]["exception"] is True
    assert "did not finish" in nb.cells[0].source and "smearlab-failed" in nb.cells[0].metadata["tags"]
    assert "did not finish" in (tmp_path / "run" / "01_dies.html").read_text()


def test_json_written_holds_no_nan_or_infinity():
    """Python wrote NaN and Infinity, which JSON has not: R's jsonlite and JavaScript refused the file."""
    import json

    from smearlab.core.files import json_text

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    got = strict(json_text({"ap": float("nan"), "x": np.float32("inf"), "arr": np.array([1.0, np.nan]),
                            "nested": [{"v": -np.inf}], "ok": 0.5, "n": np.int64(2), "flag": True}))
    assert got == {"ap": None, "x": None, "arr": [1.0, None], "nested": [{"v": None}], "ok": 0.5, "n": 2, "flag": True}


def test_a_relative_path_parameter_is_the_callers_and_the_index_records_it(tmp_path, monkeypatch):
    """The notebooks run in the run folder: `--param dataset=mydata` named a folder there, not the caller's."""
    d = tmp_path / "notebooks"
    d.mkdir()
    _notebook(d / "01_ds.ipynb", "import os\nfrom smearlab.report import record\n"
                                 "record({'dataset': dataset, 'found': os.path.isdir(dataset)}, metrics_path)",
              'dataset = "synthetic"\nquick = True\nseed = 0\nmetrics_path = None')
    (tmp_path / "mydata").mkdir()
    monkeypatch.chdir(tmp_path)
    index = run_report("quick", out="run", notebook_dir=d, html_export=False, parameters={"dataset": "mydata"})
    absolute = str(tmp_path.resolve() / "mydata")
    assert index["notebooks"]["01_ds"]["metrics"] == {"dataset": absolute, "found": True}
    assert index["parameters"] == {"dataset": absolute} and f"dataset={absolute}" in index["command"]
    from smearlab.report.runner import absolute_paths
    assert absolute_paths({"dataset": "synthetic", "model": "nowhere", "target": "mydata#dataset2", "a": "mydata"}) == {
        "dataset": "synthetic", "model": "nowhere", "target": absolute + "#dataset2", "a": "mydata"}


@pytest.mark.parametrize("bad, problem", [(dict(profile="Quick"), "unknown profile 'Quick'"),
                                          (dict(device="gpu"), "unknown device 'gpu'"),
                                          (dict(seed=1.0), "seed must be a whole number"),
                                          (dict(data_root="/nonexistent/data"), "no such folder")])
def test_a_bad_option_is_refused_before_anything_is_written(nbdir, tmp_path, bad, problem):
    """`run_report('Quick', out=<finished run>)` wiped the run's entries before refusing the profile."""
    out = tmp_path / "run"
    run_report("quick", out=out, notebook_dir=nbdir, notebooks=["01"], html_export=False)
    before = {f: (out / f).read_text() for f in ("index.json", "RESULTS.md", "index.html")}
    with pytest.raises(ValueError, match=problem):
        run_report(**{"profile": "quick", **bad}, out=out, notebook_dir=nbdir, notebooks=["01"], html_export=False)
    assert {f: (out / f).read_text() for f in before} == before
    with pytest.raises(ValueError, match="unknown profile"):
        run_report("Quick", out=tmp_path / "new", notebook_dir=nbdir)
    assert not (tmp_path / "new").exists()


def test_the_summary_names_the_data_the_notebooks_were_given():
    """`--param dataset=/path` ran on real data, and RESULTS.md and index.html said 'synthetic default'."""
    from smearlab.report.results import index_html, results_markdown
    index = {"profile": "quick", "device": "cpu", "date": "2026-01-01", "git_commit": None, "wall_s": 1.0,
             "ran": [], "failed": [], "notebooks": {}, "data_root": None, "parameters": {"dataset": "/data/cbc"}}
    assert "| data | dataset /data/cbc |" in results_markdown(index)
    assert "data dataset /data/cbc" in index_html(index)
    index.update(data_root="/data", parameters={})
    assert "| data | /data |" in results_markdown(index)
    index.update(data_root=None)
    assert "| data | synthetic default |" in results_markdown(index)


def test_a_failed_cell_is_one_line_with_its_exception_and_cell(tmp_path, caplog):
    """The index said `PapermillExecutionError: 'missing_key'`, and a bare assert papermill's whole traceback."""
    d = tmp_path / "notebooks"
    d.mkdir()
    _notebook(d / "01_key.ipynb", "d = {}\nd['missing_key']")
    _notebook(d / "02_assert.ipynb", "assert 1 == 2")
    with caplog.at_level("ERROR", logger="smearlab.report"):
        index = run_report("quick", out=tmp_path / "run", notebook_dir=d, html_export=False)
    assert index["notebooks"]["01_key"]["error"] == "KeyError: 'missing_key' (cell In[3])"
    assert index["notebooks"]["02_assert"]["error"] == "AssertionError (cell In[3])"
    assert "----> 2 d['missing_key']" in caplog.text  # the traceback is in the log
