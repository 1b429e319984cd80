"""The node's settings: one TOML file with the listener, the destinations, delivery and the run settings.

engines = "/opt/vald/engines/demo"    # engine folder (relative paths are relative to the TOML file)
out = "/var/lib/vald/out"             # results, laid out as `vald run --out`
spool = "/var/lib/vald/spool"         # received instances and delivery state
segmentation = true                   # the Segmentation of the map's region (default true)
seg_type = "binary"                   # or "fractional" (for Weasis / 3D Slicer sites)
parametric_map = true                 # the Parametric Map of the signed map (default true)
report = true                         # the TID 1500 SR beside the Segmentation (default true)

[listen]
ae_title = "VALD"
port = 11112
allowed_calling_ae_titles = ["PACS"]  # required: nobody else may associate
allowed_addresses = ["10.0.0.5"]      # optional

[run]                                 # the settings of `vald run --config`
strength = 0.7

[cluster]                             # optional: process on a Ray cluster (vald[cluster]; see docs/cluster.md)
address = "10.0.0.10:6379"            # the head's host:port, or "auto"
workers = 2                           # instances in flight; each worker reserves `threads` CPUs (or a GPU)
bind = "10.0.0.10"                    # optional: this machine's address; Ray's listeners here bind to it alone

[[destination]]
name = "pacs"
kind = "dimse"                        # C-STORE SCU; or kind = "stow" with url = "http://..."
ae_title = "PACS"
host = "10.0.0.5"
port = 104
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vald.cluster.ray_executor import ClusterConfig
from vald.config import Provider, RunConfig, check_seg_type, read_toml
from vald.errors import ConfigError

MB = 1024 * 1024


def _ae_title(value: object, name: str) -> str:
    """A DICOM AE title: 1-16 printable ASCII characters, no backslash, not only spaces."""
    text = value.strip() if isinstance(value, str) else ""
    if not text or len(text) > 16 or not text.isascii() or not text.isprintable() or "\\" in text:
        raise ConfigError(f"{name}={value!r} is not an AE title (1-16 ASCII characters, no backslash)")
    return text


def _number(data: dict[str, Any], key: str, default: float, where: str, *, low: float, integer: bool) -> Any:
    value = data.pop(key, default)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value < low:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}{key}={value!r} must be {kind} >= {low}")
    return value


def _path(value: object, name: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a path (text)")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _no_more(data: dict[str, Any], where: str, known: list[str]) -> None:
    if data:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(data))} in {where}; known: {', '.join(known)}")


@dataclass(frozen=True, kw_only=True)
class Tls:
    """TLS for the listener: the node's certificate and key; with ``ca``, callers must show a certificate."""

    certificate: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Listen:
    """The C-STORE SCP: who we are, where we listen, whom we let in, and how much we take."""

    ae_title: str = "VALD"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_ae_titles: tuple[str, ...] = ()
    allowed_addresses: tuple[str, ...] = ()  # empty: any address (the AE title list still applies)
    max_associations: int = 4  # slots: counted from the A-ASSOCIATE-RQ until the connection closes
    max_pending_connections: int = 64  # connected but not yet asked; one more closes the oldest
    request_timeout_s: float = 5.0  # from connect to a whole A-ASSOCIATE-RQ (TLS handshake included)
    acse_timeout_s: float = 10.0  # pynetdicom's ACSE timeout (association set-up and release)
    dimse_timeout_s: float = 60.0  # waiting for the rest of a DIMSE message
    network_timeout_s: float = 60.0  # an association (or a half-sent PDU) idle this long is closed
    max_instance_mb: float = 200.0
    spool_limit_mb: float = 4096.0
    tls: Tls | None = None

    @property
    def max_instance_bytes(self) -> int:
        """The largest instance accepted, in bytes."""
        return int(self.max_instance_mb * MB)

    @property
    def spool_limit_bytes(self) -> int:
        """Received instances not yet processed may take this many bytes; more is refused (Out of Resources)."""
        return int(self.spool_limit_mb * MB)


