"""The operations of dsnt-core, one per module: each public function with its rules.

Composable building blocks (:mod:`.grids`, :mod:`.normalize`, :mod:`.dsnt`, :mod:`.gaussian`,
:mod:`.losses`, :mod:`.regularizers`, :mod:`.confidence`), which take any number of spatial
axes, and the two fused operations on the training path
(:mod:`.soft_argmax`, :mod:`.dsnt_loss`), whose full-size passes go through a kernel
implementation (:mod:`dsnt_core.kernels`).
"""
