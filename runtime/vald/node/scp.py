"""The C-STORE SCP: who may associate, what is accepted, and the durable write before Success.

Accepted: Computed Radiography and Digital X-Ray (For Presentation) Image Storage, in the uncompressed
transfer syntaxes and the compressed ones a decoder is installed for, plus Verification (C-ECHO).  Other
SOP classes are refused at association negotiation (abstract syntax not supported).  Associations are
accepted only from the configured calling AE titles (A-ASSOCIATE-RJ "calling AE title not recognised")
and, when configured, from the listed peer addresses (the connection is closed at once).

The handler does no heavy work: it stores the instance in the spool (fsync) and only then answers Success;
Out of Resources (0xA700) when the instance is too large, the spool is full or the spool's disk fails.  An
instance whose data passes the size limit while it arrives is refused by aborting the association, so a
peer can never make the node hold more than ``max_instance_mb`` per association in memory.
"""

from __future__ import annotations

import logging
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from vald.errors import os_cause
from vald.node.config import Listen, Tls
from vald.node.connection import REJECT_REASONS, Connection
from vald.node.guard import PendingConnections, Refused, await_request
from vald.node.spool import Spool, SpoolFull
from vald.sources import instance_key

LOG = logging.getLogger("vald.node")

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
STORAGE_CLASSES = (CR_STORAGE, DX_PRESENTATION_STORAGE)
VERIFICATION = "1.2.840.10008.1.1"
UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
)
SUCCESS, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED = 0x0000, 0xA700, 0x0122


def transfer_syntaxes() -> list[str]:
    """Uncompressed syntaxes, then every compressed one an installed decoder reads (vald.dicom.codecs)."""
    from pydicom.pixels import get_decoder

    from vald.dicom.codecs import DECODER_PACKAGES

    usable = [uid for uid in DECODER_PACKAGES if get_decoder(uid).is_available]
    return [*UNCOMPRESSED, *usable]


