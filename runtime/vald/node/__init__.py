"""vald as a DICOM node: receive radiographs (C-STORE SCP), process them as ``vald run`` does, send results on.

``scp`` receives into the durable ``spool``; ``worker`` runs the same use case as ``vald run`` on what the
spool holds and hands results to ``send`` (C-STORE SCU, STOW-RS); ``service`` wires them together for
``vald serve``.  Settings live in one TOML file (``config``).
"""
