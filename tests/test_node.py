"""`vald serve` against real peers: DCMTK storescu and pynetdicom send, Orthanc receives (C-STORE, STOW-RS).

Everything runs in a private network namespace (see tests/dicomnet.py); results are checked through
Orthanc's REST API.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from dicomnet import (
    ORTHANC,
    REPO,
    STORESCU,
    Netns,
    Node,
    Orthanc,
    node_toml,
    send_pynetdicom,
    send_storescu,
    wait_for,
)
from dicomnet import (
    VALD as VALD_BIN,
)

pytest.importorskip("pynetdicom")
pytest.importorskip("dicomweb_client")
pydicom = pytest.importorskip("pydicom")

needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed (apt install orthanc)")
needs_dcmtk = pytest.mark.skipif(STORESCU is None, reason="DCMTK is not installed (apt install dcmtk)")

SAMPLES = REPO / "engines" / "demo" / "samples"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_CLASSES = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4"}  # SC, multi-frame true colour / grey
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR (TID 1500)
PMAP_CLASS = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map
PR_CLASS = "1.2.840.10008.5.1.4.1.1.11.3"  # Pseudo-Color Softcopy Presentation State (the map's colours)


@pytest.fixture
def net():
    namespace = Netns()
    yield namespace
    namespace.close()


def _events(folder: Path) -> list[dict]:
    path = folder / "spool" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _check_in_source_studies(orthanc: Orthanc, sources: list[Path], per_source: int) -> None:
    """Every derived object arrived once, in its source's study, as SC, PMAP, SEG or SR; nothing else arrived."""
    stored = orthanc.instances()
    studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in sources}
    assert len(stored) == per_source * len(sources), stored
    assert len({s["SOPInstanceUID"] for s in stored}) == len(stored)
    assert {s["StudyInstanceUID"] for s in stored} == studies
    for study in studies:
        classes = sorted(s["SOPClassUID"] for s in stored if s["StudyInstanceUID"] == study)
        assert len(classes) == per_source
        assert all(classes.count(c) == 1 for c in (SEG_CLASS, SR_CLASS, PMAP_CLASS, PR_CLASS))
        assert all(c in SC_CLASSES or c in (SEG_CLASS, SR_CLASS, PMAP_CLASS, PR_CLASS) for c in classes)


@needs_orthanc
@needs_dcmtk
def test_node_receives_processes_and_delivers_to_orthanc_by_c_store_and_stow(net: Netns, tmp_path: Path) -> None:
    port = net.free_port()
    dimse = Orthanc(net, tmp_path / "orthanc-a", aet="ORTHANCA", known={"vald": ("VALD", port)})
    web = Orthanc(net, tmp_path / "orthanc-b", aet="ORTHANCB", known={})
    destinations = [
        {"name": "pacs", "kind": "dimse", "ae_title": "ORTHANCA", "host": "127.0.0.1", "port": dimse.dicom_port},
        {"name": "web", "kind": "stow", "url": web.stow_url},
    ]
    node = Node(net, node_toml(tmp_path, port, destinations), tmp_path / "node.log")
    try:
        node.start()
        by_dcmtk = [SAMPLES / "normal.dcm", SAMPLES / "nodule.dcm"]
        by_pynetdicom = [SAMPLES / "consolidation.dcm"]
        send_storescu(net, by_dcmtk, port)
        sent = send_pynetdicom(net, by_pynetdicom, port)
        assert sent["established"] and sent["echo"] == 0 and sent["statuses"] == [0]
        sources = by_dcmtk + by_pynetdicom
        wait_for(lambda: node.status()["counts"]["done"] == 3, 180, "3 instances done")
        status = node.status()
        assert status["counts"] == {"queued": 0, "sending": 0, "done": 3, "failed": 0}
        for orthanc in (dimse, web):
            _check_in_source_studies(orthanc, sources, per_source=6)  # 2 SCs, PMAP and its colours (PR), SEG, SR
        # the results on disk are those of `vald run`: one output set per instance, listed in the node's journal
        events = _events(tmp_path)
        assert sorted(e["event"] for e in events if e["event"] == "sent") == ["sent"] * 6
        for key in status["done"]:
            result = json.loads((tmp_path / "out" / key / "result.json").read_text())
            assert set(result["dicom_outputs"]) == {
                "overlay.dcm",
                "counterfactual.dcm",
                "segmentation.dcm",
                "report.dcm",
                "parametric-map.dcm",
                "parametric-map-colours.dcm",
            }
        log = node.log()
        for path in sources:  # no patient data in the node's log (pynetdicom's own logging is silenced)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for text in (str(ds.PatientID), str(ds.PatientName), str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)):
                assert text not in log
        assert node.kill(signal.SIGTERM) == 0  # a clean stop for systemd
    finally:
        if node.process and node.process.poll() is None:
            node.kill()
        dimse.stop()
        web.stop()


