"""Parameter sweeps: one notebook over a grid of parameters, one independent job per point."""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import html
import io
import json
import logging
import multiprocessing
import os
import shlex
import sys
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.errors import DataError
from ..core.files import atomic_path, flatten_dict, same_json, write_json, write_text
from ..core.search import grid_points
from ..core.threads import thread_environment
from .results import format_cell, git_commit
from .runner import (OPTION_PARAMETERS, PROFILES, RUNNER_PARAMETERS, absolute_paths, check_parameter_type,
                     declared_parameters, find_notebooks, format_value, load_yaml, make_out_dir, report_argv,
                     select_notebooks)

log = logging.getLogger('smearlab.report.sweep')


SWEEP_KEYS = ("notebook", "grid", "parameters", "profile", "metrics")


@dataclass
class Sweep:
    """A parsed sweep file: one notebook run over every combination of the ``grid`` values.

    Parameters
    ----------
    path : the sweep file.
    notebook : the notebook file.
    grid : parameter -> list of values; the points are the cartesian product, in file order.
    parameters : fixed parameters given to every job.
    profile : "quick" or "full".
    metrics : dotted metric names to tabulate (``per_class.RBC.AP50``); None: every scalar.
    """

    path: Path
    notebook: Path
    grid: dict[str, list]
    parameters: dict[str, Any] = field(default_factory=dict)
    profile: str = "quick"
    metrics: list[str] | None = None

    def points(self) -> list[dict[str, Any]]:
        """The grid points, one ``{parameter: value}`` per job, the last parameter varying fastest."""
        return grid_points(self.grid)


@dataclass
class SweepJob:
    """One grid point: its folder and the ``smearlab`` arguments that run it.

    Parameters
    ----------
    name : the job's folder name (``job_NNN``).
    point : the grid point, ``{parameter: value}``.
    out : the job's run folder (absolute).
    argv : the ``smearlab report`` arguments (after ``smearlab``) that run it.
    """

    name: str
    point: dict[str, Any]
    out: Path
    argv: list[str]

    def command(self, program: str = "smearlab") -> str:
        """The job as one shell command line (arguments quoted).

        Parameters
        ----------
        program : the command that starts the line.
        """
        return shlex.join([program, *self.argv])


