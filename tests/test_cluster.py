"""`vald run --cluster` on a real two-node Ray cluster on loopback (issue 24).

The head runs on 127.0.0.2 and a second node on 127.0.0.3, both started here with `ray start` under
`vald bound` (token authentication, usage statistics off, no dashboard), inside a private network namespace
when the machine allows one.  Each node offers one CPU;
workers run one thread each.  Every process the cluster started is stopped by PID at the end, and none may
be left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicomnet import REPO, Netns, send_storescu, wait_for
from raycluster import HEAD, WORKER, Cluster

pytest.importorskip("ray")
pydicom = pytest.importorskip("pydicom")

VALD = Path(sys.executable).with_name("vald")
SAMPLES = REPO / "engines" / "demo" / "samples"
CANARY = "Canary^Zebedee"  # a patient name that must not reach Ray's logs or session files


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    net = Netns()
    started = Cluster(net, tmp_path_factory.mktemp("cluster"))
    try:
        yield started
    finally:
        started.stop()
        net.close()


def _vald(cluster: Cluster, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return cluster.net.run([str(VALD), *argv], env=cluster.env, capture_output=True, text=True, timeout=timeout)


def _pixels(folder: Path) -> dict[str, bytes]:
    """Every file that carries pixels or their provenance, as compared between runs (DICOM: pixel data and UIDs;
    their content date and time are the moment of writing)."""
    out: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.suffix in (".png", ".npy"):
            out[rel] = path.read_bytes()
        elif path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            data = ds.get("PixelData") or ds.get("FloatPixelData") or b""
            out[rel] = bytes(data) + str(ds.SOPInstanceUID).encode() + str(ds.SeriesInstanceUID).encode()
    return out


def test_a_cluster_run_equals_the_local_run_and_resumes(cluster: Cluster, tmp_path: Path) -> None:
    inputs = [str(SAMPLES / f"{n}.dcm") for n in ("normal", "nodule", "consolidation")]
    local, remote = tmp_path / "local", tmp_path / "remote"
    common = ["--engines", str(REPO / "engines" / "demo"), "--threads", "1", "--quiet"]
    done = _vald(cluster, "run", *inputs, *common, "--out", str(remote), "--cluster", cluster.address, "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "vald: warning: Ray listens on every interface" in done.stderr  # no --cluster-bind given
    # the run's workers end with it (Ray names an actor's process after its class); idle pool workers are the
    # cluster's own and go with it (the fixture stops every process of the cluster by PID)
    wait_for(lambda: not cluster.actors(), 30, "the run's Ray workers to end")
    assert subprocess.run([str(VALD), "run", *inputs, *common, "--out", str(local)], check=False).returncode == 0
    assert _pixels(remote) == _pixels(local) and len(_pixels(local)) == 3 * 11
    summary = json.loads((remote / "summary.json").read_text())
    assert summary["settings_sha256"] == json.loads((local / "summary.json").read_text())["settings_sha256"]
    assert summary["run"]["executor"] == "ray" and summary["counts"] == {"done": 3}
    # a re-run skips every finished input and writes nothing again
    stamps = {p: p.stat().st_mtime_ns for p in remote.rglob("*.npy")}
    again = _vald(cluster, "run", *inputs, *common, "--out", str(remote), "--cluster", cluster.address)
    assert again.returncode == 0 and json.loads((remote / "summary.json").read_text())["counts"] == {"skipped": 3}
    assert {p: p.stat().st_mtime_ns for p in remote.rglob("*.npy")} == stamps


def test_no_patient_text_reaches_ray_and_a_worker_node_killed_mid_batch_is_retried(
    cluster: Cluster, tmp_path: Path
) -> None:
    from dicomfiles import dataset, ramp, save

    inputs = []
    for k in range(6):
        ds = dataset(ramp(rows=96 + 8 * k, cols=96, bits=12), uid_seed=300 + k)
        ds.PatientName = CANARY
        inputs.append(str(save(ds, tmp_path / f"in{k}.dcm")))
    out = tmp_path / "out"
    argv = [str(VALD), "run", *inputs, "--engines", str(REPO / "engines" / "demo"), "--threads", "1"]
    argv += ["--out", str(out), "--cluster", cluster.address, "--workers", "2", "--steps", "60"]
    run = cluster.net.popen(argv, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(list(out.glob("*/result.json"))) >= 1 or run.poll() is not None, 300, "a first result")
        assert run.poll() is None, "the batch ended before the node could be killed"
        assert cluster.kill_worker_node() > 0
        _, stderr = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    cluster.start_worker_node()  # for the tests after this one
    assert run.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": 6}, summary
    assert len({e["output"] for e in summary["entries"]}) == 6  # every input once
    files = [p for folder in cluster.sessions for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 10  # Ray's logs and session files of both nodes
    leaked = [p for p in files if CANARY.encode() in _head(p)]
    assert leaked == [], leaked


def _head(path: Path) -> bytes:
    try:
        return path.read_bytes()[:4_000_000]
    except OSError:
        return b""


def test_an_input_whose_worker_dies_more_often_than_the_retries_fails_in_one_line(
    cluster: Cluster, tmp_path: Path
) -> None:
    code = f"""
