"""libvald_bind and `vald bound`: wildcard listeners on one address (Ray 2.60 has no bind setting; issue 24)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VALD = Path(sys.executable).with_name("vald")
# where each socket ends up (or why it failed): listeners bound to a wildcard with port 0 (moved at listen()),
# one bound to a wildcard with a port (moved at bind()), one bound to 127.0.0.1, and a client's bind to
# ('', 0) before connect() (its source address must stay the kernel's choice)
LISTEN = """
import json, socket
out = []
def attempt(family, host, port=0, listen=True):
    s = socket.socket(family)
    try:
        s.bind((host, port))
        if listen:
            s.listen()
        out.append(s.getsockname()[0])
    except OSError as exc:
        out.append(exc.strerror)
    return s
moved = attempt(socket.AF_INET, "0.0.0.0")
attempt(socket.AF_INET6, "::")
probe = socket.socket(); probe.bind(("127.0.0.1", 0)); port = probe.getsockname()[1]; probe.close()
attempt(socket.AF_INET, "0.0.0.0", port, listen=False)
server = attempt(socket.AF_INET, "127.0.0.1")
client = socket.socket(); client.bind(("", 0)); client.connect(server.getsockname())
out.append(client.getsockname()[0])
try:  # the listener moved at listen() accepts on its address
    socket.create_connection(moved.getsockname()[:2], timeout=5)
    out.append(moved.accept()[1][0])
except OSError as exc:
    out.append(exc.strerror)
print(json.dumps(out))
"""

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs cc")


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    """A small environment whose vald cache (where libvald_bind is built) is under ``tmp_path``."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), **more}


def _bound(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    argv_ = [str(VALD), "bound", *argv]
    return subprocess.run(argv_, capture_output=True, text=True, env=_env(tmp_path, **env), timeout=120)


def test_wildcard_listeners_land_on_the_address_and_explicit_ones_are_kept(tmp_path: Path) -> None:
    done = _bound(tmp_path, "127.0.0.5", "--", sys.executable, "-c", LISTEN)
    assert done.returncode == 0, done.stderr
    moved_v4, moved_v6, moved_fixed, *kept = json.loads(done.stdout)
    assert [moved_v4, moved_v6, moved_fixed] == ["127.0.0.5", "::ffff:127.0.0.5", "127.0.0.5"]
    assert kept == ["127.0.0.1", "127.0.0.1", "127.0.0.1"]  # explicit bind, client source, accepted peer
    built = list((tmp_path / "cache" / "vald").glob("libvald_bind-*.so"))
    assert len(built) == 1  # built once, keyed by the source's hash; the next command reuses it
    again = _bound(tmp_path, "127.0.0.6", "--", sys.executable, "-c", LISTEN)
    assert json.loads(again.stdout)[:3] == ["127.0.0.6", "::ffff:127.0.0.6", "127.0.0.6"]
    assert list((tmp_path / "cache" / "vald").glob("libvald_bind-*.so")) == built


def test_without_the_library_the_same_code_listens_on_every_interface(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", LISTEN], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == ["0.0.0.0", "::", "0.0.0.0", "127.0.0.1", "127.0.0.1", "127.0.0.1"]


def test_a_bad_address_in_the_environment_fails_wildcard_binds_instead_of_opening_them(tmp_path: Path) -> None:
    done = _bound(tmp_path, "127.0.0.5", "--", "env", "VALD_BIND_ADDRESS=not-an-address", sys.executable, "-c", LISTEN)
    assert done.returncode == 0, done.stderr
    refused = "Cannot assign requested address"
    assert json.loads(done.stdout) == [refused, refused, refused, "127.0.0.1", "127.0.0.1", "Connection refused"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["10.0.0", "--", "true"], "bind address '10.0.0': expected this machine's IPv4 address"),
        (["0.0.0.0", "--", "true"], "expected one address of this machine, not 0.0.0.0"),
        (["fe80::1", "--", "true"], "expected this machine's IPv4 address"),
        (["127.0.0.5"], "give the command to run after --"),
        (["127.0.0.5", "--", "/nonexistent/ray"], "cannot run '/nonexistent/ray'"),
    ],
)
def test_bad_bound_commands_are_one_line_and_exit_2(tmp_path: Path, argv: list[str], message: str) -> None:
    done = _bound(tmp_path, *argv)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_no_compiler_is_one_line_that_names_the_way_out(tmp_path: Path) -> None:
    done = _bound(tmp_path, "127.0.0.5", "--", "true", CC="/nonexistent/cc")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cannot run the C compiler /nonexistent/cc" in done.stderr
    given = _bound(tmp_path, "127.0.0.5", "--", "true", VALD_BIND_LIBRARY=str(tmp_path / "missing.so"))
    assert given.returncode == 2 and "VALD_BIND_LIBRARY=" in given.stderr and "no such file" in given.stderr


def test_cluster_bind_needs_cluster_and_an_ipv4_address(tmp_path: Path) -> None:
    base = [str(VALD), "run", "x.png", "--out", str(tmp_path / "o")]
    alone = subprocess.run([*base, "--cluster-bind", "127.0.0.2"], capture_output=True, text=True)
    assert alone.returncode == 2 and "--cluster-bind applies with --cluster" in alone.stderr
    bad = subprocess.run([*base, "--cluster", "127.0.0.2:9", "--cluster-bind", "host"], capture_output=True, text=True)
    assert bad.returncode == 2 and "bind address 'host'" in bad.stderr


def test_the_driver_restarts_itself_under_the_library_before_it_reads_an_input(tmp_path: Path) -> None:
    """--cluster-bind on a cluster that is not there: the restarted driver (bound) reports the unreachable head."""
    pytest.importorskip("ray")
    env = _env(tmp_path)
    argv = [str(VALD), "run", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")]
    done = subprocess.run([*argv, "--cluster", "127.0.0.9:9", "--cluster-bind", "127.0.0.1"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.9:9" in done.stderr, done.stderr
    assert list((tmp_path / "cache" / "vald").glob("libvald_bind-*.so"))  # it was built to restart under it


@pytest.mark.parametrize(
    ("value", "message"),
    [("5", "[cluster] bind must be this machine's IPv4 address"), ('"host"', "bind address 'host'")],
)
def test_the_nodes_cluster_bind_is_checked_when_the_config_loads(tmp_path: Path, value: str, message: str) -> None:
    pytest.importorskip("pynetdicom")
    from dicomnet import node_toml

    from vald.errors import ConfigError
    from vald.node.config import NodeConfig

    pacs = {"name": "p", "kind": "dimse", "ae_title": "P", "host": "127.0.0.1", "port": 1}
    config = node_toml(tmp_path, 11112, [pacs])
    config.write_text(config.read_text() + f'\n[cluster]\naddress = "127.0.0.2:6379"\nbind = {value}\n')
    with pytest.raises(ConfigError, match=re.escape(message)):
        NodeConfig.load(config)
    config.write_text(config.read_text().replace(f"bind = {value}", 'bind = "127.0.0.2"'))
    loaded = NodeConfig.load(config).cluster
    assert loaded is not None and loaded.bind == "127.0.0.2"
