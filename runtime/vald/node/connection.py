"""What happened on one DICOM connection, summarised in the single log line written when it closes.

The line names the peer's address and the AE titles it used, never anything from a data set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

# (source, diagnostic) of an A-ASSOCIATE-RJ, as PS3.8 9.3.4 words them
REJECT_REASONS = {
    (0x01, 0x01): "no reason given",
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognised (not in allowed_calling_ae_titles)",
    (0x01, 0x07): "called AE title not recognised (not this node's ae_title)",
    (0x02, 0x01): "no reason given",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "local limit exceeded",
}


@dataclass
class Connection:
    """One connection's story so far: filled in by the receiver's event handlers, logged once at close."""

    peer: str
    calling: str = ""
    called: str = ""
    outcome: str = ""  # "", "association accepted" or "rejected: <reason>"
    released: bool = False
    aborted: str = ""  # "", "by the peer" or "by this node"
    stored: int = 0
    note: str = ""
    logged: bool = False

    def summary(self) -> tuple[int, str]:
        """(log level, text) for the closing line."""
        titles = f" ({self.calling} -> {self.called})" if self.calling or self.called else ""
        stored = f", {self.stored} instance(s) stored" if self.stored else ""
        note = f" ({self.note})" if self.note else ""
        if not self.outcome:
            if self.aborted:
                return logging.WARNING, f"invalid data before an association was agreed; A-ABORT sent{titles}"
            return logging.WARNING, f"no valid association request{titles}"
        if self.outcome.startswith("rejected"):
            return logging.WARNING, f"association{titles} {self.outcome}"
        if self.released and not self.aborted:
            return logging.INFO, f"association{titles} released{stored}"
        if self.aborted:
            return logging.WARNING, f"association{titles} aborted {self.aborted}{note}{stored}"
        return logging.WARNING, f"association{titles} dropped without release{stored}"
