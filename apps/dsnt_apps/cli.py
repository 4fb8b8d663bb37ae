"""The dsnt command (also python -m dsnt_apps): demo, train and bench."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from dsnt_benchmarks.options import add_part_options, suite_options

DESCRIPTION = """\
dsnt-core's command line.

  demo   the same heatmaps through every installed array library, and their agreement
  train  a small CNN trained on synthetic keypoint images, with a PNG of the result
  bench  the benchmark suite: dsnt-core against dsntnn, kornia and naive code
"""


def _require(module: str, extra: str) -> None:
    """Exit with an install hint unless ``module`` is importable."""
    if importlib.util.find_spec(module) is None:
        sys.exit(f"dsnt: this command needs {module}; install it with: pip install 'dsnt-core[{extra}]'")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``, with a message naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)  # a random seed


def _png_path(text: str) -> Path:
    """An argparse type: a ``.png`` file path whose folder exists or can be created."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"expected a path ending in .png, got {text!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file path, got the folder {text!r}")
    return path


def _ensure_folder(parser: argparse.ArgumentParser, folder: Path, option: str) -> None:
    """Create ``folder`` (and its parents) before any work, or stop with a usage error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"{option}: cannot create the folder {str(folder)!r}: {error.strerror}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dsnt`` command, with help text and defaults for every option.

    Returns
    -------
    argparse.ArgumentParser
        The parser; ``main`` runs what it parses.

    Examples
    --------
    >>> build_parser().parse_args(["train", "--steps", "5"]).steps
    5
    """
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="dsnt", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,train,bench}")
    demo = commands.add_parser(
        "demo", help="the same heatmaps through every installed array library", formatter_class=formatter
    )
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="random seed of the heatmaps")
    train = commands.add_parser(
        "train", help="train a small CNN on synthetic keypoint images", formatter_class=formatter
    )
    train.add_argument("--framework", choices=["torch", "jax"], default="torch", help="the framework to train with")
    train.add_argument("--steps", type=_positive_int, default=400, help="optimisation steps (at least 1)")
    train.add_argument("--seed", type=_non_negative_int, default=0, help="random seed of the data and the weights")
    train.add_argument(
        "--output", type=_png_path, default=Path("dsnt_train.png"), help="PNG with images, heatmaps and points"
    )
    bench = commands.add_parser("bench", help="run the benchmark suite, or a part of it", formatter_class=formatter)
    bench.add_argument(
        "--output-dir", type=Path, default=Path("benchmarks/results"), help="folder for results.md, .json and .png"
    )
    add_part_options(bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``dsnt`` command.

    Every argument is checked, and output folders are created, before any work starts.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        The exit status: 0 on success, 1 if ``demo`` finds libraries that disagree.

    Examples
    --------
    >>> main(["demo"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo

        differences = run_demo(seed=args.seed)
        return 0 if all(d < 1e-10 for d in differences.values()) else 1
    if args.command == "train":
        _require(args.framework, args.framework)
        if args.framework == "jax":  # the JAX trainer is built from the Flax modules
            _require("flax", "flax")
        _require("matplotlib", "demo")
        _require("tqdm", "demo")
        _ensure_folder(parser, args.output.parent, "--output")
        from .training import train

        train(framework=args.framework, steps=args.steps, seed=args.seed, output=str(args.output))
        return 0
    _require("torch", "torch")
    _ensure_folder(parser, args.output_dir, "--output-dir")
    from dsnt_benchmarks import run_suite

    run_suite(args.output_dir, **suite_options(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
