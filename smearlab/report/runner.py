"""Run the notebook series with papermill and write ``reports/<run>/``."""
from __future__ import annotations

import ast
import datetime as _dt
import html
import json
import logging
import os
import shlex
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Mapping

from tqdm.auto import tqdm

from ..core.device import describe as describe_hardware
from ..core.files import atomic_path, same_json, write_json, write_text
from ..core.threads import started_with, thread_environment
from ..experiments.profiles import REAL_DATA
from .results import NotebookResult, git_commit, index_html, results_markdown


log = logging.getLogger("smearlab.report")


PROFILES = ("quick", "full")


#: Parameters the runner sets itself; a profile, ``--param`` or a sweep may not set them.
RUNNER_PARAMETERS = ("metrics_path", "out_dir")

#: Notebook parameters the runner sets from its own options: ``--param`` may not set them (the
#: run's index would describe another run than the one made); a sweep's ``seed`` becomes ``--seed``.
OPTION_PARAMETERS = {"quick": "--profile", "seed": "--seed", "device": "--device", "data_root": "--data-root"}


#: The notebook series of the source tree.
REPO_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"




def find_notebooks(notebook_dir: str | Path | None = None) -> list[Path]:
    """The numbered notebooks (``NN_*.ipynb``) in ``notebook_dir``, in order.

    Default: ``./notebooks`` if it exists, else the ``notebooks/`` folder of the source tree.

    Parameters
    ----------
    notebook_dir : the folder to look in (None: the default above).

    Raises
    ------
    FileNotFoundError
        when the folder holds no numbered notebook.
    """
    if notebook_dir is None:
        here = Path.cwd() / "notebooks"
        notebook_dir = here if here.is_dir() else REPO_NOTEBOOKS
    nbs = sorted(p.resolve() for p in Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))
    if not nbs:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebook_dir}")
    return nbs