def load_sweep(path: str | Path, notebook_dir: str | Path | None = None) -> Sweep:
    """Read and check a sweep file.

    The YAML file holds ``notebook`` (``03_detection`` or ``03``), ``grid`` (a mapping of
    parameter -> non-empty list of values), and optionally ``parameters`` (fixed values),
    ``profile`` (quick or full) and ``metrics`` (the metric names to tabulate)::

        notebook: 03_detection
        profile: quick
        parameters: {epochs: 4}
        grid:
          input_size: [256, 384]
          runs: [[[tiny, fasterrcnn_tiny, false]], [[mobilenet, fasterrcnn_mobilenet, false]]]
        metrics: [mAP50, mAP, count_accuracy]

    A relative path given to a path parameter (``dataset``, ``model``, ...) is made absolute
    against the current folder, as ``--param`` ones are (:func:`~.runner.absolute_paths`).

    Parameters
    ----------
    path : the YAML sweep file.
    notebook_dir : the folder of the notebooks (default: see :func:`~.runner.find_notebooks`).

    Raises
    ------
    ValueError
        naming the file and the problem: unreadable or malformed YAML, unknown keys, an unknown
        notebook or profile, an empty grid, a grid entry that is not a non-empty list or has
        repeated values, a key given twice, a parameter the notebook does not declare, set both
        fixed and in the grid, or set by the runner itself (``metrics_path``, ``out_dir``), a
        ``seed`` that is not a whole number (it becomes each job's ``--seed``).
    """
    import yaml

    path = Path(path)

    def bad(problem: str) -> ValueError:
        return ValueError(f"sweep file {path}: {problem}")

    try:
        spec = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise bad(f"cannot read it ({e})") from None
    except yaml.YAMLError as e:
        raise bad(f"malformed YAML: {e}") from None
    if not isinstance(spec, dict):
        raise bad("expected a mapping with 'notebook' and 'grid'")
    unknown = [k for k in spec if k not in SWEEP_KEYS]
    if unknown:
        raise bad(f"unknown key {unknown[0]!r}; allowed keys: {', '.join(SWEEP_KEYS)}")
    name = spec.get("notebook")
    if isinstance(name, int) and not isinstance(name, bool):
        name = f"{name:02d}"  # `notebook: 03` reads as the number 3
    if not isinstance(name, str) or not name:
        raise bad("'notebook' must name one notebook, e.g. 03_detection")
    try:
        matches = select_notebooks(find_notebooks(notebook_dir), [name])
    except (ValueError, FileNotFoundError) as e:
        raise bad(str(e)) from None
    if len(matches) > 1:
        raise bad(f"notebook {name!r} is ambiguous: {', '.join(m.stem for m in matches)}")
    notebook = matches[0]
    profile = spec.get("profile", "quick")
    if profile not in PROFILES:
        raise bad(f"unknown profile {profile!r}; choose one of {PROFILES}")
    grid = _sweep_grid(spec.get("grid"), bad)
    fixed = spec.get("parameters") or {}
    if not isinstance(fixed, dict) or not all(isinstance(k, str) for k in fixed):
        raise bad("'parameters' must be a mapping of parameter names to values")
    both = sorted(set(grid) & set(fixed))
    if both:
        raise bad(f"parameter {both[0]!r} is both fixed (parameters) and swept (grid)")
    try:
        declared = declared_parameters(notebook)
    except Exception as e:  # papermill cannot read the notebook
        raise bad(f"cannot read the parameters of {notebook}: {type(e).__name__}: {e}") from None
    for key in [*grid, *fixed]:
        if key in RUNNER_PARAMETERS:
            raise bad(f"parameter {key!r} is set by the report runner; it cannot be swept or fixed")
        if key in OPTION_PARAMETERS and key != "seed":  # a seed becomes each job's --seed
            raise bad(f"parameter {key!r} is set by {OPTION_PARAMETERS[key]}"
                      + (" (the sweep's 'profile' key)" if key == "quick" else "") + "; it cannot be swept or fixed")
        if key not in declared:
            raise bad(f"{key!r} is not a parameter of {notebook.stem} "
                      f"(its parameters: {', '.join(declared)})")
    try:
        for key, values in grid.items():
            for value in values:
                check_parameter_type(f"grid value {format_value(value)} of {key!r}", key, value,
                                     notebook.stem, declared[key])
        for key, value in fixed.items():
            check_parameter_type(f"parameters: {key}={format_value(value)}", key, value, notebook.stem,
                                 declared[key])
    except ValueError as e:
        raise bad(str(e)) from None
    seeds = [(f"grid value {format_value(v)} of 'seed'", v) for v in grid.get("seed", [])]
    seeds += [(f"parameters: seed={format_value(fixed['seed'])}", fixed["seed"])] if "seed" in fixed else []
    for label, value in seeds:  # `--seed 1.0` (or None) made argparse refuse every job
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"{label}: a seed becomes each job's --seed and must be a whole number (e.g. 1, not 1.0 "
                      "or null)")
    metrics = spec.get("metrics")
    if metrics is not None and not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise bad("'metrics' must be a list of metric names, e.g. [mAP50, count_accuracy]")
    # a relative dataset or model path is the caller's, as for --param (the jobs run in their folders)
    grid = {k: [absolute_paths({k: v})[k] for v in values] for k, values in grid.items()}
    return Sweep(path, notebook, grid, absolute_paths(fixed), profile, metrics)


