"""`gptjax sweep`: run a sweep file (default: the embedded tiny_ladder) and report on it, or only report.

gptjax sweep [SWEEP_FILE] [--out DIR]      # train what is not done yet, fit, plot, report (DIR may be gs://)
gptjax sweep --report-only DIR             # refit and redraw the report of an existing sweep directory
"""

from __future__ import annotations

import argparse
import sys

from experiments.report import build_sweep_report
from experiments.runner import SweepIncomplete, run_sweep
from experiments.sweep import embedded_sweeps
from gptjax import sharding
from gptjax.cli import add_distributed_arguments

DEFAULT_SWEEP = "tiny_ladder"


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

    try:
        result = run_sweep(
            args.sweep_file, args.out, progress=not args.no_progress, holder=args.holder, poll_seconds=args.poll_seconds
        )
    except SweepIncomplete as err:
        print(f"gptjax sweep: {err}", file=sys.stderr)
        return 1
    if result.report:  # process 0 writes it
        print(f"wrote {result.report['report.md']} and {result.report['report.html']}")
    return 0
