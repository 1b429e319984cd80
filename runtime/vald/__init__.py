"""vald: visual attribution by latent diffusion for chest radiographs (research runtime)."""

__version__ = "0.1.0"