@dataclass(frozen=True, kw_only=True)
class Destination:
    """Where results go: C-STORE to ``ae_title@host:port`` (kind "dimse") or STOW-RS to ``url`` (kind "stow")."""

    name: str
    kind: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""

    def describe(self) -> str:
        """For logs and status: the peer, without credentials."""
        if self.kind == "dimse":
            return f"{self.ae_title}@{self.host}:{self.port}"
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """Retries: ``attempts`` tries per destination, waiting ``backoff_s`` doubling up to ``max_backoff_s``."""

    attempts: int = 5
    backoff_s: float = 5.0
    max_backoff_s: float = 300.0
    timeout_s: float = 30.0

    def wait_after(self, failures: int) -> float:
        """Seconds to wait before the next try after ``failures`` failed ones."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** max(0, failures - 1)))


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """All of ``vald serve``'s settings."""

    engines: Path
    out: Path
    spool: Path
    run: RunConfig = field(default_factory=RunConfig)
    segmentation: bool = True
    seg_type: str = "binary"
    parametric_map: bool = True
    report: bool = True
    listen: Listen = field(default_factory=Listen)
    destinations: tuple[Destination, ...] = ()
    delivery: Delivery = field(default_factory=Delivery)
    cluster: ClusterConfig | None = None  # process on a Ray cluster ([cluster]); None: in the node's process

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        """Read and check the TOML file; every error is a one-line ConfigError."""
        return cls.from_mapping(read_toml(path), path.resolve().parent)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], base: Path) -> NodeConfig:
        """Build from parsed TOML; relative paths are taken from ``base``."""
        data = dict(data)
        known = [
            "engines", "out", "spool", "segmentation", "seg_type", "parametric_map", "report",
            "listen", "run", "destination", "delivery", "cluster",
        ]  # fmt: skip
        engines = _path(data.pop("engines", "engines/demo"), "engines", base)
        out = _path(data.pop("out", None), "out", base)
        spool = _path(data.pop("spool", None), "spool", base)
        segmentation, parametric_map, report = (
            _flag(data, name) for name in ("segmentation", "parametric_map", "report")
        )
        seg_type = check_seg_type(data.pop("seg_type", "binary"))
        run = RunConfig.from_mapping(_table(data.pop("run", {}), "run"))
        listen = _listen(_table(data.pop("listen", {}), "listen"), base)
        destinations = tuple(
            _destination(_table(d, "destination"), i) for i, d in enumerate(data.pop("destination", []))
        )
        if len({d.name for d in destinations}) != len(destinations):
            raise ConfigError("destination names must be unique")
        delivery = _delivery(_table(data.pop("delivery", {}), "delivery"))
        cluster = _cluster(_table(data.pop("cluster"), "cluster"), run) if "cluster" in data else None
        _no_more(data, "the node config", known)
        if spool.resolve() == out.resolve() or spool.resolve().is_relative_to(out.resolve()):
            raise ConfigError("spool must not be the out folder or inside it")
        return cls(
            engines=engines,
            out=out,
            spool=spool,
            run=run,
            segmentation=segmentation,
            seg_type=seg_type,
            parametric_map=parametric_map,
            report=report,
            listen=listen,
            destinations=destinations,
            delivery=delivery,
            cluster=cluster,
        )


def _flag(data: dict[str, Any], name: str) -> bool:
    """A true/false output switch, true when absent (the derived objects are written by default)."""
    value = data.pop(name, True)
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be true or false")
    return value


