"""The ``dsnt`` command (also ``python -m dsnt_apps``): ``demo``, ``train`` and ``bench``."""

from __future__ import annotations

import argparse
import importlib.util
import sys


def _require(module: str, extra: str) -> None:
    """Exit with an install hint unless ``module`` is importable."""
    if importlib.util.find_spec(module) is None:
        sys.exit(f"dsnt: this command needs {module}; install it with: pip install 'dsnt-core[{extra}]'")


def main(argv: list[str] | None = None) -> int:
    """Run the ``dsnt`` command.

    Parameters
    ----------
    argv
        The arguments after the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        The exit status: 0 on success, 1 if ``demo`` finds libraries that disagree.
    """
    parser = argparse.ArgumentParser(prog="dsnt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="the same heatmaps through every installed array library")
    demo.add_argument("--seed", type=int, default=0)
    train_parser = commands.add_parser("train", help="train a small CNN on synthetic keypoint images")
    train_parser.add_argument("--framework", choices=["torch", "jax"], default="torch")
    train_parser.add_argument("--steps", type=int, default=400)
    train_parser.add_argument("--seed", type=int, default=0)
    train_parser.add_argument("--output", default="dsnt_train.png", help="PNG with images, heatmaps and points")
    bench = commands.add_parser("bench", help="run the benchmark suite")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions and shapes")
    bench.add_argument("--output-dir", default="benchmarks/results")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo

        differences = run_demo(seed=args.seed)
        return 0 if all(d < 1e-10 for d in differences.values()) else 1
    if args.command == "train":
        _require(args.framework, args.framework)
        _require("matplotlib", "demo")
        _require("tqdm", "demo")
        from .training import train

        train(framework=args.framework, steps=args.steps, seed=args.seed, output=args.output)
        return 0
    _require("torch", "torch")
    from dsnt_benchmarks import run_suite

    run_suite(output_dir=args.output_dir, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
