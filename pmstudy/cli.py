"""The ``pmstudy`` command: run a study, report it, benchmark the EM kernel.

Bad input exits with status 2 and one line that names the field, the value and
what is valid; nothing is created or written before the spec has been validated.
The command owns printing and the progress bar; the library only logs.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import numpy as np

from pmstudy import __version__
from pmstudy.errors import SpecError

logger = logging.getLogger("pmstudy")

__all__ = ["main"]


def _int_at_least(lowest: int, highest: int | None = None):
    """An argparse type: an integer >= `lowest` (and <= `highest`), or a
    one-line error."""
    valid = f"from {lowest} to {highest}" if highest is not None else f">= {lowest}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lowest - 1
        if value < lowest or (highest is not None and value > highest):
            raise argparse.ArgumentTypeError(
                f"should be an integer {valid}, but got {text!r}"
            )
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"should be a finite number > 0, but got {text!r}"
        )
    return value


class _Progress:
    """A tqdm bar on a terminal; otherwise a log line every tenth of the work."""

    def __init__(self) -> None:
        self._bar = None
        self._last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=total, initial=done, unit="block", file=sys.stderr
                )
            else:
                self._bar.update(done - self._bar.n)
            return
        decile = (10 * done) // max(total, 1)
        if decile != self._last_decile:
            self._last_decile = decile
            logger.info(
                "progress: %d of %d blocks (%d%%)",
                done,
                total,
                100 * done // max(total, 1),
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _cmd_run(args: argparse.Namespace) -> int:
    from pmstudy.run import BlocksFailed, run_study
    from pmstudy.study import load_spec

    if args.store is not None and not args.store.strip():
        raise SpecError("--store", args.store, "a non-empty path or URL")
    study = load_spec(args.spec)
    progress = _Progress()
    try:
        summary = run_study(
            study,
            args.store,
            workers=args.workers,
            scheduler=args.scheduler,
            scheduler_file=args.scheduler_file,
            cluster=args.cluster or "local",
            on_progress=progress,
        )
    except BlocksFailed as error:
        print(f"pmstudy: error: {error}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    busy = (
        f" ({summary.run_seconds:.1f} s from the first block sent to the last "
        f"written, workers busy {100 * summary.utilization:.1f}% of it)"
        if summary.tasks_run
        else ""
    )
    print(
        f"{summary.store}: {summary.tasks_run} block(s) run, "
        f"{summary.tasks_skipped} already done, in {summary.seconds:.1f} s{busy}"
    )
    if args.report:
        return _cmd_report(
            argparse.Namespace(
                store=summary.store, format="table", interval="wilson", alpha=0.05
            )
        )
    return 0


def _check_alpha(alpha: float) -> None:
    from pmstudy.analysis import ALPHA_MIN

    if not ALPHA_MIN <= alpha < 1:
        raise SpecError("--alpha", alpha, f"a number in [{ALPHA_MIN:g}, 1)")


def _cmd_status(args: argparse.Namespace) -> int:
    from pmstudy.status import format_status, study_status

    sys.stdout.write(format_status(study_status(args.store), args.format))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pmstudy.analysis import LEVELS, study_summary
    from pmstudy.report import format_report
    from pmstudy.store import open_store

    _check_alpha(args.alpha)
    # `run --report` calls this with only store, format, interval and alpha.
    levels = getattr(args, "levels", None) or LEVELS
    for level in levels:
        if not 0 < level <= 1:
            raise SpecError("--levels", level, "numbers in (0, 1]")
    with open_store(args.store) as ds:
        summary = study_summary(
            ds, method=args.interval, alpha=args.alpha, levels=levels
        )
    sys.stdout.write(format_report(summary, args.format))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from pmstudy.plot import default_figure_dir, write_figures
    from pmstudy.store import open_store

    _check_alpha(args.alpha)
    out_dir = args.output or default_figure_dir(args.store)
    with open_store(args.store) as ds:
        paths = write_figures(
            ds,
            out_dir,
            method=args.interval,
            alpha=args.alpha,
            formats=args.formats,
            census_starts=args.census,
        )
    for path in paths:
        print(path)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.memory:
        from pmstudy.memory_bench import format_memory_bench, run_memory_bench

        result = run_memory_bench(quick=args.quick)
        text = format_memory_bench(result, args.format)
    elif args.population:
        from pmstudy.population_bench import (
            format_population_bench,
            run_population_bench,
        )

        result = run_population_bench(quick=args.quick, repeats=args.repeats)
        text = format_population_bench(result, args.format)
    else:
        from pmstudy.bench import format_bench, run_bench

        result = run_bench(quick=args.quick, repeats=args.repeats)
        text = format_bench(result, args.format)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _cmd_landscape(args: argparse.Namespace) -> int:
    from pmstudy import landscape, schemes
    from pmstudy.landscape_cli import census_inits, format_census, parse_centers
    from pmstudy.schemes import SCHEMES, check_scheme

    if (args.spec is None) == (args.centers is None):
        raise SpecError("landscape", args.spec or args.centers, "a SPEC or --centers")
    if args.separation is not None and not (
        math.isfinite(args.separation) and args.separation > 0
    ):
        raise SpecError("--separation", args.separation, "a finite number > 0")
    if args.spec is not None:
        from pmstudy.store import true_centers
        from pmstudy.study import load_spec

        study = load_spec(args.spec)
        separation = args.separation
        if separation is None:
            if len(study.separations) > 1:
                raise SpecError(
                    "--separation", None, f"one of {list(study.separations)}"
                )
            separation = study.separations[0]
        centers_true = true_centers(study, separation)
        specs = [(s.label, s.name, s.params) for s in study.schemes]
        seed = study.seed if args.seed is None else args.seed
    else:
        centers_true = parse_centers(args.centers)
        separation = 0.0
        if args.separation is not None:
            gaps = np.linalg.norm(centers_true[:, None] - centers_true[None], axis=-1)
            if len(centers_true) > 1:
                centers_true *= args.separation / gaps[gaps > 0].min()
            separation = args.separation
        specs = []
        seed = 0 if args.seed is None else args.seed
    limit = schemes.MAX_ABS_COORDINATE
    if not np.abs(centers_true).max() < limit:
        raise SpecError(
            "--separation",
            args.separation,
            f"a separation at which the true centers have coordinates below "
            f"{limit:.0e} in absolute value",
        )
    k, d = centers_true.shape
    if args.scheme:
        specs = []
        for name in args.scheme:
            if name not in SCHEMES:
                raise SpecError("--scheme", name, f"one of {list(SCHEMES)}")
            specs.append((name, name, check_scheme(name, {}, k=k, d=d)))
    if not specs:
        specs = [("forgy", "forgy", check_scheme("forgy", {}, k=k, d=d))]
    if args.proxy_size <= k:
        raise SpecError("--proxy-size", args.proxy_size, f"an integer > k = {k}")

    inits = census_inits(
        centers_true,
        specs,
        n_inits=args.inits,
        seed=seed,
        separation=separation,
        proxy_size=args.proxy_size,
    )
    result = landscape.census(centers_true, inits, max_iter=args.max_iter, tol=args.tol)
    sys.stdout.write(format_census(result, args.format))
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like the spec's."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"pmstudy: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pmstudy",
        description="Monte Carlo study of P_m, the probability that EM reaches the "
        "global maximum of a Gaussian mixture likelihood.",
    )
    parser.add_argument("--version", action="version", version=f"pmstudy {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a study (or resume it) into its store")
    run.add_argument("spec", help="study spec (TOML)")
    run.add_argument("--store", help="store path or URL (default: the spec's `store`)")
    run.add_argument(
        "--workers",
        type=_positive_int,
        help="worker processes (default: one per core; on SLURM, one job's)",
    )
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler", metavar="ADDRESS", help="an existing Dask scheduler"
    )
    where.add_argument("--scheduler-file", metavar="FILE", help="a Dask scheduler file")
    where.add_argument(
        "--cluster",
        choices=("local", "slurm"),
        help="cluster to start (default: local; slurm reads jobqueue.slurm.*)",
    )
    run.add_argument("--report", action="store_true", help="print the report when done")
    run.set_defaults(handler=_cmd_run)

    status = commands.add_parser("status", help="how much of a study is done")
    status.add_argument("store", help="store path or URL")
    status.add_argument("--format", choices=("table", "json"), default="table")
    status.set_defaults(handler=_cmd_status)

    report = commands.add_parser("report", help="P_m per cell with intervals")
    report.add_argument("store", help="store path or URL")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.add_argument(
        "--interval", choices=("wilson", "clopper-pearson"), default="wilson"
    )
    report.add_argument(
        "--alpha", type=float, default=0.05, help="1 - confidence level"
    )
    report.add_argument(
        "--levels",
        type=float,
        nargs="+",
        metavar="P",
        help="levels of P_m whose sample size to report (default: 0.5 0.9)",
    )
    report.set_defaults(handler=_cmd_report)

    plot = commands.add_parser(
        "plot", help="figures of P_m, its phase diagram and the failures (PNG, SVG)"
    )
    plot.add_argument("store", help="store path or URL")
    plot.add_argument(
        "-o", "--output", metavar="DIR", help="directory (default: beside the store)"
    )
    plot.add_argument(
        "--interval", choices=("wilson", "clopper-pearson"), default="wilson"
    )
    plot.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level")
    plot.add_argument(
        "--formats",
        nargs="+",
        choices=("png", "svg", "pdf"),
        default=["png", "svg"],
        help="file formats (default: png svg)",
    )
    plot.add_argument(
        "--census",
        type=int,
        metavar="N",
        help="starts per scheme of the landscape census drawn on the centers "
        "figure; 0 for none (default: 16 in d = 1, none in d = 2)",
    )
    plot.set_defaults(handler=_cmd_plot)

    bench = commands.add_parser("bench", help="EM kernel speed against scikit-learn")
    bench.add_argument("--format", choices=("table", "json"), default="table")
    bench.add_argument("--quick", action="store_true", help="small workloads (~10 s)")
    bench.add_argument(
        "--repeats",
        type=_int_at_least(1, 100),
        default=3,
        help="timed repeats, medians reported (1 to 100; default 3)",
    )
    target = bench.add_mutually_exclusive_group()
    target.add_argument(
        "--population",
        action="store_true",
        help="population EM instead: error against time for r = 1, 2, 3",
    )
    target.add_argument(
        "--memory",
        action="store_true",
        help="peak memory of one fit of m = 10^6 points in d = 10 instead",
    )
    bench.set_defaults(handler=_cmd_bench)

    land = commands.add_parser(
        "landscape",
        help="census of population critical points reached from each scheme",
    )
    land.add_argument("spec", nargs="?", help="study spec (TOML) giving the truth")
    land.add_argument(
        "--centers", help='true centers as "x,y;x,y;..." (instead of a SPEC)'
    )
    land.add_argument("--separation", type=float, help="scale to this separation")
    land.add_argument(
        "--scheme", action="append", metavar="NAME", help="a scheme (repeatable)"
    )
    land.add_argument(
        "--inits",
        type=_positive_int,
        default=20,
        help="starts per scheme (default: %(default)s)",
    )
    land.add_argument(
        "--seed",
        type=_nonnegative_int,
        help="seed of the starts, an integer >= 0 (default: the spec's, or 0)",
    )
    land.add_argument(
        "--proxy-size",
        type=_positive_int,
        default=10000,
        help="size of the proxy sample each start is drawn on (default: %(default)s)",
    )
    land.add_argument(
        "--max-iter",
        type=_positive_int,
        default=20000,
        help="population EM steps at most, per start (default: %(default)s)",
    )
    land.add_argument(
        "--tol",
        type=_positive_float,
        default=1e-8,
        help="population EM stops this close to its fixed point, in units of sigma "
        "(default: %(default)s)",
    )
    land.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="output format (default: %(default)s)",
    )
    land.set_defaults(handler=_cmd_landscape)
    return parser


def _glue_values(argv: list[str]) -> list[str]:
    """Join ``--centers VALUE`` into ``--centers=VALUE``.

    argparse takes a value that starts with "-" for an option of its own, so
    ``--centers "-3;3;12"`` would fail as a user types it.
    """
    out: list[str] = []
    glue = False
    for arg in argv:
        if glue:
            out[-1] += "=" + arg
            glue = False
            continue
        out.append(arg)
        glue = arg == "--centers"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pmstudy`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(_glue_values(argv))
    # distributed logs a great deal at INFO, in this process and in every worker
    # it spawns; its configuration is read from the environment at import, so set
    # it before anything imports distributed. Its warnings still show.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.handler(args)
    except SpecError as error:
        print(f"pmstudy: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Only `run` writes results a rerun can resume from.
        what = (
            "; what was written is kept, rerun to resume"
            if args.command == "run"
            else ""
        )
        print(f"pmstudy: interrupted{what}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
