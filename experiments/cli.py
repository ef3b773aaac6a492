"""`gptjax sweep`: run a sweep file (default: the embedded scaling_study) and report on it, or only report.

gptjax sweep [SWEEP_FILE] [--out DIR]      # train what is not done yet, fit, plot, report (DIR may be gs://)
gptjax sweep --report-only DIR             # refit and redraw the report of an existing sweep directory

On a CPU-only machine (JAX_PLATFORMS=cpu, which gptjax's CLI sets where no accelerator exists) points train
two at a time, one single-threaded worker per core (`--workers`, default 2 there, else 1).
"""

from __future__ import annotations

import argparse
import os
import sys

from experiments.report import build_sweep_report
from experiments.runner import SweepIncomplete, run_sweep, run_sweep_workers
from experiments.sweep import embedded_sweeps
from gptjax import sharding
from gptjax.cli import add_distributed_arguments

DEFAULT_SWEEP = "scaling_study"


def default_workers() -> int:
    """2 on a CPU-only machine with 2 or more cores, else 1 (accelerators train one point at a time)."""
    return 2 if os.environ.get("JAX_PLATFORMS") == "cpu" and (os.cpu_count() or 1) >= 2 else 1


def sweep_command(argv: list[str]) -> int:
    """Exit status 0 when every point is done, 1 when some failed or a SIGTERM stopped the sweep (the
    failed points are named on stderr). A bad sweep file raises SweepFileError, and a missing file
    InputNotFoundError, for gptjax's CLI to print as one line."""
    parser = argparse.ArgumentParser(
        prog="gptjax sweep",
        description="Train a model-size x tokens sweep (skipping finished points, resuming "
        "interrupted ones), fit scaling laws and write a Markdown + HTML report.",
    )
    parser.add_argument(
        "sweep_file",
        nargs="?",
        default=DEFAULT_SWEEP,
        metavar="SWEEP_FILE",
        help=f"a sweep TOML file or an embedded sweep ({', '.join(embedded_sweeps())}; default {DEFAULT_SWEEP})",
    )
    parser.add_argument("--out", metavar="DIR", help="sweep directory, local or gs:// (default runs/sweeps/<name>)")
    parser.add_argument(
        "--report-only", metavar="DIR", help="only rebuild the registry and report of this sweep directory"
    )
    parser.add_argument("--no-progress", action="store_true", help="no per-step progress bars")
    parser.add_argument(
        "--workers",
        type=int,
        help="train this many points at once, one single-threaded worker process each (default: 2 on a CPU-only "
        "machine, else 1; not with --holder or a multi-process run)",
    )
    parser.add_argument("--no-report", action="store_true", help="train only: no report (what --workers' workers do)")
    parser.add_argument(
        "--holder",
        help="share the sweep directory with other slices: this one's name for its leases (tpu_scripts: the slice)",
    )
    parser.add_argument("--poll-seconds", type=float, default=60.0, help="with --holder: how often to look again")
    add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    sharding.maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)

    if args.report_only is not None:
        if args.out is not None or args.sweep_file != DEFAULT_SWEEP:
            parser.error("--report-only DIR takes no SWEEP_FILE or --out")
        written = build_sweep_report(args.report_only)
        print(f"wrote {written['report.md']} and {written['report.html']}")
        return 0

    distributed = args.holder or args.coordinator or args.num_processes
    if args.workers is None:
        args.workers = 1 if distributed else default_workers()
    if args.workers < 1 or (args.workers > 1 and distributed):
        parser.error(f"--workers must be >= 1, and 1 with --holder or a multi-process run, got {args.workers}")
    try:
        if args.workers > 1:
            result = run_sweep_workers(args.sweep_file, args.out, workers=args.workers, report=not args.no_report)
        else:
            result = run_sweep(
                args.sweep_file,
                args.out,
                progress=not args.no_progress,
                report=not args.no_report,
                holder=args.holder,
                poll_seconds=args.poll_seconds,
            )
    except SweepIncomplete as err:
        print(f"gptjax sweep: {err}", file=sys.stderr)
        return 1
    if result.report:  # process 0 writes it
        print(f"wrote {result.report['report.md']} and {result.report['report.html']}")
    return 0
