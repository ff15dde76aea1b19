"""Run the notebook series with papermill and write ``reports/<run>/``.

Each notebook gets its profile's parameters (only those it declares in its ``parameters``
cell), runs in a fresh kernel, and leaves three files: the executed notebook, an HTML export
and ``<name>.metrics.json`` (written by :func:`record` inside the notebook). ``index.json`` and
``index.html`` summarise the run. A failing notebook is marked failed and the others still run.

Parameter sweeps (:func:`run_sweep`) run one notebook over a grid of parameter values, one
independent job per grid point (each the ``smearlab report`` command that
:func:`sweep_jobs` spells out, so a cluster scheduler can run the same jobs), and tabulate the
recorded metrics with :func:`collect_sweep`. Everything is written inside the output folder
given, atomically.
"""
from __future__ import annotations

import ast
import contextlib
import csv
import datetime as _dt
import html
import io
import itertools
import json
import logging
import multiprocessing
import os
import shlex
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .hardware import describe as describe_hardware
from .io import atomic_path, flatten_dict, write_json, write_text

log = logging.getLogger("smearlab.report")

PROFILES = ("quick", "full")

#: Parameters the runner sets itself; a profile, ``--param`` or a sweep may not set them.
RUNNER_PARAMETERS = ("metrics_path", "out_dir")

#: What the index and RESULTS.md say for a notebook that recorded no metrics.
NO_METRICS = "no metrics recorded (the notebook did not call record(..., metrics_path))"

#: The notebook series of the source tree.
REPO_NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

#: Real dataset each notebook uses when ``--data-root`` is given (relative to the root).
REAL_DATA = {
    "01_eda": "cbc/Training",
    "02_preprocessing": "wbc_zheng.tar.xz",
    "03_detection": "cbc",
    "04_segmentation": "dsb2018_subset",
    "05_classical": "dsb2018_subset",
    "06_gradcam_masks": "wbc_zheng.tar.xz",
    "07_domain_adaptation": "wbc_zheng.tar.xz",
    "08_tsne": "wbc_zheng.tar.xz",
}


