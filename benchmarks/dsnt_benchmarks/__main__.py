"""``python -m dsnt_benchmarks``: the suite of ``dsnt bench``, or a part of it.

Without options the same run as ``dsnt bench``. The options pick a part, for measuring one
change without the full run: ``--shapes pose,many`` (the groups whose label starts with one of
these), ``--libraries torch``, ``--sweep 64,128,256`` (sides n of the (8, 17, n, n) sweep, or
``--sweep ""`` for none), ``--repeats 40``, ``--no-studies`` (no saved bytes, pass counts,
compiled kernels or size sweep).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config
from .suite import run_suite


def _shapes(value: str) -> dict[str, tuple[int, ...]]:
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    chosen = {label: shape for label, shape in config.SHAPES.items() if any(label.lower().startswith(n) for n in names)}
    if not chosen:
        raise argparse.ArgumentTypeError(f"no shape label starts with one of {names}; labels: {list(config.SHAPES)}")
    return chosen


def _sweep(value: str) -> list[tuple[int, ...]]:
    try:
        sides = [int(side) for side in value.split(",") if side.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--sweep takes sides n separated by commas, got {value!r}") from error
    if any(side < 1 for side in sides):
        raise argparse.ArgumentTypeError(f"--sweep takes positive sides, got {value!r}")
    return [(8, 17, side, side) for side in sides]


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def main(argv: list[str] | None = None) -> int:
    """Run the suite, or the part the options choose; the exit status (0).

    Parameters
    ----------
    argv : list of str, optional
        The arguments; ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        0.
    """
    parser = argparse.ArgumentParser(prog="python -m dsnt_benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the pose shape only, 5 rounds, no size sweep")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"), help="folder for the results")
    parser.add_argument("--shapes", type=_shapes, default=None, help="groups by label prefix: pose,whole-body,3-d,many")
    parser.add_argument("--libraries", default=None, help="comma-separated: torch,jax,numpy,torch-cuda,cupy")
    parser.add_argument("--sweep", type=_sweep, default=None, help='sides n of the (8, 17, n, n) sweep; "" for none')
    parser.add_argument("--repeats", type=_positive, default=None, help="interleaved rounds")
    parser.add_argument("--no-studies", action="store_true", help="skip saved bytes, passes, compiled, sweep")
    args = parser.parse_args(argv)
    libraries = None if args.libraries is None else [name.strip() for name in args.libraries.split(",")]
    run_suite(
        args.output_dir,
        quick=args.quick,
        shapes=args.shapes,
        sweep=args.sweep,
        repeats=args.repeats,
        libraries=libraries,
        studies=not args.no_studies,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
