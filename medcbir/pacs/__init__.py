"""medcbir.pacs: medcbir inside a PACS (Orthanc plugin) and PACS archives for the indexer (DICOMweb).

Modules (nothing is imported here: the plugin script loads inside Orthanc's embedded interpreter
and must stay free of numpy/torch):

- ``orthanc_plugin``  the ``"PythonScript"`` Orthanc loads: change callback → durable queue,
  ``/medcbir/{status,search,explain,reindex}`` routes forwarded to the worker process;
- ``worker``          the worker process: fetch → decode → embed → commit, searches, explanations;
- ``worker_link``     starting, reaching and stopping the worker (loopback socket, HMAC key);
- ``request_body``    the envelope checks on Orthanc's thread (size, content type, origin, JSON
  nesting) and the body's parse in the worker;
- ``request_rules``   the keys each route accepts and their bounds;
- ``deadline``        how long the worker may still work for a request;
- ``query_dicom``     a query's DICOM checked from its header and cut to its first frame;
- ``explain_worker``  the explanation process and its bounded queue;
- ``instance_queue``  the SQLite queue of instances waiting to be indexed;
- ``orthanc_config``  the ``"Medcbir"`` config section and ``medcbir orthanc-config``'s output;
- ``orthanc_rest``    a small client of Orthanc's REST API;
- ``orthanc_server``  running a private Orthanc and pushing files with ``storescu``;
- ``explain_route``   the explain route (the explain helper's runner fed from Orthanc);
- ``dicomweb``        :class:`DicomwebSource`, a ``Source`` over QIDO-RS/WADO-RS.

No module here may be named like a top-level module (``orthanc``, ``queue``...): Orthanc puts
this folder on ``sys.path`` when it loads the plugin script.
"""
