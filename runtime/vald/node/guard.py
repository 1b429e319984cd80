"""The listener's front door: what a TCP connection must do before pynetdicom sees it, and how many may wait.

A connection is *pending* from the TCP accept until its A-ASSOCIATE-RQ has been received.  Pending
connections never hold an association slot (slots are counted from the request on, see ``scp.py``), but
each holds a thread, so they are bounded twice:

- in time: within ``request_timeout_s`` of the accept, a TLS listener must finish the handshake and the
  peer must have sent its first PDU; on a plain listener that PDU must be a whole A-ASSOCIATE-RQ (type
  0x01, 68 bytes to ``MAX_REQUEST_BYTES``), peeked from the kernel's buffer without consuming it.
  Anything else (garbage, an HTTP request, a port scanner's probe, silence) is closed at once, with one
  log line, before any DICOM state machine exists for it.
- in number: at most ``max_pending_connections`` at a time; one more closes the *oldest* pending one, so
  a flood of idle connections cannot keep out a real sender, whose request arrives within milliseconds.

Over TLS the bytes cannot be peeked: the connection is handed on once data is readable, and pynetdicom's
ARTIM timer (the ACSE timeout) ends it if no valid request follows; it still holds no slot.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict
from typing import Any

A_ASSOCIATE_RQ = 0x01
MIN_REQUEST_BYTES = 68  # the A-ASSOCIATE-RQ's fixed fields after its 6-byte header (PS3.8 9.3.2)
MAX_REQUEST_BYTES = 64 * 1024  # far above a real request (hundreds of contexts), within a kernel buffer


class Refused(Exception):
    """A pending connection closed before pynetdicom saw it; the message says why (no patient data)."""


def check_request(head: bytes) -> int | None:
    """The whole first PDU's length if ``head`` (its first bytes) can start an A-ASSOCIATE-RQ, else None.

    Raises :class:`Refused` when the bytes already seen cannot be an association request.
    """
    if head and head[0] != A_ASSOCIATE_RQ:
        raise Refused(f"not a DICOM association request (first byte 0x{head[0]:02X})")
    if len(head) < 6:
        return None
    length = int(struct.unpack(">BBL", head[:6])[2])
    if not MIN_REQUEST_BYTES <= length <= MAX_REQUEST_BYTES:
        raise Refused(f"not a DICOM association request (PDU length {length})")
    return 6 + length


def await_request(sock: socket.socket, deadline: float, tls: ssl.SSLContext | None) -> socket.socket:
    """Wait until ``sock`` carries a whole A-ASSOCIATE-RQ (plain) or readable data (TLS), by ``deadline``.

    Returns the socket to hand on (the TLS-wrapped one for a TLS listener); raises :class:`Refused`.
    """
    if tls is not None:
        return _await_tls(sock, deadline, tls)
    need = 6
    while True:
        _wait_readable(sock, deadline)
        head = sock.recv(need, socket.MSG_PEEK)
        if not head:
            raise Refused("closed by the peer before an association request")
        whole = check_request(head)
        if whole is not None and len(head) >= whole:
            return sock
        if whole is not None and need != whole:
            need = whole
            continue
        time.sleep(0.01)  # part of the request is here: readable at once, so do not spin


def _wait_readable(sock: socket.socket, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
        raise Refused("no association request within request_timeout_s")


def _await_tls(sock: socket.socket, deadline: float, tls: ssl.SSLContext) -> socket.socket:
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    try:
        wrapped = tls.wrap_socket(sock, server_side=True)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise Refused(f"TLS handshake failed ({reason})") from None
    wrapped.settimeout(None)
    if not wrapped.pending():
        _wait_readable(wrapped, deadline)
    return wrapped


class PendingConnections:
    """Connections between accept and A-ASSOCIATE-RQ, oldest first; admitting one too many closes the oldest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._socks: OrderedDict[int, tuple[socket.socket, str]] = OrderedDict()
        self.evicted = 0

    def admit(self, sock: socket.socket, peer: str) -> str | None:
        """Register ``sock``; returns the peer whose oldest pending connection was closed for it, if any."""
        with self._lock:
            self._socks[id(sock)] = (sock, peer)
            if len(self._socks) <= self.limit:
                return None
            _, (oldest, oldest_peer) = self._socks.popitem(last=False)
            self.evicted += 1
        _shut(oldest)
        return oldest_peer

    def replace(self, old: socket.socket, new: socket.socket) -> None:
        """``old`` (a plain socket) is now ``new`` (its TLS wrapper); it moves to the young end."""
        with self._lock:
            entry = self._socks.pop(id(old), None)
            if entry is not None:
                self._socks[id(new)] = (new, entry[1])

    def done(self, sock: Any) -> None:
        """``sock`` sent its request or closed: no longer pending."""
        with self._lock:
            self._socks.pop(id(sock), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._socks)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
