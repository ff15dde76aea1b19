"""The ``smearlab`` command: ``report`` runs the notebooks, ``data`` inspects a dataset."""
from __future__ import annotations

import argparse
import json
import logging
import sys


def _report(args) -> int:
    from .report import run_report

    index = run_report(args.profile, data_root=args.data_root, device=args.device, out=args.out,
                       notebooks=args.only, notebook_dir=args.notebooks, seed=args.seed,
                       timeout=args.timeout, html_export=not args.no_html)
    for name in index["ran"]:
        r = index["notebooks"][name]
        print(f"{r['status']:>6}  {r['seconds']:7.1f} s  {name}" + (f"  ({r['error']})" if r["error"] else ""))
    failed = [n for n in index["ran"] if n in index["failed"]]
    print(f"{len(index['ran'])} notebooks, {len(failed)} failed, {index['wall_s']:.1f} s; "
          f"index: {index['out']}/index.html")
    return 1 if failed else 0


def _data(args) -> int:
    from .data import DataError, load
    from .eda import summary

    try:
        ds = load(args.path, format=args.format)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary(ds), indent=2))
    for s in ds.skipped[: args.show_skips]:
        print(f"skipped: {s}")
    if len(ds.skipped) > args.show_skips:
        print(f"... and {len(ds.skipped) - args.show_skips} more skipped records")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smearlab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("report", help="run the notebook series with papermill and write reports/")
    r.add_argument("--profile", choices=("quick", "full"), default="quick")
    r.add_argument("--data-root", help="folder holding the real datasets (default: synthetic data)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--out", help="run folder (default reports/<date>-<profile>)")
    r.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run only these (e.g. 01_eda or 01)")
    r.add_argument("--notebooks", help="folder of NN_*.ipynb notebooks (default ./notebooks)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--timeout", type=int, default=3600,
                   help="seconds one cell may run before its notebook is marked failed (default 3600)")
    r.add_argument("--no-html", action="store_true", help="skip the HTML export")
    r.set_defaults(func=_report)

    d = sub.add_parser("data", help="load a dataset in its native format and print its summary")
    d.add_argument("path")
    d.add_argument("--format", help="name the format instead of detecting it")
    d.add_argument("--show-skips", type=int, default=20, help="how many skipped records to list")
    d.set_defaults(func=_data)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
