"""Load the next model while the current one is scored.

Loading a model (reading safetensors, building the module, moving it to the device) is mostly
I/O and memory copies; scoring is compute. `prefetched` overlaps them: while the caller works
on item i, a background thread already loads item i + 1.

    for job in prefetched(keys, load):
        if job.error is not None:
            report(job.item, job.error)   # one bad model does not stop the others
            continue
        score(job.value)

At most `ahead` loaded items wait beside the one in use, so memory holds `ahead + 1` models.
With `ahead=0` each item is loaded in the caller's thread when its turn comes (no overlap).

Overlap pays where scoring runs on an accelerator and loading is disk and host work. On a CPU
the two share the cores: the load's torch calls bring up their own pool of compute threads,
which keep spinning on the cores the scoring threads need after each call. Measured on 2 cores
(24 small-zoo models per run, 40 texts and their twins each): scoring took 15.1 s with the next
model loading in a thread and 8.2 s with each loaded in turn (the loads themselves: 0.55 s in
all). So the scorer loads ahead on CUDA only (`resources.scorer.ScorerResource.prefetch`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Prefetched(Generic[T, R]):
    """One item and what loading it gave: a value, or the exception it raised."""

    item: T
    value: R | None
    error: BaseException | None
    wait_s: float  # how long the consumer waited for this item's load to finish

    def get(self) -> R:
        """The loaded value; re-raises the load's exception."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def prefetched(
    items: Iterable[T], load: Callable[[T], R], ahead: int = 1
) -> Iterator[Prefetched[T, R]]:
    """Yield `Prefetched(item, load(item))` in order, loading up to `ahead` items in advance
    (0: each in the caller's thread, when its turn comes)."""
    if ahead < 0:
        raise ValueError(f"ahead must be >= 0, got {ahead}")
    if ahead == 0:
        yield from _in_turn(items, load)
        return
    iterator = iter(items)
    pending: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:

        def submit_next() -> None:
            for item in iterator:
                pending.append((item, pool.submit(load, item)))
                return

        for _ in range(ahead + 1):
            submit_next()
        while pending:
            item, future = pending.popleft()
            t0 = time.perf_counter()
            error = future.exception()
            waited = time.perf_counter() - t0
            value = None if error is not None else future.result()
            yield Prefetched(item, value, error, waited)
            del value
            # The caller is done with this item: only now may another load start, so at most
            # `ahead` loaded models wait beside the one in use.
            submit_next()


def _in_turn(items: Iterable[T], load: Callable[[T], R]) -> Iterator[Prefetched[T, R]]:
    for item in items:
        t0 = time.perf_counter()
        try:
            value, error = load(item), None
        except Exception as exc:  # reported as this item's error, as a background load's is
            value, error = None, exc
        yield Prefetched(item, value, error, time.perf_counter() - t0)
        del value
