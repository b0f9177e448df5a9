"""The scoring engine's host-side pieces: batch arrays, the token cache, model prefetching."""

import threading
import time

import numpy as np
import pytest

from modelmap.scoring.engine import (
    TokenCache,
    TokenizedTexts,
    batch_arrays,
    plan_all_windows,
    tokenizer_fingerprint,
)
from modelmap.scoring.prefetch import prefetched
from modelmap.scoring.scorer import Scorer


def test_batch_arrays_match_a_plain_loop():
    rng = np.random.default_rng(0)
    ids = [list(rng.integers(1, 100, size=n)) for n in (1, 2, 7, 30, 13)]
    tokens = TokenizedTexts.from_lists(ids)
    windows = plan_all_windows(tokens.lengths, context=8, stride=3)
    members = windows[rng.permutation(len(windows))[:9]]
    inputs, positions, targets, owners = batch_arrays(tokens, members)
    width = int((members[:, 2] - members[:, 1]).max())
    assert inputs.shape == (len(members), width)
    expect_pos, expect_tgt, expect_own = [], [], []
    for row, (t, start, end, first) in enumerate(members):
        window = ids[t][start:end]
        assert inputs[row, : len(window)].tolist() == window
        assert not inputs[row, len(window) :].any()  # right padding with 0
        for j in range(first, end):
            expect_pos.append(row * width + j - start - 1)
            expect_tgt.append(ids[t][j])
            expect_own.append(row)
    assert positions.tolist() == expect_pos
    assert targets.tolist() == expect_tgt
    assert owners.tolist() == expect_own


class CountingTokenizer:
    """Stands in for a fast tokenizer: one id per character, with a backend to fingerprint."""

    def __init__(self, name: str):
        self.calls = 0
        self.backend_tokenizer = type("Backend", (), {"to_str": lambda _self: name})()

    def __call__(self, texts, add_special_tokens=True, truncation=False):
        self.calls += 1
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_token_cache_tokenizes_once_per_tokenizer_and_corpus():
    cache = TokenCache(max_entries=2)
    a, same_as_a, b = CountingTokenizer("A"), CountingTokenizer("A"), CountingTokenizer("B")
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(same_as_a)
    texts = ["hello", "", "world!"]
    first = cache.get(a, texts)
    assert first.lengths.tolist() == [5, 0, 6]
    assert cache.get(same_as_a, texts) is first and same_as_a.calls == 0
    cache.get(b, texts)
    assert b.calls == 1 and cache.hits == 1 and cache.misses == 2
    cache.get(a, ["other"])  # a third corpus pushes out the least recently used one
    cache.get(a, texts)
    assert a.calls == 3


def test_prefetch_overlaps_loading_and_keeps_errors_per_item():
    loading = []

    def load(i):
        loading.append((i, threading.current_thread().name))
        time.sleep(0.1)
        if i == 1:
            raise ValueError("broken model")
        return i * 10

    t0 = time.perf_counter()
    seen = []
    for job in prefetched(range(4), load):
        time.sleep(0.1)  # "scoring" while the next item loads
        seen.append((job.item, job.value, type(job.error).__name__ if job.error else None))
    elapsed = time.perf_counter() - t0
    assert seen == [(0, 0, None), (1, None, "ValueError"), (2, 20, None), (3, 30, None)]
    assert all(name.startswith("prefetch") for _, name in loading)
    assert elapsed < 0.75  # 4 loads + 4 scorings of 0.1 s each would take 0.8 s in series
    with pytest.raises(ValueError, match="broken model"):
        next(job for job in prefetched([1], load)).get()


def test_loading_in_turn_stays_in_the_callers_thread_and_keeps_errors_per_item():
    threads, order = [], []

    def load(i):
        threads.append(threading.current_thread().name)
        order.append(("load", i))
        if i == 1:
            raise ValueError("broken model")
        return i * 10

    seen = []
    for job in prefetched(range(3), load, ahead=0):
        order.append(("use", job.item))
        seen.append((job.item, job.value, type(job.error).__name__ if job.error else None))
    assert seen == [(0, 0, None), (1, None, "ValueError"), (2, 20, None)]
    assert set(threads) == {threading.current_thread().name}
    # Nothing loads before the item before it is used: one model in memory at a time.
    assert order == [("load", 0), ("use", 0), ("load", 1), ("use", 1), ("load", 2), ("use", 2)]


def test_the_scorer_loads_ahead_on_cuda_only_unless_told():
    assert Scorer(device="cpu").loads_ahead() == 0
    assert Scorer(device="cpu", prefetch=True).loads_ahead() == 1
    assert Scorer(device="auto", prefetch=False).loads_ahead() == 0
    assert Scorer(device="cuda:1").loads_ahead() == 1  # says so even without a GPU
