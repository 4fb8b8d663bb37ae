"""The options that choose a part of the benchmark suite, shared by ``dsnt bench`` and ``python -m dsnt_benchmarks``.

Light to import (argparse and the configuration only), so that a command line can offer them
before any framework is loaded.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import config


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


def add_part_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--quick``, ``--shapes``, ``--libraries``, ``--sweep``, ``--repeats`` and ``--no-studies`` to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser of a command that runs the suite.
    """
    parser.add_argument("--quick", action="store_true", help="pose shape, 5 rounds, no sweep")
    parser.add_argument("--shapes", type=_shapes, default=None, help="groups by label prefix: pose,whole-body,3-d,many")
    parser.add_argument("--libraries", default=None, help="comma-separated: torch,jax,numpy,torch-cuda,cupy")
    parser.add_argument("--sweep", type=_sweep, default=None, help='sides n of the (8, 17, n, n) sweep; "" for none')
    parser.add_argument("--repeats", type=_positive, default=None, help="interleaved rounds (None: the suite's)")
    parser.add_argument("--no-studies", action="store_true", help="no bytes, passes, compiled, sweep")


def suite_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `run_suite` that the options of `add_part_options` parsed.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Returns
    -------
    dict
        ``quick``, ``shapes``, ``sweep``, ``repeats``, ``libraries`` and ``studies``.
    """
    libraries = None if args.libraries is None else [name.strip() for name in args.libraries.split(",")]
    return {
        "quick": args.quick,
        "shapes": args.shapes,
        "sweep": args.sweep,
        "repeats": args.repeats,
        "libraries": libraries,
        "studies": not args.no_studies,
    }
