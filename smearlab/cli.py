"""The ``smearlab`` command: ``report`` runs the notebooks, ``data`` inspects a dataset, ``predict``
applies a saved model to new images."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from .core.errors import os_error_message

SWEEP_HELP = """\
how sweeps work:
  --sweep FILE runs one notebook over a grid of parameters (YAML: notebook, grid: {param:
  [values]}, optional parameters:, profile:, metrics:; see reports/sweep_example.yaml).
  Every grid point is an independent job with its own folder OUT/job_NNN and its own kernel;
  --jobs N runs N at a time. The table goes to OUT/sweep.json, sweep.csv and sweep.html
  (OUT: --out, default reports/sweep-<file name>); failed points are marked, the others run.
  OUT/sweep_file.txt names the sweep file whose jobs it holds: the default folder of another
  file of the same name is refused (give --out).

  On a cluster, hand the same jobs to the scheduler: --list-jobs prints one self-contained
  command per grid point (smearlab report --only NB --param k=v ... --out OUT/job_NNN), one
  per line; run them in any order or place, then tabulate with --collect OUT. SLURM array:
    smearlab report --sweep sweep.yaml --out runs/s1 --list-jobs > jobs.txt
    sbatch --array=1-$(wc -l < jobs.txt) --wrap 'sed -n "${SLURM_ARRAY_TASK_ID}p" jobs.txt | bash'
    smearlab report --sweep sweep.yaml --collect runs/s1      # once all tasks have finished
"""


def _error(message) -> int:
    """Print ``error: <message>`` as one line on stderr; returns 2, the exit code of a user error."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"error: {text}", file=sys.stderr)
    return 2


def _report(args) -> int:
    from .report.runner import run_report

    if args.sweep:
        return _sweep(args)
    if args.jobs != 1 or args.list_jobs or args.collect:
        print("error: --jobs, --list-jobs and --collect go with --sweep FILE", file=sys.stderr)
        return 2
    names = [k for k, _ in args.param or []]
    twice = sorted({k for k in names if names.count(k) > 1})
    if twice:  # the last one won without a word (a sweep file's repeated key is refused alike)
        print(f"error: --param {twice[0]} is given {names.count(twice[0])} times; give each parameter once",
              file=sys.stderr)
        return 2
    try:
        index = run_report(args.profile or "quick", data_root=args.data_root, device=args.device, out=args.out,
                           notebooks=args.only, notebook_dir=args.notebooks, seed=args.seed,
                           timeout=args.timeout or None, html_export=not args.no_html,
                           parameters=dict(args.param or []), threads=args.threads)
    except ValueError as e:
        return _error(e)
    except OSError as e:
        return _error(os_error_message(e))
    for name in index["ran"]:
        r = index["notebooks"][name]
        print(f"{r['status']:>6}  {r['seconds']:7.1f} s  {name}" + (f"  ({r['error']})" if r["error"] else ""))
    failed = [n for n in index["ran"] if n in index["failed"]]
    print(f"{len(index['ran'])} notebooks, {len(failed)} failed, {index['wall_s']:.1f} s; "
          f"index: {index['out']}/index.html, summary: {index['out']}/RESULTS.md")
    return 1 if failed else 0


