"""Real DICOM peers for the node's tests: a private network namespace, Orthanc, and the node as a process.

Everything network-facing runs inside one user + network namespace that has only a loopback interface
(``unshare -rn``), entered with ``nsenter``: Orthanc 1.10 has no bind-address setting, and nothing in the
tests can be reached from outside.  Where user namespaces are off, the same commands run on the host's
loopback instead (Orthanc then also listens on the host's other interfaces for the test's duration).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = next((p for p in (Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),) if p.is_file()), None)
STORESCU = shutil.which("storescu")
REPO = Path(__file__).resolve().parents[1]
VALD = Path(sys.executable).with_name("vald")


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Netns:
    """A private network namespace (loopback only) that commands are run in; the host's loopback without one."""

    def __init__(self) -> None:
        self.holder: subprocess.Popen[bytes] | None = None
        self.prefix: list[str] = []
        if shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip"):
            holder = subprocess.Popen(["unshare", "-rn", "--kill-child", "sleep", "infinity"])
            time.sleep(0.2)
            prefix = ["nsenter", "--preserve-credentials", "-U", "-n", "-t", str(holder.pid)]
            if subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=False).returncode == 0:
                self.holder, self.prefix = holder, prefix
            else:
                holder.kill()
                holder.wait()
        self.private = self.holder is not None

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the namespace."""
        return subprocess.Popen([*self.prefix, *argv], **kwargs)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in the namespace to its end."""
        return subprocess.run([*self.prefix, *argv], check=False, **kwargs)

    def python(self, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run Python code (this interpreter) in the namespace; text output."""
        return self.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)

    def get_json(self, url: str) -> Any:
        """GET a JSON document from inside the namespace."""
        code = "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=10).read().decode())"
        done = self.python(code, url)
        if done.returncode != 0:
            raise AssertionError(f"GET {url} failed: {done.stderr.strip().splitlines()[-1:]}")
        return json.loads(done.stdout)

    def free_port(self) -> int:
        """A TCP port free in the namespace."""
        code = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
        return int(self.python(code).stdout)

    def close(self) -> None:
        """End the namespace (its processes must have been stopped)."""
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()


class Orthanc:
    """A real Orthanc in the namespace: DICOM port, REST API on loopback, optional DICOMweb plugin."""

    def __init__(self, net: Netns, folder: Path, *, aet: str, known: dict[str, tuple[str, int]]) -> None:
        self.net, self.folder, self.aet = net, folder, aet
        self.dicom_port, self.http_port = net.free_port(), net.free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": aet,
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": False,  # only the modalities below may store
            "DicomCheckModalityHost": True,
            "DicomModalities": {name: [ae, "127.0.0.1", port] for name, (ae, port) in known.items()},
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,
            "HttpsVerifyPeers": False,
        }
        (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log = (folder / "orthanc.log").open("wb")
        self.process = net.popen([str(ORTHANC), str(folder / "orthanc.json")], stdout=self.log, stderr=self.log)
        wait_for(self._up, 60, f"Orthanc {aet} to start")

    @property
    def rest(self) -> str:
        """The REST API's base URL (inside the namespace)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def stow_url(self) -> str:
        """The DICOMweb root (inside the namespace)."""
        return f"{self.rest}/dicom-web"

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited with {self.process.returncode}: see {self.folder / 'orthanc.log'}")
        try:
            return bool(self.net.get_json(f"{self.rest}/system").get("Version"))
        except AssertionError:
            return False

    def instances(self) -> list[dict[str, str]]:
        """Every stored instance's main tags (SOP Class, SOP Instance, Study, Series UIDs, Modality)."""
        found = []
        for oid in self.net.get_json(f"{self.rest}/instances"):
            tags = self.net.get_json(f"{self.rest}/instances/{oid}/simplified-tags")
            found.append(
                {
                    k: tags.get(k, "")
                    for k in (
                        "SOPClassUID",
                        "SOPInstanceUID",
                        "StudyInstanceUID",
                        "SeriesInstanceUID",
                        "Modality",
                        "SeriesDescription",
                    )
                }
            )
        return found

    def stop(self) -> None:
        """Stop Orthanc."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Node:
    """``vald serve`` as a real process in the namespace."""

    def __init__(self, net: Netns, config: Path, log: Path, *, wrapper: Sequence[str] = ()) -> None:
        self.net, self.config, self.log_path, self.wrapper = net, config, log, list(wrapper)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until it listens."""
        with self.log_path.open("ab") as log:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.process = self.net.popen(
                [*self.wrapper, str(VALD), "serve", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,  # its own process group: a wrapper (strace) and the node are stopped together
            )
        wait_for(lambda: self._alive() and "listening as" in self.log(), 120, "the node to listen")

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the node exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        return True

    def log(self) -> str:
        """Everything the node printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict[str, Any]:
        """``vald serve --status``."""
        done = subprocess.run(
            [str(VALD), "serve", "--config", str(self.config), "--status"], capture_output=True, text=True, check=True
        )
        return json.loads(done.stdout)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` and wait for the end; the exit status."""
        assert self.process is not None
        os.killpg(self.process.pid, sig)
        return self.process.wait(timeout=60)


def send_storescu(net: Netns, files: Sequence[Path], port: int, *, aet: str = "STORESCU", aec: str = "VALD") -> str:
    """DCMTK's storescu; returns its output (AssertionError on failure)."""
    done = net.run(
        [str(STORESCU), "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise AssertionError(f"storescu failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout + done.stderr


PYNETDICOM_SCU = r"""
import json, sys
from pydicom import dcmread
from pynetdicom import AE
port, aet, files = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
ae = AE(ae_title=aet)
datasets = [dcmread(f) for f in files]
for ds in datasets:
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
ae.add_requested_context("1.2.840.10008.1.1")
assoc = ae.associate("127.0.0.1", port, ae_title="VALD")
out = {"established": assoc.is_established, "rejected": assoc.is_rejected, "statuses": []}
if assoc.is_established:
    out["echo"] = int(assoc.send_c_echo().Status)
    for ds in datasets:
        status = assoc.send_c_store(ds)
        out["statuses"].append(int(status.Status) if "Status" in status else None)
    assoc.release()
print(json.dumps(out))
"""


def send_pynetdicom(net: Netns, files: Sequence[Path], port: int, *, aet: str = "PYSCU") -> dict[str, Any]:
    """pynetdicom's own SCU (C-ECHO, then C-STORE of each file); what happened, as a dict."""
    done = net.python(PYNETDICOM_SCU, str(port), aet, *map(str, files), timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"pynetdicom SCU failed: {done.stderr.strip()[-800:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A one-day self-signed certificate for localhost / 127.0.0.1 and its key (openssl), in ``folder``."""
    cert, key = folder / "node.crt", folder / "node.key"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
    argv += ["-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    subprocess.run(argv, check=True, capture_output=True)
    return cert, key


def local_port() -> int:
    """A free port on this host's loopback (for in-process tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_toml(folder: Path, port: int, destinations: Sequence[dict[str, Any]], **extra: Any) -> Path:
    """A node config for the demo engines (10 steps: fast), listening on ``port``."""
    listen = {
        "ae_title": "VALD",
        "host": "127.0.0.1",
        "port": port,
        "allowed_calling_ae_titles": ["STORESCU", "PYSCU"],
        **extra.pop("listen", {}),
    }
    lines = [
        f'engines = "{REPO / "engines" / "demo"}"',
        f'out = "{folder / "out"}"',
        f'spool = "{folder / "spool"}"',
        f"segmentation = {str(extra.pop('segmentation', True)).lower()}",
        "",
        "[listen]",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in listen.items()]
    lines += ["", "[run]", f"steps = {extra.pop('steps', 10)}", "", "[delivery]"]
    delivery = {"attempts": 3, "backoff_s": 0.5, "max_backoff_s": 2, "timeout_s": 10, **extra.pop("delivery", {})}
    lines += [f"{k} = {json.dumps(v)}" for k, v in delivery.items()]
    for dest in destinations:
        lines += ["", "[[destination]]", *[f"{k} = {json.dumps(v)}" for k, v in dest.items()]]
    assert not extra, extra
    path = folder / "node.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