def find_notebooks(notebook_dir: str | Path | None = None) -> list[Path]:
    """The numbered notebooks (``NN_*.ipynb``) in ``notebook_dir``, in order.

    Default: ``./notebooks`` if it exists, else the ``notebooks/`` folder of the source tree.
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
    """The parameters a profile gives a notebook (before filtering to those it declares)."""
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


@dataclass
class NotebookResult:
    name: str
    status: str  # "ok" | "failed"
    seconds: float
    notebook: str | None
    html: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def record(metrics: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """Record a notebook's headline numbers: the one call each notebook ends with.

    Writes ``metrics`` as JSON to ``path`` (the ``metrics_path`` parameter the report runner
    injects) and shows them as a table. With ``path=None`` (interactive use) it only shows them.
    """
    if path:
        write_json(path, metrics)
    try:
        from IPython.display import Markdown, display
        rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in flatten_dict(metrics).items())
        display(Markdown("| metric | value |\n|---|---|\n" + rows))
    except ImportError:  # plain Python: print instead
        print(json.dumps(metrics, indent=2, default=str))
    return metrics


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def run_notebook(nb: Path, out_dir: Path, parameters: dict[str, Any], *, kernel: str = "python3",
                 timeout: int | None = 3600, html_export: bool = True) -> NotebookResult:
    """Execute one notebook into ``out_dir``; never raises for a failing notebook.

    The kernel's working folder is ``out_dir`` too, so that a relative path written by the
    notebook lands in the run folder, never beside the notebook or elsewhere.
    """
    import papermill as pm

    name = nb.stem
    out_dir = out_dir.resolve()  # the kernel runs in out_dir: every path it is given is absolute
    out_nb = out_dir / f"{name}.ipynb"
    metrics_path = out_dir / f"{name}.metrics.json"
    if metrics_path.exists():
        metrics_path.unlink()  # a rerun must not show the last run's numbers
    status, error = "ok", None
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
                    status = "failed"
                    error = f"{type(e).__name__}: {getattr(e, 'evalue', None) or e}"
                    if not tmp.exists() or tmp.stat().st_size == 0:
                        raise _NothingWritten from e  # keep no empty notebook
        except _NothingWritten:
            written = False
    if status != "ok":
        log.error("%s failed: %s", name, error)
    seconds = time.perf_counter() - t0
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    html_file = export_html(out_nb) if html_export and written else None
    return NotebookResult(name, status, round(seconds, 2), out_nb.name if written else None,
                          html_file.name if html_file else None, metrics, error, params)


def export_html(notebook: Path) -> Path:
    """Export an executed notebook to HTML beside it."""
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
               parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the notebook series and write the run folder; returns the index dict.

    Parameters
    ----------
    profile : "quick" (CPU-sized, about a minute a notebook) or "full".
    data_root : folder holding the real datasets; notebooks listed in :data:`REAL_DATA` then use
        them instead of the synthetic default.
    out : run folder (default ``reports/<date>-<profile>``). Re-running into the same folder with
        ``notebooks`` re-executes only those and keeps the other entries of the index.
    notebooks : names (``01_eda`` or ``01``) to run; default all.
    timeout : seconds one cell may run before the notebook is marked failed (None: no limit).
    parameters : extra notebook parameters (``--param k=v``), over the profile's; each notebook
        gets those it declares.

    Raises
    ------
    ValueError
        before any notebook runs: for an unknown notebook or profile, a parameter that none of
        the chosen notebooks declares (a typo would otherwise be dropped silently) or that the
        runner sets itself, a parameter value of the wrong type (see
        :func:`check_parameter_type`), an ``out`` that is a file or cannot be written, or an
        ``index.json`` in ``out`` that is not a run index.
    """
    all_nbs = find_notebooks(notebook_dir)
    chosen = _select(all_nbs, notebooks)
    parameters = dict(parameters or {})
    _check_parameters(parameters, chosen)
    out_dir = Path(out) if out else Path("reports") / f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{profile}"
    index_path = out_dir / "index.json"
    results = _previous_results(index_path)
    make_out_dir(out_dir)
    t0 = time.perf_counter()
    for nb in _progress(chosen):
        params = {**notebook_parameters(nb.stem, profile, data_root=data_root, device=device, seed=seed),
                  **parameters}
        res = run_notebook(nb, out_dir, params, kernel=kernel, timeout=timeout, html_export=html_export)
        results[nb.stem] = asdict(res)
    index = {
        "out": str(out_dir), "profile": profile, "device": device, "data_root": str(data_root) if data_root else None,
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "git_commit": _git_commit(),
        "hardware": describe_hardware(device),
        "command": "smearlab " + shlex.join(report_argv(
            profile, notebook_dir=notebook_dir, notebooks=notebooks, device=device, seed=seed,
            data_root=data_root, timeout=timeout, html_export=html_export, parameters=parameters,
            out=out_dir)),
        "wall_s": round(time.perf_counter() - t0, 2),
        "notebooks": dict(sorted(results.items())),
        "ran": [nb.stem for nb in chosen],
        "failed": sorted(k for k, v in results.items() if v["status"] != "ok"),
    }
    write_json(index_path, index)
    write_text(out_dir / "index.html", _index_html(index))
    write_text(out_dir / "RESULTS.md", results_markdown(index))
    return index