def _sweep(args) -> int:
    """``report --sweep FILE``: run, list or collect the jobs of a parameter sweep."""
    from .report.sweep import check_sweep_folder, collect_sweep, default_sweep_out, load_sweep, run_sweep, sweep_jobs
    from .report.runner import format_value

    if args.only or args.param or args.profile is not None:
        print("error: with --sweep the notebook, its parameters and the profile come from the sweep file "
              "(notebook:, parameters:, grid:, profile:), not --only/--param/--profile", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    if args.list_jobs and args.collect:
        print("error: choose one of --list-jobs and --collect", file=sys.stderr)
        return 2
    try:
        sweep = load_sweep(args.sweep, args.notebooks)
        out = args.collect or args.out or default_sweep_out(sweep)
        if args.list_jobs:  # jobs of another sweep file of this name in the default folder: refused as a run is
            check_sweep_folder(out, sweep, refuse=not args.out)
            for job in sweep_jobs(sweep, out, data_root=args.data_root, device=args.device, seed=args.seed,
                                  timeout=args.timeout or None, html_export=not args.no_html, threads=args.threads):
                print(job.command())
            return 0
        if args.collect:
            index = collect_sweep(sweep, out)
        else:
            index = run_sweep(args.sweep, out=args.out or None, jobs=args.jobs, notebook_dir=args.notebooks,
                              command=main,
                              data_root=args.data_root, device=args.device, seed=args.seed,
                              timeout=args.timeout or None, html_export=not args.no_html, threads=args.threads)
    except ValueError as e:
        return _error(e)
    except OSError as e:
        return _error(os_error_message(e))
    for row in index["rows"]:
        point = " ".join(f"{k}={format_value(v)}" for k, v in row["parameters"].items())
        seconds = f"{row['seconds']:7.1f} s" if row["seconds"] is not None else "      - s"
        print(f"{row['status']:>7}  {seconds}  {row['job']}  {point}"
              + (f"  ({row['error']})" if row["error"] else ""))
    print(f"{index['jobs']} points, {len(index['failed'])} not ok; table: {index['out']}/sweep.html")
    return 1 if index["failed"] else 0


def _data(args) -> int:
    from .data import FORMATS, open_dataset
    from .data.stats import summary

    if args.format is not None and args.format not in FORMATS:
        return _error(f"--format {args.format}: unknown format; known formats: {', '.join(FORMATS)}")
    try:
        options = {"split": args.split} if args.split is not None else {}
        if args.no_image_check:
            options["check_images"] = False
        if args.sensor_bits is not None:
            options["sensor_bits"] = args.sensor_bits
        try:
            ds = open_dataset(args.path, format=args.format, **options)  # archives too (extracted once), synthetic
        except TypeError as e:  # a loader without the option (another TypeError is no such refusal)
            if not args.no_image_check or "check_images" not in str(e):
                raise
            return _error("--no-image-check goes with VOC, BBBC041 and IML annotations (their files hold the "
                          "image sizes)")
    except ValueError as e:  # DataError: the file and the problem
        return _error(e)
    except OSError as e:  # an unreadable folder or file
        return _error(os_error_message(e))
    print(json.dumps(summary(ds), indent=2))
    for s in ds.skipped[: args.show_skips]:
        print(f"skipped: {s}")
    if len(ds.skipped) > args.show_skips:
        print(f"... and {len(ds.skipped) - args.show_skips} more skipped records")
    if not len(ds):  # a script checking the exit status saw success for a dataset it could not read
        return _error(f"{args.path}: no image could be read" + (" (every record skipped: see above)"
                                                                 if len(ds.skipped) else ""))
    return 0


def _predict(args) -> int:
    """``smearlab predict MODEL INPUT... --out DIR``."""
    from .core.threads import thread_environment

    try:
        env = thread_environment(args.threads)
    except ValueError as e:
        return _error(f"--threads: {e}")
    for k, v in env.items():  # before torch starts its threads; a wait policy the user set is kept
        if k not in os.environ or (args.threads is not None and k != "OMP_WAIT_POLICY"):
            os.environ[k] = v
    if not args.inputs and args.dataset is None:
        return _error("give image files or folders, or --dataset PATH")
    scale = args.scale
    if scale not in (None, "auto"):
        try:
            scale = float(scale)
        except ValueError:
            return _error(f"--scale must be 'auto' or a number, got {args.scale!r}")
    tile = args.tile
    if str(tile).lower() == "none":
        tile = None
    elif tile != "auto":
        try:
            tile = int(tile)
        except ValueError:
            return _error(f"--tile must be 'auto', 'none' or a number of pixels, got {args.tile!r}")
    if (scale is not None or args.pixel_size is not None) and args.tile == "auto":
        tile = None
    from .batch import predict

    try:
        if args.threads is not None:
            import torch
            torch.set_num_threads(args.threads)
        s = predict(args.model, args.inputs, args.out, dataset=args.dataset, pattern=args.glob,
                    device=args.device, batch_size=args.batch_size, scale=scale, tile=tile,
                    score=args.score, overlays=args.overlays, progress=not args.no_progress,
                    pixel_size=args.pixel_size, tta=args.tta, sensor_bits=args.sensor_bits)
    except ValueError as e:  # DataError: the file and the problem
        return _error(e)
    except OSError as e:
        return _error(os_error_message(e))
    counts = ", ".join(f"{c} {n}" for c, n in s["counts"].items())
    speed = f", {s['images_per_s']:.2f} images/s" if s["images_per_s"] else ""
    print(f"{s['images']} images: {s['predicted']} predicted, {s['resumed']} already done, "
          f"{s['failed']} failed{speed}; counts: {counts}; results in {args.out}/ (counts.csv, summary.json)")
    for f in s["failures"][:10]:
        print(f"failed: {f['image']}: {f['error']}")
    if s["failed"] > 10:
        print(f"... and {s['failed'] - 10} more (summary.json lists them)")
    return 1 if s["failed"] else 0


def _param(text: str):
    """argparse type of ``--param NAME=VALUE`` (the value read as YAML)."""
    from .report.runner import parse_param
    try:
        return parse_param(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count(least: int):
    """An argparse type: a whole number >= ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``smearlab`` argument parser: the ``report``, ``data`` and ``predict`` sub-commands, each with its
    handler as ``func`` (``args.func(args)`` runs it and returns the exit code)."""
    p = argparse.ArgumentParser(prog="smearlab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("report", help="run the notebook series with papermill and write reports/",
                       description="Run the notebook series (or a parameter sweep of one notebook)\n"
                                   "with papermill and write a report folder.",
                       epilog=SWEEP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--profile", choices=("quick", "full"), default=None,
                   help="quick (the default) or full; a sweep's comes from its file")
    r.add_argument("--data-root", help="folder holding the real datasets (default: synthetic data)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--out", help="run folder (default reports/<date>-<profile>; "
                                 "for --sweep reports/sweep-<file name>)")
    r.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run only these (e.g. 01_eda or 01)")
    r.add_argument("--param", action="append", type=_param, metavar="NAME=VALUE",
                   help="set a notebook parameter (repeatable); VALUE is read as YAML 1.2: 384, 0.5, 1e-3, "
                        "true, null (or None), [a, b], text")
    r.add_argument("--notebooks", help="folder of NN_*.ipynb notebooks (default ./notebooks)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--timeout", type=_count(0), default=3600,
                   help="seconds one cell may run before its notebook is marked failed (default 3600; "
                        "0: no limit)")
    r.add_argument("--no-html", action="store_true", help="skip the HTML export")
    r.add_argument("--threads", type=_count(1), metavar="N",
                   help="threads of each notebook kernel (default: one per core); idle threads sleep "
                        "(OMP_WAIT_POLICY=PASSIVE unless set) so that a report shares a busy machine")
    sw = r.add_argument_group("parameter sweeps (details below)")
    sw.add_argument("--sweep", metavar="FILE", help="run one notebook over the grid of a sweep YAML file")
    sw.add_argument("--jobs", type=_count(1), default=1, metavar="N", help="grid points run at once (default 1)")
    sw.add_argument("--list-jobs", action="store_true",
                    help="print one self-contained command per grid point (for a cluster scheduler) "
                         "and run nothing")
    sw.add_argument("--collect", metavar="DIR", help="tabulate the jobs already run into DIR")
    r.set_defaults(func=_report)

    d = sub.add_parser("data", help="load a dataset in its native format and print its summary")
    d.add_argument("path")
    d.add_argument("--format", help="name the format instead of detecting it (voc, coco, yolo, ...)")
    d.add_argument("--split", help="the split to load, for YOLO (images/<split>/) and a folder of COCO "
                                   "files (<split>.json, instances_<split>.json, "
                                   "annotations/instances_<split>.json, <split>/_annotations.coco.json)")
    d.add_argument("--show-skips", type=_count(0), default=20, help="how many skipped records to list")
    d.add_argument("--sensor-bits", type=_count(1), metavar="BITS",
                   help="the camera's bits per value for images wider than 8 bits (e.g. 12), so every image is "
                        "scaled alike (default: the range each file declares, else guessed per image)")
    d.add_argument("--no-image-check", action="store_true",
                   help="summarise the annotations without their image files (VOC, BBBC041 and IML, whose "
                        "annotation files hold the image sizes; e.g. the BBBC041 JSON alone)")
    d.set_defaults(func=_data)
    pr = sub.add_parser("predict", help="apply a saved model (detector, detector + classifier cascade, U-Net) to "
                                        "new images: per-image JSON, counts.csv, COCO and QuPath exports",
                        description="Predict every image with a saved model folder and write per-image results,\n"
                                    "counts and exports into --out. A re-run into the same --out skips the images\n"
                                    "already done; an image that cannot be read is listed, never fatal.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("model", help="a saved detector's model folder")
    pr.add_argument("inputs", nargs="*", metavar="INPUT", help="image files and folders (searched with --glob)")
    pr.add_argument("--out", default="predictions", help="output folder (default ./predictions)")
    pr.add_argument("--dataset", metavar="PATH",
                    help="predict a dataset that `smearlab data` reads and score the counts against its truth")
    pr.add_argument("--glob", default="**/*", help="pattern folders are searched with (default '**/*': every "
                                                  "image below them)")
    pr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    pr.add_argument("--batch-size", type=_count(1), default=1)
    pr.add_argument("--threads", type=_count(1), metavar="N", help="CPU threads (default one per core)")
    pr.add_argument("--scale", help="'auto': zoom each image to the training magnification from its cells; "
                                    "a number: predict every image at that zoom of the training magnification "
                                    "(whole: fields too large for one pass are refused)")
    pr.add_argument("--pixel-size", type=float, metavar="UM",
                    help="the images' pixel size in micrometres: zoom them to the training scale (the model "
                         "must record its own, DetectorConfig.pixel_size_um)")
    pr.add_argument("--tile", default="auto", metavar="auto|PX|none",
                    help="'auto' (default): cut fields much larger than the training images into tiles of "
                         "their size; PX: tiles of PX pixels for every image; 'none': whole images")
    pr.add_argument("--score", type=float, help="one score threshold for every class instead of the model's "
                                                "tuned thresholds.json")
    pr.add_argument("--tta", action="store_true",
                    help="test-time augmentation: fuse the boxes found in the image and its three flips (four "
                         "times slower; the model's thresholds must have been tuned with it, or give --score)")
    pr.add_argument("--sensor-bits", type=_count(1), metavar="BITS",
                    help="the camera's bits per value for images wider than 8 bits (e.g. 12), so every image is "
                         "scaled alike (default: the value the model recorded from its training images, else "
                         "the range each file declares, else guessed per image)")
    pr.add_argument("--overlays", action="store_true", help="also write overlays/<image>.png with the boxes")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.set_defaults(func=_predict)
    return p


def main(argv=None) -> int:
    """The ``smearlab`` command line.

    Parameters
    ----------
    argv : the arguments after ``smearlab`` (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        the exit code: 0 success, 1 a notebook or sweep point failed, 2 a user error (bad
        arguments make argparse exit with 2 instead), 130 stopped (Ctrl-C, or SIGTERM: a
        scheduler's stop, ``timeout``, ``kill``).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    previous = _stop_cleanly_on_sigterm()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("smearlab: stopped; files being written were removed, finished ones kept", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_cleanly_on_sigterm():
    """Make SIGTERM raise KeyboardInterrupt in the main thread, as Ctrl-C does, so that files being
    written are removed, notebook kernels shut down and sweep workers stopped (by default the
    process ended where it stood: temporary notebooks left behind, a sweep's workers running on
    without it). Returns the handler it replaced (None off the main thread: nothing changed)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    return signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    sys.exit(main())