def tls_context(tls: Tls) -> ssl.SSLContext:
    """A server context from the configured files; with ``ca``, callers must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.certificate), str(tls.key))
    if tls.ca is not None:
        context.load_verify_locations(str(tls.ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _status(code: int, comment: str) -> Any:
    from pydicom import Dataset

    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


class Receiver:
    """The SCP's handlers and server; :meth:`start` listens in background threads, :meth:`stop` ends it.

    Association slots (``max_associations``) are counted from the A-ASSOCIATE-RQ until the connection
    closes, so connections that never ask (idle, garbage, a scanner) cannot use them up; those are bounded
    by :mod:`vald.node.guard`.  Every connection ends in exactly one log line saying what happened.
    """

    def __init__(self, listen: Listen, spool: Spool, on_received: Callable[[], None] = lambda: None) -> None:
        self.listen, self.spool, self.on_received = listen, spool, on_received
        self._bytes: dict[int, int] = {}  # association -> data bytes of the message arriving on it
        self._conns: dict[int, Connection] = {}  # association -> what happened on its connection
        self._slots: set[int] = set()  # associations that have asked (A-ASSOCIATE-RQ) and are not closed
        self._lock = threading.Lock()
        self.pending = PendingConnections(listen.max_pending_connections)
        self.server: Any = None
        self.ae: Any = None

    def start(self) -> tuple[str, int]:
        """Bind and serve in the background; returns the address actually bound (port 0 picks a free one)."""
        from pynetdicom import AE, evt

        ae = self.ae = AE(ae_title=self.listen.ae_title)
        # pynetdicom counts every acceptor thread, even one still waiting for a request; vald counts slots
        # itself (_on_requested), so pynetdicom's own limit only has to stay out of the way.
        ae.maximum_associations = self.listen.max_associations + self.listen.max_pending_connections + 1
        ae.require_calling_aet = list(self.listen.allowed_calling_ae_titles)
        ae.require_called_aet = True
        ae.acse_timeout = self.listen.acse_timeout_s
        ae.dimse_timeout = self.listen.dimse_timeout_s
        ae.network_timeout = self.listen.network_timeout_s
        syntaxes = transfer_syntaxes()
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(VERIFICATION)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_PDU_SENT, self._on_pdu_sent),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        self.server = ae.make_server(
            (self.listen.host, self.listen.port),
            evt_handlers=handlers,
            server_class=_GuardedServer,
            allowed=frozenset(self.listen.allowed_addresses),
            tls=tls_context(self.listen.tls) if self.listen.tls else None,
            pending=self.pending,
            request_timeout_s=self.listen.request_timeout_s,
            network_timeout_s=self.listen.network_timeout_s,
        )
        threading.Thread(target=self.server.serve_forever, name="vald-scp", daemon=True).start()
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Stop accepting; associations in progress are closed."""
        if self.server is not None:
            self.server.shutdown()
            for assoc in self.ae.active_associations:
                assoc.abort()
            self.server = None

    def _conn(self, event: Any) -> Connection:
        with self._lock:
            return self._conns.setdefault(id(event.assoc), Connection(peer="unknown"))

    def _on_open(self, event: Any) -> None:
        address = event.address
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        with self._lock:
            self._conns[id(event.assoc)] = Connection(peer=peer.removeprefix("::ffff:"))

    def _on_requested(self, event: Any) -> None:
        """A-ASSOCIATE-RQ received: no longer pending; it takes a slot, or is rejected (local limit exceeded)."""
        assoc = event.assoc
        self.pending.done(assoc.dul.socket.socket if assoc.dul.socket else None)
        rq = assoc.requestor.primitive
        conn = self._conn(event)
        conn.calling, conn.called = _text(rq.calling_ae_title), _text(rq.called_ae_title)
        with self._lock:
            full = len(self._slots) >= self.listen.max_associations
            if not full:
                self._slots.add(id(assoc))
        if full:
            conn.outcome = f"rejected: all {self.listen.max_associations} association slots (max_associations) in use"
            assoc.acse.send_reject(0x02, 0x03, 0x02)  # transient, presentation related, local limit exceeded
            assoc.kill()

    def _on_accepted(self, event: Any) -> None:
        conn = self._conn(event)
        conn.outcome = "association accepted"
        LOG.info("association accepted from %s (%s -> %s)", conn.peer, conn.calling, conn.called)

    def _on_rejected(self, event: Any) -> None:
        with self._lock:  # a rejected peer that keeps its connection open must not keep a slot
            self._slots.discard(id(event.assoc))
        conn = self._conn(event)
        primitive = event.assoc.acceptor.primitive
        if not conn.outcome.startswith("rejected"):
            conn.outcome = "rejected: " + REJECT_REASONS.get(
                (getattr(primitive, "result_source", 0), getattr(primitive, "diagnostic", 0)), "negotiation failed"
            )

    def _on_released(self, event: Any) -> None:
        self._conn(event).released = True

    def _on_pdu_sent(self, event: Any) -> None:
        if type(event.pdu).__name__ == "A_ABORT_RQ":
            conn = self._conn(event)
            conn.aborted = conn.aborted or "by this node"

    def _on_close(self, event: Any) -> None:
        """One line per connection that reached pynetdicom: who, which AE titles, how it ended."""
        with self._lock:
            self._bytes.pop(id(event.assoc), None)
            self._slots.discard(id(event.assoc))
            conn = self._conns.pop(id(event.assoc), None)
        self.pending.done(getattr(event.assoc.dul.socket, "socket", None))
        if conn is None or conn.logged:
            return
        conn.logged = True
        level, text = conn.summary()
        LOG.log(level, "connection from %s closed: %s", conn.peer, text)

    def _on_pdu(self, event: Any) -> None:
        """Count an arriving data set's bytes; abort the association once they pass the limit."""
        if type(event.pdu).__name__ == "A_ABORT_RQ":
            conn = self._conn(event)
            conn.aborted = conn.aborted or "by the peer"
            return
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        too_large = False
        with self._lock:  # nothing that takes the lock again (a handler) may run inside it
            count = self._bytes.get(id(event.assoc), 0)
            for item in items:
                value = item.presentation_data_value or b""
                if not value or value[0] & 1:  # a command fragment
                    continue
                count += len(value) - 1
                if count > self.listen.max_instance_bytes:
                    too_large = True
                    break
                if value[0] & 2:  # the data set's last fragment
                    count = 0
            if too_large:
                self._bytes.pop(id(event.assoc), None)
            else:
                self._bytes[id(event.assoc)] = count
        if too_large:
            self._conn(event).note = "an instance larger than max_instance_mb was arriving"
            event.assoc.abort()

    def _on_store(self, event: Any) -> Any:
        """Store durably, then answer: Success only once the instance is on disk."""
        request = event.request
        if str(request.AffectedSOPClassUID) not in STORAGE_CLASSES:
            return SOP_CLASS_NOT_SUPPORTED
        key = instance_key(str(request.AffectedSOPInstanceUID))
        data = event.encoded_dataset(include_meta=True)
        if len(data) > self.listen.max_instance_bytes:
            LOG.warning("instance %s refused: %d bytes, more than max_instance_mb", key, len(data))
            return _status(OUT_OF_RESOURCES, "instance larger than this node accepts")
        try:
            self.spool.accept(key, data)
        except SpoolFull as exc:
            LOG.warning("instance %s refused: %s", key, exc)
            return _status(OUT_OF_RESOURCES, "spool full: try again later")
        except OSError as exc:
            LOG.error("instance %s refused: cannot write the spool: %s", key, os_cause(exc, "spool device"))
            return _status(OUT_OF_RESOURCES, "spool cannot be written")
        self._conn(event).stored += 1
        LOG.info("instance %s received (%d bytes) from %s", key, len(data), event.assoc.requestor.ae_title)
        self.on_received()
        return SUCCESS


