"""Work spread over worker processes (episode collection, evaluation), results in job order."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def imap_workers(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int) -> Iterator[Any]:
    """fn(job) for each job, in order, in `workers` forkserver processes (a clean process each,
    not a fork of this one; here in this process when workers <= 1).

    The pool is closed and joined, not terminated: terminate() relies on SIGTERM, which a
    process started with SIGTERM ignored (inherited from its parent) never receives, so its
    join would wait forever. On an error or an early exit the workers are terminated.
    """
    if workers <= 1:
        yield from map(fn, jobs)
        return
    pool = mp.get_context("forkserver").Pool(workers)
    try:
        yield from pool.imap(fn, jobs)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