def _sweep_grid(grid, bad) -> dict[str, list]:
    """The checked ``grid`` mapping of a sweep file (``bad(problem)`` makes the error)."""
    if not isinstance(grid, dict) or not grid:
        raise bad("'grid' must be a non-empty mapping of parameter -> list of values")
    for key, values in grid.items():
        if not isinstance(key, str):
            raise bad(f"grid parameter names must be text, got {key!r}")
        if not isinstance(values, list) or not values:
            raise bad(f"grid values of {key!r} must be a non-empty list (e.g. {key}: [1, 2]), "
                      f"got {values!r}")
        # one value twice ([1, 1.0] too: the same point run twice, shown as two results)
        texts = [repr(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else format_value(v)
                 for v in values]
        if len(set(texts)) != len(texts):
            raise bad(f"grid values of {key!r} repeat a value: {values!r}")
    return dict(grid)


def sweep_jobs(sweep: Sweep, out: str | Path, *, data_root: str | Path | None = None,
               device: str = "auto", seed: int = 0, timeout: int | None = 3600,
               html_export: bool = True, threads: int | None = None) -> list[SweepJob]:
    """One self-contained job per grid point, writing into ``out/job_NNN``.

    Each job's arguments are a complete ``smearlab report`` command (absolute paths, the
    notebook, the profile, every fixed and swept parameter), so the jobs can run anywhere the
    package is installed: here through :func:`run_sweep`, or one per task of a cluster
    scheduler (``smearlab report --sweep FILE --list-jobs``).

    Parameters
    ----------
    sweep : the sweep (:func:`load_sweep`).
    out : the sweep's output folder.
    data_root, device, seed, timeout, html_export, threads : as for
        :func:`~smearlab.report.runner.run_report` (``threads``: each job's ``--threads``).
    """
    out = Path(out).resolve()
    points = sweep.points()
    width = max(3, len(str(len(points) - 1)))
    jobs = []
    for i, point in enumerate(points):
        job_out = out / f"job_{i:0{width}d}"
        params = {**sweep.parameters, **point}
        job_seed = params.pop("seed", seed)  # a swept or fixed seed is the job's --seed
        argv = report_argv(sweep.profile, notebook_dir=sweep.notebook.parent, notebooks=[sweep.notebook.stem],
                           device=device, seed=job_seed,
                           data_root=Path(data_root).resolve() if data_root is not None else None,
                           timeout=timeout, html_export=html_export, parameters=params, out=job_out,
                           threads=threads)
        jobs.append(SweepJob(job_out.name, point, job_out, argv))
    return jobs


def default_sweep_out(sweep: Sweep) -> Path:
    """``reports/sweep-<sweep file stem>``: the same folder for running, listing and collecting.

    Parameters
    ----------
    sweep : the sweep (:func:`load_sweep`).
    """
    return Path("reports") / f"sweep-{sweep.path.stem}"


#: the file of a sweep's folder naming the sweep file whose jobs it holds
SWEEP_FILE_RECORD = "sweep_file.txt"


def check_sweep_folder(out: "str | Path", sweep: Sweep, *, refuse: bool) -> str:
    """The sweep file's resolved path, after checking whose jobs ``out`` holds
    (``sweep_file.txt``): another sweep file's are refused (ValueError) when ``refuse`` (the default
    folder: two files of one name, ``a/lr.yaml`` and ``b/lr.yaml``, share ``reports/sweep-lr``, and
    the second replaced the first's jobs and tables silently), else replaced with a warning (a
    folder chosen with ``--out``, or a recorded file that no longer exists: moved or renamed).
    Writes nothing.

    Parameters
    ----------
    out : the sweep's folder.
    sweep : the sweep (:func:`load_sweep`).
    refuse : refuse another sweep file's jobs (the default folder) rather than warn.
    """
    mine = str(Path(sweep.path).resolve())
    theirs = _recorded_sweep(out)
    if theirs and theirs != mine:
        if refuse and Path(theirs).is_file():
            raise ValueError(f"{out} holds the jobs of another sweep file, {theirs}: give this sweep another "
                             "output folder (--out; sweep files of one name share the default folder)")
        log.warning("%s held the jobs of another sweep file, %s: this sweep's replace them", out, theirs)
    return mine


def _recorded_sweep(out: "str | Path") -> str | None:
    """The sweep file a sweep folder records (:data:`SWEEP_FILE_RECORD`), or None."""
    record = Path(out) / SWEEP_FILE_RECORD
    return (record.read_text(encoding="utf-8").strip() or None) if record.is_file() else None


def run_sweep(path: str | Path, *, out: str | Path | None = None, jobs: int = 1,
              notebook_dir: str | Path | None = None, data_root: str | Path | None = None,
              device: str = "auto", seed: int = 0, timeout: int | None = 3600,
              html_export: bool = True, command: Callable[[list[str]], int],
              threads: int | None = None) -> dict[str, Any]:
    """Run every grid point of a sweep file and tabulate the metrics; returns the sweep index.

    Each grid point is the ``smearlab report`` command that :func:`sweep_jobs` builds, run by
    :func:`run_job` in a pool of ``jobs`` worker processes (so ``jobs`` points run at once),
    in its own folder ``out/job_NNN`` with its own kernel, its console output in
    ``out/job_NNN/job.log``. Idle threads of every job sleep (``OMP_WAIT_POLICY=PASSIVE`` unless
    the environment sets a policy, :mod:`smearlab.core.threads`); with ``jobs > 1`` the workers' ``OMP_NUM_THREADS`` defaults to
    the CPU count divided by ``jobs`` (unless set), so that parallel jobs do not oversubscribe
    the cores. A failing point is marked in the table; the others still run. Writes
    ``out/sweep.json``, ``sweep.csv`` and ``sweep.html`` (see :func:`collect_sweep`), and
    ``out/sweep_file.txt``, the sweep file whose jobs the folder holds: the default folder holding
    another sweep file's jobs is refused (two files of one name share it); a folder given as
    ``out`` has them replaced, with a warning.

    Parameters
    ----------
    path : the sweep file (see :func:`load_sweep`).
    out : output folder (default :func:`default_sweep_out`).
    jobs : how many grid points run at once.
    notebook_dir, data_root, device, seed, timeout, html_export : as for :func:`run_report`.
    threads : each job's ``--threads`` (None: the share of the cores described above).
    command : runs one job's ``smearlab`` arguments and returns its exit code: the command
        line's own entry point, :func:`smearlab.cli.main` (picklable, run in the workers).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    sweep = load_sweep(path, notebook_dir)
    chosen = out not in (None, "")
    out = Path(out) if chosen else default_sweep_out(sweep)
    claim = check_sweep_folder(out, sweep, refuse=not chosen)
    make_out_dir(out)
    write_text(out / SWEEP_FILE_RECORD, claim + "\n")
    todo = sweep_jobs(sweep, out, data_root=data_root, device=device, seed=seed, timeout=timeout,
                      html_export=html_export, threads=threads)
    if threads is None and jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    # the wait policy unless the user set one; the thread share whenever jobs run side by side. A value
    # the user set is passed on too: a fork server started earlier holds the environment of then
    env = {k: os.environ[k] if k in os.environ and (threads is None or k == "OMP_WAIT_POLICY") else v
           for k, v in thread_environment(threads).items()}
    for job in todo:  # a job that dies must not show the result of an earlier run of it as its own
        (job.out / "index.json").unlink(missing_ok=True)
    for table in ("sweep.json", "sweep.csv", "sweep.html"):  # ... nor a stopped sweep the last table
        (out / table).unlink(missing_ok=True)
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=_worker_context(),
                               initializer=_set_environ, initargs=(env,))
    try:
        futures = {pool.submit(run_job, command, job.argv, job.out / "job.log"): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            try:
                log.info("%s %s finished with exit code %s", job.name, job.point, future.result())
            except Exception as e:  # the worker process died: the point shows as missing
                log.error("%s %s: worker failed: %s", job.name, job.point, e)
    except BaseException:  # stopped (Ctrl-C, SIGTERM): the workers stop too, the table says what finished
        _stop_workers(pool)
        collect_sweep(sweep, out, wall_s=time.perf_counter() - t0)
        raise
    pool.shutdown()
    return collect_sweep(sweep, out, wall_s=time.perf_counter() - t0)


def _stop_workers(pool: ProcessPoolExecutor, grace_s: float = 30.0) -> None:
    """Stop a pool's workers, running jobs included: SIGTERM (the job's command stops cleanly, its
    kernel shut down, see :func:`smearlab.cli.main`), then SIGKILL after ``grace_s``. The pool's own
    shutdown only cancels the jobs not started: a stopped sweep's workers ran the rest of the grid."""
    workers = list((getattr(pool, "_processes", None) or {}).values())  # the executor lists no workers publicly
    pool.shutdown(wait=False, cancel_futures=True)
    for p in workers:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)


