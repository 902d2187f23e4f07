"""Map a function over tasks in worker processes (fork where the platform has it), in order."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], tasks: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, tasks)`` over ``workers`` processes, results in task order, streamed as they finish.

    One worker (or one task) runs in this process, which keeps tracebacks and debugging simple. ``fn``
    must be a module-level function so that a spawned worker can import it.
    """
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap(fn, tasks, chunksize=max(1, min(8, len(tasks) // (workers * 8))))