def notebook_parameters(name: str, profile: str, *, data_root: str | Path | None = None,
                        device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """The parameters a profile gives a notebook (before filtering to those it declares).

    Parameters
    ----------
    name : the notebook's name (e.g. ``"03_detection"``); with ``data_root`` its dataset is the one
        :data:`~smearlab.experiments.profiles.REAL_DATA` names under the root.
    profile : ``"quick"`` or ``"full"`` (sets ``quick``).
    data_root : folder holding the real datasets (None: the notebooks' synthetic default).
    device, seed : the ``device`` and ``seed`` parameters.

    Returns
    -------
    dict
        ``quick``, ``seed``, ``device``, and with ``data_root`` also ``data_root`` and ``dataset``
        (absolute paths).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    params: dict[str, Any] = {"quick": profile == "quick", "seed": seed, "device": device}
    if data_root is not None:
        params["data_root"] = str(Path(data_root).resolve())
        if name in REAL_DATA:
            params["dataset"] = str((Path(data_root) / REAL_DATA[name]).resolve())
    return params


class _NothingWritten(Exception):
    """papermill failed before writing any output notebook."""


def run_notebook(nb: Path, out_dir: Path, parameters: dict[str, Any], *, kernel: str = "python3",
                 timeout: int | None = 3600, html_export: bool = True) -> NotebookResult:
    """Execute one notebook into ``out_dir``; never raises for a failing notebook.

    The kernel's working folder is ``out_dir`` too, so that a relative path written by the
    notebook lands in the run folder, never beside the notebook or elsewhere.

    Parameters
    ----------
    nb : the notebook file.
    out_dir : the run folder; the executed notebook, its ``<name>.metrics.json`` and HTML export go
        here, and ``out_dir/<name>`` is the notebook's ``out_dir`` parameter.
    parameters : candidate parameters; the notebook gets those it declares, plus ``metrics_path``
        and ``out_dir`` when it declares them.
    kernel : the Jupyter kernel name.
    timeout : seconds one cell may run (None: no limit).
    html_export : also export the executed notebook to HTML.

    Returns
    -------
    NotebookResult
        status ``"ok"`` or ``"failed"`` (with the error), seconds, the metrics it recorded.
    """
    import papermill as pm

    name = nb.stem
    # the kernel runs in out_dir: the paths the runner sets are absolute, and so are the path
    # parameters run_report is given (absolute_paths); a relative one passed here is read from out_dir
    out_dir = out_dir.resolve()
    out_nb = out_dir / f"{name}.ipynb"
    metrics_path = out_dir / f"{name}.metrics.json"
    for stale in (metrics_path, out_nb, out_nb.with_suffix(".html")):
        if stale.exists():
            stale.unlink()  # a rerun must not show the last run's numbers, notebook or page
    status, error, detail = "ok", None, ""
    t0 = time.perf_counter()
    try:
        declared = set(pm.inspect_notebook(str(nb)))
    except Exception as e:  # unreadable notebook file
        declared, status, error = set(), "failed", f"{type(e).__name__}: {e}"
    written = status == "ok"
    params = {k: v for k, v in parameters.items() if k in declared}
    if "metrics_path" in declared:
        params["metrics_path"] = str(metrics_path)
    if "out_dir" in declared:  # where a notebook writes exports and models: its own sub-folder
        params["out_dir"] = str(out_dir / name)
    if status == "ok":
        try:
            with atomic_path(out_nb) as tmp:
                try:
                    pm.execute_notebook(str(nb), str(tmp), parameters=params, kernel_name=kernel,
                                        cwd=str(out_dir), progress_bar=False,
                                        execution_timeout=timeout, log_output=False)
                except Exception as e:  # PapermillExecutionError and kernel deaths alike
                    status, error, detail = "failed", _error_text(e), str(e)
                    if not tmp.exists() or tmp.stat().st_size == 0:
                        raise _NothingWritten from e  # keep no empty notebook
                    _mark_failed(tmp, error)
                else:
                    stopped = _first_cell_not_run(tmp)
                    if stopped is not None:  # papermill takes sys.exit(0) for a clean end
                        status = "failed"
                        error = f"the notebook stopped before its cell '{stopped}' (sys.exit or exit in a cell?)"
                        _mark_failed(tmp, error)
        except _NothingWritten:
            written = False
    seconds = time.perf_counter() - t0
    metrics, problem = _read_metrics(metrics_path)
    if problem is not None and status == "ok":  # the notebook ran, but its figures cannot be used
        status, error = "failed", problem
    if status != "ok":  # with the whole traceback: the index has one line
        log.error("%s failed: %s%s", name, error, f"\n{detail}" if detail.strip() else "")
    html_file = export_html(out_nb) if html_export and written else None
    return NotebookResult(name, status, round(seconds, 2), out_nb.name if written else None,
                          html_file.name if html_file else None, metrics, error, params)


def _error_text(e: Exception) -> str:
    """One line saying what failed: ``KeyError: 'k' (cell In[3])`` for an exception a cell raised
    (papermill's ``ename``, ``evalue``, ``exec_count``; its message is the whole traceback), else the
    exception's type and the first line of its message (a timeout, a kernel that died)."""
    if getattr(e, "ename", None):  # PapermillExecutionError
        count = getattr(e, "exec_count", None)
        return (f"{e.ename}: {e.evalue}" if str(e.evalue or "").strip() else e.ename).splitlines()[0] \
            + (f" (cell In[{count}])" if count is not None else "")
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _first_cell_not_run(notebook: Path) -> str | None:
    """The first line of the first code cell of an executed notebook that did not run, or None
    when all ran: a cell calling ``sys.exit(0)`` or ``exit()`` ends the kernel's work cleanly to
    papermill, and the notebook was reported ok without its later cells (its record of figures)."""
    import nbformat
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception:  # unreadable: the metrics check reports what is missing
        return None
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.strip() and cell.get("execution_count") is None:
            return cell.source.strip().splitlines()[0][:60]
    return None


def _mark_failed(notebook: Path, error: str) -> None:
    """Put a failure banner at the top of an executed notebook that has none: papermill marks a cell
    that raised, but a kernel that died or a cell that timed out left a notebook (and its HTML page)
    that read as a clean run, its last cells blank."""
    import nbformat
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception as e:  # an unreadable partial notebook: the index still says failed
        log.warning("%s: could not mark the notebook failed (%s)", notebook.name, e)
        return
    meta = nb.metadata.setdefault("papermill", {})
    if meta.get("exception"):
        return  # papermill's own banner and error cell are there
    meta["exception"] = True
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(
        f'<span style="color:red; font-size:2em">This notebook did not finish: {html.escape(error)}</span>',
        metadata={"tags": ["smearlab-failed"]}))
    nbformat.write(nb, notebook)


def _read_metrics(path: Path) -> tuple[dict, str | None]:
    """``(metrics, problem)``: the notebook's metrics file as a dict (empty when it wrote none),
    and what is wrong with the file when it is not a readable JSON object (the notebook is then
    marked failed, naming the file, rather than the whole run stopping)."""
    if not path.exists():
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return {}, f"{path.name}: not a readable JSON metrics file ({e})"
    if not isinstance(data, dict):
        return {}, f"{path.name}: the metrics file must hold a JSON object, not a {type(data).__name__}"
    return data, None


def export_html(notebook: Path) -> Path:
    """Export an executed notebook to HTML beside it.

    Parameters
    ----------
    notebook : the executed ``.ipynb`` file.

    Returns
    -------
    Path
        the ``.html`` file (same name, written atomically).
    """
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(notebook, as_version=4))
    out = notebook.with_suffix(".html")
    write_text(out, body)
    return out


