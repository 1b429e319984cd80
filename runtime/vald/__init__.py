"""vald: visual attribution by latent diffusion for chest radiographs (research runtime)."""

from vald.privacy import quiet_dependencies

__version__ = "0.1.0"

quiet_dependencies()  # before any library vald uses can start its telemetry (see vald.privacy)
