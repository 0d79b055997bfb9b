"""The DICOM objects medcbir writes, one module per object type (all with highdicom/pydicom).

- :mod:`~medcbir.imaging.dicom_out.common`: what every object shares: the ``medcbir`` mark
  (Manufacturer and file-meta ImplementationVersionName, so the indexer skips the objects as
  ``derived-by-medcbir``), :class:`~medcbir.imaging.dicom_out.common.Reference` to a source
  instance, reading a source's header, saving to a folder or to bytes;
- :mod:`~medcbir.imaging.dicom_out.kos`: a search result as a Key Object Selection document;
- :mod:`~medcbir.imaging.dicom_out.secondary_capture`: a heatmap overlay burned into its
  source image, as an RGB Secondary Capture;
- :mod:`~medcbir.imaging.dicom_out.parametric_map`: raw heatmap values as a float Parametric Map.

The callers assemble them: :mod:`medcbir.engine.dicom_kos` (``search --dicom-out``),
:mod:`medcbir.explain.dicom_maps` (``explain --dicom-out``) and :mod:`medcbir.pacs.dicom_store`
(storing them into Orthanc).
"""
