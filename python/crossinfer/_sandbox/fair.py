"""Slots shared fairly by clients: round-robin across clients, a cap per client, bounded waits.

A client is an identity that outlives a connection (the service's ``_access`` gives it: the
uid of a local caller, the token a remote one sent, else its host), so a client that opens a
new connection per request still gets one client's share. A request that finds no slot waits
in its client's queue; whenever a slot frees, the next client in turn that holds fewer than
its cap gets it. So a client with one request waits behind at most one request of each other
client, however many those others queue. A client's queue is short (``queued``): beyond it,
or after ``wait`` seconds, the request is refused (``False`` from ``acquire``).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Hashable


class _Ticket:
    __slots__ = ("granted",)

    def __init__(self) -> None:
        self.granted = False


class FairSlots:
    """``total`` slots; at most ``per_client`` held and ``queued`` waiting for one client."""

    def __init__(self, total: int, per_client: int, queued: int) -> None:
        self.total, self.per_client, self.queued = total, per_client, queued
        self._cond = threading.Condition()
        self._running = 0
        self._held: collections.Counter = collections.Counter()
        # Clients with requests waiting, in the order they get their next turn.
        self._queues: collections.OrderedDict = collections.OrderedDict()

    def acquire(self, client: Hashable, wait: float) -> bool:
        """A slot for ``client`` (True), or False once ``wait`` s passed or its queue is full."""
        deadline = time.monotonic() + wait
        with self._cond:
            queue = self._queues.get(client)
            if queue is not None and len(queue) >= self.queued:
                return False
            ticket = _Ticket()
            self._queues.setdefault(client, collections.deque()).append(ticket)
            self._dispatch()
            while not ticket.granted:
                left = deadline - time.monotonic()
                if left <= 0:
                    queue = self._queues.get(client)
                    if queue is not None:
                        queue.remove(ticket)
                        if not queue:
                            del self._queues[client]
                    return False
                self._cond.wait(left)
            return True

    def release(self, client: Hashable) -> None:
        """Give back a slot ``client`` held; the next client in turn gets it."""
        with self._cond:
            self._running -= 1
            self._held[client] -= 1
            if self._held[client] <= 0:
                del self._held[client]
            self._dispatch()

    def held(self, client: Hashable) -> int:
        """Slots ``client`` holds now."""
        with self._cond:
            return self._held.get(client, 0)

    def _dispatch(self) -> None:
        # Hand free slots out in turn; a client at its cap keeps its place in the turn order.
        granted = False
        while self._running < self.total:
            chosen = next((c for c in self._queues if self._held[c] < self.per_client), None)
            if chosen is None:
                break
            queue = self._queues[chosen]
            queue.popleft().granted = True
            self._running += 1
            self._held[chosen] += 1
            granted = True
            if queue:
                self._queues.move_to_end(chosen)
            else:
                del self._queues[chosen]
        if granted:
            self._cond.notify_all()
