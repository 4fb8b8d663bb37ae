"""Forked children and threads: the NumPy kernels' helper threads and locks survive both."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import dsnt_core

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform == "darwin", reason="the fork start method needs Linux or another POSIX"
)

# Large enough that the NumPy kernels start their helper threads in the parent.
LOGITS = np.random.default_rng(0).normal(size=(64, 17, 64, 64)).astype(np.float32)


def _child_result(queue: multiprocessing.Queue) -> None:
    queue.put(dsnt_core.soft_argmax(LOGITS))


def test_a_fork_child_after_a_large_call_in_the_parent_finishes():
    parent = dsnt_core.soft_argmax(LOGITS)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_result, args=(queue,))
    child.start()
    child.join(60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung, "the forked child hung in soft_argmax"
    assert child.exitcode == 0
    np.testing.assert_array_equal(queue.get(timeout=5), parent)


class _Heatmaps:
    """A map-style dataset: one heatmap stack per item, reduced in the worker."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> np.ndarray:
        return dsnt_core.soft_argmax(LOGITS[index * 32 : (index + 1) * 32])


def test_a_forked_dataloader_worker_after_a_large_call_in_the_parent_finishes():
    torch = pytest.importorskip("torch")
    parent = dsnt_core.soft_argmax(LOGITS)
    loader = torch.utils.data.DataLoader(
        _Heatmaps(), batch_size=None, num_workers=1, multiprocessing_context="fork", timeout=60
    )
    results = [np.asarray(item) for item in loader]
    np.testing.assert_array_equal(np.concatenate(results), parent)


def test_concurrent_calls_from_threads_equal_a_serial_run():
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(48, 17, 32, 32)) for _ in range(8)]
    targets = [rng.uniform(-0.8, 0.8, size=(48, 17, 2)) for _ in range(8)]

    def work(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        loss, grad = dsnt_core.dsnt_loss_value_and_grad(inputs[i], targets[i])
        return dsnt_core.soft_argmax(inputs[i]), loss, grad

    serial = [work(i) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(work, range(8)))
    for one, other in zip(serial, threaded):
        for a, b in zip(one, other):
            np.testing.assert_array_equal(a, b)
