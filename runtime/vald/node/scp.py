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
from collections.abc import Callable
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from vald.errors import os_cause
from vald.node.config import Listen, Tls
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
    """The SCP's handlers and server; :meth:`start` listens in background threads, :meth:`stop` ends it."""

    def __init__(self, listen: Listen, spool: Spool, on_received: Callable[[], None] = lambda: None) -> None:
        self.listen, self.spool, self.on_received = listen, spool, on_received
        self._bytes: dict[int, int] = {}  # association -> data bytes of the message arriving on it
        self._lock = threading.Lock()
        self.server: Any = None
        self.ae: Any = None

    def start(self) -> tuple[str, int]:
        """Bind and serve in the background; returns the address actually bound (port 0 picks a free one)."""
        from pynetdicom import AE, evt

        ae = self.ae = AE(ae_title=self.listen.ae_title)
        ae.maximum_associations = self.listen.max_associations
        ae.require_calling_aet = list(self.listen.allowed_calling_ae_titles)
        syntaxes = transfer_syntaxes()
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(VERIFICATION)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        context = tls_context(self.listen.tls) if self.listen.tls else None
        self.server = ae.make_server(
            (self.listen.host, self.listen.port),
            ssl_context=context,
            evt_handlers=handlers,
            server_class=_GuardedServer,
            allowed=frozenset(self.listen.allowed_addresses),
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

    def _on_accepted(self, event: Any) -> None:
        LOG.info("association accepted from %s (%s)", event.assoc.requestor.ae_title, event.assoc.requestor.address)

    def _on_rejected(self, event: Any) -> None:
        LOG.warning("association rejected from %s (%s)", event.assoc.requestor.ae_title, event.assoc.requestor.address)

    def _on_close(self, event: Any) -> None:
        with self._lock:
            self._bytes.pop(id(event.assoc), None)

    def _on_pdu(self, event: Any) -> None:
        """Count an arriving data set's bytes; abort the association once they pass the limit."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        with self._lock:
            count = self._bytes.get(id(event.assoc), 0)
            for item in items:
                value = item.presentation_data_value or b""
                if not value or value[0] & 1:  # a command fragment
                    continue
                count += len(value) - 1
                if count > self.listen.max_instance_bytes:
                    self._bytes.pop(id(event.assoc), None)
                    LOG.warning("instance larger than max_instance_mb arriving: association aborted")
                    event.assoc.abort()
                    return
                if value[0] & 2:  # the data set's last fragment
                    count = 0
            self._bytes[id(event.assoc)] = count

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
        LOG.info("instance %s received (%d bytes) from %s", key, len(data), event.assoc.requestor.ae_title)
        self.on_received()
        return SUCCESS


class _GuardedServer(ThreadedAssociationServer):  # type: ignore[misc]
    """The threaded association server, closing connections from addresses not on the allow-list."""

    def __init__(self, *args: Any, allowed: frozenset[str], **kwargs: Any) -> None:
        self.allowed = allowed
        super().__init__(*args, **kwargs)

    def shutdown(self) -> None:
        """Stop serving and close the socket (this server was not started by ``AE.start_server``)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Socketserver's hook: False closes the connection before any DICOM is exchanged."""
        address = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        address = address.removeprefix("::ffff:")  # an IPv4 peer on a dual-stack socket
        if self.allowed and address not in self.allowed:
            LOG.warning("connection from %s refused: address not in allowed_addresses", address)
            return False
        return True