def _set_environ(env: dict[str, str]) -> None:
    """Worker initializer: add ``env`` to the worker's environment (inherited by its kernels)."""
    os.environ.update(env)


def _worker_context():
    """Start method of the job workers.

    On Linux from a single-threaded parent (the ``smearlab`` command): fork, so the workers
    start with papermill already imported. From a threaded parent (a Jupyter kernel, where
    forking is unsafe): a fork server that imports papermill once. Elsewhere: spawn.
    """
    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["smearlab.cli", "smearlab.report", "papermill"])
        return ctx
    return multiprocessing.get_context("spawn")


def run_job(command: Callable[[list[str]], int], argv: list[str], log_path: str | Path) -> int:
    """Run ``smearlab <argv>`` in this process with its console output in ``log_path``.

    The worker side of :func:`run_sweep`: the very command a scheduler would run, through
    ``command`` (:func:`smearlab.cli.main`). Output is redirected both for Python (``sys.stdout``,
    ``sys.stderr``) and at the file-descriptor level, so that the kernel processes papermill
    starts write there too. Returns the command's exit code.

    Parameters
    ----------
    command : runs ``smearlab`` arguments and returns an exit code (:func:`smearlab.cli.main`).
    argv : the job's arguments (:attr:`SweepJob.argv`).
    log_path : the log file (written atomically, starting with the command line).
    """

    log_path = Path(log_path)
    with atomic_path(log_path) as tmp, open(tmp, "w", encoding="utf-8") as logf:
        logf.write(shlex.join(["smearlab", *argv]) + "\n")
        logf.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(logf.fileno(), 1)
        os.dup2(logf.fileno(), 2)
        try:
            with contextlib.redirect_stdout(logf), contextlib.redirect_stderr(logf):
                rc = command(list(argv))
        except SystemExit as e:  # argparse refused the arguments
            rc = e.code if isinstance(e.code, int) else 2
        except KeyboardInterrupt:  # stopped outside the command's own handler (before or after it)
            rc = 130
        except Exception:  # noqa: BLE001 - any crash is this job's failure, kept in its log
            traceback.print_exc(file=logf)
            rc = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    if rc == 130 and multiprocessing.parent_process() is not None:  # a sweep worker told to stop
        os._exit(rc)  # (smearlab.cli.main's code for a stop): returning, it took the grid's next point
    return rc


