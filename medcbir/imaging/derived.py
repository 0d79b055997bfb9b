"""The names :mod:`medcbir.pacs.dicom_store` imports from here, defined in :mod:`medcbir.imaging.dicom_out.common`."""

from medcbir.imaging.dicom_out.common import Reference, read_header, to_bytes

__all__ = ["Reference", "read_header", "to_bytes"]
