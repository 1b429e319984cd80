"""Fault injection, part two: attacks on the node's listener and tampering with the optimised-graph cache.

Used by ``benchmarks/faults.py`` (parts ``listener`` and ``cache``).

- **Listener.**  A real ``vald serve`` on loopback.  Each attack holds 30 connections open (garbage of six
  kinds, silence, a request trickled a byte at a time, a flood past ``max_pending_connections``), then a
  real DCMTK storescu must store an instance and echoscu must answer, each within 10 s; every attack
  connection must be closed by the node (garbage at once, silence within ``request_timeout_s``) and
  logged in one line; a wrong called AE title must be refused.
- **Cache.**  A copy of engines/demo; after a clean run, the cached optimised graph is edited in place
  with its mtime restored, replaced with its stamp rewritten, corrupted with stamp and hash both made to
  agree, or deleted.  Each next run must exit 0 with exactly one ``vald: warning:`` naming the cache and
  compute the clean run's attribution map bit for bit; ``vald verify`` must name the altered file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
SAMPLE = DEMO / "samples" / "normal.dcm"
VALD = [sys.executable, "-m", "vald.cli"]
HELD = 30


def _rq(length: int) -> bytes:
    return struct.pack(">BBL", 0x01, 0, length)


GARBAGE = {
    "text": b"GARBAGE!" * 30,
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "2 GB request header": _rq(0x7FFFFFFF),
    "undecodable request": _rq(100) + b"\xff" * 100,
    "p-data before association": b"\x04\x00\x00\x00\x00\x10" + b"\x00" * 16,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _closed(sock: socket.socket, within: float) -> bool:
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


def _dcmtk(argv: list[str], timeout: float = 40) -> tuple[bool, float]:
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, timeout
    return done.returncode == 0, time.monotonic() - started


def _node(work: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "node.toml"
    config.write_text(
        f'engines = "{DEMO}"\nout = "{work / "out"}"\nspool = "{work / "spool"}"\n\n[listen]\nae_title = "VALD"\n'
        f'host = "127.0.0.1"\nport = {port}\nallowed_calling_ae_titles = ["STORESCU", "ECHOSCU"]\n\n'
        "[run]\nsteps = 10\nguidance_min_t = 0\n"
    )
    log = work / "node.log"
    with log.open("wb") as fh:
        node = subprocess.Popen([*VALD, "serve", "--config", str(config)], stdout=fh, stderr=fh)
    deadline = time.monotonic() + 120
    while "listening as" not in log.read_text(errors="replace"):
        if node.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the node did not start:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    return node, log


def _attack(port: int, kind: str) -> list[socket.socket]:
    socks = []
    for i in range(HELD if kind != "flood" else 100):
        sock = socket.create_connection(("127.0.0.1", port))
        if kind in GARBAGE:
            sock.sendall(GARBAGE[kind])
        elif kind == "mixed":
            sock.sendall(list(GARBAGE.values())[i % len(GARBAGE)] if i % 2 else b"")
        elif kind == "trickle":
            sock.sendall(_rq(1000)[:3])  # then nothing more: a request that never completes
        socks.append(sock)
    return socks


def listener_attacks(work: Path) -> dict[str, Any]:
    """Every attack against one running node; problems listed, counts kept."""
    if shutil.which("storescu") is None:
        return {"skipped": "DCMTK is not installed", "problems": [], "attacks": 0}
    port = _free_port()
    node, log = _node(work / "node", port)
    problems: list[str] = []
    rows = []
    sent = 0
    try:
        for kind in [*GARBAGE, "mixed", "idle", "trickle", "flood"]:
            socks = _attack(port, kind)
            sent += len(socks)
            stored, store_s = _dcmtk(
                ["storescu", "-aet", "STORESCU", "-aec", "VALD", "127.0.0.1", str(port), str(SAMPLE)]
            )
            echoed, echo_s = _dcmtk(["echoscu", "-aet", "ECHOSCU", "-aec", "VALD", "127.0.0.1", str(port)])
            limit = 3.0 if kind in GARBAGE else 8.0  # garbage at once; silence within request_timeout_s (5 s)
            still_open = sum(not _closed(s, limit) for s in socks[-HELD:])
            for sock in socks:
                sock.close()
            rows.append(
                {
                    "attack": kind,
                    "connections": len(socks),
                    "storescu_s": round(store_s, 2),
                    "echoscu_s": round(echo_s, 2),
                    "left_open": still_open,
                }
            )
            if not (stored and echoed) or max(store_s, echo_s) > 10:
                problems.append(f"{kind}: a real sender was kept out (storescu {stored}, echoscu {echoed})")
            if still_open:
                problems.append(f"{kind}: {still_open} of {HELD} attack connections still open after {limit:.0f} s")
        wrong_ok, _ = _dcmtk(["echoscu", "-aet", "ECHOSCU", "-aec", "WRONG", "127.0.0.1", str(port)])
        if wrong_ok:
            problems.append("a wrong called AE title was accepted")
        time.sleep(1)
    finally:
        node.terminate()
        node.wait(timeout=60)
    text = log.read_text(errors="replace")
    closing = text.count("closed:")
    if closing < sent:
        problems.append(f"{sent} attack connections but only {closing} 'closed:' log lines")
    if "Traceback" in text:
        problems.append("a traceback in the node's log")
    return {"attacks": len(rows), "connections": sent, "log_lines": closing, "rows": rows, "problems": problems}


def _engines_copy(work: Path) -> Path:
    folder = work / "engines"
    folder.mkdir(parents=True)
    for name in ("fp32", "tokenizer", "manifest.json"):
        (shutil.copytree if (DEMO / name).is_dir() else shutil.copy)(DEMO / name, folder / name)
    return folder


def _run(engines: Path, out: Path) -> tuple[int, str, bytes]:
    argv = [*VALD, "run", str(DEMO / "samples" / "nodule.png"), "--engines", str(engines), "--out", str(out)]
    done = subprocess.run([*argv, "--steps", "10", "--quiet"], capture_output=True, text=True)
    maps = list(out.glob("*/attribution.npy"))
    return done.returncode, done.stderr, maps[0].read_bytes() if maps else b""


def _unet_cache(engines: Path) -> Path:
    stamps = json.loads((engines / ".vald-cache" / "stamps.json").read_text())
    biggest = max((r for r in stamps if r.endswith("optimized.onnx.data")), key=lambda r: stamps[r]["size"])
    return engines / Path(biggest).parent


def _flip_keep_mtime(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _restamp(engines: Path, path: Path, sha256: str | None = None) -> None:
    """Rewrite the file's stamp to its new size, times and inode (keeping the recorded hash unless given)."""
    stamps_path = engines / ".vald-cache" / "stamps.json"
    stamps = json.loads(stamps_path.read_text())
    rel = str(path.relative_to(engines))
    st = path.stat()
    stamps[rel].update(size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, inode=st.st_ino)
    if sha256:
        stamps[rel]["sha256"] = sha256
    stamps_path.write_text(json.dumps(stamps))


