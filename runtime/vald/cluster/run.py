"""``vald run --cluster``: the Ray executor for a run's settings, and the settings hash the driver publishes under.

The driver verifies the engine folder against its manifest for the settings hash but opens no session: the
workers open the engines (each on its node) and refuse to start if they would hash otherwise.
"""

from __future__ import annotations

from pathlib import Path

from vald.cluster.ray_executor import ClusterConfig, RayExecutor
from vald.cluster.worker import WorkerSpec, with_threads
from vald.config import OutputOptions, Provider, RunConfig


def cluster_config(address: str, workers: int, cfg: RunConfig, bind: str | None = None) -> ClusterConfig:
    """Workers of ``cfg.threads`` threads (1 when 0: a worker's thread count must not depend on its node)."""
    return ClusterConfig(
        address=address,
        workers=workers,
        threads=cfg.threads or 1,
        gpu=cfg.provider in (Provider.CUDA, Provider.TENSORRT),
        bind=bind,
    )


def open_cluster(
    engines: Path, cfg: RunConfig, options: OutputOptions, cluster: ClusterConfig
) -> tuple[RayExecutor, str, str]:
    """Join the cluster and start its workers; the executor, the settings hash and the model's sha256."""
    from vald.app import attribution_settings_sha256, describe_engines

    cfg = with_threads(cfg, cluster.threads)
    provenance = describe_engines(engines, cfg)
    settings_sha = attribution_settings_sha256(cfg, provenance, options)
    spec = WorkerSpec(engines.resolve(), cfg, options, settings_sha)
    return RayExecutor(spec, cluster), settings_sha, str(provenance["model_sha256"])