import json, sys
from pathlib import Path
from vald.app import attribution_settings_sha256, describe_engines
from vald.cluster.batch import run_on
from vald.cluster.ray_executor import ClusterConfig, RayExecutor
from vald.cluster.worker import WorkerSpec
from vald.config import DEFAULT_OUTPUTS, RunConfig
from vald.sources import load
engines, cfg = Path({str(REPO / "engines" / "demo")!r}), RunConfig(threads=1, steps=400, strength=1.0)
sha = attribution_settings_sha256(cfg, describe_engines(engines, cfg), DEFAULT_OUTPUTS)
config = ClusterConfig(address={cluster.address!r}, workers=2, retries=0, start_timeout_s=60)
executor = RayExecutor(WorkerSpec(engines, cfg, DEFAULT_OUTPUTS, sha), config)
print("ready", flush=True)
inputs = [Path({str(SAMPLES)!r}) / f"{{n}}.png" for n in ("normal", "nodule", "effusion", "cardiomegaly")]
try:
    summary = run_on(executor, inputs, Path({str(tmp_path / "out")!r}), sha, load)
finally:
    executor.close()
print(json.dumps([[e.status, e.error] for e in summary.entries]))
"""
    run = cluster.net.popen([sys.executable, "-c", code], env=cluster.env, stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout is not None and run.stdout.readline().strip() == "ready"
        time.sleep(2)  # both workers are computing their first input
        assert cluster.kill_worker_node() > 0
        out, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
        cluster.start_worker_node()
    entries = json.loads(out.strip().splitlines()[-1])
    failed = [error for status, error in entries if status == "failed"]
    assert len(failed) == 1 and [s for s, _ in entries].count("done") == 3, entries
    assert failed[0].startswith("the Ray worker died 1 times computing this input (last on 127.0.0.3: ")


def test_an_unreachable_cluster_is_one_line_and_exit_2_before_any_input_is_read(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [str(VALD), "run", str(SAMPLES / "normal.dcm"), "--out", str(tmp_path / "o"), "--cluster", "127.0.0.9:9"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )
    assert done.returncode == 2 and time.monotonic() - started < 60
    assert done.stderr.strip().splitlines() == [
        "vald: error: cannot reach the Ray cluster at 127.0.0.9:9: Connection refused"
    ]
    assert not (tmp_path / "o").exists()


def test_a_worker_that_would_hash_otherwise_is_refused(cluster: Cluster) -> None:
    code = f"""
