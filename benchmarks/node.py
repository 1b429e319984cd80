"""The DICOM node's latency with real peers: storescu sends, vald serve processes, Orthanc receives.

Not a timed test: it records how long a PACS waits for its C-STOREs to be acknowledged, how long each
instance's processing takes, and how long from receipt to delivery, for the shipped demo engines at the
default settings (the same network namespace and peers as tests/test_node.py).

    python benchmarks/node.py          # ~30 s on 2 cores; writes benchmarks/results/node.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicomnet import REPO, Netns, Node, Orthanc, node_toml, send_storescu, wait_for

SAMPLES = ("normal", "nodule", "consolidation", "effusion", "cardiomegaly")


def measure(root: Path, steps: int) -> dict[str, object]:
    """One run: 5 demo DX samples through the node to Orthanc."""
    net = Netns()
    port = net.free_port()
    pacs = Orthanc(net, root / "orthanc", aet="PACS", known={"vald": ("VALD", port)})
    destination = {"name": "pacs", "kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.dicom_port}
    node = Node(net, node_toml(root, port, [destination], steps=steps), root / "node.log")
    try:
        started = time.perf_counter()
        node.start()
        start_s = time.perf_counter() - started
        files = [REPO / "engines" / "demo" / "samples" / f"{name}.dcm" for name in SAMPLES]
        started = time.perf_counter()
        send_storescu(net, files, port)
        acked_s = time.perf_counter() - started
        wait_for(lambda: node.status()["counts"]["done"] == len(files), 900, "every instance delivered")
        all_done_s = time.perf_counter() - started
        events = [json.loads(line) for line in (root / "spool" / "events.jsonl").read_text().splitlines()]
        received = {e["key"]: e["time"] for e in events if e["event"] == "received"}
        sent = {e["key"]: e["time"] for e in events if e["event"] == "sent"}
        return {
            "instances": len(files),
            "node_start_s": round(start_s, 3),
            "storescu_all_acknowledged_s": round(acked_s, 3),
            "processing_s": [e["seconds"] for e in events if e["event"] == "processed"],
            "received_to_delivered_s": sorted(round(sent[k] - received[k], 3) for k in received),
            "all_delivered_s": round(all_done_s, 3),
            "orthanc_instances": len(pacs.instances()),
            "private_network_namespace": net.private,
        }
    finally:
        if node.process and node.process.poll() is None:
            node.kill(signal.SIGTERM)
        pacs.stop()
        net.close()


def main() -> None:
    """Run once and write the JSON with the environment."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="sampler steps of the full schedule (default 50)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "node.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vald-node-bench-"))
    try:
        result = measure(root, args.steps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    body = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": len(os.sched_getaffinity(0)),
        },
        "engines": "engines/demo",
        "settings": {"steps": args.steps, "other": "vald run defaults"},
        "result": result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    print(json.dumps(body, indent=2))


if __name__ == "__main__":
    main()