def run_report(profile: str = "quick", *, data_root: str | Path | None = None, device: str = "auto",
               out: str | Path | None = None, notebooks: Iterable[str] | None = None,
               notebook_dir: str | Path | None = None, seed: int = 0, kernel: str = "python3",
               timeout: int | None = 3600, html_export: bool = True,
               parameters: Mapping[str, Any] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run the notebook series and write the run folder; returns the index dict.

    Parameters
    ----------
    profile : "quick" (CPU-sized, about a minute a notebook) or "full".
    data_root : folder holding the real datasets; notebooks listed in :data:`smearlab.experiments.profiles.REAL_DATA` then use
        them instead of the synthetic default.
    out : run folder (default ``reports/<date>-<profile>``). Re-running into the same folder with
        ``notebooks`` re-executes only those and keeps the other entries of the index.
    notebooks : names (``01_eda`` or ``01``) to run; default all.
    notebook_dir : folder of the ``NN_*.ipynb`` notebooks (default: see :func:`find_notebooks`).
    device, seed : the ``device`` and ``seed`` parameters of every notebook.
    kernel : the Jupyter kernel name.
    timeout : seconds one cell may run before the notebook is marked failed (None: no limit).
    html_export : also export each executed notebook to HTML.
    parameters : extra notebook parameters (``--param k=v``), over the profile's; each notebook
        gets those it declares. A relative path in a path parameter (``dataset``, ``model``, ...)
        is made absolute (:func:`absolute_paths`), as the notebooks run in the run folder.
    threads : threads of each notebook's kernel (None: PyTorch's default, one per core). Idle
        threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE`` unless the environment
        sets a policy, see :mod:`smearlab.core.threads`), so that a report shares a busy machine fairly.

    Raises
    ------
    ValueError
        before anything is written: for an unknown notebook, profile or device, a seed that is
        not a whole number, a ``data_root`` that is not a folder, a parameter that none of
        the chosen notebooks declares (a typo would otherwise be dropped silently) or that the
        runner sets itself, a parameter value of the wrong type (see
        :func:`check_parameter_type`), an ``out`` that is a file or cannot be written, or an
        ``index.json`` in ``out`` that is not a run index.
    """
    all_nbs = find_notebooks(notebook_dir)
    chosen = select_notebooks(all_nbs, notebooks)
    parameters = absolute_paths(parameters or {})  # the notebooks run in the run folder
    _check_parameters(parameters, chosen)
    # every bad setting is refused before anything is written (a rerun's clean-up wipes entries)
    _check_options(profile, device, seed, data_root)
    try:
        thread_environment(threads)
    except ValueError as e:
        raise ValueError(f"--threads: {e}") from None
    out_dir = Path(out) if out else Path("reports") / f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{profile}"
    index_path = out_dir / "index.json"
    results = _previous_results(index_path)
    settings = {"profile": profile, "device": device, "data_root": str(Path(data_root).resolve()) if data_root else None,
                "seed": seed, "parameters": {k: parameters[k] for k in sorted(parameters)}}
    kept = sorted(set(results) - {nb.stem for nb in chosen})
    if kept:
        _check_same_settings(index_path, settings, kept)
    make_out_dir(out_dir)
    rerun = [nb.stem for nb in chosen if nb.stem in results]
    if rerun:  # a run that dies must not leave the earlier results of these notebooks standing as its own
        earlier = json.loads(index_path.read_text(encoding="utf-8"))
        for name in rerun:
            results.pop(name)
            earlier["notebooks"].pop(name, None)
        earlier["failed"] = [k for k in earlier.get("failed", []) if k not in rerun]
        write_json(index_path, earlier)
        # and the pages made from the index say the same (they listed the notebooks being re-run as done)
        write_text(out_dir / "index.html", index_html(earlier))
        write_text(out_dir / "RESULTS.md", results_markdown(earlier))
    t0 = time.perf_counter()
    commit = git_commit()
    with started_with(threads) as environment:  # the one place notebook kernels are started
        for nb in _progress(chosen):
            params = {**notebook_parameters(nb.stem, profile, data_root=data_root, device=device, seed=seed),
                      **parameters}
            res = run_notebook(nb, out_dir, params, kernel=kernel, timeout=timeout, html_export=html_export)
            # each entry says which code made it: a partial rerun keeps the others, made by another commit
            results[nb.stem] = {**asdict(res), "git_commit": commit,
                                "date": _dt.datetime.now().isoformat(timespec="seconds")}
    index = {
        "out": str(out_dir), **settings,
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "git_commit": commit,
        "hardware": describe_hardware(device), "threads": threads, "kernel_environment": environment,
        "command": "smearlab " + shlex.join(report_argv(
            profile, notebook_dir=notebook_dir, notebooks=notebooks, device=device, seed=seed,
            data_root=data_root, timeout=timeout, html_export=html_export, parameters=parameters,
            out=out_dir, threads=threads)),
        "wall_s": round(time.perf_counter() - t0, 2),
        "notebooks": dict(sorted(results.items())),
        "ran": [nb.stem for nb in chosen],
        "failed": sorted(k for k, v in results.items() if v["status"] != "ok"),
    }
    write_json(index_path, index)
    write_text(out_dir / "index.html", index_html(index))
    write_text(out_dir / "RESULTS.md", results_markdown(index))
    return index


def _check_options(profile: str, device: str, seed: int, data_root: str | Path | None) -> None:
    """Refuse an unknown profile or device, a seed that is not a whole number or a data root that is
    not a folder (ValueError)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    if not isinstance(device, str) or (device.lower() != "auto" and not _is_device(device.lower())):
        raise ValueError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be a whole number, got {seed!r}")
    if data_root is not None and not Path(data_root).is_dir():
        raise ValueError(f"--data-root {data_root}: no such folder")