def _table(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return dict(value)


def _listen(data: dict[str, Any], base: Path) -> Listen:
    where = "[listen] "
    allowed = data.pop("allowed_calling_ae_titles", None)
    if not isinstance(allowed, list) or not allowed:
        raise ConfigError(
            "[listen] allowed_calling_ae_titles must list the AE titles that may send (e.g. your PACS); "
            "an open node would take studies from anyone"
        )
    addresses = data.pop("allowed_addresses", [])
    if not isinstance(addresses, list):
        raise ConfigError("[listen] allowed_addresses must be a list of IP addresses")
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except (ValueError, TypeError):
            raise ConfigError(f"[listen] allowed_addresses: {address!r} is not an IP address") from None
    tls = data.pop("tls", None)
    listen = Listen(
        ae_title=_ae_title(data.pop("ae_title", "VALD"), "[listen] ae_title"),
        host=str(data.pop("host", "0.0.0.0")),
        port=_port(data.pop("port", 11112), "[listen] port"),
        allowed_calling_ae_titles=tuple(_ae_title(a, "[listen] allowed_calling_ae_titles") for a in allowed),
        allowed_addresses=tuple(addresses),
        max_associations=_number(data, "max_associations", 4, where, low=1, integer=True),
        max_pending_connections=_number(data, "max_pending_connections", 64, where, low=1, integer=True),
        request_timeout_s=float(_number(data, "request_timeout_s", 5.0, where, low=0.1, integer=False)),
        acse_timeout_s=float(_number(data, "acse_timeout_s", 10.0, where, low=0.1, integer=False)),
        dimse_timeout_s=float(_number(data, "dimse_timeout_s", 60.0, where, low=0.1, integer=False)),
        network_timeout_s=float(_number(data, "network_timeout_s", 60.0, where, low=0.1, integer=False)),
        max_instance_mb=float(_number(data, "max_instance_mb", 200.0, where, low=0.001, integer=False)),
        spool_limit_mb=float(_number(data, "spool_limit_mb", 4096.0, where, low=0.001, integer=False)),
        tls=None if tls is None else _tls(_table(tls, "listen.tls"), base),
    )
    _no_more(data, "[listen]", [f.name for f in fields(Listen)])
    return listen


def _tls(data: dict[str, Any], base: Path) -> Tls:
    tls = Tls(
        certificate=_path(data.pop("certificate", None), "[listen.tls] certificate", base),
        key=_path(data.pop("key", None), "[listen.tls] key", base),
        ca=_path(data.pop("ca"), "[listen.tls] ca", base) if "ca" in data else None,
    )
    _no_more(data, "[listen.tls]", ["certificate", "key", "ca"])
    return tls


def _port(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{name}={value!r} must be a TCP port number (0-65535)")
    return value


def _destination(data: dict[str, Any], index: int) -> Destination:
    name = data.pop("name", f"destination-{index + 1}")
    kind = data.pop("kind", None)
    where = f"[[destination]] {name}: "
    if kind == "dimse":
        dest = Destination(
            name=str(name),
            kind=kind,
            ae_title=_ae_title(data.pop("ae_title", None), f"{where}ae_title"),
            host=str(data.pop("host", "") or ""),
            port=_port(data.pop("port", 104), f"{where}port"),
        )
        if not dest.host:
            raise ConfigError(f"{where}host is required")
    elif kind == "stow":
        url = data.pop("url", "")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}url={url!r} must be an http:// or https:// DICOMweb base URL")
        dest = Destination(name=str(name), kind=kind, url=url.rstrip("/"))
    else:
        raise ConfigError(f"{where}kind={kind!r} must be 'dimse' (C-STORE) or 'stow' (STOW-RS)")
    _no_more(data, f"[[destination]] {name}", ["name", "kind", "ae_title", "host", "port", "url"])
    return dest


def _cluster(data: dict[str, Any], run: RunConfig) -> ClusterConfig:
    """``[cluster]``: address (required), workers (1), threads (the run's threads, else 1), bind (none)."""
    address = data.pop("address", None)
    if not isinstance(address, str):
        raise ConfigError("[cluster] address must be 'auto' or the Ray head's \"host:port\"")
    workers = _number(data, "workers", 1, "[cluster] ", low=1, integer=True)
    threads = _number(data, "threads", run.threads or 1, "[cluster] ", low=1, integer=True)
    bind = data.pop("bind", None)
    if bind is not None and not isinstance(bind, str):
        raise ConfigError("[cluster] bind must be this machine's IPv4 address in the cluster, as a string")
    _no_more(data, "[cluster]", ["address", "workers", "threads", "bind"])
    gpu = run.provider in (Provider.CUDA, Provider.TENSORRT)
    return ClusterConfig(address=address, workers=int(workers), threads=int(threads), gpu=gpu, bind=bind)


def _delivery(data: dict[str, Any]) -> Delivery:
    where = "[delivery] "
    delivery = Delivery(
        attempts=_number(data, "attempts", 5, where, low=1, integer=True),
        backoff_s=float(_number(data, "backoff_s", 5.0, where, low=0, integer=False)),
        max_backoff_s=float(_number(data, "max_backoff_s", 300.0, where, low=0, integer=False)),
        timeout_s=float(_number(data, "timeout_s", 30.0, where, low=0.1, integer=False)),
    )
    _no_more(data, "[delivery]", [f.name for f in fields(Delivery)])
    return delivery
