"""Which TensorRT engine set a run loads, read from the manifest's ``tensorrt`` section (no TensorRT needed).

``vald build`` records each engine set it builds under a name such as ``fp16-static-512-inversion``: the
build machine's identity, the request (precision, profile, size, mode), the rebuild command, and per
component the plan file, its sha256 and the precision it was actually built in (an FP16 request may
have kept a component in FP32 after the build-time check).  A run picks the set built for its precision,
mode and the model's image size, a static set before a dynamic one; when there is none the error lists
the sets that exist and the command that builds the missing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vald.config import RunConfig
from vald.errors import EngineMismatchError
from vald.manifest import MANIFEST_NAME, Manifest
from vald.sessions.tensorrt_identity import EngineIdentity
from vald.spec import Component

PROFILE_ORDER = ("static", "dynamic")  # preferred first: static shapes run faster and allow CUDA graphs


@dataclass(frozen=True)
class EnginePlan:
    """One component's serialized engine as the manifest lists it."""

    file: str  # relative to the engine folder
    sha256: str
    precision: str  # what it was built in (fp16, or fp32 where the FP16 check failed)


@dataclass(frozen=True)
class EngineSet:
    """A complete set of engines for one (precision, profile, size, mode)."""

    name: str
    profile: str
    identity: EngineIdentity
    rebuild: str
    plans: dict[Component, EnginePlan]

    def hashes(self) -> dict[str, str]:
        """Plan file -> sha256, for verification and provenance."""
        return {p.file: p.sha256 for p in self.plans.values()}


def build_command(manifest: Manifest, cfg: RunConfig) -> str:
    """The ``vald build`` command that makes the set ``cfg`` needs."""
    return (
        f"vald build {manifest.root} --precision {cfg.precision.value} --profile static "
        f"--size {manifest.model.image_size} --mode {cfg.mode.value}"
    )


def _parse(name: str, entry: Any) -> EngineSet:
    try:
        components = entry["components"]
        plans = {
            c: EnginePlan(str(components[c.value]["file"]), str(components[c.value]["sha256"]), str(p))
            for c in Component
            for p in [components[c.value].get("precision", entry["request"]["precision"])]
        }
        return EngineSet(
            name=name,
            profile=str(entry["request"]["profile"]),
            identity=EngineIdentity.from_json(entry["identity"]),
            rebuild=str(entry["rebuild"]),
            plans=plans,
        )
    except (KeyError, TypeError, AttributeError):
        raise EngineMismatchError(f"{MANIFEST_NAME} TensorRT engine set {name!r} is malformed; rebuild it") from None


def _matches(entry: Any, cfg: RunConfig, size: int) -> bool:
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict):
        return False
    return (request.get("precision"), request.get("size"), request.get("mode")) == (
        cfg.precision.value,
        size,
        cfg.mode.value,
    )


def select_engine_set(manifest: Manifest, cfg: RunConfig) -> EngineSet:
    """The engine set for ``cfg``; EngineMismatchError (one line, with the build command) when none fits."""
    sets = manifest.data.get("tensorrt", {})
    if not isinstance(sets, dict):
        raise EngineMismatchError(f"{MANIFEST_NAME} 'tensorrt' section is malformed; rebuild the engines")
    size = manifest.model.image_size
    fitting = [(name, entry) for name, entry in sets.items() if _matches(entry, cfg, size)]
    if not fitting:
        have = ", ".join(sorted(sets)) or "none"
        raise EngineMismatchError(
            f"{manifest.root} has no TensorRT engines for precision {cfg.precision.value}, mode {cfg.mode.value} "
            f"at {size} px (it has: {have}); build them: {build_command(manifest, cfg)}"
        )

    def rank(item: tuple[str, Any]) -> int:
        profile = item[1]["request"].get("profile")
        return PROFILE_ORDER.index(profile) if profile in PROFILE_ORDER else len(PROFILE_ORDER)

    name, entry = min(fitting, key=rank)
    return _parse(name, entry)
