"""The one exception hierarchy of vald.

Every error a user can cause derives from :class:`ValdError`; the CLI prints
its message (no traceback) and exits non-zero.  Messages name the field, the
value and what was expected, and never carry patient data.
"""

from __future__ import annotations

import errno


class ValdError(Exception):
    """Base class of every error vald raises on purpose."""


class ValdWarning(UserWarning):
    """Something vald repaired or worked around on its own; the CLI prints it as one ``vald: warning:`` line."""


class CacheWarning(ValdWarning):
    """A cached derived file (an optimised graph) failed its check and is being rebuilt."""


class ConfigError(ValdError):
    """A setting is missing, unknown or out of range."""


class InputError(ValdError):
    """An input file (image, model folder) cannot be used."""


class ModelError(InputError):
    """A model folder is missing, malformed or internally inconsistent."""


class EngineMismatchError(ValdError):
    """Engine files do not match their manifest (hash, I/O names, shapes)."""


class BackendUnavailableError(ValdError):
    """The chosen backend or execution provider is not installed here."""


class ClusterError(ValdError):
    """A cluster cannot be joined, its workers cannot start, or none is left to run the inputs."""


class ParityError(ValdError):
    """An exported component disagrees with its PyTorch source beyond tolerance."""


class ExportError(ValdError):
    """``vald export`` failed in a library step (tracing, conversion, saving); the staging folder is removed."""


class OutputError(ValdError):
    """The output folder cannot be used or written (not a folder, no permission, no space left)."""


class OutputBusyError(OutputError):
    """Another vald process is writing into the same output folder."""


def os_cause(exc: OSError, device: str = "device") -> str:
    """The cause of a failed file operation in plain words, without the path (it may carry patient text)."""
    causes = {
        errno.ENOSPC: f"no space left on the {device}",
        errno.EDQUOT: f"disk quota exceeded on the {device}",
        errno.EROFS: f"the {device} is a read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EIO: f"input/output error on the {device}",
    }
    if exc.errno in causes:
        return causes[exc.errno]
    return (exc.strerror or type(exc).__name__).lower()
