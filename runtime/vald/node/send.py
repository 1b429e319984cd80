"""Sending results on: C-STORE SCU (pynetdicom) or STOW-RS (dicomweb-client), one try per call.

Retries, back-off and dead letters are the worker's; a failed try is a :class:`DeliveryError` whose text
names the peer and the DICOM or HTTP status, never patient data.  Nothing here reads proxy settings from
the environment: the node connects to the configured destinations and nowhere else.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vald.errors import ValdError
from vald.node.config import Delivery, Destination
from vald.node.connection import REJECT_REASONS

# C-STORE statuses that mean "stored": Success and the Warning family (coercion, elements discarded).
STORED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class Cause:
    """Why a try failed, in the words ``--status`` shows per destination."""

    REFUSED = "connection refused"
    TIMED_OUT = "timed out"
    UNREACHABLE = "unreachable"
    REJECTED = "rejected"
    ABORTED = "aborted"
    NOT_STORED = "not stored"
    HTTP = "http error"
    INTERNAL = "internal error"


class DeliveryError(ValdError):
    """One try to send to a destination failed; ``cause`` is one of :class:`Cause`'s values."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def quiet_network_logs() -> None:
    """Pynetdicom logs identifiers (patient names, UIDs) at debug level, dicomweb-client study UIDs at info."""
    for name in ("pynetdicom", "dicomweb_client"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
        logger.setLevel(logging.CRITICAL)


def send(destination: Destination, files: Sequence[Path], delivery: Delivery, calling_ae_title: str) -> None:
    """Send ``files`` (DICOM Part 10) to ``destination``; DeliveryError if any of them was not stored."""
    from pydicom import dcmread

    datasets = [dcmread(path) for path in files]
    if destination.kind == "dimse":
        _c_store(destination, datasets, delivery, calling_ae_title)
    else:
        _stow(destination, datasets, delivery)


def _c_store(destination: Destination, datasets: list[Any], delivery: Delivery, calling_ae_title: str) -> None:
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = delivery.timeout_s
    ae.connection_timeout = delivery.timeout_s
    for sop_class, syntax in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(sop_class, syntax)
    peer = destination.describe()
    _reachable(destination, delivery.timeout_s)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        if assoc.is_rejected:
            primitive = assoc.acceptor.primitive
            key = (getattr(primitive, "result_source", 0), getattr(primitive, "diagnostic", 0))
            why = REJECT_REASONS.get(key, "no reason given")
            raise DeliveryError(f"C-STORE to {peer}: association rejected ({why})", Cause.REJECTED)
        if assoc.is_aborted:
            raise DeliveryError(f"C-STORE to {peer}: association aborted by the peer", Cause.ABORTED)
        raise DeliveryError(f"C-STORE to {peer}: no answer to the association request", Cause.TIMED_OUT)
    try:
        for number, ds in enumerate(datasets, start=1):
            status = assoc.send_c_store(ds)
            code = int(status.Status) if "Status" in status else None
            if code not in STORED:
                what = "no response (timeout or connection lost)" if code is None else f"status 0x{code:04X}"
                cause = Cause.TIMED_OUT if code is None else Cause.NOT_STORED
                raise DeliveryError(f"C-STORE to {peer}: object {number} of {len(datasets)} not stored: {what}", cause)
    finally:
        if assoc.is_established:
            assoc.release()


def _reachable(destination: Destination, timeout_s: float) -> None:
    """Open and close a TCP connection first: pynetdicom reports a refused or unreachable peer as an abort."""
    peer = destination.describe()
    try:
        socket.create_connection((destination.host, destination.port), timeout=timeout_s).close()
    except ConnectionRefusedError:
        raise DeliveryError(f"C-STORE to {peer}: connection refused", Cause.REFUSED) from None
    except TimeoutError:
        raise DeliveryError(f"C-STORE to {peer}: timed out connecting ({timeout_s:g} s)", Cause.TIMED_OUT) from None
    except OSError as exc:  # no route, name not resolved, network down
        what = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise DeliveryError(f"C-STORE to {peer}: unreachable ({what})", Cause.UNREACHABLE) from None


def _os_cause(exc: BaseException) -> str | None:
    """The cause inside a requests/urllib3 error chain, if it is a refused or timed-out connection."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "Connection refused" in str(seen):
            return Cause.REFUSED
        if isinstance(seen, TimeoutError):
            return Cause.TIMED_OUT
        inner = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = seen.__cause__ or seen.__context__ or inner
    return None


def _stow(destination: Destination, datasets: list[Any], delivery: Delivery) -> None:
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.trust_env = False  # no proxy or .netrc from the environment: only the configured URL
    client = DICOMwebClient(url=destination.url, session=session, timeout=delivery.timeout_s)
    client.set_http_retry_params(retry=False)  # the worker retries, with its own back-off and dead letters
    study = str(datasets[0].StudyInstanceUID)
    try:
        client.store_instances(datasets, study_instance_uid=study)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        raise DeliveryError(f"STOW-RS to {destination.describe()}: HTTP {code}", Cause.HTTP) from None
    except requests.ConnectionError as exc:
        cause = _os_cause(exc) or Cause.UNREACHABLE
        raise DeliveryError(f"STOW-RS to {destination.describe()}: {cause} ({type(exc).__name__})", cause) from None
    except requests.Timeout as exc:
        raise DeliveryError(
            f"STOW-RS to {destination.describe()}: timed out ({type(exc).__name__})", Cause.TIMED_OUT
        ) from None
    except requests.RequestException as exc:
        raise DeliveryError(f"STOW-RS to {destination.describe()}: {type(exc).__name__}", Cause.INTERNAL) from None
    finally:
        session.close()
