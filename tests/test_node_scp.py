"""The node's receiver in-process on loopback, with pynetdicom's SCU: limits, allow-lists, TLS, durability."""

from __future__ import annotations

import shutil
import ssl
import threading
from pathlib import Path

import pytest
from dicomnet import REPO, local_port, self_signed_certificate, wait_for

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")

from vald.errors import ConfigError  # noqa: E402
from vald.node.config import Listen, NodeConfig, Tls  # noqa: E402
from vald.node.scp import OUT_OF_RESOURCES, Receiver  # noqa: E402
from vald.node.spool import INCOMING, Spool  # noqa: E402

SAMPLE = REPO / "engines" / "demo" / "samples" / "normal.dcm"
OTHER = REPO / "engines" / "demo" / "samples" / "nodule.dcm"


def _receiver(tmp_path: Path, **listen: object) -> tuple[Receiver, Spool, int]:
    port = local_port()
    settings = {"host": "127.0.0.1", "port": port, "allowed_calling_ae_titles": ("PYSCU",), **listen}
    cfg = Listen(**settings)  # type: ignore[arg-type]
    spool = Spool(tmp_path / "spool", cfg.spool_limit_bytes)
    spool.prepare()
    receiver = Receiver(cfg, spool)
    receiver.start()
    return receiver, spool, port


def _associate(port: int, *, aet: str = "PYSCU", tls: tuple[ssl.SSLContext, str] | None = None):
    ae = pynetdicom.AE(ae_title=aet)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", port, ae_title="VALD", tls_args=tls)


def test_an_instance_is_on_disk_before_success_and_c_echo_answers(tmp_path: Path) -> None:
    receiver, spool, port = _receiver(tmp_path)
    try:
        assoc = _associate(port)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        ds = pydicom.dcmread(SAMPLE)
        status = assoc.send_c_store(ds)
        assert status.Status == 0
        stored = list((tmp_path / "spool" / INCOMING).glob("*.dcm"))  # before the association is even released
        assert len(stored) == 1 and pydicom.dcmread(stored[0]).SOPInstanceUID == ds.SOPInstanceUID
        assert pydicom.dcmread(stored[0]).PixelData == ds.PixelData
        assoc.release()
    finally:
        receiver.stop()
    assert spool.status()["counts"]["queued"] == 1


def test_a_full_spool_answers_out_of_resources_and_keeps_what_it_has(tmp_path: Path) -> None:
    size = SAMPLE.stat().st_size
    receiver, _, port = _receiver(tmp_path, spool_limit_mb=1.5 * size / 2**20)
    try:
        assoc = _associate(port)
        assert assoc.send_c_store(pydicom.dcmread(SAMPLE)).Status == 0
        assert assoc.send_c_store(pydicom.dcmread(SAMPLE)).Status == 0  # the same instance again replaces it
        refused = assoc.send_c_store(pydicom.dcmread(OTHER))
        assert refused.Status == OUT_OF_RESOURCES and "spool full" in refused.ErrorComment
        assoc.release()
    finally:
        receiver.stop()
    assert len(list((tmp_path / "spool" / INCOMING).glob("*.dcm"))) == 1


def test_an_instance_over_the_size_limit_is_refused_while_it_arrives(tmp_path: Path) -> None:
    receiver, _, port = _receiver(tmp_path, max_instance_mb=0.05)  # the sample has 128 KiB of pixels
    try:
        assoc = _associate(port)
        status = assoc.send_c_store(pydicom.dcmread(SAMPLE))
        assert "Status" not in status  # no answer: the association was aborted before the data set was complete
        wait_for(lambda: assoc.is_aborted, 10, "the abort to reach the sender")
    finally:
        receiver.stop()
    assert not list((tmp_path / "spool" / INCOMING).glob("*.dcm"))
    # the node's side of the aborted association ends too (a handler once deadlocked on the receiver's lock)
    wait_for(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("AcceptorThread") and t.is_alive()],
        15,
        "the aborted association's threads to end",
    )


