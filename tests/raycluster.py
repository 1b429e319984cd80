"""A real Ray cluster on loopback for the tests and the cluster benchmark: a head and a second node.

Both are started with `ray start` in ``net`` (a private network namespace when the machine allows one),
under `vald bound` (every Ray listener on its node's address), with token authentication, usage statistics off
and no dashboard, and stopped by PID.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from dicomnet import Netns, wait_for

RAY = Path(sys.executable).with_name("ray")
VALD = Path(sys.executable).with_name("vald")
HEAD, WORKER = "127.0.0.2", "127.0.0.3"


class Cluster:
    """A head and a second node, started by `ray start` in ``net``; stopped by PID."""

    def __init__(self, net: Netns, folder: Path, *, cpus: tuple[int, ...] = (1, 1)) -> None:
        self.net, self.folder = net, folder
        self.temp = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))  # short: Ray's socket paths have a limit
        folder.mkdir(parents=True, exist_ok=True)
        token = folder / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
            "XDG_CACHE_HOME": str(folder / "cache"),  # where `vald bound` builds libvald_bind
        }
        self.port = net.free_port()
        self.address = f"{HEAD}:{self.port}"
        self.head_cpus, self.worker_cpus = cpus[0], cpus[1] if len(cpus) > 1 else 0
        self.start_head()
        if self.worker_cpus:
            self.start_worker_node()
        self.sessions = self.session_dirs()

    def kill_head(self) -> int:
        """SIGKILL the head's processes (those under its temp folder) and what they started; how many."""
        victims = {pid for pid, line in self.processes().items() if str(self.temp) in line}
        victims |= {pid for pid, line in self.processes().items() if pid in victims or line.startswith("ray::")}
        _kill(victims)
        return len(victims)

    def restart(self) -> None:
        """Stop every process of the cluster, then start the head (same address) and the second node again."""
        self.stop(keep_files=True)
        (self.temp / "ray_current_cluster").unlink(missing_ok=True)  # the killed head's, or `ray start` refuses
        self.start_head()
        if self.worker_cpus:
            self.start_worker_node()

    def start_head(self) -> None:
        """Start the head on 127.0.0.2 (no dashboard, usage stats off, its temp folder)."""
        self._start([str(VALD), "bound", HEAD, "--",
                     str(RAY), "start", "--head", "--node-ip-address", HEAD, "--port", str(self.port),
                     "--disable-usage-stats", "--include-dashboard=false", "--num-cpus", str(self.head_cpus),
                     "--temp-dir", str(self.temp)])  # fmt: skip

    def start_worker_node(self) -> None:
        """(Re)start the second node on 127.0.0.3."""
        self._start([str(VALD), "bound", WORKER, "--",
                     str(RAY), "start", "--address", self.address, "--node-ip-address", WORKER,
                     "--disable-usage-stats", "--num-cpus", str(self.worker_cpus)])  # fmt: skip

    def _start(self, argv: list[str]) -> None:
        done = self.net.run(argv, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]

    def processes(self, node: str | None = None) -> dict[int, str]:
        """This cluster's processes (PID -> command line): those naming its temp folder or its head's address
        (``node``: only those that also name that node's address), and their descendants (workers, agents)."""
        table = subprocess.run(["ps", "-eww", "-o", "pid=,ppid=,args="], capture_output=True, text=True, check=True)
        rows = [line.split(None, 2) for line in table.stdout.splitlines()]
        args = {int(r[0]): r[2] if len(r) == 3 else "" for r in rows}
        parent = {int(r[0]): int(r[1]) for r in rows}
        found = {
            pid
            for pid, line in args.items()
            if (str(self.temp) in line or self.address in line)
            and (node is None or node in line)
            and "pytest" not in line
            and "--cluster" not in line.split()  # a vald driver that names the head (not Ray's --cluster_id=)
        }
        changed = True
        while changed:
            more = {pid for pid, ppid in parent.items() if ppid in found} - found
            found |= more
            changed = bool(more)
        return {pid: args[pid] for pid in found}

    def pids(self) -> set[int]:
        """PIDs of this cluster's processes."""
        return set(self.processes())

    def actors(self) -> set[int]:
        """PIDs of vald's Ray workers (Ray names an actor's process after its class) in this cluster."""
        return {pid for pid, line in self.processes().items() if line.startswith("ray::RayWorker")}

    def session_dirs(self) -> set[Path]:
        """The session folders of both nodes (the second node's is not under the head's --temp-dir)."""
        table = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True, check=True)
        found = {self.temp}
        for line in table.stdout.splitlines():
            if self.address in line or str(self.temp) in line:
                for word in line.split():
                    if word.startswith(("--session-dir=", "--session_dir=")):
                        found.add(Path(word.split("=", 1)[1]))
        return found

    def kill_worker_node(self) -> int:
        """SIGKILL the second node's raylet and everything under it; how many processes."""
        victims = set(self.processes(node=WORKER))
        _kill(victims)
        return len(victims)

    def stop(self, *, keep_files: bool = False) -> None:
        """SIGKILL every process of the cluster and wait for them to end; remove its folders unless ``keep_files``."""
        pids = self.pids()
        _kill(pids)
        wait_for(lambda: not self.pids(), 30, "every Ray process of the test cluster to end")
        if keep_files:
            return
        for folder in self.sessions:
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.temp, ignore_errors=True)


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
