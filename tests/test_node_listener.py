"""The listener against hostile and unlucky peers: garbage, idle sockets, floods, wrong AE titles, silent TLS.

A real DCMTK storescu / echoscu must get through while 30 garbage and idle connections are held open.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest
from dicomnet import REPO, local_port, self_signed_certificate

pynetdicom = pytest.importorskip("pynetdicom")

from vald.node.config import Listen, Tls  # noqa: E402
from vald.node.scp import Receiver  # noqa: E402
from vald.node.spool import INCOMING, Spool  # noqa: E402

SAMPLE = REPO / "engines" / "demo" / "samples" / "normal.dcm"
needs_dcmtk = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK (storescu, echoscu) not installed")


def _receiver(tmp_path: Path, **listen: object) -> tuple[Receiver, int]:
    port = local_port()
    settings = {"host": "127.0.0.1", "port": port, "allowed_calling_ae_titles": ("STORESCU", "ECHOSCU"), **listen}
    cfg = Listen(**settings)  # type: ignore[arg-type]
    spool = Spool(tmp_path / "spool", cfg.spool_limit_bytes)
    spool.prepare()
    receiver = Receiver(cfg, spool)
    receiver.start()
    return receiver, port


def _rq_header(length: int) -> bytes:
    return struct.pack(">BBL", 0x01, 0, length)


GARBAGE = [
    b"GARBAGE!" * 30,  # not a PDU at all
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # a web scanner
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello to a plain port
    _rq_header(0x7FFFFFFF),  # an A-ASSOCIATE-RQ header announcing 2 GB
    _rq_header(100) + b"\xff" * 100,  # the right header, an undecodable body
    b"\x04\x00\x00\x00\x00\x10" + b"\x00" * 16,  # a P-DATA-TF before any association
]


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether ``sock`` sees EOF (or a reset) within ``within`` seconds, skipping whatever is sent first."""
    sock.settimeout(within)
    end = time.monotonic() + within
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def _echoscu(port: int, *extra: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    argv = ["echoscu", "-aet", "ECHOSCU", "-aec", "VALD", *extra, "127.0.0.1", str(port)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@needs_dcmtk
def test_thirty_garbage_and_idle_connections_do_not_lock_out_a_real_sender(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vald.node")
    receiver, port = _receiver(tmp_path)
    held: list[socket.socket] = []
    try:
        garbage = []
        for i in range(15):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(GARBAGE[i % len(GARBAGE)])
            garbage.append(sock)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(15)]
        held = garbage + idle
        # Far more than max_associations (4) connections are open: storescu must still get through, at once.
        started = time.monotonic()
        done = subprocess.run(
            ["storescu", "-aet", "STORESCU", "-aec", "VALD", "127.0.0.1", str(port), str(SAMPLE)],
            capture_output=True,
            text=True,
            timeout=40,
        )
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 5
        assert len(list((tmp_path / "spool" / INCOMING).glob("*.dcm"))) == 1
        for i, sock in enumerate(garbage):  # garbage is closed at once (after an A-ABORT at most)
            assert _closed_by_peer(sock, 3), f"garbage connection {i} ({GARBAGE[i % len(GARBAGE)][:8]!r}) still open"
        assert all(_closed_by_peer(sock, 10) for sock in idle)  # request_timeout_s (5 s) for the idle ones
    finally:
        for sock in held:
            sock.close()
        receiver.stop()
    closing = [r.getMessage() for r in caplog.records if "closed:" in r.getMessage()]
    assert sum("not a DICOM association request" in m for m in closing) >= 10
    assert sum("no association request within request_timeout_s" in m for m in closing) == 15
    assert any("invalid data before an association was agreed" in m for m in closing)
    assert any("(STORESCU -> VALD) released, 1 instance(s) stored" in m for m in closing)
    assert all(m.startswith("connection from 127.0.0.1:") for m in closing)


@needs_dcmtk
def test_a_flood_of_idle_connections_past_the_pending_limit_evicts_the_oldest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, port = _receiver(tmp_path, max_pending_connections=4, request_timeout_s=60)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    try:
        time.sleep(0.5)
        assert receiver.pending.evicted == 6 and len(receiver.pending) == 4
        assert all(_closed_by_peer(sock, 2) for sock in idle[:6])  # the six oldest went
        done = _echoscu(port)
        assert done.returncode == 0, done.stderr
    finally:
        for sock in idle:
            sock.close()
        receiver.stop()
    assert sum("more than max_pending_connections (4)" in r.getMessage() for r in caplog.records) >= 6


@needs_dcmtk
def test_the_called_ae_title_is_checked_and_a_rejected_peer_is_disconnected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, port = _receiver(tmp_path)
    try:
        wrong = subprocess.run(
            ["echoscu", "-aet", "ECHOSCU", "-aec", "WRONG", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stderr
        assert _echoscu(port).returncode == 0
    finally:
        receiver.stop()
    assert any("(ECHOSCU -> WRONG) rejected: called AE title not recognised" in r.getMessage() for r in caplog.records)


def test_slots_are_counted_from_the_request_and_refusals_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, port = _receiver(tmp_path, max_associations=1, allowed_calling_ae_titles=("PYSCU",))
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # hold no slot
    ae = pynetdicom.AE(ae_title="PYSCU")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context("1.2.840.10008.1.1")
    try:
        first = ae.associate("127.0.0.1", port, ae_title="VALD")
        assert first.is_established
        second = ae.associate("127.0.0.1", port, ae_title="VALD")
        primitive = second.acceptor.primitive
        assert second.is_rejected and (primitive.result, primitive.result_source, primitive.diagnostic) == (2, 3, 2)
        first.abort()
    finally:
        for sock in idle:
            sock.close()
        receiver.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert any("rejected: all 1 association slots (max_associations) in use" in m for m in lines)
    assert any("(PYSCU -> VALD) aborted by the peer" in m for m in lines)


def test_listener_timeouts_are_settings(tmp_path: Path) -> None:
    receiver, port = _receiver(tmp_path, request_timeout_s=0.5, acse_timeout_s=2, network_timeout_s=3)
    try:
        assert (receiver.ae.acse_timeout, receiver.ae.network_timeout) == (2, 3)
        sock = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        assert _closed_by_peer(sock, 5)
        assert 0.4 < time.monotonic() - started < 2.5
        sock.close()
    finally:
        receiver.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_a_silent_tls_peer_does_not_stop_the_listener(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = self_signed_certificate(tmp_path)
    receiver, port = _receiver(tmp_path, tls=Tls(certificate=cert, key=key), allowed_calling_ae_titles=("PYSCU",))
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]  # never start the handshake
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = pynetdicom.AE(ae_title="PYSCU")
        ae.acse_timeout = ae.network_timeout = 10
        ae.add_requested_context("1.2.840.10008.1.1")
        started = time.monotonic()
        assoc = ae.associate("127.0.0.1", port, ae_title="VALD", tls_args=(client, "localhost"))
        assert assoc.is_established and time.monotonic() - started < 3
        assoc.release()
        assert all(_closed_by_peer(sock, 10) for sock in silent)
    finally:
        for sock in silent:
            sock.close()
        receiver.stop()
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)


def _association_request(calling: str) -> bytes:
    """A valid A-ASSOCIATE-RQ (Verification) from ``calling`` to VALD, as bytes on the wire."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling, "VALD"
    length, implementation = MaximumLengthNotification(), ImplementationClassUIDNotification()
    length.maximum_length_received, implementation.implementation_class_uid = 16382, "1.2.826.0.1.3680043.9.1"
    primitive.user_information = [length, implementation]
    context = build_context("1.2.840.10008.1.1")
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


@needs_dcmtk
def test_rejected_peers_that_stay_connected_hold_no_slot(tmp_path: Path) -> None:
    receiver, port = _receiver(tmp_path, max_associations=2)
    strangers = []
    try:
        for _ in range(6):  # a valid request from an AE title not allowed, then the connection kept open
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(_association_request("STRANGER"))
            strangers.append(sock)
        time.sleep(1)
        started = time.monotonic()
        assert _echoscu(port).returncode == 0 and time.monotonic() - started < 5
        assert _echoscu(port).returncode == 0
    finally:
        for sock in strangers:
            sock.close()
        receiver.stop()
