"""dsnt-benchmarks: the benchmark suite behind ``dsnt bench``, built on the public API of dsnt-core.

`run_suite` times typed `Candidate` objects (whose code runs, what it computes, on which
kernels) in interleaved groups and writes ``results.json``, ``results.md`` and
``results.png``. The library never imports this package.
"""

from .candidate import Candidate
from .suite import run_suite

__all__ = ["Candidate", "run_suite"]
