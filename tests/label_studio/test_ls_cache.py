"""The embedding cache: bounded in bytes, LRU, single flight per key, errors not cached; the request thread share."""

from __future__ import annotations

import threading
import time

import pytest

from tinysam_backend.label_studio.cache import SingleFlightCache


def test_simultaneous_first_lookups_compute_once():
    cache: SingleFlightCache[str] = SingleFlightCache(1000, len)
    calls = []
    start = threading.Barrier(8)

    def compute():
        calls.append(1)
        time.sleep(0.2)  # long enough for every other thread to arrive while it runs
        return "value"

    results = []

    def worker():
        start.wait()
        results.append(cache.get_or_compute("img", compute))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(results) == sorted([("value", False)] + [("value", True)] * 7)
    stats = cache.stats()
    assert (stats.misses, stats.waits) == (1, 7)


def test_different_keys_compute_in_parallel():
    cache: SingleFlightCache[str] = SingleFlightCache(1000, len)
    inside = threading.Barrier(2, timeout=5)

    def compute(key):
        inside.wait()  # deadlocks (BrokenBarrierError) if the keys were serialised
        return key

    threads = [threading.Thread(target=lambda k=k: cache.get_or_compute(k, lambda: compute(k))) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.get("a") == "a" and cache.get("b") == "b"


def test_bounded_in_bytes_least_recently_used_first():
    cache: SingleFlightCache[bytes] = SingleFlightCache(10, len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"1234")  # 12 bytes > 10: b goes
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.stats().bytes == 8 and cache.stats().evictions == 1
    cache.put("huge", b"x" * 11)  # larger than the bound: not kept, nothing evicted for it
    assert "huge" not in cache and len(cache) == 2


def test_errors_reach_every_waiter_and_are_not_cached():
    cache: SingleFlightCache[str] = SingleFlightCache(100, len)
    gate = threading.Event()
    errors = []

    def failing():
        gate.wait(5)
        raise ValueError("cannot decode")

    def worker():
        try:
            cache.get_or_compute("k", failing)
        except ValueError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join()
    assert errors == ["cannot decode"] * 3
    assert cache.get_or_compute("k", lambda: "ok") == ("ok", False)


def test_negative_bound_is_refused():
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        SingleFlightCache(-1, len)


def test_thread_share_gives_one_request_all_threads_and_splits_them_under_load():
    import torch

    from tinysam_backend.label_studio.backend import ThreadShare

    share = ThreadShare(2)
    inside, leave = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def first() -> None:
        with share.request() as n:
            seen["first"] = n
            seen["first_torch"] = torch.get_num_threads()
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(10)
    with share.request() as n:  # a second request while the first is in flight
        seen["second"] = n
        seen["second_torch"] = torch.get_num_threads()
    leave.set()
    t.join(10)
    with share.request() as n:  # alone again
        seen["third"] = n
    assert seen == {"first": 2, "first_torch": 2, "second": 1, "second_torch": 1, "third": 2}