def test_calling_ae_titles_and_addresses_not_allowed_are_turned_away(tmp_path: Path) -> None:
    receiver, _, port = _receiver(tmp_path)
    try:
        stranger = _associate(port, aet="STRANGER")
        assert stranger.is_rejected
        assert stranger.acceptor.primitive.result_source == 1 and stranger.acceptor.primitive.diagnostic == 3
    finally:
        receiver.stop()
    receiver, _, port = _receiver(tmp_path, allowed_addresses=("10.9.9.9",))
    try:
        elsewhere = _associate(port)  # the right AE title from an address not on the list
        assert not elsewhere.is_established and not elsewhere.is_rejected
    finally:
        receiver.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_with_client_certificates(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    receiver, _, port = _receiver(tmp_path, tls=Tls(certificate=cert, key=key, ca=cert))
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        client.load_cert_chain(str(cert), str(key))
        assoc = _associate(port, tls=(client, "localhost"))
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        no_certificate = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        assert not _associate(port, tls=(no_certificate, "localhost")).is_established
        assert not _associate(port).is_established  # plain DICOM to a TLS port
    finally:
        receiver.stop()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('out = "o"\nspool = "s"\n[listen]\nport = 104\n', "allowed_calling_ae_titles must list"),
        ('out = "o"\nspool = "s"\n[listen]\nallowed_calling_ae_titles = ["A-TITLE-LONGER-THAN-16"]\n', "AE title"),
        ('out = "o"\nspool = "o/s"\n[listen]\nallowed_calling_ae_titles = ["PACS"]\n', "spool must not be"),
        (
            'out = "o"\nspool = "s"\n[listen]\nallowed_calling_ae_titles = ["PACS"]\n[[destination]]\nkind = "ftp"\n',
            "kind='ftp'",
        ),
        ('out = "o"\nspool = "s"\n[listen]\nallowed_calling_ae_titles = ["PACS"]\nport = 70000\n', "TCP port"),
        ('out = "o"\nspool = "s"\n[listen]\nallowed_calling_ae_titles = ["PACS"]\n[run]\nstrength = 2\n', "strength"),
        ('out = "o"\nspool = "s"\nlisten = 3\n', "[listen] must be a table"),
        ('out = "o"\nspool = "s"\nparametric_map = 1\n', "parametric_map=1 must be true or false"),
        (
            'out = "o"\nspool = "s"\n[listen]\nallowed_calling_ae_titles = ["PACS"]\nallowed_addresses = ["pacs"]\n',
            "not an IP address",
        ),
    ],
)
def test_node_config_errors_are_one_line(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=None) as caught:
        NodeConfig.load(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_node_config_resolves_paths_beside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('out = "o"\nspool = "s"\n[listen]\nallowed_calling_ae_titles = ["PACS"]\n')
    cfg = NodeConfig.load(path)
    assert cfg.out == tmp_path / "o" and cfg.spool == tmp_path / "s" and cfg.engines == tmp_path / "engines/demo"
    assert cfg.listen.allowed_calling_ae_titles == ("PACS",) and cfg.destinations == ()
    assert cfg.segmentation and cfg.parametric_map and cfg.report  # every derived object by default


def test_associations_past_the_maximum_are_rejected_as_a_local_limit(tmp_path: Path) -> None:
    receiver, _, port = _receiver(tmp_path, max_associations=1)
    try:
        first = _associate(port)
        assert first.is_established
        second = _associate(port)
        assert second.is_rejected
        primitive = second.acceptor.primitive
        assert (primitive.result, primitive.result_source, primitive.diagnostic) == (2, 3, 2)  # transient, local limit
        first.release()

        def established():  # the server drops the released association from its count a moment later
            assoc = _associate(port)
            return assoc if assoc.is_established else None

        third = wait_for(established, 10, "a new association once the first was released", interval=0.2)
        third.release()
    finally:
        receiver.stop()
