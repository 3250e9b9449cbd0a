"""FairSlots: turns go round-robin across clients, a client never holds more than its cap, its
queue is bounded, and a wait ends when its time is up."""

from __future__ import annotations

import threading
import time

from crossinfer._sandbox.fair import FairSlots


def _waiter(slots: FairSlots, client: str, order: list, lock: threading.Lock):
    def run():
        if slots.acquire(client, 30):
            with lock:
                order.append(client)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _settle(slots: FairSlots, waiting: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with slots._cond:
            if sum(len(q) for q in slots._queues.values()) == waiting:
                return
        time.sleep(0.01)
    raise AssertionError("the waiters did not queue")


def test_a_flooding_client_gets_turns_only_in_round_robin_with_the_others():
    slots = FairSlots(total=1, per_client=1, queued=16)
    assert slots.acquire("flood", 1)  # the flood holds the one slot
    order: list = []
    lock = threading.Lock()
    threads = [_waiter(slots, "flood", order, lock) for _ in range(6)]
    _settle(slots, 6)
    threads.append(_waiter(slots, "legit", order, lock))
    _settle(slots, 7)
    for _ in range(7):
        held = order[-1] if order else "flood"
        slots.release(held)
        deadline = time.monotonic() + 5
        while len(order) < _ + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    # Six requests of the flood were queued first; the legitimate one got the second turn.
    assert order.index("legit") <= 1, order


def test_a_client_holds_at_most_its_cap_and_its_queue_is_bounded():
    slots = FairSlots(total=8, per_client=2, queued=1)
    assert slots.acquire("a", 0.1) and slots.acquire("a", 0.1)
    started = time.monotonic()
    assert not slots.acquire("a", 0.3)  # at its cap: waits, then gives up
    assert 0.25 <= time.monotonic() - started < 5
    order: list = []
    _waiter(slots, "a", order, threading.Lock())
    _settle(slots, 1)
    started = time.monotonic()
    assert not slots.acquire("a", 5)  # its queue is full: refused at once
    assert time.monotonic() - started < 1
    assert slots.acquire("b", 0.1)  # other clients are not held up
    slots.release("a")
    deadline = time.monotonic() + 5
    while not order and time.monotonic() < deadline:
        time.sleep(0.01)
    assert order == ["a"]
    assert slots.held("a") == 2 and slots.held("b") == 1
