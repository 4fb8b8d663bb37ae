"""Run the benchmark suite: ``python benchmarks/run.py [--quick]`` (the same as ``dsnt bench``)."""

from dsnt_apps.cli import main

if __name__ == "__main__":
    import sys

    raise SystemExit(main(["bench", *sys.argv[1:]]))