import os, sys
from pathlib import Path
from vald.cluster.ray_executor import ClusterConfig, RayExecutor
from vald.cluster.worker import WorkerSpec
from vald.config import DEFAULT_OUTPUTS, RunConfig
from vald.errors import EngineMismatchError
spec = WorkerSpec(Path({str(REPO / "engines" / "demo")!r}), RunConfig(threads=1), DEFAULT_OUTPUTS, "0" * 64)
try:
    RayExecutor(spec, ClusterConfig(address={cluster.address!r}, workers=1, start_timeout_s=120))
except EngineMismatchError as exc:
    print(exc)
    sys.exit(3)
"""
    done = cluster.net.run([sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "has another engine folder or other library versions than the driver" in done.stdout


def test_the_local_executor_runs_the_same_function(tmp_path: Path) -> None:
    from vald.app import attribution_settings_sha256, describe_engines
    from vald.cluster.batch import run_on
    from vald.cluster.executor import LocalExecutor
    from vald.cluster.worker import WorkerSpec
    from vald.config import DEFAULT_OUTPUTS, RunConfig
    from vald.sources import load

    engines, cfg = REPO / "engines" / "demo", RunConfig(threads=1, steps=8, guidance_min_t=0)
    sha = attribution_settings_sha256(cfg, describe_engines(engines, cfg), DEFAULT_OUTPUTS)
    inputs = [SAMPLES / "nodule.png", SAMPLES / "normal.png"]
    summary = run_on(LocalExecutor(WorkerSpec(engines, cfg, DEFAULT_OUTPUTS, sha)), inputs, tmp_path / "a", sha, load)
    assert summary.counts() == {"done": 2} and summary.run["executor"] == "local"
    args = ["run", *map(str, inputs), "--engines", str(engines), "--threads", "1", "--steps", "8"]
    from vald.cli import main

    assert main([*args, "--guidance-min-t", "0", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert _pixels(tmp_path / "a") == _pixels(tmp_path / "b")


def test_vald_eval_on_the_cluster_scores_as_the_local_run(cluster: Cluster, tmp_path: Path) -> None:
    data = tmp_path / "set"
    subprocess.run([sys.executable, "-m", "vald_train.dataset", str(data), "--per-type", "1"], check=True)
    common = ["eval", str(data), "--engines", str(REPO / "engines" / "demo"), "--threads", "1", "--steps", "10"]
    remote = _vald(
        cluster, *common, "--quiet", "--out", str(tmp_path / "r"), "--cluster", cluster.address, "--workers", "2"
    )
    assert remote.returncode == 0, remote.stderr[-3000:]
    local = subprocess.run(
        [str(VALD), *common, "--quiet", "--out", str(tmp_path / "l")], capture_output=True, text=True
    )
    assert local.returncode == 0, local.stderr[-3000:]
    a, b = (json.loads((tmp_path / k / "eval.json").read_text()) for k in ("l", "r"))
    assert a["rows"] == b["rows"] and a["table"] == b["table"] and len(a["rows"]) >= 4
    assert (a["executor"], b["executor"]) == ("local", "ray")


def _node_on(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, steps: int) -> tuple[Any, Any, int]:
    """A `vald serve` with a [cluster] section (2 workers) and an Orthanc destination, in the cluster's namespace."""
    from dicomnet import Node, Orthanc, node_toml

    for name, value in cluster.env.items():
        if name.startswith("RAY_") or name == "XDG_CACHE_HOME":
            monkeypatch.setenv(name, value)
    port = cluster.net.free_port()
    pacs = Orthanc(cluster.net, tmp_path / "orthanc", aet="PACS", known={"vald": ("VALD", port)})
    destinations = [{"name": "pacs", "kind": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.dicom_port}]
    config = node_toml(tmp_path, port, destinations, steps=steps)
    extra = f'\n[cluster]\naddress = "{cluster.address}"\nworkers = 2\nthreads = 1\nbind = "{HEAD}"\n'
    config.write_text(config.read_text() + extra)  # bind: the node restarts itself under libvald_bind
    return Node(cluster.net, config, tmp_path / "node.log"), pacs, port


