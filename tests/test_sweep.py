"""Parameter sweeps: one notebook over a grid, parallel jobs, failures marked, scheduler commands."""
import csv
import json
import shlex
from pathlib import Path

import pytest
from helpers import write_notebook

from smearlab import cli
from smearlab.report.runner import format_value, parse_param, run_report
from smearlab.report.sweep import collect_sweep, load_sweep, sweep_jobs

pytestmark = pytest.mark.notebook

TOY = """\
from smearlab.report import record
if a == 2 and b == "y":
    raise RuntimeError("bad grid point")
record({"score": a * 10 + len(b), "b": b, "nested": {"half": a / 2}, "seed": seed, "k": k,
        "series": [a, a]}, metrics_path)
"""


_notebook = write_notebook


@pytest.fixture
def nbdir(tmp_path):
    d = tmp_path / "notebooks"
    d.mkdir()
    _notebook(d / "01_toy.ipynb", TOY,
              'a = 1\nb = "x"\nk = 0\nquick = True\nseed = 0\nmetrics_path = None\nout_dir = None')
    return d


def _sweep_file(path, text):
    path.write_text(text)
    return path


GRID = "notebook: 01_toy\nparameters: {k: 5}\ngrid:\n  a: [1, 2]\n  b: [x, y]\n"