@needs_orthanc
@needs_dcmtk
def test_node_killed_mid_processing_and_restarted_does_every_instance_exactly_once(net: Netns, tmp_path: Path) -> None:
    port = net.free_port()
    pacs = Orthanc(net, tmp_path / "orthanc", aet="PACS", known={"vald": ("VALD", port)})
    destinations = [{"name": "pacs", "kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.dicom_port}]
    node = Node(net, node_toml(tmp_path, port, destinations, steps=40), tmp_path / "node.log")
    sources = [SAMPLES / f"{name}.dcm" for name in ("normal", "nodule", "consolidation", "effusion")]
    try:
        node.start()
        send_storescu(net, sources, port)  # acknowledged: from here on none may be lost
        wait_for(lambda: node.log().count(": processing") >= 2, 120, "the second instance's processing")
        assert node.kill(signal.SIGKILL) == -signal.SIGKILL
        before = node.status()["counts"]
        assert before["done"] <= 1 and before["queued"] >= 3
        node.start()
        wait_for(lambda: node.status()["counts"]["done"] == 4, 240, "4 instances done after the restart")
        assert node.status()["counts"] == {"queued": 0, "sending": 0, "done": 4, "failed": 0}
        _check_in_source_studies(pacs, sources, per_source=6)
        events = _events(tmp_path)
        keys = {e["key"] for e in events if e["event"] == "received"}
        assert len(keys) == 4
        for key in keys:  # processed once, sent once: the killed attempt published nothing
            assert [e["event"] for e in events if e["key"] == key and e["event"] in ("processed", "sent")] == [
                "processed",
                "sent",
            ]
        assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == sorted(keys)
    finally:
        if node.process and node.process.poll() is None:
            node.kill()
        pacs.stop()


@needs_dcmtk
def test_node_rejects_strangers_and_other_sop_classes_and_dead_letters_what_cannot_be_sent(
    net: Netns, tmp_path: Path
) -> None:
    port, closed = net.free_port(), net.free_port()
    destinations = [{"name": "down", "kind": "stow", "url": f"http://127.0.0.1:{closed}/dicom-web"}]
    config = node_toml(tmp_path, port, destinations, delivery={"attempts": 2, "backoff_s": 0.2})
    trace = tmp_path / "connect.trace"
    # under strace where it is installed: every connection the node opens must go to its one destination
    wrapper = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace)] if shutil.which("strace") else []
    node = Node(net, config, tmp_path / "node.log", wrapper=wrapper)
    try:
        node.start()
        stranger = send_pynetdicom(net, [SAMPLES / "normal.dcm"], port, aet="STRANGER")
        assert stranger["rejected"] and not stranger["established"]
        assert "(STRANGER -> VALD) rejected: calling AE title not recognised" in node.log()
        # a CT instance: the node does not offer CT Image Storage, so the context is refused
        ct = pydicom.dcmread(SAMPLES / "normal.dcm")
        ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ct.save_as(tmp_path / "ct.dcm")
        refused = net.run(
            [STORESCU, "-aet", "STORESCU", "-aec", "VALD", "127.0.0.1", str(port), str(tmp_path / "ct.dcm")],
            capture_output=True,
            text=True,
        )
        assert refused.returncode != 0 and "No presentation context" in refused.stdout + refused.stderr
        assert node.status()["counts"]["queued"] == 0 and not list((tmp_path / "spool" / "incoming").iterdir())
        # a destination that never answers: tried `attempts` times, then kept as a dead letter with its files
        send_storescu(net, [SAMPLES / "nodule.dcm"], port)
        wait_for(lambda: node.status()["counts"]["failed"] == 1, 120, "the dead letter")
        failed = node.status()["failed"][0]
        assert failed["stage"] == "delivery" and f"STOW-RS to http://127.0.0.1:{closed}/dicom-web" in failed["error"]
        kept = tmp_path / "spool" / "failed" / failed["key"]
        assert sorted(p.name for p in kept.iterdir()) == [
            "counterfactual.dcm",
            "overlay.dcm",
            "parametric-map-colours.dcm",
            "parametric-map.dcm",
            "reason.json",
            "report.dcm",
            "segmentation.dcm",
        ]
        attempts = [e for e in _events(tmp_path) if e["event"] == "send_failed"]
        assert [e["attempt"] for e in attempts] == [1, 2]
        assert node.kill(signal.SIGTERM) == 0
        if wrapper:
            calls = [line for line in trace.read_text().splitlines() if "connect(" in line]
            inet = [line for line in calls if "AF_INET" in line]
            assert len(inet) == 2, calls  # the two tries, nothing else (no DNS, no telemetry, no proxy)
            assert all(f"htons({closed})" in line and '"127.0.0.1"' in line for line in inet), inet
            assert all("AF_UNIX" in line or "AF_INET" in line for line in calls), calls
    finally:
        if node.process and node.process.poll() is None:
            node.kill()


