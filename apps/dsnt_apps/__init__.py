"""dsnt-apps: the ``dsnt`` command and the programs behind it, built on the public API of dsnt-core.

``dsnt demo`` runs the same heatmaps through every installed array library, ``dsnt train``
trains a small CNN on synthetic keypoint images, and ``dsnt bench`` runs the benchmark suite
(:mod:`dsnt_benchmarks`). Also ``python -m dsnt_apps``. The library never imports this package.
"""
