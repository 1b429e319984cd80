"""Fault-injection campaign: kills at chosen system calls, stop signals, and a corpus of bad inputs.

Not a timed benchmark: it records what was tried and whether any finished output was lost or mislabelled.

- **Kill points.**  An output folder holds a finished run with settings B for every input; a run with
  settings A is killed (SIGKILL, by ``strace -e inject=SYSCALL:signal=SIGKILL:when=N``) at the N-th call
  of a file-system system call.  Right after the kill every input folder must be a complete, described
  set (``result.json`` lists exactly its files with their hashes) holding either B's files or A's, and
  no summary may be torn.  Then the same run is repeated without faults: it must end with exactly the
  files of an uninterrupted A run, and nothing left over.
- **Signals.**  SIGINT, SIGTERM and SIGHUP at several moments of a batch: the exit status is 128+N, the
  summary marks the input in progress, the report exists, and a re-run completes bit-identically.
- **Bad inputs.**  Truncated, random, empty, oversized, non-finite and malformed files (PNG, TIFF, JPEG,
  DICOM) named with patient-like text, in one batch beside good inputs: every bad one fails with one
  line that names no file, the good ones are done, no traceback, no "internal error".
- **Listener attacks and cache tampering**: see ``benchmarks/faults_node.py``.

    python benchmarks/faults.py            # ~10 min on 2 cores; writes benchmarks/results/faults.{json,md}
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vald.outputs import RESULT, described

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faults_node import cache_tampering, listener_attacks

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
PATIENT = "Doe^Jane_PID-778899"
SYSCALLS = ("openat", "write", "fsync", "rename", "renameat2", "mkdir", "unlinkat", "rmdir")
FAST = ["--steps", "4", "--guidance-min-t", "0", "--quiet"]  # 4 steps start below the default interval


def _vald(inputs: list[Path], out: Path, *extra: str) -> list[str]:
    run = [sys.executable, "-m", "vald.cli", "run", *map(str, inputs)]
    return [*run, "--engines", str(DEMO), "--out", str(out), *FAST, *extra]


def _content(path: Path) -> str:
    """A file's content hash; for DICOM its pixels and UIDs (creation times differ between runs by design)."""
    if path.suffix != ".dcm":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    import pydicom

    ds = pydicom.dcmread(path)
    return hashlib.sha256(ds.PixelData + f"{ds.SOPInstanceUID}|{ds.SeriesInstanceUID}".encode()).hexdigest()


def _sets(out: Path) -> dict[str, dict[str, str]]:
    """Per input folder: file name -> content hash (result.json left out: its timings differ between runs)."""
    found = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found[folder.name] = {p.name: _content(p) for p in sorted(folder.iterdir()) if p.name != RESULT}
    return found


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.name != ".vald-lock")


def _count_calls(inputs: list[Path], out: Path, extra: list[str]) -> dict[str, int]:
    """How many times a run calls each traced system call (to place kill points across the whole run)."""
    trace = out.parent / "count.txt"
    subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-c",
            "-o",
            str(trace),
            "-e",
            f"trace={','.join(SYSCALLS)}",
            *_vald(inputs, out, *extra),
        ],
        capture_output=True,
        check=False,
    )
    counts = {}
    for line in trace.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in SYSCALLS:
            counts[parts[-1]] = int(parts[3])  # % time, seconds, usecs/call, calls, [errors,] syscall
    return counts


def kill_points(inputs: list[Path], work: Path, per_call: int) -> dict[str, Any]:
    """Kill a run with settings A over a finished run with settings B at many points; check every state."""
    ref_a, ref_b = work / "ref-a", work / "ref-b"
    subprocess.run(_vald(inputs, ref_b, "--strength", "0.4"), check=True, capture_output=True)
    sets_a, sets_b = _sets(ref_a), _sets(ref_b)
    probe = work / "probe"
    shutil.copytree(ref_b, probe)
    counts = _count_calls(inputs, probe, [])
    tried, problems = [], []
    for call, total in sorted(counts.items()):
        points = sorted({max(1, round(total * k / per_call)) for k in range(1, per_call + 1)})
        for n in points:
            out = work / f"kill-{call}-{n}"
            shutil.copytree(ref_b, out)
            killed = subprocess.run(
                [
                    "strace",
                    "-f",
                    "-qq",
                    "-o",
                    "/dev/null",
                    "-e",
                    f"inject={call}:signal=SIGKILL:when={n}",
                    *_vald(inputs, out),
                ],
                capture_output=True,
                check=False,
            )
            state = "killed" if killed.returncode in (-9, 137) else f"ended {killed.returncode}"
            bad = []
            for key, files in _sets(out).items():  # right after the kill: old set or new set, both described
                if described(out / key) is None:
                    bad.append(f"{key}: not described after the kill")
                elif files not in (sets_a.get(key), sets_b.get(key)):
                    bad.append(f"{key}: files of neither run after the kill")
            for name in ("summary.json",):
                if (out / name).exists():
                    try:
                        json.loads((out / name).read_text())
                    except ValueError:
                        bad.append(f"{name} torn")
            again = subprocess.run(_vald(inputs, out), capture_output=True, text=True, check=False)
            if again.returncode != 0:
                bad.append(f"resume ended {again.returncode}: {again.stderr.strip()[-200:]}")
            if _sets(out) != sets_a:
                bad.append("after resume: files differ from an uninterrupted run")
            if any(described(out / key) is None for key in sets_a):
                bad.append("after resume: a folder is not described")
            if _leftovers(out):
                bad.append(f"after resume: leftovers {_leftovers(out)[:3]}")
            tried.append({"syscall": call, "when": n, "state": state, "problems": bad})
            problems += [f"{call}#{n}: {b}" for b in bad]
            shutil.rmtree(out)
    return {
        "calls_per_run": counts,
        "kill_points": len(tried),
        "killed": sum(t["state"] == "killed" for t in tried),
        "problems": problems,
        "points": tried,
    }