@pytest.mark.skipif(shutil.which("Orthanc") is None or shutil.which("storescu") is None, reason="needs Orthanc, DCMTK")
def test_the_node_on_the_cluster_delivers_each_instance_once_through_a_node_kill_and_a_worker_node_kill(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, pacs, port = _node_on(cluster, tmp_path, monkeypatch, steps=60)
    net = cluster.net
    first = [SAMPLES / f"{n}.dcm" for n in ("normal", "nodule", "consolidation", "effusion")]
    try:
        node.start()
        send_storescu(net, first, port)  # acknowledged: from here on none may be lost
        wait_for(lambda: node.log().count("processing on the cluster") >= 2, 120, "two instances in flight")
        assert node.kill(signal.SIGKILL) == -signal.SIGKILL  # the node, with instances in flight on the cluster
        wait_for(lambda: not cluster.actors(), 60, "the killed node's Ray workers to end")
        node.start()
        wait_for(lambda: node.status()["counts"]["done"] == 4, 300, "4 instances done after the restart")
        send_storescu(net, [SAMPLES / "cardiomegaly.dcm"], port)
        wait_for(lambda: "processing on the cluster" in node.log().split("listening as")[-1], 60, "the fifth")
        assert cluster.kill_worker_node() > 0  # a worker node, while the fifth is (or is about to be) computed
        wait_for(lambda: node.status()["counts"]["done"] == 5, 300, "the fifth instance done")
        cluster.start_worker_node()
        assert node.status()["counts"] == {"queued": 0, "sending": 0, "done": 5, "failed": 0}
        events = [json.loads(x) for x in (tmp_path / "spool" / "events.jsonl").read_text().splitlines()]
        keys = {e["key"] for e in events if e["event"] == "received"}
        assert len(keys) == 5
        for key in keys:  # processed once and sent once, whatever was killed on the way
            assert [e["event"] for e in events if e["key"] == key and e["event"] in ("processed", "sent")] == [
                "processed",
                "sent",
            ]
        assert len(pacs.instances()) == 5 * 6  # two SCs, PMAP, its colours, SEG and SR per instance, once each
        assert node.kill(signal.SIGTERM) == 0
    finally:
        if node.process and node.process.poll() is None:
            node.kill()
        pacs.stop()


@pytest.mark.skipif(shutil.which("Orthanc") is None or shutil.which("storescu") is None, reason="needs Orthanc, DCMTK")
def test_the_node_on_the_cluster_delivers_each_instance_once_through_a_head_kill(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "10")  # Ray's own wait for a lost head
    node, pacs, port = _node_on(cluster, tmp_path, monkeypatch, steps=200)
    net = cluster.net
    sources = [SAMPLES / f"{n}.dcm" for n in ("normal", "nodule", "consolidation")]
    try:
        node.start()
        send_storescu(net, sources, port)
        wait_for(lambda: node.log().count("processing on the cluster") >= 2, 120, "two instances in flight")
        assert cluster.kill_head() > 0
        assert node.process is not None
        wait_for(lambda: node.process.poll() is not None, 120, "the node to stop after losing the head")
        print("node exit status after the head was lost:", node.process.returncode)
        cluster.restart()
        node.start()  # as systemd's Restart=on-failure would
        wait_for(lambda: node.status()["counts"]["done"] == 3, 300, "3 instances done after the restart")
        events = [json.loads(x) for x in (tmp_path / "spool" / "events.jsonl").read_text().splitlines()]
        keys = {e["key"] for e in events if e["event"] == "received"}
        assert len(keys) == 3
        for key in keys:
            assert [e["event"] for e in events if e["key"] == key and e["event"] in ("processed", "sent")] == [
                "processed",
                "sent",
            ]
        assert len(pacs.instances()) == 3 * 6
        assert node.kill(signal.SIGTERM) == 0
    finally:
        if node.process and node.process.poll() is None:
            node.kill()
        pacs.stop()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "head"}, "expected 'auto' or the head's HOST:PORT"),
        ({"address": "head:99999"}, "expected 'auto' or the head's HOST:PORT"),
        ({"address": "auto", "workers": 0}, "--workers 0: expected 1 to 256"),
        ({"address": "auto", "threads": 0}, "a cluster worker needs a fixed number of threads"),
    ],
)
def test_cluster_settings_are_checked_once(kwargs: dict[str, object], message: str) -> None:
    from vald.cluster.ray_executor import ClusterConfig
    from vald.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        ClusterConfig(**kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_another_ray_auth_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from vald.cluster.ray_executor import ClusterConfig, connect
    from vald.errors import ConfigError

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ConfigError, match="only clusters with token authentication"):
        connect(ClusterConfig(address="127.0.0.9:9"))


