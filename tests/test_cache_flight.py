"""The session's in-memory cache is single-flight: one computation per key, waiters stay stoppable, and a
stopped owner hands the key to a waiter."""

import threading
import time

import pytest

from cnnviz_widgets.cache import LRUCache
from cnnviz_widgets.widgets.tasks import Cancelled


def test_callers_asking_at_once_share_one_computation():
    cache = LRUCache(4)
    runs = []
    started = threading.Event()

    def compute():
        runs.append(threading.get_ident())
        started.set()
        time.sleep(0.3)
        return "value"

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("key", compute))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == ["value"] * 3 and len(runs) == 1


def test_a_waiter_sees_the_owners_progress_and_its_stop_returns_at_once():
    cache = LRUCache(4)
    release = threading.Event()
    progress = threading.Event()

    def compute(checkpoint):
        checkpoint(0.25)
        progress.set()
        release.wait(10)
        return "value"

    owner = threading.Thread(target=lambda: cache.get("key", compute, lambda fraction, partial=None: None))
    owner.start()
    assert progress.wait(5)
    seen = []

    def stoppable(fraction, partial=None):
        seen.append(fraction)
        if len(seen) >= 2:
            raise Cancelled

    asked = time.monotonic()
    with pytest.raises(Cancelled):
        cache.get("key", compute, stoppable)
    assert time.monotonic() - asked < 0.5
    assert seen[-1] == 0.25
    release.set()
    owner.join(5)
    assert cache.get("key", lambda: "never computed") == "value"


def test_a_waiter_takes_over_when_the_owner_is_stopped():
    cache = LRUCache(4)
    started = threading.Event()
    runs = []

    def stopped(checkpoint):
        runs.append("owner")
        started.set()
        time.sleep(0.2)
        raise Cancelled

    def computed(checkpoint):
        runs.append("waiter")
        return "value"

    def owner():
        with pytest.raises(Cancelled):
            cache.get("key", stopped, lambda fraction=None, partial=None: None)

    thread = threading.Thread(target=owner)
    thread.start()
    assert started.wait(5)
    assert cache.get("key", computed, lambda fraction=None, partial=None: None) == "value"
    thread.join(5)
    assert runs == ["owner", "waiter"]


def test_a_computation_that_asks_for_its_own_key_is_refused_instead_of_waiting_forever():
    cache = LRUCache(4)
    with pytest.raises(RuntimeError, match="cannot wait on itself"):
        cache.get("key", lambda: cache.get("key", lambda: 1))


def test_the_least_recently_used_entry_goes_first():
    cache = LRUCache(2)
    cache.get("a", lambda: 1)
    cache.get("b", lambda: 2)
    cache.get("a", lambda: 0)
    cache.get("c", lambda: 3)
    assert cache.get("a", lambda: "again") == 1 and cache.get("b", lambda: "again") == "again"