def collect_sweep(sweep: Sweep | str | Path, out: str | Path, *, notebook_dir: str | Path | None = None,
                  wall_s: float | None = None) -> dict[str, Any]:
    """Tabulate the jobs of a sweep found in ``out`` (run here or by a scheduler).

    Reads ``out/job_NNN/index.json`` of every grid point and writes ``out/sweep.json`` (every
    row with its full metrics), ``out/sweep.csv`` and ``out/sweep.html`` (one row per point:
    status, parameters, seconds, the scalar metrics). A point is ``ok``, ``failed`` (the
    notebook raised), ``missing`` (no result: not run yet, or the job died) or ``stale`` (its
    result was produced with other parameters than the sweep file now gives).

    Parameters
    ----------
    sweep : the sweep, or its file (read with :func:`load_sweep`).
    out : the sweep's output folder, holding the jobs' folders.
    notebook_dir : the folder of the notebooks, when ``sweep`` is a file.
    wall_s : the wall time of the run to record (None when only collecting).

    Returns
    -------
    dict
        the sweep index written to ``sweep.json``: the sweep's settings, ``jobs``, ``ok``, ``failed``
        (the jobs not ok), ``metric_columns`` and ``rows``.
    """
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep, notebook_dir)
    out = Path(out)
    if not out.is_dir():  # a mistyped folder made a table of points all "missing"
        raise DataError(out, "no such folder: give the sweep's output folder (its --out) to collect")
    theirs = _recorded_sweep(out)
    if theirs and theirs != str(Path(sweep.path).resolve()):
        log.warning("%s holds the jobs of another sweep file, %s: their rows read stale or missing", out, theirs)
    rows = [_sweep_row(sweep, job) for job in sweep_jobs(sweep, out)]
    columns = _metric_columns(sweep, rows)
    index = {
        "sweep": str(sweep.path), "notebook": sweep.notebook.stem, "profile": sweep.profile,
        "grid": sweep.grid, "parameters": sweep.parameters, "out": str(out),
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "git_commit": git_commit(),
        "wall_s": round(wall_s, 2) if wall_s is not None else None,
        "jobs": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
        "failed": [r["job"] for r in rows if r["status"] != "ok"],
        "metric_columns": columns, "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", index)
    header, table = _sweep_table(sweep, rows, columns)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *table])
    write_text(out / "sweep.csv", buf.getvalue())
    write_text(out / "sweep.html", _sweep_html(index, header, table))
    return index


def _sweep_row(sweep: Sweep, job: SweepJob) -> dict[str, Any]:
    """The result of one grid point, read from its run folder."""
    row = {"job": job.name, "parameters": job.point, "status": "missing", "seconds": None,
           "metrics": {}, "error": None, "index": f"{job.name}/index.html"}
    index_path = job.out / "index.json"
    try:
        run = json.loads(index_path.read_text(encoding="utf-8"))
        result = run["notebooks"][sweep.notebook.stem]
    except FileNotFoundError:
        row["error"] = f"no result in {job.out} (not run yet, or the job died: see its job.log or scheduler log)"
        return row
    except (OSError, ValueError, KeyError, TypeError) as e:
        row["error"] = f"unreadable result {index_path}: {type(e).__name__}: {e}"
        return row
    row.update(status=result.get("status", "failed"), seconds=result.get("seconds"),
               metrics=result.get("metrics") or {}, error=result.get("error"))
    stale = _stale(sweep, job, result.get("parameters") or {}, run.get("profile"))
    if stale:
        row.update(status="stale", error=f"{stale}: run this job again")
    return row


