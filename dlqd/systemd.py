"""The systemd side of the daemon: sd_notify, the watchdog, and socket activation.

Implements the small wire protocols directly (a datagram per notification;
fds from 3 for activation) so there is no libsystemd dependency. Every
function is a no-op when systemd did not ask for it (no NOTIFY_SOCKET, no
LISTEN_FDS), so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Mapping

import trio

SD_LISTEN_FDS_START = 3
STATUS_REFRESH_S = 1.0  # how stale `systemctl status` may get
SEND_TIMEOUT_S = 1.0  # a stuck receiver must not stall the event loop for long


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET (abstract or path), if set."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if address else None
        if self._sock is not None:
            self._sock.settimeout(SEND_TIMEOUT_S)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s = int(usec) / 2e6 if wanted else None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, message: str) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):  # systemd gone: nothing useful to do
            self._sock.sendto(message.encode(), self._address)

    async def watchdog(self, status: Callable[[], str]) -> None:
        """Ping from the event loop itself: a stuck loop stops the pings.

        WATCHDOG=1 goes out every `watchdog_interval_s` (half of WATCHDOG_USEC);
        STATUS= is re-read every `STATUS_REFRESH_S` and sent when it changed, so
        `systemctl status` stays current without a datagram a second.
        """
        interval = self.watchdog_interval_s
        last_status = None
        next_ping = trio.current_time()
        while True:
            now = trio.current_time()
            line = status()
            if line != last_status:
                self.send(f"STATUS={line}")
                last_status = line
            wake = now + STATUS_REFRESH_S
            if interval is not None:
                if now >= next_ping:
                    self.send("WATCHDOG=1")
                    next_ping = now + interval
                wake = min(wake, next_ping)
            await trio.sleep_until(wake)


def activation_socket(environ: Mapping[str, str] | None = None) -> socket.socket | None:
    """The listening socket systemd passed (fd 3), or None when not socket-activated."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = env.get("LISTEN_FDS", "")
    if not count.isdigit() or int(count) < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    os.set_inheritable(SD_LISTEN_FDS_START, False)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # children must not think the fds are theirs
    return sock
