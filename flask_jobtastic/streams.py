"""Bounds on open event streams, per owner and per web process.

Each open ``GET <prefix>/events/<id>`` holds a server thread for as long as
the browser listens. Without a bound one user could hold every thread of a
process (32 streams on ``gunicorn -k gthread --threads 32``) and stall every
other user's requests. A stream beyond a bound is refused with a 429 the
widget answers by polling, which costs a thread only for the few
milliseconds of each request.

The counts live in the process (no store to lose, nothing left behind by a
killed process): the per-owner bound applies within each web process.
Requests without an owner are counted per client address.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import ConfigurationError

logger = logging.getLogger("flask_jobtastic")

#: Seconds a refused client is told to wait (``Retry-After``) before it
#: tries a stream again; the widget polls meanwhile.
RETRY_AFTER = 5

#: The two config keys, checked at ``init_app``.
OWNER_KEY = "JOBTASTIC_EVENTS_MAX_PER_OWNER"
PROCESS_KEY = "JOBTASTIC_EVENTS_MAX_PER_PROCESS"


def read_limits(config: Any) -> tuple[int, int]:
    """``(per_owner, per_process)`` from the config; a clear error for bad values."""
    limits = []
    for key in (OWNER_KEY, PROCESS_KEY):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigurationError(
                f"{key} must be an int >= 0 (0 turns event streams off: every bar polls), "
                f"got {value!r}"
            )
        limits.append(value)
    return limits[0], limits[1]


class StreamSlots:
    """Counts of open streams, per owner and in total, in one web process."""

    def __init__(self, per_owner: int, per_process: int) -> None:
        self.per_owner = per_owner
        self.per_process = per_process
        self._lock = threading.Lock()
        self._by_owner: dict[str, int] = {}
        self._total = 0

    def acquire(self, owner: str) -> tuple[Callable[[], None] | None, str | None]:
        """``(release, None)`` when a stream may open, else ``(None, bound)``.

        ``bound`` names the bound that refused it: ``"owner"`` or ``"process"``.
        ``release`` may be called any number of times; only the first counts.
        """
        with self._lock:
            if self._total >= self.per_process:
                return None, "process"
            if self._by_owner.get(owner, 0) >= self.per_owner:
                return None, "owner"
            self._total += 1
            self._by_owner[owner] = self._by_owner.get(owner, 0) + 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._total -= 1
                left = self._by_owner[owner] - 1
                if left:
                    self._by_owner[owner] = left
                else:
                    del self._by_owner[owner]

        return release, None

    def open_streams(self, owner: str | None = None) -> int:
        """Streams open now: in total, or of one owner."""
        with self._lock:
            return self._total if owner is None else self._by_owner.get(owner, 0)


def owner_key(owner: str | None, remote_addr: str | None) -> str:
    """Who a stream counts against: the owner, else the client's address.

    Behind a proxy every anonymous visitor has the proxy's address unless
    the app applies ``werkzeug.middleware.proxy_fix.ProxyFix``.
    """
    if owner is not None:
        return "owner:" + owner
    return "address:" + (remote_addr or "unknown")


def refusal(task_id: str | None, bound: str) -> dict[str, Any]:
    """The JSON body of a 429: what happened and what to do instead.

    ``task_id``: the (first) job the stream was for; None for an owner's list.
    """
    whose = "of this user" if bound == "owner" else "on this server"
    about = {} if task_id is None else {"task_id": task_id}
    return {
        **about,
        "error": {
            "type": "TooManyStreams",
            "message": f"Too many open event streams {whose}: poll the status URL instead.",
            "bound": bound,
        },
    }


def _peer_closed(sock: Any) -> bool:
    """Whether the client closed its end of ``sock`` (a readable socket with nothing to read).

    An event-stream client sends nothing after its request: a socket that reads
    as closed means the browser went away.
    """
    try:
        # poll first: gevent's recv waits for data even when told not to (and
        # select() cannot take descriptors past 1024)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return False
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError, ValueError):
        return False  # nothing to read; ValueError: a TLS socket, which cannot peek
    except OSError:
        return True  # reset by the peer
    return bool(data == b"")


def watch_client(chunks: Iterable[str], sock: Any | None) -> Iterator[str]:
    """Pass ``chunks`` on, ending as soon as the client is seen gone.

    A server only learns that a client left when a write fails, which may take
    two writes (two heartbeats). Looking at the socket (gunicorn exposes it)
    before each chunk frees the stream's thread and slot at the first one.
    """
    iterator = iter(chunks)
    try:
        for chunk in iterator:
            if sock is not None and _peer_closed(sock):
                logger.debug("Event stream client left; closing the stream")
                return
            yield chunk
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