#: Parameters a job gets from its command line and the runner, not from the sweep file: they
#: may differ between running and collecting.
_FROM_THE_RUN = ("quick", "seed", "device", "data_root", "dataset", *RUNNER_PARAMETERS)


def _stale(sweep: Sweep, job: SweepJob, ran_with: dict, profile: str | None) -> str | None:
    """Why a job's result is not the sweep file's point (None when it is): a parameter the file
    sets to another value, one the run had and the file no longer sets, another profile."""
    wanted = {**sweep.parameters, **job.point}
    for k, v in wanted.items():
        if not same_json(ran_with.get(k), v):  # tuples as lists, NaN as null
            return f"ran with {k}={ran_with.get(k)!r}, the sweep file says {v!r}"
    for k, v in ran_with.items():
        if k not in wanted and k not in _FROM_THE_RUN:
            return f"ran with {k}={v!r}, which the sweep file no longer sets"
    if profile is not None and profile != sweep.profile:
        return f"ran with profile {profile!r}, the sweep file says {sweep.profile!r}"
    if "quick" in ran_with and "quick" not in wanted and ran_with["quick"] != (sweep.profile == "quick"):
        return f"ran with quick={ran_with['quick']!r}, the sweep file's profile is {sweep.profile!r}"
    return None



def _metric_columns(sweep: Sweep, rows: list[dict]) -> list[str]:
    """The metric columns: the sweep's ``metrics``, else every scalar metric met, in order."""
    if sweep.metrics is not None:
        found = [set(flatten_dict(r["metrics"])) for r in rows if r.get("metrics")]
        if found:  # a misspelt name gave an empty column and every point "ok"
            met = set().union(*found)
            absent = [m for m in sweep.metrics if m not in met]
            if absent:
                log.warning("%s: metrics %s are in no job's metrics (the jobs wrote %s)", sweep.path, absent,
                            ", ".join(sorted(met)) or "none")
        return list(sweep.metrics)
    columns: dict[str, None] = {}
    for r in rows:
        for k, v in flatten_dict(r["metrics"]).items():
            if v is None or isinstance(v, (str, int, float, bool)):
                columns.setdefault(k)
    return list(columns)


def _sweep_table(sweep: Sweep, rows: list[dict], columns: list[str]) -> tuple[list[str], list[list]]:
    """Header and rows of the sweep table: job, status, parameters, seconds, metrics, error.

    A metric named like a parameter or a fixed column is headed ``metrics.<name>``; values
    that are not plain scalars (lists, mappings) are shown as one line of YAML.
    """
    params = list(sweep.grid)
    taken = {"job", "status", "seconds", "error", *params}
    header = ["job", "status", *params, "seconds",
              *(f"metrics.{c}" if c in taken else c for c in columns), "error"]
    table = []
    for r in rows:
        flat = flatten_dict(r["metrics"])
        values = [r["parameters"][p] for p in params]
        cells = [flat.get(c) for c in columns]
        table.append([r["job"], r["status"],
                      *(v if isinstance(v, (str, int, float, bool)) else format_value(v) for v in values),
                      r["seconds"],
                      *(c if c is None or isinstance(c, (str, int, float, bool)) else format_value(c)
                        for c in cells),
                      r["error"] or ""])
    return header, table


def _sweep_html(index: dict[str, Any], header: list[str], table: list[list]) -> str:
    """A small standalone HTML page with the sweep table (failed points in red)."""
    def cell(v) -> str:
        return "" if v is None or v == "" else format_cell(v)

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in table:
        job, status = row[0], row[1]
        cells = [f'<a href="{html.escape(job)}/index.html">{html.escape(job)}</a>', html.escape(status),
                 *(cell(v) for v in row[2:-1]), f"<code>{html.escape(str(row[-1]))[:400]}</code>"]
        body.append(f'<tr class="{"ok" if status == "ok" else "failed"}">'
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    summary = (f'notebook <b>{html.escape(index["notebook"])}</b> · profile {index["profile"]} · '
               f'{index["jobs"]} points, {len(index["failed"])} not ok · {index["date"]} · '
               f'commit {index["git_commit"]} · sweep file {html.escape(index["sweep"])}')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>smearlab sweep</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;font-size:14px}}tr.failed{{background:#fdd}}</style></head><body><h1>smearlab sweep</h1>
<p>{summary}</p><table><tr>{head}</tr>{''.join(body)}</table></body></html>
"""
