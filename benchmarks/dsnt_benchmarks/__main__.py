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

from .options import add_part_options, suite_options
from .suite import run_suite


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
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"), help="folder for the results")
    add_part_options(parser)
    args = parser.parse_args(argv)
    run_suite(args.output_dir, **suite_options(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
