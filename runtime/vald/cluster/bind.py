"""Ray's listeners on one address: the ``libvald_bind`` preload library, built once, and processes under it.

Ray 2.60's GCS, raylets and core workers (the driver included) listen on every interface and have no setting
for it.  ``libvald_bind`` (``vald_bind.c`` beside this module) replaces ``bind()`` when loaded with
``LD_PRELOAD``: wildcard binds go to ``VALD_BIND_ADDRESS`` instead.  A process must be started under it, and
its children (every Ray process a ``ray start`` spawns) inherit it:

* ``vald bound ADDRESS -- ray start …`` starts a Ray node so;
* ``vald run/eval --cluster … --cluster-bind ADDRESS`` and ``vald serve``'s ``[cluster] bind`` restart the
  vald process itself under it (:func:`enter`) before anything is read, when it is not already.

The library is compiled with the system's C compiler (``cc``) on first use into vald's cache folder, keyed by
the source's hash, or taken from ``VALD_BIND_LIBRARY`` (one built elsewhere, for nodes without a compiler).
IPv4 only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from vald.errors import ClusterError, ConfigError

SOURCE = Path(__file__).with_name("vald_bind.c")
ADDRESS_VAR = "VALD_BIND_ADDRESS"
LIBRARY_VAR = "VALD_BIND_LIBRARY"
_REEXEC_VAR = "VALD_BIND_REEXEC"  # set by enter(): a second restart means LD_PRELOAD did not take


def check_address(address: str) -> str:
    """``address`` if it is a single IPv4 address a node can listen on; a settings error otherwise."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise ConfigError(f"bind address {address!r}: expected this machine's IPv4 address in the cluster") from None
    if ip.is_unspecified or ip.is_multicast:
        raise ConfigError(f"bind address {address}: expected one address of this machine, not {address}")
    return address


def library() -> Path:
    """The built library: ``VALD_BIND_LIBRARY`` when set, else vald's cached build (compiled now if missing)."""
    given = os.environ.get(LIBRARY_VAR)
    if given:
        path = Path(given)
        if not path.is_file():
            raise ConfigError(f"{LIBRARY_VAR}={given}: no such file")
        return path.resolve()
    source = SOURCE.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vald"
    path = cache / f"libvald_bind-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if path.is_file():
        return path
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ConfigError(
            f"building {SOURCE.name} needs a C compiler (e.g. apt install gcc), or {LIBRARY_VAR} set to a built copy"
        )
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libvald_bind-", suffix=".so", dir=cache)
    os.close(fd)
    try:
        try:
            done = subprocess.run(
                [compiler, "-O2", "-Wall", "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-ldl"],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as exc:
            raise ConfigError(f"building {SOURCE.name}: cannot run the C compiler {compiler}: {exc.strerror}") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1][:200]
            raise ConfigError(f"building {SOURCE.name} with {compiler} failed: {last}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def bound_env(address: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the library preloaded and wildcard binds sent to ``address``."""
    out = dict(os.environ if env is None else env)
    lib = str(library())
    preload = [p for p in out.get("LD_PRELOAD", "").replace(":", " ").split() if p and p != lib]
    out["LD_PRELOAD"] = " ".join([lib, *preload])
    out[ADDRESS_VAR] = check_address(address)
    return out


def active(address: str) -> bool:
    """Whether this process runs under the library with wildcard binds sent to ``address``."""
    if os.environ.get(ADDRESS_VAR) != address:
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return any(line.rstrip().endswith(".so") and "libvald_bind" in line for line in maps.splitlines())


def enter(address: str, argv: Sequence[str]) -> None:
    """Make sure this process binds Ray's listeners to ``address``; if not yet, restart it under the library.

    ``argv``: the same command, with this interpreter.  Called before the command reads or opens anything.
    """
    check_address(address)
    if active(address):
        return
    if os.environ.get(_REEXEC_VAR) == address:
        raise ClusterError(f"cannot bind Ray's listeners to {address}: the preload library did not load (LD_PRELOAD)")
    env = bound_env(address)
    env[_REEXEC_VAR] = address
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], list(argv), env)


def run_bound(address: str, command: Sequence[str]) -> None:
    """``vald bound``: replace this process with ``command`` under the library (never returns)."""
    if not command:
        raise ConfigError("vald bound: give the command to run after --, e.g. vald bound 10.0.0.10 -- ray start …")
    env = bound_env(address)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as exc:
        raise ConfigError(f"vald bound: cannot run {command[0]!r}: {exc.strerror}") from None