class _GuardedServer(ThreadedAssociationServer):  # type: ignore[misc]
    """The threaded association server with vald's front door (:mod:`vald.node.guard`) before pynetdicom.

    The address allow-list is checked at accept; TLS handshakes run in the connection's own thread with a
    deadline (pynetdicom does them in the accept loop, where one silent peer would stop the listener).
    """

    def __init__(
        self,
        *args: Any,
        allowed: frozenset[str],
        tls: ssl.SSLContext | None,
        pending: PendingConnections,
        request_timeout_s: float,
        network_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        self.allowed, self.tls, self.pending = allowed, tls, pending
        self.request_timeout_s, self.network_timeout_s = request_timeout_s, network_timeout_s
        super().__init__(*args, **kwargs)

    def shutdown(self) -> None:
        """Stop serving and close the socket (this server was not started by ``AE.start_server``)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def get_request(self) -> tuple[Any, Any]:
        """Accept only; the TLS handshake happens in the connection's thread (:meth:`process_request_thread`)."""
        sock, address = self.socket.accept()
        return sock, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Socketserver's hook: False closes the connection before any DICOM is exchanged."""
        address = _address(client_address)
        if self.allowed and address not in self.allowed:
            LOG.warning("connection from %s refused: address not in allowed_addresses", address)
            return False
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Hold the connection as pending until a whole association request is here, then hand it on."""
        peer = f"{_address(client_address)}:{client_address[1] if isinstance(client_address, tuple) else ''}"
        evicted = self.pending.admit(request, peer)
        if evicted is not None:
            LOG.warning(
                "connection from %s closed: more than max_pending_connections (%d) waiting; the oldest goes",
                evicted,
                self.pending.limit,
            )
        deadline = time.monotonic() + self.request_timeout_s
        try:
            sock = await_request(request, deadline, self.tls)
        except (Refused, OSError) as exc:
            self.pending.done(request)
            if isinstance(exc, OSError):
                exc = Refused(f"connection error before the association request ({type(exc).__name__})")
            LOG.warning("connection from %s closed: %s", peer, exc)
            self.shutdown_request(request)
            return
        if sock is not request:
            self.pending.replace(request, sock)
        sock.settimeout(self.network_timeout_s)  # a PDU that stops half-way cannot hold the thread for ever
        super().process_request_thread(sock, client_address)


def _address(client_address: Any) -> str:
    address = client_address[0] if isinstance(client_address, tuple) else str(client_address)
    return str(address).removeprefix("::ffff:")  # an IPv4 peer on a dual-stack socket


def _text(value: Any) -> str:
    """An AE title from a primitive (bytes or str) as printable text."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")
    return "".join(c if c.isprintable() else "?" for c in text.strip())[:16]