@needs_dcmtk
def test_a_refused_destination_is_named_in_status_and_its_dead_letter_is_requeued(net: Netns, tmp_path: Path) -> None:
    port, pacs = net.free_port(), net.free_port()
    destinations = [{"name": "pacs", "kind": "dimse", "ae_title": "STORESCP", "host": "127.0.0.1", "port": pacs}]
    config = node_toml(tmp_path, port, destinations, delivery={"attempts": 2, "backoff_s": 0.2})
    node = Node(net, config, tmp_path / "node.log")
    received = tmp_path / "pacs"
    received.mkdir()
    storescp = None
    try:
        node.start()
        send_storescu(net, [SAMPLES / "nodule.dcm"], port)
        wait_for(lambda: node.status()["counts"]["failed"] == 1, 120, "the dead letter")
        status = node.status()
        key = status["failed"][0]["key"]
        assert "connection refused" in status["failed"][0]["error"] and "aborted" not in status["failed"][0]["error"]
        pacs_state = status["destinations"]["pacs"]
        assert pacs_state["state"] == "failing" and pacs_state["cause"] == "connection refused"
        assert pacs_state["dead_letters"] == [key]
        # the PACS comes back; the operator re-sends the dead letter while the node runs
        storescp = net.popen(
            [str(Path(STORESCU).with_name("storescp")), "-aet", "STORESCP", "-od", str(received), str(pacs)]
        )
        wait_for(
            lambda: net.run([str(Path(STORESCU).with_name("echoscu")), "127.0.0.1", str(pacs)]).returncode == 0,
            30,
            "storescp to listen",
        )
        missing = net.run(
            [str(VALD_BIN), "serve", "--config", str(config), "--requeue", "0" * 12], capture_output=True, text=True
        )
        assert missing.returncode == 2 and "no dead letter with that key" in missing.stderr
        done = net.run(
            [str(VALD_BIN), "serve", "--config", str(config), "--requeue", key], capture_output=True, text=True
        )
        assert done.returncode == 0 and done.stdout.strip() == f"requeued {key}", done.stderr
        wait_for(lambda: node.status()["counts"]["done"] == 1, 120, "the requeued result to be delivered")
        status = node.status()
        assert status["counts"]["failed"] == 0 and status["destinations"]["pacs"]["state"] == "ok"
        assert len(list(received.iterdir())) == 6  # the 2 SCs, PMAP, its colours, SEG, SR: once each
        assert [e["event"] for e in _events(tmp_path) if e["key"] == key][-3:] == ["requeued", "sent", "done"]
    finally:
        if storescp is not None:
            storescp.kill()
            storescp.wait()
        if node.process and node.process.poll() is None:
            node.kill()