def signals(inputs: list[Path], work: Path) -> dict[str, Any]:
    """Stop signals at several moments of a batch (while the 1st, 2nd, ... input is in progress, and at the end).

    The runs use 40 steps (about a second per input), so a signal sent after the N-th input finished lands
    in the next one's work, in the summary write between inputs, or at the end in the report: every case
    must end with exit 128+N (or 0 when the run was over first), no traceback, a summary and a report, and a
    re-run that completes bit-identically.
    """
    slow = ["--steps", "40"]
    ref = work / "ref-slow"
    subprocess.run(_vald(inputs, ref, *slow), check=True, capture_output=True)
    sets_ref = _sets(ref)
    tried, problems = [], []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        for after in range(len(inputs)):
            for delay in (0.0, 0.4):
                out = work / f"sig-{signum.name}-{after}-{delay}"
                proc = subprocess.Popen(
                    _vald(inputs, out, *slow), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
                summary = out / "summary.json"
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        if after == 0 and (out / ".vald-lock").stat().st_size:
                            break
                        if json.loads(summary.read_text())["counts"].get("done", 0) >= after > 0:
                            break
                    except (OSError, ValueError, KeyError):
                        pass
                    time.sleep(0.01)
                time.sleep(delay)
                sent = proc.poll() is None
                if sent:
                    proc.send_signal(signum)
                _, err = proc.communicate(timeout=120)
                bad = []
                if "Traceback" in err:
                    bad.append("traceback")
                if proc.returncode not in (0, 128 + int(signum)):
                    bad.append(f"exit {proc.returncode}")
                try:
                    body = json.loads(summary.read_text())
                except (OSError, ValueError):
                    body = {}
                stopped = body.get("interrupted") and body.get("stopped_by") == signum.name
                complete = body.get("counts", {}).get("done") == len(inputs) and body.get("finished")
                if not (stopped or complete) and after > 0:
                    bad.append("summary neither stopped nor complete")
                if body and not (out / "report.html").is_file():
                    bad.append("summary without report")
                again = subprocess.run(_vald(inputs, out, *slow), capture_output=True, text=True, check=False)
                if again.returncode != 0 or _sets(out) != sets_ref or _leftovers(out):
                    bad.append("resume did not complete bit-identically")
                outcome = "stopped mid-batch" if stopped else ("complete" if complete else "stopped before the batch")
                tried.append(
                    {
                        "signal": signum.name,
                        "after_done": after,
                        "delay_s": delay,
                        "sent": sent,
                        "exit": proc.returncode,
                        "outcome": outcome,
                        "problems": bad,
                    }
                )
                problems += [f"{signum.name} after {after} (+{delay} s): {b}" for b in bad]
                shutil.rmtree(out)
    outcomes: dict[str, int] = {}
    for t in tried:
        outcomes[t["outcome"]] = outcomes.get(t["outcome"], 0) + 1
    return {
        "signals_sent": sum(t["sent"] for t in tried),
        "runs": len(tried),
        "outcomes": outcomes,
        "problems": problems,
        "tried": tried,
    }


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming a size, with one tiny IDAT (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bad_inputs(folder: Path) -> dict[str, Path]:
    """A corpus of bad files, each named with patient-like text; keys are their labels.

    Labels starting with ``damaged-`` may still decode (a flipped byte inside pixel data is a valid, slightly
    different image; a PNG without its end marker holds every pixel): they must be done or fail with one
    line, or be skipped as a copy of a DICOM instance already in the batch (same SOP Instance UID).  Every
    other one must fail.
    """
    rng = np.random.default_rng(0)
    good = _png_bytes((rng.random((96, 80)) * 255).astype(np.uint8))
    dcm = (DEMO / "samples" / "normal.dcm").read_bytes()
    files: dict[str, bytes] = {}
    for cut in (0, 8, 16, 33, 50, 100, len(good) // 2, len(good) - 30):
        files[f"truncated-{cut}.png"] = good[:cut]
    for cut in (len(good) - 12, len(good) - 1):  # only the IEND trailer cut: every pixel is still there
        files[f"damaged-trailer-{cut}.png"] = good[:cut]
    for cut in (0, 128, 132, 200, 400, len(dcm) // 2, len(dcm) - 100, len(dcm) - 1):
        files[f"truncated-{cut}.dcm"] = dcm[:cut]
    for k in range(10):
        for suffix in (".png", ".dcm", ".tif", ".jpg"):
            files[f"random-{k}{suffix}"] = rng.bytes(int(rng.integers(1, 5000)))
    for k in range(8):  # flipped bytes inside an otherwise valid PNG and DICOM
        flipped = bytearray(good)
        flipped[int(rng.integers(8, len(good)))] ^= 0xFF
        files[f"damaged-flipped-{k}.png"] = bytes(flipped)
        flipped = bytearray(dcm)
        flipped[int(rng.integers(132, len(dcm)))] ^= 0xFF
        files[f"damaged-flipped-{k}.dcm"] = bytes(flipped)
    for width, height in ((12000, 12000), (100000, 10), (20000, 64), (63, 5000), (1, 1), (65535, 65535)):
        files[f"header-{width}x{height}.png"] = _png_header(width, height)
    nan = np.full((80, 80), 0.5, dtype=np.float32)
    nan[3, 3] = np.nan
    for name, array in (("nan", nan), ("inf", np.full((80, 80), np.inf, dtype=np.float32))):
        buf = io.BytesIO()
        Image.fromarray(array, mode="F").save(buf, format="TIFF")
        files[f"{name}.tif"] = buf.getvalue()
    files["tiny.png"] = _png_bytes(np.zeros((8, 8), dtype=np.uint8))
    files["text.png"] = b"this is not an image"
    files["dicm-magic-only"] = b"\0" * 128 + b"DICM"
    files["gif.gif"] = b"GIF89a" + b"\0" * 20
    paths = {}
    for k, (name, data) in enumerate(sorted(files.items())):
        path = folder / f"{PATIENT}-{k:03d}-{name}"
        path.write_bytes(data)
        paths[name] = path
    (folder / f"{PATIENT}-dir.png").mkdir()  # a folder with an image suffix: walked, holds nothing
    return paths


def bad_input_batch(work: Path) -> dict[str, Any]:
    folder = work / "bad"
    folder.mkdir()
    bad = bad_inputs(folder)
    goods = [folder / "zz-good-1.png", folder / "zz-good-2.png"]
    shutil.copy(DEMO / "samples" / "normal.png", goods[0])
    shutil.copy(DEMO / "samples" / "effusion.png", goods[1])
    out = work / "bad-out"
    done = subprocess.run(_vald([folder], out), capture_output=True, text=True, check=False)
    summary = json.loads((out / "summary.json").read_text())
    order = sorted([*bad.values(), *goods])  # the batch's order: sorted paths
    label = {path: name for name, path in bad.items()}
    status = {label.get(path, path.name): e for path, e in zip(order, summary["entries"], strict=True)}
    problems = []
    if done.returncode != 1:
        problems.append(f"exit {done.returncode}")
    if "Traceback" in done.stderr or "internal error" in done.stderr:
        problems.append("traceback or internal error")
    if PATIENT in done.stderr + done.stdout + json.dumps(summary):
        problems.append("a file name appeared in the output")
    must_fail = [name for name in bad if not name.startswith("damaged-")]
    problems += [f"{name}: {status[name]['status']}" for name in must_fail if status[name]["status"] != "failed"]
    damaged = {name: status[name]["status"] for name in bad if name.startswith("damaged-")}
    problems += [f"{name}: {s}" for name, s in damaged.items() if s not in ("done", "failed", "skipped")]
    if [status[g.name]["status"] for g in goods] != ["done", "done"]:
        problems.append("the good inputs were not done")
    failures = [e for e in summary["entries"] if e["status"] == "failed"]
    if any(not e["input_sha256"] for e in failures):
        problems.append("a failure without its content hash")
    reasons: dict[str, int] = {}
    for e in failures:
        reason = e["error"].split(";")[0].split("(")[0].strip()
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "bad_inputs": len(bad),
        "must_fail": len(must_fail),
        "must_fail_failed": sum(status[name]["status"] == "failed" for name in must_fail),
        "damaged": {state: sum(s == state for s in damaged.values()) for state in ("done", "failed", "skipped")},
        "good_inputs": len(goods),
        "problems": problems,
        "reasons": reasons,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-call", type=int, default=6, help="kill points per system call (default 6)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--only",
        choices=["kill_points", "signals", "bad_inputs", "listener", "cache"],
        help="redo one part; the others from faults.json",
    )
    args = parser.parse_args()
    if shutil.which("strace") is None:
        raise SystemExit("faults.py needs strace (apt-get install strace)")
    samples = DEMO / "samples"
    inputs = [samples / "consolidation.png", samples / "effusion.dcm", samples / "nodule.png"]
    started = time.time()
    previous = json.loads((args.out / "faults.json").read_text()) if args.only else {}
    with tempfile.TemporaryDirectory(prefix="vald-faults-") as tmp:
        work = Path(tmp)
        if args.only in (None, "kill_points", "signals"):
            subprocess.run(_vald(inputs, work / "ref-a"), check=True, capture_output=True)
        kills = kill_points(inputs, work, args.per_call) if args.only in (None, "kill_points") else None
        sigs = signals(inputs, work) if args.only in (None, "signals") else None
        bad = bad_input_batch(work) if args.only in (None, "bad_inputs") else None
        listener = listener_attacks(work) if args.only in (None, "listener") else None
        cache = cache_tampering(work) if args.only in (None, "cache") else None
    kills = kills or previous["kill_points"]
    sigs = sigs or previous["signals"]
    bad = bad or previous["bad_inputs"]
    never = {"problems": ["not run yet"], "rows": [], "attacks": 0, "cases": 0, "maps_compared": 0}
    listener = listener or previous.get("listener", never)
    cache = cache or previous.get("cache", never)
    parts = (("kill points", kills), ("signals", sigs), ("bad inputs", bad), ("listener", listener), ("cache", cache))
    for name, part in parts:
        print(f"{name}: {len(part['problems'])} problem(s)", flush=True)
    payload = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds": round(time.time() - started, 1),
        "redone": args.only or "all",  # with --only, the other parts are kept from the previous faults.json
        "previous_date": previous.get("previous_date") or previous.get("date"),
        "inputs_per_run": len(inputs),
        "kill_points": kills,
        "signals": sigs,
        "bad_inputs": bad,
        "listener": listener,
        "cache": cache,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    lines = [
        f"# Fault injection ({payload['date']}, {payload['seconds']:.0f} s"
        + (f"; only {args.only} redone, the rest from {payload['previous_date']}" if args.only else "")
        + ")",
        "",
        "| what | tried | problems |",
        "|---|---|---|",
        f"| SIGKILL at a system call ({', '.join(f'{c} ×{n}' for c, n in kills['calls_per_run'].items())} per run) "
        f"| {kills['kill_points']} points, {kills['killed']} killed | {len(kills['problems'])} |",
        f"| SIGINT / SIGTERM / SIGHUP during a batch | {sigs['signals_sent']} signals in {sigs['runs']} runs ("
        + ", ".join(f"{n} {k}" for k, n in sigs["outcomes"].items())
        + f") | {len(sigs['problems'])} |",
        f"| bad inputs in one batch with {bad['good_inputs']} good ones | {bad['bad_inputs']} ({bad['must_fail']} "
        f"must fail: {bad['must_fail_failed']} failed; {sum(bad['damaged'].values())} damaged: "
        + ", ".join(f"{n} {k}" for k, n in bad["damaged"].items())
        + f") | {len(bad['problems'])} |",
        f"| listener attacks on a running node ({', '.join(r['attack'] for r in listener.get('rows', []))}), then "
        f"a real storescu and echoscu each time | {listener.get('connections', 0)} "
        f"connections in {listener['attacks']} attacks, {listener.get('log_lines', 0)} closing log lines | "
        f"{len(listener['problems'])} |",
        f"| optimised-graph cache tampering ({', '.join(r['tampering'] for r in cache['rows'])}) | "
        f"{cache['cases']} cases, {cache['maps_compared']} maps identical to the clean run | "
        f"{len(cache['problems'])} |",
        "",
        "Failure reasons of the bad inputs: "
        + "; ".join(f"{reason} ({n})" for reason, n in sorted(bad["reasons"].items(), key=lambda kv: -kv[1])),
        "",
        *(f"- {p}" for _, part in parts for p in part["problems"]),
    ]
    (args.out / "faults.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
