"""`BoundedMemo`: at most its size, the least recently used forgotten first, reads refresh."""

from __future__ import annotations

import threading

import pytest

from serving.memo import BoundedMemo


def test_the_least_recently_used_entry_goes_first_and_a_read_refreshes():
    memo: BoundedMemo[str, int] = BoundedMemo(2)
    assert memo.put_many([("a", 1), ("b", 2)]) == 2
    assert memo.get("a") == 1  # "a" is now the most recent
    memo.put("c", 3)
    assert len(memo) == 2 and memo.found(["a", "b", "c"]) == {"a": 1, "c": 3}
    assert memo.put_many([("c", 30), ("d", 4)]) == 1  # "c" replaced, "d" new; "a" (least recent) goes
    assert memo.found(["a", "c", "d"]) == {"c": 30, "d": 4} and memo.get("missing") is None
    assert memo.put_many([("c", 300), ("e", 5)], replace=False) == 1  # "c" keeps 30, refreshed; "d" goes
    assert memo.found(["c", "d", "e"]) == {"c": 30, "e": 5}


def test_a_memo_needs_a_size():
    with pytest.raises(ValueError, match="size >= 1"):
        BoundedMemo(0)


def test_concurrent_writers_never_leave_it_over_its_size():
    memo: BoundedMemo[tuple[int, int], int] = BoundedMemo(50)

    def write(worker: int) -> None:
        for i in range(2000):
            memo.put_many([((worker, i), i), ((worker, i + 1), i)])
            memo.found([(worker, i - 1), (worker, i)])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(memo) == 50
