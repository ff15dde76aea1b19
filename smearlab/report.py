"""Run the notebook series with papermill and write ``reports/<run>/``.

Each notebook gets its profile's parameters (only those it declares in its ``parameters``
cell), runs in a fresh kernel, and leaves three files: the executed notebook, an HTML export
and ``<name>.metrics.json`` (written by :func:`record` inside the notebook). ``index.json`` and
``index.html`` summarise the run. A failing notebook is marked failed and the others still run.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .io import atomic_path, write_json, write_text

log = logging.getLogger("smearlab.report")

PROFILES = ("quick", "full")

#: The notebook series of the source tree.
REPO_NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

#: Real dataset each notebook uses when ``--data-root`` is given (relative to the root).
REAL_DATA = {
    "01_eda": "cbc/Training",
    "02_preprocessing": "wbc_zheng.tar.xz",
    "03_detection": "cbc",
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
        rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in _flatten(metrics).items())
        display(Markdown("| metric | value |\n|---|---|\n" + rows))
    except ImportError:  # plain Python: print instead
        print(json.dumps(metrics, indent=2, default=str))
    return metrics


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def run_notebook(nb: Path, out_dir: Path, parameters: dict[str, Any], *, kernel: str = "python3",
                 timeout: int | None = 3600, html_export: bool = True) -> NotebookResult:
    """Execute one notebook into ``out_dir``; never raises for a failing notebook."""
    import papermill as pm

    name = nb.stem
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
        params["out_dir"] = str(out_dir.resolve() / name)
    if status == "ok":
        try:
            with atomic_path(out_nb) as tmp:
                try:
                    pm.execute_notebook(str(nb), str(tmp), parameters=params, kernel_name=kernel,
                                        cwd=str(nb.parent), progress_bar=False,
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
               timeout: int | None = 3600, html_export: bool = True) -> dict[str, Any]:
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
    """
    all_nbs = find_notebooks(notebook_dir)
    chosen = _select(all_nbs, notebooks)
    out_dir = Path(out) if out else Path("reports") / f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{profile}"
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / "index.json"
    previous = json.loads(index_path.read_text())["notebooks"] if index_path.exists() else {}
    results = dict(previous)
    t0 = time.perf_counter()
    for nb in _progress(chosen):
        params = notebook_parameters(nb.stem, profile, data_root=data_root, device=device, seed=seed)
        res = run_notebook(nb, out_dir, params, kernel=kernel, timeout=timeout, html_export=html_export)
        results[nb.stem] = asdict(res)
    index = {
        "out": str(out_dir), "profile": profile, "device": device, "data_root": str(data_root) if data_root else None,
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "git_commit": _git_commit(),
        "wall_s": round(time.perf_counter() - t0, 2),
        "notebooks": dict(sorted(results.items())),
        "ran": [nb.stem for nb in chosen],
        "failed": sorted(k for k, v in results.items() if v["status"] != "ok"),
    }
    write_json(index_path, index)
    write_text(out_dir / "index.html", _index_html(index))
    return index


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


def _index_html(index: dict[str, Any]) -> str:
    rows = []
    for name, r in index["notebooks"].items():
        ok = r["status"] == "ok"
        metrics = _flatten(r.get("metrics", {}))
        shown = "<br>".join(f"{html.escape(k)}: {_fmt(v)}" for k, v in list(metrics.items())[:12])
        links = (f'<a href="{r["notebook"]}">ipynb</a>' if r.get("notebook") else "") + (f' · <a href="{r["html"]}">html</a>' if r.get("html") else "")
        err = f'<br><code>{html.escape(r["error"] or "")[:400]}</code>' if not ok else ""
        rows.append(f'<tr class="{"ok" if ok else "failed"}"><td>{html.escape(name)}</td>'
                    f'<td>{r["status"]}{err}</td><td>{r["seconds"]:.1f}</td><td>{links}</td><td>{shown}</td></tr>')
    head = (f'profile <b>{index["profile"]}</b> · device {index["device"]} · data {index["data_root"] or "synthetic"}'
            f' · {index["date"]} · commit {index["git_commit"]} · {len(index["failed"])} failed')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>smearlab report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;vertical-align:top;font-size:14px}}tr.failed{{background:#fdd}}tr.ok td:nth-child(2){{color:#070}}</style>
</head><body><h1>smearlab report</h1><p>{head}</p><table><tr><th>notebook</th><th>status</th><th>seconds</th>
<th>outputs</th><th>headline metrics</th></tr>{''.join(rows)}</table></body></html>
"""