def _rows(out):
    with open(out / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_grid_runs_in_parallel_and_a_failing_point_is_marked(nbdir, tmp_path, capsys):
    spec = _sweep_file(tmp_path / "sweep.yaml", GRID)
    out = tmp_path / "out"
    rc = cli.main(["report", "--sweep", str(spec), "--notebooks", str(nbdir), "--out", str(out),
                   "--jobs", "2", "--seed", "3", "--no-html"])
    assert rc == 1  # one point failed
    assert "4 points, 1 not ok" in capsys.readouterr().out
    index = json.loads((out / "sweep.json").read_text())
    assert index["jobs"] == 4 and index["ok"] == 3 and index["failed"] == ["job_003"]
    rows = {r["job"]: r for r in index["rows"]}
    assert [r["parameters"] for r in index["rows"]] == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    for job, score in (("job_000", 11), ("job_001", 11), ("job_002", 21)):
        assert rows[job]["status"] == "ok"
        assert rows[job]["metrics"]["score"] == score
        assert rows[job]["metrics"]["seed"] == 3 and rows[job]["metrics"]["k"] == 5  # fixed values reach it
    assert rows["job_003"]["status"] == "failed" and "bad grid point" in rows["job_003"]["error"]
    # each point ran in its own folder, with its own log; the table has one row per point
    for job in rows:
        assert (out / job / "index.json").is_file() and (out / job / "job.log").is_file()
    assert "bad grid point" in (out / "job_003" / "job.log").read_text()
    table = _rows(out)
    assert [(r["job"], r["status"], r["a"], r["b"], r["score"]) for r in table] == [
        ("job_000", "ok", "1", "x", "11"), ("job_001", "ok", "1", "y", "11"),
        ("job_002", "ok", "2", "x", "21"), ("job_003", "failed", "2", "y", "")]
    assert table[0]["metrics.b"] == "x" and table[2]["nested.half"] == "1.0"
    assert "series" not in table[0]  # lists stay in sweep.json only
    page = (out / "sweep.html").read_text()
    assert page.count('<tr class="ok">') == 3 and page.count('<tr class="failed">') == 1
    assert not [p for p in out.rglob(".*")], "temporary files left behind"


def test_list_jobs_commands_run_anywhere_and_collect_tabulates(nbdir, tmp_path, capsys):
    spec = _sweep_file(tmp_path / "sweep.yaml", GRID)
    out = tmp_path / "cluster"
    assert cli.main(["report", "--sweep", str(spec), "--notebooks", str(nbdir), "--out", str(out),
                     "--list-jobs", "--device", "cpu", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and not out.exists()  # listing runs nothing
    args = [shlex.split(line) for line in lines]
    for i, (a, b), cmd in zip(range(4), [(1, "x"), (1, "y"), (2, "x"), (2, "y")], args):
        assert cmd[:2] == ["smearlab", "report"]
        assert cmd[cmd.index("--only") + 1] == "01_toy" and cmd[cmd.index("--device") + 1] == "cpu"
        assert cmd[cmd.index("--threads") + 1] == "1"  # it was left out of every job
        assert cmd[cmd.index("--out") + 1] == str(out.resolve() / f"job_{i:03d}")
        params = [cmd[j + 1] for j, c in enumerate(cmd) if c == "--param"]
        assert params == ["k=5", f"a={a}", f"b={b}"]
    # a scheduler runs one task (here job 2) ...
    assert cli.main(args[2][1:]) == 0
    # ... and collecting marks the others as not run yet
    assert cli.main(["report", "--sweep", str(spec), "--notebooks", str(nbdir), "--collect", str(out)]) == 1
    table = {r["job"]: r for r in _rows(out)}
    assert table["job_002"]["status"] == "ok" and table["job_002"]["score"] == "21"
    assert [table[j]["status"] for j in ("job_000", "job_001", "job_003")] == ["missing"] * 3
    assert "not run yet" in table["job_000"]["error"]
    # a mistyped folder is refused (it was made, and every point tabulated as missing)
    assert cli.main(["report", "--sweep", str(spec), "--notebooks", str(nbdir), "--collect", str(out) + "x"]) == 2
    assert not (tmp_path / "clusterx").exists()
    # editing the grid afterwards: the old result no longer matches its point and is not reused
    _sweep_file(spec, GRID.replace("a: [1, 2]", "a: [1, 3]"))
    cli.main(["report", "--sweep", str(spec), "--notebooks", str(nbdir), "--collect", str(out)])
    stale = {r["job"]: r for r in _rows(out)}["job_002"]
    assert stale["status"] == "stale" and "a=2" in stale["error"]


def test_a_metric_name_no_job_wrote_is_said(nbdir, tmp_path, caplog):
    """A misspelt ``metrics:`` name gave an empty column beside every "ok" point, unsaid."""
    spec = _sweep_file(tmp_path / "sweep.yaml", "notebook: 01_toy\ngrid: {a: [1]}\nmetrics: [score, scroe]\n")
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="smearlab.report.sweep"):
        assert cli.main(["report", "--sweep", str(spec), "--notebooks", str(nbdir), "--out", str(out),
                         "--no-html"]) == 0
    assert [r["scroe"] for r in _rows(out)] == [""]
    said = [r.getMessage() for r in caplog.records if "in no job's metrics" in r.getMessage()]
    assert said and "['scroe']" in said[0] and "score" in said[0]


def test_collect_trusts_only_results_of_the_sweep_file_as_it_is(nbdir, tmp_path, capsys):
    """A NaN point matches itself; a result made with another profile, or with a fixed parameter
    the file no longer sets, is stale; a job that dies on a re-run shows as missing, not as the
    earlier run's result."""
    nbdir2 = tmp_path / "nb2"
    nbdir2.mkdir()
    _notebook(nbdir2 / "01_toy.ipynb", 'from smearlab.report import record\nrecord({"x": x}, metrics_path)',
              "x = 1.5\nb = 'x'\nquick = True\nseed = 0\nmetrics_path = None")
    spec = _sweep_file(tmp_path / "nan.yaml", "notebook: 01_toy\nparameters: {b: z}\ngrid: {x: [.nan, 2.5]}\n")
    out = tmp_path / "out"
    assert cli.main(["report", "--sweep", str(spec), "--notebooks", str(nbdir2), "--out", str(out), "--no-html"]) == 0
    assert [r["status"] for r in _rows(out)] == ["ok", "ok"]
    collect = ["report", "--sweep", str(spec), "--notebooks", str(nbdir2), "--collect", str(out)]
    _sweep_file(spec, "notebook: 01_toy\ngrid: {x: [.nan, 2.5]}\n")  # the fixed b dropped
    assert cli.main(collect) == 1
    assert all("b='z', which the sweep file no longer sets" in r["error"] for r in _rows(out))
    _sweep_file(spec, "notebook: 01_toy\nprofile: full\nparameters: {b: z}\ngrid: {x: [.nan, 2.5]}\n")
    assert cli.main(collect) == 1
    assert all("profile 'quick', the sweep file says 'full'" in r["error"] for r in _rows(out))
    # a re-run whose jobs die before writing anything: no earlier result stands in for them
    _sweep_file(spec, "notebook: 01_toy\nparameters: {b: z}\ngrid: {x: [.nan, 2.5]}\n")
    _notebook(nbdir2 / "01_toy.ipynb", "import os\nos.kill(os.getppid(), 9)  # the job's worker dies (OOM killer)",
              "x = 1.5\nb = 'x'\nquick = True\nseed = 0\nmetrics_path = None")
    assert cli.main(["report", "--sweep", str(spec), "--notebooks", str(nbdir2), "--out", str(out), "--no-html"]) == 1
    assert [r["status"] for r in _rows(out)] == ["missing", "missing"]
    capsys.readouterr()


@pytest.mark.parametrize("content, problem", [
    ("[1, 2]", "must hold a JSON object, not a list"), ("{bad json", "not a readable JSON metrics file")])
def test_a_bad_metrics_file_fails_its_notebook_naming_the_file(tmp_path, content, problem):
    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    _notebook(nbdir / "01_toy.ipynb", f"open(metrics_path, 'w').write({content!r})",
              "quick = True\nseed = 0\nmetrics_path = None")
    index = run_report(notebook_dir=nbdir, out=tmp_path / "out", html_export=False)
    result = index["notebooks"]["01_toy"]
    assert result["status"] == "failed" and result["error"].startswith("01_toy.metrics.json: ")
    assert problem in result["error"] and index["failed"] == ["01_toy"]


@pytest.mark.parametrize("text, problem", [
    ("notebook: 99_nothing\ngrid: {a: [1]}\n", "no notebook '99_nothing'"),
    ("notebook: 01\ngrid: {}\n", "'grid' must be a non-empty mapping"),
    ("notebook: 01\n", "'grid' must be a non-empty mapping"),
    ("notebook: 01\ngrid: {a: 1}\n", "grid values of 'a' must be a non-empty list"),
    ("notebook: 01\ngrid: {a: []}\n", "grid values of 'a' must be a non-empty list"),
    ("notebook: 01\ngrid: {a: [1, 1]}\n", "repeat a value"),
    ("notebook: 01\ngrid: {a: [1, 1.0]}\n", "repeat a value"),  # one point run twice
    ("notebook: 01\ngrid: {alpha: [1, 2]}\n", "'alpha' is not a parameter of 01_toy"),
    ("notebook: 01\ngrid: {a: [1, x]}\n", "01_toy declares a as int (default 1), got the text 'x'"),
    ("notebook: 01\nparameters: {k: [5]}\ngrid: {a: [1]}\n", "declares k as int (default 0), got the list [5]"),
    ("notebook: 01\ngrid: {metrics_path: [a, b]}\n", "set by the report runner"),
    ("notebook: 01\nparameters: {a: 1}\ngrid: {a: [1, 2]}\n", "both fixed (parameters) and swept"),
    ("notebook: 01\nprofile: fast\ngrid: {a: [1]}\n", "unknown profile 'fast'"),
    ("notebook: 01\ngird: {a: [1]}\n", "unknown key 'gird'"),
    ("notebook: 01\ngrid: {a: [1}\n", "malformed YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("notebook: 01\ngrid: {a: [1]}\nmetrics: score\n", "'metrics' must be a list"),
    # YAML kept the last of two `grid:` (or of a parameter twice in one), silently
    ("notebook: 01\ngrid:\n  a: [1, 2]\n  b: [x]\n  a: [3]\n", "found the key 'a' twice"),
    ("notebook: 01\ngrid: {a: [1, 2]}\nparameters: {k: 1}\ngrid: {b: [x, y]}\n", "found the key 'grid' twice"),
])
def test_bad_sweep_file_is_a_clear_error(nbdir, tmp_path, text, problem):
    spec = _sweep_file(tmp_path / "bad.yaml", text)
    with pytest.raises(ValueError, match="bad.yaml") as e:
        load_sweep(spec, nbdir)
    assert problem in str(e.value)


def test_bad_sweep_on_the_command_line(nbdir, tmp_path, capsys):
    spec = _sweep_file(tmp_path / "bad.yaml", "notebook: 01\ngrid: {a: 3}\n")
    assert cli.main(["report", "--sweep", str(spec), "--notebooks", str(nbdir)]) == 2
    err = capsys.readouterr().err
    assert "error: sweep file" in err and "bad.yaml" in err and "non-empty list" in err
    assert cli.main(["report", "--sweep", str(tmp_path / "missing.yaml"), "--notebooks", str(nbdir)]) == 2
    assert "cannot read it" in capsys.readouterr().err
    good = _sweep_file(tmp_path / "good.yaml", GRID)
    assert cli.main(["report", "--sweep", str(good), "--only", "01", "--notebooks", str(nbdir)]) == 2
    capsys.readouterr()
    assert cli.main(["report", "--sweep", str(good), "--profile", "full", "--notebooks", str(nbdir)]) == 2
    assert "profile:" in capsys.readouterr().err  # the sweep file's profile ran, unsaid
    assert cli.main(["report", "--jobs", "2", "--notebooks", str(nbdir)]) == 2
    with pytest.raises(SystemExit) as stop:  # argparse refuses it
        cli.main(["report", "--sweep", str(good), "--jobs", "0", "--notebooks", str(nbdir)])
    assert stop.value.code == 2


def test_sweep_grid_points_and_job_names(nbdir, tmp_path):
    spec = _sweep_file(tmp_path / "s.yaml", "notebook: 1\nprofile: full\ngrid:\n  a: [1, 2, 3]\n  b: [x, 'yes']\n")
    sweep = load_sweep(spec, nbdir)  # `notebook: 1` (a YAML number) means 01
    assert sweep.notebook.name == "01_toy.ipynb" and sweep.profile == "full"
    assert len(sweep.points()) == 6 and sweep.points()[1] == {"a": 1, "b": "yes"}
    jobs = sweep_jobs(sweep, tmp_path / "o", timeout=None, data_root=tmp_path)
    assert [j.name for j in jobs] == [f"job_{i:03d}" for i in range(6)]
    cmd = jobs[1].argv
    assert cmd[cmd.index("--profile") + 1] == "full" and cmd[cmd.index("--timeout") + 1] == "0"
    assert "b=yes" in cmd and parse_param("b=yes") == ("b", "yes")  # yes is text (YAML 1.2), read back as such
    assert shlex.split(jobs[1].command())[1:] == cmd


@pytest.mark.parametrize("value", [384, 0.5, 1e-5, True, None, "fasterrcnn_tiny", "yes", "3", "", "1e-3", "None",
                                   "010", "true", "two words", "2024-01-01", "a\nb", [["tiny", "fasterrcnn_tiny", False]], {"k": [1, 2]}])
def test_param_values_round_trip_through_the_command_line(value):
    text = format_value(value)
    assert "\n" not in text
    assert parse_param(f"name={text}") == ("name", value)
    assert shlex.split(shlex.join([f"name={text}"])) == [f"name={text}"]


@pytest.mark.parametrize("text, value", [("lr=1e-3", 0.001), ("x=1.5e3", 1500.0), ("epochs=010", 10), ("t=1:30", "1:30"),
                                         ("a=yes", "yes"), ("a=on", "on"), ("e=None", None), ("e=null", None),
                                         ("e=~", None), ("q=false", False), ("l=[1e-2, 3]", [0.01, 3])])
def test_param_values_read_as_a_person_means_them(text, value):
    """YAML 1.1 (PyYAML's default) read 1e-3 as text, 010 as eight, 1:30 as ninety, yes/on as true."""
    key, got = parse_param(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["novalue", "=3", "1x=3", "a=[1", "a b=1", "a=", "a=#5", "a= # x"])
def test_bad_param_is_refused(text):
    with pytest.raises(ValueError, match="--param"):
        parse_param(text)


def test_report_param_must_be_declared(nbdir, tmp_path, capsys):
    with pytest.raises(ValueError, match="'alpha' is not declared by 01_toy"):
        run_report("quick", out=tmp_path / "r", notebook_dir=nbdir, parameters={"alpha": 1})
    with pytest.raises(ValueError, match="set by the report runner"):
        run_report("quick", out=tmp_path / "r", notebook_dir=nbdir, parameters={"out_dir": "/x"})
    assert cli.main(["report", "--notebooks", str(nbdir), "--param", "alpha=1", "--out", str(tmp_path / "r")]) == 2
    assert "not declared" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["report", "--notebooks", str(nbdir), "--param", "novalue"])
    assert not (tmp_path / "r").exists()


def test_example_sweep_file_parses(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    sweep = load_sweep(repo / "reports" / "sweep_example.yaml", repo / "notebooks")
    assert sweep.notebook.stem == "03_detection" and sweep.profile == "quick"
    points = sweep.points()
    assert len(points) == 4 and {p["input_size"] for p in points} == {256, 384}
    assert {p["runs"][0][1] for p in points} == {"fasterrcnn_tiny", "fasterrcnn_mobilenet"}
    for job, point in zip(sweep_jobs(sweep, tmp_path), points):
        cmd = shlex.split(job.command())
        got = dict(parse_param(cmd[i + 1]) for i, c in enumerate(cmd) if c == "--param")
        assert got == {**sweep.parameters, **point}  # the commands carry exactly the point


def test_a_swept_seed_is_each_jobs_seed_and_runner_options_cannot_be_swept(nbdir, tmp_path):
    sweep = load_sweep(_sweep_file(tmp_path / "s.yaml", "notebook: 01\ngrid: {seed: [1, 2], a: [3]}\n"), nbdir)
    jobs = sweep_jobs(sweep, tmp_path / "o")
    assert [j.argv[j.argv.index("--seed") + 1] for j in jobs] == ["1", "2"]
    assert not any(arg.startswith("seed=") for j in jobs for arg in j.argv)  # --param seed is refused by the runner
    with pytest.raises(ValueError, match="'quick' is set by --profile"):
        load_sweep(_sweep_file(tmp_path / "q.yaml", "notebook: 01\ngrid: {quick: [true, false]}\n"), nbdir)


def test_a_stopped_sweep_stops_its_workers_and_its_table_says_what_finished(tmp_path):
    """SIGTERM (timeout, a scheduler, kill) ended the sweep command alone: its workers ran the rest
    of the grid without it, and sweep.csv of an earlier run stood as this run's table."""
    import os
    import signal
    import subprocess
    import sys
    import time
    d = tmp_path / "notebooks"
    d.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    _notebook(d / "01_slow.ipynb",
              "import pathlib, time\nfrom smearlab.report import record\n"
              "pathlib.Path(marks, f'start-{a}').touch()\ntime.sleep(a and 8)\n"
              "pathlib.Path(marks, f'end-{a}').touch()\nrecord({'a': a}, metrics_path)",
              f"a = 0\nmarks = {str(marks)!r}\nquick = True\nseed = 0\nmetrics_path = None")
    out = tmp_path / "out"
    fast = _sweep_file(tmp_path / "fast.yaml", "notebook: 01_slow\ngrid:\n  a: [0]\n")
    assert cli.main(["report", "--sweep", str(fast), "--notebooks", str(d), "--out", str(out), "--no-html"]) == 0
    assert (out / "sweep.csv").is_file()
    slow = _sweep_file(tmp_path / "slow.yaml", "notebook: 01_slow\ngrid:\n  a: [1, 2, 3, 4]\n")
    proc = subprocess.Popen([sys.executable, "-m", "smearlab.cli", "report", "--sweep", str(slow), "--notebooks",
                             str(d), "--out", str(out), "--no-html", "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    t0 = time.monotonic()
    started = lambda: sorted(p.name for p in marks.glob("start-[1-4]"))  # noqa: E731
    while len(started()) < 2 and time.monotonic() - t0 < 120:
        time.sleep(0.2)
    assert started() == ["start-1", "start-2"], proc.communicate(timeout=60)[0].decode()[-2000:]
    assert not (out / "sweep.csv").exists()  # the earlier table is not this run's
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=90)[0].decode()
    assert proc.returncode == 130, output[-2000:]
    time.sleep(10)  # a worker left running would finish its job (8 s) and start the next
    assert not list(marks.glob("end-[1-4]")) and started() == ["start-1", "start-2"]  # stopped, none started after
    rows = list(csv.DictReader(open(out / "sweep.csv", newline="")))
    assert [r["status"] for r in rows] and all(r["status"] != "ok" for r in rows)
    assert not [p for p in out.rglob(".*tmp*")], "temporary files left behind"


@pytest.mark.parametrize("text, label", [
    ("grid: {seed: [1.0, 2.0]}", "grid value 1.0 of 'seed'"),
    ("grid: {seed: [1, null]}", "grid value null of 'seed'"),
    ("parameters: {seed: 2.5}\ngrid: {a: [1]}", "parameters: seed=2.5"),
])
def test_a_seed_that_is_not_a_whole_number_is_refused(nbdir, tmp_path, text, label):
    """`seed: [1.0, 2.0]` passed the int check, then every job died at argparse (`--seed 1.0`)."""
    spec = _sweep_file(tmp_path / "s.yaml", f"notebook: 01\n{text}\n")
    with pytest.raises(ValueError, match="s.yaml") as e:
        load_sweep(spec, nbdir)
    assert label in str(e.value) and "whole number" in str(e.value)


def test_a_key_given_twice_in_a_param_is_refused():
    """YAML kept the last of two keys silently (the sweep files' cases are in the bad-file list)."""
    with pytest.raises(ValueError, match="found the key 'a' twice"):
        parse_param("x={a: 1, a: 2}")
    assert parse_param("x={a: 1, b: 2}") == ("x", {"a": 1, "b": 2})


@pytest.mark.parametrize("text, problem", [
    ("dataset=/data/run #2", "'#2' is a YAML comment"),
    ("x=[1, 2] # two", "'# two' is a YAML comment"),
    ("model=-", "block list"),
    ("x=a: b", "block mapping"),
])
def test_a_param_value_yaml_would_cut_or_turn_into_a_list_is_refused(text, problem):
    """`--param dataset="/data/run #2"` (the shell drops the quotes) ran on /data/run; `model=-` was [None]."""
    with pytest.raises(ValueError, match="--param") as e:
        parse_param(text)
    assert problem in str(e.value) and "quote" in str(e.value)


@pytest.mark.parametrize("text, value", [('d="/data/run #2"', "/data/run #2"), ("d=run#2", "run#2"),
                                         ("m='-'", "-"), ("x=[a, b]", ["a", "b"]), ("x={k: 'v #1'}", {"k": "v #1"})])
def test_a_quoted_hash_or_dash_is_kept(text, value):
    assert parse_param(text)[1] == value


def test_a_relative_path_in_a_sweep_is_the_callers(tmp_path, monkeypatch):
    """The notebooks run in their job folder: `dataset: mydata` named nothing there."""
    d = tmp_path / "notebooks"
    d.mkdir()
    _notebook(d / "01_ds.ipynb", "pass", 'dataset = "synthetic"\nmodel = None\nquick = True\nseed = 0\nmetrics_path = None')
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mymodel").mkdir()
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(_sweep_file(tmp_path / "s.yaml", "notebook: 01\nparameters: {model: mymodel}\n"
                                                        "grid: {dataset: [mydata, synthetic, nowhere]}\n"), d)
    assert sweep.grid["dataset"] == [str(tmp_path.resolve() / "mydata"), "synthetic", "nowhere"]
    assert sweep.parameters == {"model": str(tmp_path.resolve() / "mymodel")}
    cmd = sweep_jobs(sweep, tmp_path / "o")[0].argv
    assert f"dataset={tmp_path.resolve() / 'mydata'}" in cmd


def test_a_sweep_keeps_the_wait_policy_the_user_set(tmp_path, monkeypatch):
    """With a thread share (--threads, or --jobs > 1) the sweep replaced OMP_WAIT_POLICY=ACTIVE by PASSIVE."""
    d = tmp_path / "notebooks"
    d.mkdir()
    _notebook(d / "01_env.ipynb", "import os\nfrom smearlab.report import record\n"
                                  "record({'wait': os.environ.get('OMP_WAIT_POLICY'), "
                                  "'threads': os.environ.get('OMP_NUM_THREADS')}, metrics_path)",
              "a = 0\nquick = True\nseed = 0\nmetrics_path = None")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    spec = _sweep_file(tmp_path / "s.yaml", "notebook: 01\ngrid: {a: [1]}\n")
    out = tmp_path / "out"
    assert cli.main(["report", "--sweep", str(spec), "--notebooks", str(d), "--out", str(out), "--no-html",
                     "--threads", "1"]) == 0
    metrics = json.loads((out / "sweep.json").read_text())["rows"][0]["metrics"]
    assert metrics == {"wait": "ACTIVE", "threads": "1"}


def test_a_folder_holding_another_sweep_file_s_jobs_is_refused(nbdir, tmp_path, capsys, monkeypatch, caplog):
    """a/lr.yaml and b/lr.yaml share the default folder reports/sweep-lr: the second replaced the
    first's jobs and tables without a word, and collecting the first then read them all stale."""
    monkeypatch.chdir(tmp_path)
    one = _sweep_file((tmp_path / "a").mkdir() or tmp_path / "a" / "lr.yaml", "notebook: 01_toy\ngrid: {a: [1]}\n")
    two = _sweep_file((tmp_path / "b").mkdir() or tmp_path / "b" / "lr.yaml", "notebook: 01_toy\ngrid: {a: [2]}\n")
    run = ["report", "--notebooks", str(nbdir), "--no-html", "--sweep"]
    assert cli.main([*run, str(one)]) == 0
    first = (tmp_path / "reports" / "sweep-lr" / "sweep.json").read_text()
    capsys.readouterr()
    assert cli.main([*run, str(two)]) == 2
    err = capsys.readouterr().err
    assert "holds the jobs of another sweep file" in err and str(one.resolve()) in err
    assert (tmp_path / "reports" / "sweep-lr" / "sweep.json").read_text() == first   # untouched
    assert cli.main([*run, str(one), "--list-jobs"]) == 0                               # its own folder
    capsys.readouterr()
    assert cli.main([*run, str(two), "--list-jobs"]) == 2                               # jobs for a scheduler alike
    assert "holds the jobs of another sweep file" in capsys.readouterr().err
    assert cli.main([*run, str(one)]) == 0                                              # its own folder: runs again
    assert cli.main([*run, str(two), "--out", str(tmp_path / "other")]) == 0
    record = tmp_path / "reports" / "sweep-lr" / "sweep_file.txt"
    assert record.read_text().strip() == str(one.resolve())
    with caplog.at_level("WARNING", logger="smearlab"):                                # chosen with --out: replaced
        assert cli.main([*run, str(two), "--out", str(tmp_path / "reports" / "sweep-lr")]) == 0
    assert "held the jobs of another sweep file" in caplog.text and record.read_text().strip() == str(two.resolve())
    assert cli.main([*run, str(one)]) == 2                                              # and now one is refused there
    caplog.clear()
    with caplog.at_level("WARNING", logger="smearlab"):
        collect_sweep(str(one), tmp_path / "reports" / "sweep-lr", notebook_dir=nbdir)
    assert "holds the jobs of another sweep file" in caplog.text
    two.rename(tmp_path / "b" / "gone.yaml")    # a recorded file that is gone (moved, renamed) does not block
    assert cli.main([*run, str(one)]) == 0
