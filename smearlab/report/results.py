"""What a run records: the headline numbers of each notebook, the index and RESULTS.md."""
from __future__ import annotations

import html
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.files import flatten_dict, write_json


#: What the index and RESULTS.md say for a notebook that recorded no metrics.
NO_METRICS = "no metrics recorded (the notebook did not call record(..., metrics_path))"


@dataclass
class NotebookResult:
    """The outcome of one notebook run (:func:`~smearlab.report.runner.run_notebook`); an entry of a
    run's ``index.json``.

    Parameters
    ----------
    name : the notebook's name (file stem, e.g. ``"03_detection"``).
    status : ``"ok"`` or ``"failed"``.
    seconds : wall time of the run.
    notebook : the executed notebook's file name in the run folder (None when none was written).
    html : the HTML export's file name (None when not exported).
    metrics : the headline numbers the notebook recorded (:func:`record`); empty if none.
    error : what failed (exception type and message), None for a successful run.
    parameters : the parameters the notebook was given (those it declares).
    """
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

    Parameters
    ----------
    metrics : the headline numbers (JSON-ready; nested dicts are shown flattened).
    path : the JSON file to write (parent folders are created); None or empty only shows them.

    Returns
    -------
    dict
        ``metrics``.
    """
    if path:
        write_json(path, metrics)
    try:
        from IPython.display import Markdown, display
        rows = "\n".join(f"| {k} | {format_cell(v)} |" for k, v in flatten_dict(metrics).items())
        display(Markdown("| metric | value |\n|---|---|\n" + rows))
    except ImportError:  # plain Python: print instead
        print(json.dumps(metrics, indent=2, default=str))
    return metrics


def format_cell(v) -> str:
    """A metric value for an HTML table cell: a float with 4 significant digits, anything else as
    escaped text.

    Parameters
    ----------
    v : the value.
    """
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def git_commit() -> str | None:
    """The short commit hash of the source tree's ``HEAD``, or None outside a git checkout (or
    without git).
    """
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def data_description(index: dict[str, Any]) -> str:
    """What data a run used, in words: the ``dataset`` parameter it was given (``--param``), the
    data root (``--data-root``), or the notebooks' synthetic default when neither.

    Parameters
    ----------
    index : the run index (as in ``index.json``).
    """
    parts = []
    dataset = (index.get("parameters") or {}).get("dataset")
    if dataset is not None:
        parts.append(f"dataset {dataset}")
    if index.get("data_root"):
        parts.append(f"data root {index['data_root']}" if parts else str(index["data_root"]))
    return ", ".join(parts) or "synthetic default"


def results_markdown(index: dict[str, Any], *, max_metrics: int = 40) -> str:
    """A run's summary in Markdown: how it was made (command, hardware, date, commit), the
    status and wall time of each notebook, and each notebook's headline metrics (the scalars it
    recorded, at most ``max_metrics`` each). Written as ``RESULTS.md`` in every run folder;
    ``reports/RESULTS.md`` is a copy of the latest full run's.

    Parameters
    ----------
    index : the run index (:func:`~smearlab.report.runner.run_report`'s, as in ``index.json``).
    max_metrics : the most metrics shown per notebook (the rest are counted).
    """
    def cell(v) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    data = data_description(index)
    lines = [
        f"# smearlab report: {index['profile']} profile",
        "",
        "| | |", "|---|---|",
        f"| command | `{index.get('command', '')}` |",
        f"| hardware | {cell(index.get('hardware', 'unknown'))} |",
        f"| device | {index['device']} |",
        f"| data | {cell(data)} |",
        f"| date | {index['date']} |",
        f"| git commit | {index.get('git_commit') or 'unknown'} (of the notebooks run last; each notebook's below) |",
        f"| wall time | {index['wall_s']:.1f} s for {len(index['ran'])} notebooks |",
        f"| failed | {', '.join(index['failed']) or 'none'} |",
        "",
        "## Notebooks", "",
        "| notebook | status | seconds | git commit |", "|---|---|---|---|",
    ]
    for name, r in index["notebooks"].items():
        status = r["status"] if r["status"] == "ok" else f"**{r['status']}**: {cell((r.get('error') or '')[:200])}"
        lines.append(f"| {name} | {status} | {r['seconds']:.1f} | {r.get('git_commit') or 'unknown'} |")
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


def index_html(index: dict[str, Any]) -> str:
    """A run's ``index.html``: how it was made, then one table row per notebook with its status,
    seconds, links to the executed notebook and its HTML, and its first headline metrics
    (failed notebooks in red, with the error).

    Parameters
    ----------
    index : the run index (:func:`~smearlab.report.runner.run_report`'s, as in ``index.json``).
    """
    rows = []
    for name, r in index["notebooks"].items():
        ok = r["status"] == "ok"
        metrics = flatten_dict(r.get("metrics") or {})
        shown = "<br>".join(f"{html.escape(k)}: {format_cell(v)}" for k, v in list(metrics.items())[:12]) \
            or f'<i>{html.escape(NO_METRICS)}</i>'

        links = (f'<a href="{r["notebook"]}">ipynb</a>' if r.get("notebook") else "") + (f' · <a href="{r["html"]}">html</a>' if r.get("html") else "")
        err = f'<br><code>{html.escape(r["error"] or "")[:400]}</code>' if not ok else ""
        rows.append(f'<tr class="{"ok" if ok else "failed"}"><td>{html.escape(name)}</td>'
                    f'<td>{r["status"]}{err}</td><td>{r["seconds"]:.1f}</td><td>{links}</td><td>{shown}</td>'
                    f'<td>{html.escape(str(r.get("git_commit") or "unknown"))}</td></tr>')
    head = (f'profile <b>{index["profile"]}</b> · device {index["device"]} · data {html.escape(data_description(index))}'
            f' · {index["date"]} · commit {index["git_commit"]} · {len(index["failed"])} failed'
            f'<br>{html.escape(index.get("hardware", ""))}<br><code>{html.escape(index.get("command", ""))}</code>')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>smearlab report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;vertical-align:top;font-size:14px}}tr.failed{{background:#fdd}}tr.ok td:nth-child(2){{color:#070}}</style>
</head><body><h1>smearlab report</h1><p>{head}</p><table><tr><th>notebook</th><th>status</th><th>seconds</th>
<th>outputs</th><th>headline metrics</th><th>git commit</th></tr>{''.join(rows)}</table></body></html>
"""