def test_the_runtime_does_not_import_ray() -> None:
    code = "import sys, vald.cli, vald.app, vald.cluster.batch, vald.cluster.run; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)")
def test_a_cluster_run_connects_only_to_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    argv = [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=connect",
        "-o",
        str(trace),
        str(VALD),
        "run",
        str(SAMPLES / "normal.png"),
    ]
    argv += ["--engines", str(REPO / "engines" / "demo"), "--out", str(tmp_path / "o"), "--threads", "1", "--quiet"]
    done = cluster.net.run([*argv, "--cluster", cluster.address], env=cluster.env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    calls = [line for line in trace.read_text().splitlines() if "AF_INET" in line]
    addresses = {
        m.removeprefix("::ffff:")
        for line in calls
        for m in re.findall(r'inet_(?:addr|pton)\((?:AF_INET6?, )?"([^"]+)"', line)
    }
    assert calls and addresses <= {"127.0.0.2", "127.0.0.3"}, sorted(addresses)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_every_ray_listener_of_the_cluster_and_the_driver_is_on_its_node_address(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Ray 2.60 listens on every interface and has no setting for it: the nodes run under `vald bound` and the
    driver is given --cluster-bind (it restarts itself under libvald_bind, keeping its PID)."""
    inputs = [str(SAMPLES / f"{n}.png") for n in ("normal", "nodule", "effusion")]
    argv = [str(VALD), "run", *inputs, "--engines", str(REPO / "engines" / "demo"), "--threads", "1"]
    argv += ["--out", str(tmp_path / "o"), "--cluster", cluster.address, "--workers", "2", "--steps", "200"]
    run = cluster.net.popen([*argv, "--cluster-bind", HEAD], env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: len(cluster.actors()) == 2 or run.poll() is not None, 180, "the run's two Ray workers")
        table = cluster.net.run(["ss", "-ltnupH"], capture_output=True, text=True, timeout=30).stdout
        ours = cluster.pids() | {run.pid}
        _, stderr = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr[-3000:]
    assert "Ray listens on every interface" not in stderr
    listeners = []  # (address, the processes that hold the socket)
    for line in table.splitlines():
        local, users = line.split()[4], line.partition("users:")[2]
        pids = {int(p) for p in re.findall(r"pid=(\d+)", users)}
        if pids & ours:
            names = set(re.findall(r'\("([^"]+)"', users))
            listeners.append((local.rpartition(":")[0].strip("[]").removeprefix("::ffff:"), names, pids))
    held = {n for _, names, _ in listeners for n in names}
    assert {"gcs_server", "raylet"} <= held and any(n.startswith("ray::RayWorker") for n in held), table
    assert any(run.pid in pids for _, _, pids in listeners), "the driver's own Ray listener was not found"
    wrong = [(a, sorted(n)) for a, n, _ in listeners if a not in (HEAD, WORKER)]
    assert wrong == [], wrong
