"""DICOM in and out: reading CR/DX radiographs for display, writing derived objects (needs ``vald[dicom]``)."""
