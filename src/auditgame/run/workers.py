"""Process-pool hygiene shared by the zoo builder and the local executor.

Torch's OpenMP threads busy-wait by default; with several processes on two cores that ran five
times slower than one thread. Each worker therefore runs one passive thread, for torch and for
numpy's BLAS alike.

``AUDITGAME_DEVICE`` (e.g. ``cuda``) makes a worker create its models and tensors on that
device by default (``torch.set_default_device``): how a benchmark's ``--device`` reaches the
text families' models without threading a device through every call. Spawned workers inherit
the variable from the referee.

``one_thread`` does the same for a stretch of code in any process: training whose result is
cached and shared must not depend on how many threads its caller happened to run (a
reduction split over two threads sums in another order, and 2,000 steps turn last bits into
another model).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext


def configure_worker() -> None:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    device = os.environ.get("AUDITGAME_DEVICE")
    if device:
        torch.set_default_device(device)
    # numpy's BLAS reads OMP_NUM_THREADS only when first loaded; in a worker that already
    # imported numpy (the in-process path) it would still spread one SVD over every core.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch and the BLAS libraries on one thread inside the block, as in a worker; the
    caller's thread counts come back after it."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def mp_context() -> BaseContext:
    """``spawn``: a forked copy of a process that already started torch threads can hang."""
    return multiprocessing.get_context("spawn")