def make_out_dir(out_dir: Path) -> None:
    """Create the run folder ``out_dir`` and check that files can be written in it.

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
    """The parameters a notebook declares in its ``parameters`` cell (papermill's inspection)."""
    import papermill as pm
    return dict(pm.inspect_notebook(str(nb)))


def _check_parameters(parameters: Mapping[str, Any], notebooks: list[Path]) -> None:
    """Refuse extra parameters the runner owns, that none of ``notebooks`` declares, or whose
    value has another type than a notebook declaring it expects (:func:`check_parameter_type`)."""
    reserved = sorted(set(parameters) & set(RUNNER_PARAMETERS))
    if reserved:
        raise ValueError(f"parameter {reserved[0]!r} is set by the report runner; it cannot be given")
    if not parameters:
        return
    declared: dict[str, dict[str, Any]] = {}
    for nb in notebooks:
        try:
            declared[nb.stem] = declared_parameters(nb)
        except Exception:  # an unreadable notebook fails (and is reported) when it runs
            return
    names = set().union(*declared.values())
    unknown = sorted(set(parameters) - names)
    if unknown:
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
_ACCEPTS = {"bool": (bool,), "int": (int, float), "float": (int, float), "str": (str, int, float),
            "list": (list,), "dict": (dict,)}


def check_parameter_type(label: str, name: str, value: Any, notebook: str, spec: Mapping[str, Any]) -> None:
    """Refuse a parameter value whose type clearly differs from what the notebook declares.

    The declared type is the annotation of the ``parameters`` cell line (``epochs: int = 4``)
    or else the type of the default value, as papermill's ``inspect_notebook`` reports them
    (``spec``). A default of ``None`` or of another type accepts anything, and ``None`` is
    accepted for every type. Otherwise: a bool takes only ``true``/``false``; an int or a
    float takes numbers (not text, not a boolean; an int default also takes a float, as
    ``perplexity = 30`` may well be 12.5); a str takes text and numbers but not a
    boolean (YAML reads ``yes``/``no``/``on``/``off`` as booleans), list or mapping; a list
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
        ``<label>: <notebook> declares <name> as <type> (default <default>), got <value>``.
    """
    kind, default = _declared_kind(spec)
    if kind is None or value is None:
        return
    if isinstance(value, _ACCEPTS[kind]) and (kind == "bool" or not isinstance(value, bool)):
        return
    got = _describe(value)
    if kind == "str" and isinstance(value, bool):
        got += " (YAML reads yes/no, on/off and true/false as booleans: quote the value to pass text)"
    raise ValueError(f"{label}: {notebook} declares {name} as {kind} (default {default}), got {got}")


def _declared_kind(spec: Mapping[str, Any]) -> tuple[str | None, str]:
    """The kind (:data:`_ACCEPTS` key, or None: anything goes) and default text of a parameter."""
    default = str(spec.get("default", "None"))
    annotated = spec.get("inferred_type_name")
    if annotated in _ACCEPTS:  # `epochs: int = 4`
        return annotated, default
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


def _select(nbs: list[Path], names: Iterable[str] | None) -> list[Path]:
    if not names:
        return nbs
    chosen = []
    for n in names:
        match = [p for p in nbs if p.stem == n or p.stem.split("_")[0] == n]
        if not match:
            raise ValueError(f"no notebook {n!r}; available: {', '.join(p.stem for p in nbs)}")
        chosen += [m for m in match if m not in chosen]
    return chosen


def _progress(items):
    from tqdm.auto import tqdm
    return tqdm(items, desc="notebooks", unit="nb")


def _git_commit() -> str | None:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def results_markdown(index: dict[str, Any], *, max_metrics: int = 40) -> str:
    """A run's summary in Markdown: how it was made (command, hardware, date, commit), the
    status and wall time of each notebook, and each notebook's headline metrics (the scalars it
    recorded, at most ``max_metrics`` each). Written as ``RESULTS.md`` in every run folder;
    ``reports/RESULTS.md`` is a copy of the latest full run's.
    """
    def cell(v) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    data = index.get("data_root") or "synthetic default"
    lines = [
        f"# smearlab report: {index['profile']} profile",
        "",
        "| | |", "|---|---|",
        f"| command | `{index.get('command', '')}` |",
        f"| hardware | {cell(index.get('hardware', 'unknown'))} |",
        f"| device | {index['device']} |",
        f"| data | {cell(data)} |",
        f"| date | {index['date']} |",
        f"| git commit | {index.get('git_commit') or 'unknown'} |",
        f"| wall time | {index['wall_s']:.1f} s for {len(index['ran'])} notebooks |",
        f"| failed | {', '.join(index['failed']) or 'none'} |",
        "",
        "## Notebooks", "",
        "| notebook | status | seconds |", "|---|---|---|",
    ]
    for name, r in index["notebooks"].items():
        status = r["status"] if r["status"] == "ok" else f"**{r['status']}**: {cell((r.get('error') or '')[:200])}"
        lines.append(f"| {name} | {status} | {r['seconds']:.1f} |")
    for name, r in index["notebooks"].items():
        scalars = {k: v for k, v in flatten_dict(r.get("metrics") or {}).items()
                   if isinstance(v, (int, float, str, bool)) or v is None}
        lines += ["", f"## {name}", ""]
        if not scalars:
            lines.append(NO_METRICS + ".")
            continue
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {cell(k)} | {cell(v)} |" for k, v in list(scalars.items())[:max_metrics]]
        if len(scalars) > max_metrics:
            lines.append(f"| ... | {len(scalars) - max_metrics} more in {name}.metrics.json |")
    return "\n".join(lines) + "\n"


def _index_html(index: dict[str, Any]) -> str:
    rows = []
    for name, r in index["notebooks"].items():
        ok = r["status"] == "ok"
        metrics = flatten_dict(r.get("metrics") or {})
        shown = "<br>".join(f"{html.escape(k)}: {_fmt(v)}" for k, v in list(metrics.items())[:12]) \
            or f'<i>{html.escape(NO_METRICS)}</i>'

        links = (f'<a href="{r["notebook"]}">ipynb</a>' if r.get("notebook") else "") + (f' · <a href="{r["html"]}">html</a>' if r.get("html") else "")
        err = f'<br><code>{html.escape(r["error"] or "")[:400]}</code>' if not ok else ""
        rows.append(f'<tr class="{"ok" if ok else "failed"}"><td>{html.escape(name)}</td>'
                    f'<td>{r["status"]}{err}</td><td>{r["seconds"]:.1f}</td><td>{links}</td><td>{shown}</td></tr>')
    head = (f'profile <b>{index["profile"]}</b> · device {index["device"]} · data {index["data_root"] or "synthetic"}'
            f' · {index["date"]} · commit {index["git_commit"]} · {len(index["failed"])} failed'
            f'<br>{html.escape(index.get("hardware", ""))}<br><code>{html.escape(index.get("command", ""))}</code>')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>smearlab report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;vertical-align:top;font-size:14px}}tr.failed{{background:#fdd}}tr.ok td:nth-child(2){{color:#070}}</style>
</head><body><h1>smearlab report</h1><p>{head}</p><table><tr><th>notebook</th><th>status</th><th>seconds</th>
<th>outputs</th><th>headline metrics</th></tr>{''.join(rows)}</table></body></html>
"""


# -- parameter sweeps -------------------------------------------------------------------------
SWEEP_KEYS = ("notebook", "grid", "parameters", "profile", "metrics")


@dataclass
class Sweep:
    """A parsed sweep file: one notebook run over every combination of the ``grid`` values.

    Attributes
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
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]


@dataclass
class SweepJob:
    """One grid point: its folder and the ``smearlab`` arguments that run it."""

    name: str
    point: dict[str, Any]
    out: Path
    argv: list[str]

    def command(self, program: str = "smearlab") -> str:
        """The job as one shell command line (arguments quoted)."""
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

    Raises
    ------
    ValueError
        naming the file and the problem: unreadable or malformed YAML, unknown keys, an unknown
        notebook or profile, an empty grid, a grid entry that is not a non-empty list or has
        repeated values, a parameter the notebook does not declare, set both fixed and in the
        grid, or set by the runner itself (``metrics_path``, ``out_dir``).
    """
    import yaml

    path = Path(path)

    def bad(problem: str) -> ValueError:
        return ValueError(f"sweep file {path}: {problem}")

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
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
        matches = _select(find_notebooks(notebook_dir), [name])
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
    metrics = spec.get("metrics")
    if metrics is not None and not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise bad("'metrics' must be a list of metric names, e.g. [mAP50, count_accuracy]")
    return Sweep(path, notebook, grid, dict(fixed), profile, metrics)


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
        texts = [format_value(v) for v in values]
        if len(set(texts)) != len(texts):
            raise bad(f"grid values of {key!r} repeat a value: {values!r}")
    return dict(grid)


def parse_param(text: str) -> tuple[str, Any]:
    """``"k=v"`` -> ``(k, v)`` with ``v`` read as YAML (``256`` int, ``0.5`` float, ``true``,
    ``null``, ``[a, b]`` list, anything else text).

    Raises
    ------
    ValueError
        when there is no ``=``, the name is not an identifier or the value is not valid YAML.
    """
    import yaml

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ValueError(f"--param {text!r}: expected NAME=VALUE, e.g. input_size=384")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ValueError(f"--param {text!r}: the value is not valid YAML ({e})") from None


def format_value(value: Any) -> str:
    """``value`` as one line of YAML that :func:`parse_param` reads back to the same value."""
    import yaml

    def dump(**style) -> str:
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), **style).strip()
        return text.removesuffix("...").strip()

    text = dump()
    return text if "\n" not in text else dump(default_style='"')  # multi-line text: escaped


def report_argv(profile: str, *, notebook_dir: str | Path | None = None,
                notebooks: Iterable[str] | None = None, device: str = "auto", seed: int = 0,
                data_root: str | Path | None = None, timeout: int | None = 3600, html_export: bool = True,
                parameters: Mapping[str, Any] | None = None, out: str | Path | None = None) -> list[str]:
    """The ``smearlab report`` arguments (after ``smearlab``) that run these settings."""
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
    for key, value in (parameters or {}).items():
        argv += ["--param", f"{key}={format_value(value)}"]
    if out is not None:
        argv += ["--out", str(out)]
    return argv


def sweep_jobs(sweep: Sweep, out: str | Path, *, data_root: str | Path | None = None,
               device: str = "auto", seed: int = 0, timeout: int | None = 3600,
               html_export: bool = True) -> list[SweepJob]:
    """One self-contained job per grid point, writing into ``out/job_NNN``.

    Each job's arguments are a complete ``smearlab report`` command (absolute paths, the
    notebook, the profile, every fixed and swept parameter), so the jobs can run anywhere the
    package is installed: here through :func:`run_sweep`, or one per task of a cluster
    scheduler (``smearlab report --sweep FILE --list-jobs``).
    """
    out = Path(out).resolve()
    points = sweep.points()
    width = max(3, len(str(len(points) - 1)))
    jobs = []
    for i, point in enumerate(points):
        job_out = out / f"job_{i:0{width}d}"
        argv = report_argv(sweep.profile, notebook_dir=sweep.notebook.parent, notebooks=[sweep.notebook.stem],
                           device=device, seed=seed,
                           data_root=Path(data_root).resolve() if data_root is not None else None,
                           timeout=timeout, html_export=html_export,
                           parameters={**sweep.parameters, **point}, out=job_out)
        jobs.append(SweepJob(job_out.name, point, job_out, argv))
    return jobs


def default_sweep_out(sweep: Sweep) -> Path:
    """``reports/sweep-<sweep file stem>``: the same folder for running, listing and collecting."""
    return Path("reports") / f"sweep-{sweep.path.stem}"


def run_sweep(path: str | Path, *, out: str | Path | None = None, jobs: int = 1,
              notebook_dir: str | Path | None = None, data_root: str | Path | None = None,
              device: str = "auto", seed: int = 0, timeout: int | None = 3600,
              html_export: bool = True) -> dict[str, Any]:
    """Run every grid point of a sweep file and tabulate the metrics; returns the sweep index.

    Each grid point is the ``smearlab report`` command that :func:`sweep_jobs` builds, run by
    :func:`run_job` in a pool of ``jobs`` worker processes (so ``jobs`` points run at once),
    in its own folder ``out/job_NNN`` with its own kernel, its console output in
    ``out/job_NNN/job.log``. With ``jobs > 1`` the workers' ``OMP_NUM_THREADS`` defaults to
    the CPU count divided by ``jobs`` (unless set), so that parallel jobs do not oversubscribe
    the cores. A failing point is marked in the table; the others still run. Writes
    ``out/sweep.json``, ``sweep.csv`` and ``sweep.html`` (see :func:`collect_sweep`).

    Parameters
    ----------
    path : the sweep file (see :func:`load_sweep`).
    out : output folder (default :func:`default_sweep_out`).
    jobs : how many grid points run at once.
    notebook_dir, data_root, device, seed, timeout, html_export : as for :func:`run_report`.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    sweep = load_sweep(path, notebook_dir)
    out = Path(out) if out is not None else default_sweep_out(sweep)
    make_out_dir(out)
    todo = sweep_jobs(sweep, out, data_root=data_root, device=device, seed=seed, timeout=timeout,
                      html_export=html_export)
    env = {}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=_worker_context(),
                             initializer=_set_environ, initargs=(env,)) as pool:
        futures = {pool.submit(run_job, job.argv, job.out / "job.log"): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            try:
                log.info("%s %s finished with exit code %s", job.name, job.point, future.result())
            except Exception as e:  # the worker process died: the point shows as missing
                log.error("%s %s: worker failed: %s", job.name, job.point, e)
    return collect_sweep(sweep, out, wall_s=time.perf_counter() - t0)


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


def run_job(argv: list[str], log_path: str | Path) -> int:
    """Run ``smearlab <argv>`` in this process with its console output in ``log_path``.

    The worker side of :func:`run_sweep`: the very command a scheduler would run, through
    :func:`smearlab.cli.main`. Output is redirected both for Python (``sys.stdout``,
    ``sys.stderr``) and at the file-descriptor level, so that the kernel processes papermill
    starts write there too. Returns the command's exit code.
    """
    from . import cli

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
                rc = cli.main(list(argv))
        except SystemExit as e:  # argparse refused the arguments
            rc = e.code if isinstance(e.code, int) else 2
        except Exception:  # noqa: BLE001 - any crash is this job's failure, kept in its log
            import traceback
            traceback.print_exc(file=logf)
            rc = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return rc


def collect_sweep(sweep: Sweep | str | Path, out: str | Path, *, notebook_dir: str | Path | None = None,
                  wall_s: float | None = None) -> dict[str, Any]:
    """Tabulate the jobs of a sweep found in ``out`` (run here or by a scheduler).

    Reads ``out/job_NNN/index.json`` of every grid point and writes ``out/sweep.json`` (every
    row with its full metrics), ``out/sweep.csv`` and ``out/sweep.html`` (one row per point:
    status, parameters, seconds, the scalar metrics). A point is ``ok``, ``failed`` (the
    notebook raised), ``missing`` (no result: not run yet, or the job died) or ``stale`` (its
    result was produced with other parameters than the sweep file now gives).
    """
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep, notebook_dir)
    out = Path(out)
    rows = [_sweep_row(sweep, job) for job in sweep_jobs(sweep, out)]
    columns = _metric_columns(sweep, rows)
    index = {
        "sweep": str(sweep.path), "notebook": sweep.notebook.stem, "profile": sweep.profile,
        "grid": sweep.grid, "parameters": sweep.parameters, "out": str(out),
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "git_commit": _git_commit(),
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
        result = json.loads(index_path.read_text(encoding="utf-8"))["notebooks"][sweep.notebook.stem]
    except FileNotFoundError:
        row["error"] = f"no result in {job.out} (not run yet, or the job died: see its job.log or scheduler log)"
        return row
    except (OSError, ValueError, KeyError, TypeError) as e:
        row["error"] = f"unreadable result {index_path}: {type(e).__name__}: {e}"
        return row
    row.update(status=result.get("status", "failed"), seconds=result.get("seconds"),
               metrics=result.get("metrics") or {}, error=result.get("error"))
    ran_with = result.get("parameters") or {}
    wanted = {**sweep.parameters, **job.point}
    differ = [k for k, v in wanted.items() if _jsonable(ran_with.get(k)) != _jsonable(v)]
    if differ:
        row.update(status="stale", error=f"ran with {differ[0]}={ran_with.get(differ[0])!r}, the sweep "
                                         f"file says {wanted[differ[0]]!r}: run this job again")
    return row


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value, default=str))


def _metric_columns(sweep: Sweep, rows: list[dict]) -> list[str]:
    """The metric columns: the sweep's ``metrics``, else every scalar metric met, in order."""
    if sweep.metrics is not None:
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
        return "" if v is None or v == "" else _fmt(v)

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