TAMPERING = {
    "edited in place, mtime restored": lambda e, c: _flip_keep_mtime(c / "optimized.onnx.data"),
    "replaced, stamp rewritten": lambda e, c: (
        _flip_keep_mtime(c / "optimized.onnx.data"),
        _restamp(e, c / "optimized.onnx.data"),
    ),
    "corrupt graph, stamp and hash agree": lambda e, c: (
        (c / "optimized.onnx").write_bytes(b"junk" * 256),
        _restamp(e, c / "optimized.onnx", hashlib.sha256(b"junk" * 256).hexdigest()),
    ),
    "deleted": lambda e, c: (c / "optimized.onnx.data").unlink(),
}


def cache_tampering(work: Path) -> dict[str, Any]:
    """Each tampering on a warm cache, then a run: one warning, the clean map, no engine blamed."""
    engines = _engines_copy(work / "cache")
    code, _, clean = _run(engines, work / "cache" / "clean")
    problems = [] if code == 0 and clean else [f"the clean run failed ({code})"]
    rows = []
    for name, tamper in TAMPERING.items():
        _run(engines, work / "cache" / "warm")  # the cache is whole again before each case
        tamper(engines, _unet_cache(engines))
        code, err, attribution = _run(engines, work / "cache" / name.replace(" ", "-").replace(",", ""))
        warnings = [line for line in err.splitlines() if line.startswith("vald: warning: cached optimised graph")]
        same = attribution == clean and bool(clean)
        rows.append({"tampering": name, "exit": code, "warnings": len(warnings), "same_map": same})
        if code != 0 or len(warnings) != 1 or not same or "engine file" in err:
            problems.append(f"{name}: exit {code}, {len(warnings)} warning(s), same map {same}: {err.strip()[-200:]}")
    _run(engines, work / "cache" / "warm")
    _flip_keep_mtime(_unet_cache(engines) / "optimized.onnx.data")
    verify = subprocess.run([*VALD, "verify", str(engines)], capture_output=True, text=True)
    named = "was altered since it was written" in verify.stdout
    if verify.returncode != 0 or not named:
        problems.append(f"vald verify did not name the altered cached file (exit {verify.returncode})")
    rows.append({"tampering": "vald verify after an edit", "exit": verify.returncode, "named": named})
    return {
        "cases": len(rows),
        "rows": rows,
        "problems": problems,
        "maps_compared": int(np.sum([r.get("same_map", 0) for r in rows])),
    }