def _is_device(name: str) -> bool:
    """Whether PyTorch knows the device ``name`` (``cpu``, ``cuda:1``; available or not)."""
    import torch
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        return False
    return True


#: Notebook parameters that name a file or folder (a dataset, a domain's dataset, a saved model).
PATH_PARAMETERS = ("dataset", "third", "target", "model")


def absolute_paths(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` with each relative path of a :data:`PATH_PARAMETERS` entry made absolute.

    Notebooks run in their run folder (:func:`run_notebook`), where a path given relative to
    the folder the command was started in names nothing (or something else). A value is made
    absolute when it is text naming a file or folder that exists relative to the current working
    folder (for ``PATH#DOMAIN``, its ``PATH``); other values (``synthetic``, a domain name such as
    ``dataset2``, absolute paths, paths that do not exist here) are kept as given.

    Parameters
    ----------
    parameters : notebook parameters (``--param``, a sweep's ``parameters`` or grid point).

    Returns
    -------
    dict
        a copy, with those paths absolute (what the notebooks get and the run's index records).
    """
    from ..data.synthetic import STAINS

    keywords = {"synthetic", *(f"synthetic-{k}" for k in STAINS)}  # open_dataset's names, even beside a folder
    out = dict(parameters)
    for key in PATH_PARAMETERS:
        value = out.get(key)
        if not isinstance(value, str) or not value or value in keywords or Path(value).is_absolute():
            continue
        path, sep, domain = (value, "", "") if Path(value).exists() else value.partition("#")
        if path and Path(path).exists():
            out[key] = str(Path(path).resolve()) + sep + domain
    return out


def make_out_dir(out_dir: Path) -> None:
    """Create the run folder ``out_dir`` and check that files can be written in it.

    Parameters
    ----------
    out_dir : the run folder (parent folders are created too).

    Raises
    ------
    ValueError
        ``--out <folder>: ...`` when it is a file, cannot be created or is read-only.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out_dir}: cannot create the folder ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".smearlab-write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"--out {out_dir}: cannot write in the folder ({e.strerror or e})") from None


def _previous_results(index_path: Path) -> dict[str, dict[str, Any]]:
    """The notebook entries of an earlier run's ``index.json`` (kept on a rerun), or {} if none.

    Raises
    ------
    ValueError
        when the file is unreadable or not a smearlab run index, so that a folder holding
        something else is not mixed into (or over-written by) a run.
    """
    if not index_path.exists():
        return {}
    try:
        data = json.loads(index_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{index_path}: cannot read the run index ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        problem = f"malformed JSON: {e}"
    else:
        problem = _index_problem(data)
    if problem is None:
        return {name: {"error": None, "metrics": {}, **entry} for name, entry in data["notebooks"].items()}
    raise ValueError(f"{index_path}: the --out folder holds an index.json that is not a smearlab run "
                     f"index ({problem}); choose another --out or remove the file")


def _check_same_settings(index_path: Path, settings: dict[str, Any], kept: list[str]) -> None:
    """Refuse a run into a folder whose other results (``kept``) were made with other settings:
    the index describes one set of settings, and would give the new ones to the old results."""
    earlier = json.loads(index_path.read_text(encoding="utf-8"))
    if earlier.get("data_root"):  # indexes before 2026-12-07 kept the folder as typed
        earlier["data_root"] = str(Path(earlier["data_root"]).resolve())
    for key, value in settings.items():
        if key in earlier and not same_json(earlier[key], value):  # a NaN reads back as null
            raise ValueError(f"{index_path.parent}: its results of {', '.join(kept)} were made with {key} "
                             f"{earlier[key]!r}, this run has {value!r}; one report folder holds one set of "
                             "settings: choose another --out (or re-run every notebook in it)")



def _index_problem(data: Any) -> str | None:
    """What makes ``data`` (a parsed ``index.json``) not a run index, or None."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    notebooks = data.get("notebooks")
    if not isinstance(notebooks, dict):
        return "no 'notebooks' mapping"
    for name, r in notebooks.items():
        if not (isinstance(r, dict) and isinstance(r.get("status"), str)
                and isinstance(r.get("seconds"), (int, float)) and not isinstance(r.get("seconds"), bool)
                and isinstance(r.get("metrics", {}), (dict, type(None)))
                and isinstance(r.get("error"), (str, type(None)))):
            return f"notebook entry {name!r} is not a run result with a 'status' text and 'seconds'"
    return None


def declared_parameters(nb: Path) -> dict[str, Any]:
    """The parameters a notebook declares in its ``parameters`` cell (papermill's inspection).

    Parameters
    ----------
    nb : the notebook file.

    Returns
    -------
    dict
        ``{name: papermill's description}`` (``inferred_type_name``, ``default``, ``help``).
    """
    import papermill as pm
    return dict(pm.inspect_notebook(str(nb)))


def _check_parameters(parameters: Mapping[str, Any], notebooks: list[Path]) -> None:
    """Refuse extra parameters the runner owns, that none of ``notebooks`` declares, or whose
    value has another type than a notebook declaring it expects (:func:`check_parameter_type`)."""
    reserved = sorted(set(parameters) & set(RUNNER_PARAMETERS))
    if reserved:
        raise ValueError(f"parameter {reserved[0]!r} is set by the report runner; it cannot be given")
    owned = sorted(set(parameters) & set(OPTION_PARAMETERS))
    if owned:
        raise ValueError(f"parameter {owned[0]!r} is set by {OPTION_PARAMETERS[owned[0]]}: give that option instead of "
                         f"--param {owned[0]}=... (the run's index records the options)")
    if not parameters:
        return
    declared: dict[str, dict[str, Any]] = {}
    unreadable = False
    for nb in notebooks:
        try:
            declared[nb.stem] = declared_parameters(nb)
        except Exception:  # an unreadable notebook fails (and is reported) when it runs; the others are checked
            unreadable = True
    names = set().union(*declared.values())
    unknown = sorted(set(parameters) - names)
    if unknown and not unreadable:  # an unreadable notebook may declare it
        raise ValueError(f"parameter {unknown[0]!r} is not declared by {', '.join(declared)}; "
                         f"declared parameters: {', '.join(sorted(names))}")
    for notebook, specs in declared.items():
        for key, value in parameters.items():
            if key in specs:
                check_parameter_type(f"--param {key}={format_value(value)}", key, value, notebook, specs[key])


#: Python types of a parameter's default (or annotation) and the name an error message uses.
_KINDS = ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), ((list, tuple), "list"),
          (dict, "dict"))


#: Which value types each declared kind accepts (None is accepted for every kind: "not set").
_ACCEPTS = {"bool": (bool,), "int": (int, float), "float": (int, float), "str": (str,),
            "list": (list,), "dict": (dict,)}


def check_parameter_type(label: str, name: str, value: Any, notebook: str, spec: Mapping[str, Any]) -> None:
    """Refuse a parameter value whose type clearly differs from what the notebook declares.

    The declared type is the annotation of the ``parameters`` cell line (``epochs: int = 4``;
    any other annotation, e.g. ``augment: object = True``, accepts anything) or else the type of
    the default value, as papermill's ``inspect_notebook`` reports them
    (``spec``). A default of ``None`` or of another type accepts anything, and ``None`` is
    accepted for every type. Otherwise: a bool takes only ``true``/``false``; an int or a
    float takes numbers (not text, not a boolean; an int default also takes a float, as
    ``perplexity = 30`` may well be 12.5); a str takes text only: a number is refused, since
    what was typed is gone once read (``1.10`` reads 1.1, ``007`` reads 7; quote it), as are a
    boolean (``true``/``false``), a list and a mapping; a list
    (or tuple) takes a list; a dict a mapping.

    Parameters
    ----------
    label : how the value was given, the start of the message (``--param epochs=abc``).
    name, value : the parameter and its value.
    notebook : the notebook's name, for the message.
    spec : papermill's description of the parameter (``inferred_type_name``, ``default``).

    Raises
    ------
    ValueError
        ``<label>: <notebook> declares <name> as <type> (default <default>), got <value>``; also
        for a mapping (nested ones too) with a key that is not text, which papermill would hand
        the notebook as text (``{1: 0.5}`` as ``{'1': 0.5}``).
    """
    key = _non_text_key(value)
    if key is not _ALL_TEXT:  # papermill writes every mapping key as text: {1: 0.5} reached the notebook as {'1': 0.5}
        raise ValueError(f"{label}: the mapping key {key!r} is not text, and a notebook receives every key as text "
                         f"({key!r} would arrive as {str(key)!r}); quote the keys, or pass a list of pairs")
    kind, default = _declared_kind(spec)
    if kind is None or value is None:
        return
    if isinstance(value, _ACCEPTS[kind]) and (kind == "bool" or not isinstance(value, bool)):
        return
    got = _describe(value)
    if kind == "str" and isinstance(value, bool):
        got += " (true and false are booleans: quote the value to pass text)"
    elif kind == "str" and isinstance(value, (int, float)):  # 1.10 read as 1.1, 007 as 7: not the text typed
        got += " (a number: quote the value to pass the text as typed)"
    raise ValueError(f"{label}: {notebook} declares {name} as {kind} (default {default}), got {got}")


#: what :func:`_non_text_key` returns when every key is text (a key may be None: YAML's ``~``)
_ALL_TEXT = object()


def _non_text_key(value: Any):
    """The first mapping key (nested ones too) of ``value`` that is not text, or :data:`_ALL_TEXT`."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                return k
            inner = _non_text_key(v)
            if inner is not _ALL_TEXT:
                return inner
    elif isinstance(value, (list, tuple)):
        for v in value:
            inner = _non_text_key(v)
            if inner is not _ALL_TEXT:
                return inner
    return _ALL_TEXT


def _declared_kind(spec: Mapping[str, Any]) -> tuple[str | None, str]:
    """The kind (:data:`_ACCEPTS` key, or None: anything goes) and default text of a parameter."""
    default = str(spec.get("default", "None"))
    annotated = spec.get("inferred_type_name")
    if annotated in _ACCEPTS:  # `epochs: int = 4`
        return annotated, default
    if annotated not in (None, "None"):  # `augment: object = True` (or a union): a parameter of several types
        return None, default
    try:
        value = ast.literal_eval(default)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None, default  # an expression (Path("x"), a function call): not checked
    return next((n for t, n in _KINDS if isinstance(value, t)), None), default


def _describe(value: Any) -> str:
    """A parameter value in words for an error message: "the text 'abc'", "the number 4.5"."""
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        return f"the list {format_value(value)}"
    if isinstance(value, dict):
        return f"the mapping {format_value(value)}"
    return f"a {type(value).__name__} {value!r}"


def select_notebooks(nbs: list[Path], names: Iterable[str] | None) -> list[Path]:
    """The notebooks of ``nbs`` that ``names`` asks for, each once, in the series' order whatever
    the order asked: a later notebook reads what an earlier one of the run wrote (09 counts with
    03's model; asked ``09 03``, it counted with the model of an earlier run).

    Parameters
    ----------
    nbs : the available notebooks (:func:`find_notebooks`).
    names : full names (``01_eda``) or number prefixes (``01``); None or empty: all of ``nbs``.

    Raises
    ------
    ValueError
        for a name that matches no notebook (the available ones are listed).
    """
    if not names:
        return nbs
    chosen = []
    for n in names:
        match = [p for p in nbs if p.stem == n or p.stem.split("_")[0] == n]
        if not match:
            raise ValueError(f"no notebook {n!r}; available: {', '.join(p.stem for p in nbs)}")
        chosen += [m for m in match if m not in chosen]
    return [p for p in nbs if p in chosen]


def _progress(items):
    return tqdm(items, desc="notebooks", unit="nb")


def _yaml_classes():
    """A YAML loader and dumper that read scalars as YAML 1.2's core schema (and Python) does:
    ``1e-3`` is a number (PyYAML's YAML 1.1 reads it as text), ``010`` is ten (not eight),
    ``1:30`` is text (not 90), ``2024-01-01`` is text (not a date, which no notebook parameter
    or JSON index can hold), only ``true``/``false`` are booleans (not yes/no/on/off), and
    ``None`` is null like ``null`` and ``~``. A key repeated in a mapping is refused (YAML
    readers keep the last value, silently)."""
    import re

    import yaml

    def resolvers():
        out = {k: [(t, r) for t, r in v if t not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                                                     "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")]
               for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
        for tag, rx, first in (
                ("tag:yaml.org,2002:null", r"^None$", "N"),  # Python's spelling, as the notebooks' comments use it
                ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
                ("tag:yaml.org,2002:int", r"^[-+]?[0-9]+$", "-+0123456789"),
                ("tag:yaml.org,2002:float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                                            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789.")):
            for c in first:
                out.setdefault(c, []).append((tag, re.compile(rx)))
        return out

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            # a repeated key kept only its last value, silently (`grid:` twice, `{a: 1, a: 2}`)
            seen = set()
            for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: refused by the base class
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found the key {key!r} twice (only one value can be kept)", key_node.start_mark)
            return super().construct_mapping(node, deep)

    class Dumper(yaml.SafeDumper):
        pass

    Loader.yaml_implicit_resolvers = resolvers()
    Dumper.yaml_implicit_resolvers = resolvers()  # text that would read back as a number is quoted
    Loader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node), 10))
    return Loader, Dumper


def load_yaml(text: str) -> Any:
    """``text`` read as YAML with YAML 1.2's core scalars (see :func:`_yaml_classes`): what
    ``--param`` values and sweep files are read with.

    Parameters
    ----------
    text : the YAML text.

    Raises
    ------
    yaml.YAMLError
        for malformed YAML.
    """
    import yaml
    return yaml.load(text, Loader=_yaml_classes()[0])  # noqa: S506 (a SafeLoader subclass)


def parse_param(text: str) -> tuple[str, Any]:
    """``"k=v"`` -> ``(k, v)`` with ``v`` read as YAML (``256`` int, ``0.5`` and ``1e-3`` floats,
    ``true``, ``null``, ``[a, b]`` list, anything else text; :func:`load_yaml`).

    Parameters
    ----------
    text : the ``--param`` argument, ``NAME=VALUE``.

    Raises
    ------
    ValueError
        when there is no ``=``, the name is not an identifier, the value is not valid YAML, holds
        a comment (`` #...``, which YAML drops: quote the value) or reads as a block list or
        mapping (``-``, ``a: b``: write ``[a]``, ``{a: b}``, or quote the text).
    """
    import yaml

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ValueError(f"--param {text!r}: expected NAME=VALUE, e.g. input_size=384")
    if not value.strip() or value.lstrip().startswith("#"):  # YAML reads both as null, silently
        raise ValueError(f"--param {text!r}: the value is empty or starts a YAML comment ('#'); write null for "
                         "None, '' for empty text, or quote it ('#5')")
    try:
        parsed = load_yaml(value)
        comment = _comment(value)
        block = yaml.compose(value, Loader=_yaml_classes()[0])  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ValueError(f"--param {text!r}: the value is not valid YAML ({e})") from None
    if comment is not None:  # `dataset=/data/run #2` read as /data/run
        raise ValueError(f"--param {text!r}: {comment!r} is a YAML comment, dropped from the value; quote the value "
                         f"to keep it, e.g. --param '{key}=\"{value.strip()}\"'")
    if isinstance(block, (yaml.SequenceNode, yaml.MappingNode)) and not block.flow_style:
        kind = "list" if isinstance(parsed, list) else "mapping"  # `model=-` read as [None], `x=a: b` as {a: b}
        raise ValueError(f"--param {text!r}: the value reads as a YAML block {kind} ({format_value(parsed)}); "
                         "write a list as [a, b] and a mapping as {k: v}, or quote the value for text "
                         f"(--param '{key}=\"{value.strip()}\"')")
    return key, parsed


def _comment(text: str) -> str | None:
    """The first YAML comment of ``text`` (a ``#`` at the start or after a space, outside quotes), or
    None: YAML drops it from the value, so ``/data/run #2`` reads as ``/data/run``."""
    import yaml

    spans = [(t.start_mark.index, t.end_mark.index) for t in yaml.scan(text, Loader=_yaml_classes()[0])]
    for i, c in enumerate(text):
        if c == "#" and (i == 0 or text[i - 1].isspace()) and not any(a <= i < b for a, b in spans):
            return text[i:].splitlines()[0].strip()
    return None


def format_value(value: Any) -> str:
    """``value`` as one line of YAML that :func:`parse_param` reads back to the same value.

    Parameters
    ----------
    value : a parameter value (YAML-representable: numbers, text, booleans, None, lists, mappings).
    """
    import yaml

    def dump(**style) -> str:
        text = yaml.dump(value, Dumper=_yaml_classes()[1], default_flow_style=True, width=float("inf"),
                         **style).strip()
        return text.removesuffix("...").strip()

    text = dump()
    return text if "\n" not in text else dump(default_style='"')  # multi-line text: escaped


def report_argv(profile: str, *, notebook_dir: str | Path | None = None,
                notebooks: Iterable[str] | None = None, device: str = "auto", seed: int = 0,
                data_root: str | Path | None = None, timeout: int | None = 3600, html_export: bool = True,
                parameters: Mapping[str, Any] | None = None, out: str | Path | None = None,
                threads: int | None = None) -> list[str]:
    """The ``smearlab report`` arguments (after ``smearlab``) that run these settings.

    Parameters
    ----------
    profile : ``"quick"`` or ``"full"``.
    notebook_dir, notebooks, device, seed, data_root, timeout, html_export, parameters, out, threads : as
        for :func:`run_report`; options left at their defaults are omitted (``--timeout 0`` for no limit).
    """
    argv = ["report"]
    if notebook_dir is not None:
        argv += ["--notebooks", str(notebook_dir)]
    if notebooks:
        argv += ["--only", *notebooks]
    argv += ["--profile", profile, "--device", device, "--seed", str(seed)]
    if data_root is not None:
        argv += ["--data-root", str(data_root)]
    if timeout != 3600:
        argv += ["--timeout", str(timeout or 0)]
    if not html_export:
        argv.append("--no-html")
    if threads is not None:
        argv += ["--threads", str(threads)]
    for key, value in (parameters or {}).items():
        argv += ["--param", f"{key}={format_value(value)}"]
    if out is not None:
        argv += ["--out", str(out)]
    return argv
