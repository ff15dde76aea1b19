"""Loading time of the shared real datasets (annotations parsed, image headers read, pixels not).

Each dataset is loaded ``--repeat`` times after one warm-up load (so the files are in the page
cache and the figure is the loader's own work); the median is reported. With ``--baseline REV``
the same measurement runs on the package as it was at git revision ``REV`` (a temporary
worktree), alternating with the current tree in fresh processes, ``--rounds`` times each, so the
two are compared side by side in one run under the same machine load (``ratio`` = current /
baseline, from the medians).

Writes ``results/loading.json``: per dataset the images, objects, skips, repairs, bytes on disk
and median seconds (and the baseline's, with the ratio), ``largest`` (the dataset with the most
bytes on disk) and the machine's load average at the start.

    python benchmarks/loading.py --data-root ../shared/data --baseline 4e41d6e
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: (name, path relative to the data root, format, loader options)
DATASETS = (
    ("cbc_training", "cbc/Training", "voc", {}),
    ("cbc_testing", "cbc/Testing", "voc", {}),
    ("malaria_iml_subset", "malaria_iml_subset", "iml", {}),
    ("bbbc041_test", "bbbc041_annotations/test.json", "bbbc041", {"check_images": False}),
    ("dsb2018_subset", "dsb2018_subset", "dsb2018", {}),
    ("pbc_subset", "pbc_subset", "imagefolder", {}),
    ("wbc_zheng", "wbc_zheng", "zheng", {}),  # the extracted archive, see main()
)


def measure(path: Path, fmt: str, options: dict, repeat: int) -> dict:
    """Load ``path`` once to warm up, then ``repeat`` times; counts and times (this process)."""
    import logging

    from smearlab.data.formats import module
    logging.disable(logging.WARNING)  # the load summaries are not what is timed
    load = module(fmt).load
    ds = load(path, **options)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ds = load(path, **options)
        times.append(time.perf_counter() - t0)
    return {"images": len(ds), "objects": ds.num_objects, "skipped": len(ds.skipped), "fixed": len(ds.fixed),
            "median_s": statistics.median(times), "min_s": min(times)}


def _worker(args) -> int:
    options = json.loads(args.options)
    print(json.dumps(measure(Path(args.path), args.format, options, args.repeat)))
    return 0


def _run(tree: Path, path: Path, fmt: str, options: dict, repeat: int) -> dict:
    """:func:`measure` in a fresh process importing smearlab from ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, __file__, "--worker", "--path", str(path), "--format", fmt,
                          "--options", json.dumps(options), "--repeat", str(repeat)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--repeat", type=int, default=15, help="loads per process")
    p.add_argument("--rounds", type=int, default=3, help="processes per tree (alternating)")
    p.add_argument("--baseline", help="git revision to compare with (side by side, same run)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--format", help=argparse.SUPPRESS)
    p.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)

    sys.path.insert(0, str(HERE))
    from _common import save_result
    from smearlab.data.open import extract

    root = Path(args.data_root)
    load_avg = os.getloadavg()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base_tree = None
        if args.baseline:
            base_tree = tmp / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), args.baseline],
                           check=True, capture_output=True)
        try:
            for name, rel, fmt, options in DATASETS:
                path = root / rel
                if fmt == "zheng":
                    archive = root / "wbc_zheng.tar.xz"
                    if not archive.exists():
                        print(f"{name}: {archive} not found, skipped")
                        continue
                    path = extract(archive, tmp / name)
                if not path.exists():
                    print(f"{name}: {path} not found, skipped")
                    continue
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() \
                    else path.stat().st_size
                cur, base = [], []
                for _ in range(args.rounds):
                    cur.append(_run(REPO, path, fmt, options, args.repeat))
                    if base_tree is not None:
                        base.append(_run(base_tree, path, fmt, options, args.repeat))
                row = {k: cur[-1][k] for k in ("images", "objects", "skipped", "fixed")}
                row.update(bytes=size, median_s=round(statistics.median(r["median_s"] for r in cur), 4))
                line = f"{name:20s} {row['images']:4d} images {row['objects']:6d} objects  {row['median_s'] * 1000:8.1f} ms"
                if base:
                    row["baseline_median_s"] = round(statistics.median(r["median_s"] for r in base), 4)
                    row["baseline_fixed"], row["baseline_skipped"] = base[-1]["fixed"], base[-1]["skipped"]
                    row["ratio"] = round(row["median_s"] / row["baseline_median_s"], 3)
                    line += f"  baseline {row['baseline_median_s'] * 1000:8.1f} ms  ratio {row['ratio']:.2f}"
                rows[name] = row
                print(line, flush=True)
        finally:
            if base_tree is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)],
                               capture_output=True)
    if not rows:  # nothing measured: say so rather than overwrite the last result with an empty one
        print(f"error: {root}: none of the datasets was found; results/loading.json left as it was", file=sys.stderr)
        return 2
    largest = max(rows, key=lambda k: rows[k]["bytes"])
    save_result("loading", {"datasets": rows, "largest": largest, "baseline": args.baseline,
                            "repeat": args.repeat, "rounds": args.rounds,
                            "load_average_1_5_15": [round(v, 2) for v in load_avg]})
    print(f"largest: {largest}; load average at start {tuple(round(v, 2) for v in load_avg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
