"""medcbir.encoders: what an encoder is, how it is stored, and how it runs.

An encoder maps a preprocessed image to an L2-normalised embedding. It is a network (described by
an architecture record) plus the preprocessing it expects; both are fingerprinted, and an index
built with one fingerprint refuses any other. Indexer, engine, explain and pacs reach encoders
through this package only; ``medcbir.train`` trains them.

One module per job (this package imports none of them, so the torch-free ones stay torch-free):

- :mod:`~medcbir.encoders.names`: the built-in names (``default``, ``default-v1``, ``default-v2``,
  ``random:SEED``, ``thumbnail:N``, ``hog``, ``classic``) and ``is_builtin``. No torch.
- :mod:`~medcbir.encoders.architecture`: the architecture record (``make_arch``), backbone
  names and dimensions. No torch.
- :mod:`~medcbir.encoders.preprocessing`: the default preprocessing of new encoders. No torch.
- :mod:`~medcbir.encoders.compat`: ``check_compatible`` and ``describe``. No torch.
- :mod:`~medcbir.encoders.backbones`, :mod:`~medcbir.encoders.classic`: the networks (MONAI
  ResNets with GeM pooling, the thumbnail, HOG and the classic descriptor).
- :mod:`~medcbir.encoders.fingerprint`: ``compute_fingerprint``.
- :mod:`~medcbir.encoders.module`: ``EncoderModule`` (the torch module) and the functions that
  build one (``new_encoder_module``, ``thumbnail_encoder_module``, ``classic_encoder_module``).
- :mod:`~medcbir.encoders.heads`: the hook task heads attach through;
  :mod:`~medcbir.encoders.wildcat`: the WILDCAT head.
- :mod:`~medcbir.encoders.checkpoint`: ``save_checkpoint``, ``read_checkpoint``,
  ``module_from_record``.
- :mod:`~medcbir.encoders.builtin`: ``builtin_encoder_module`` (and the cached earlier defaults).
- :mod:`~medcbir.encoders.onnx_format`: ONNX graphs and their medcbir metadata.
- :mod:`~medcbir.encoders.runtime`: ``open_encoder`` → the runtime ``Encoder`` (numpy in and out;
  torch or ONNX Runtime), ``load_encoder_module`` → the torch module, ``open_for_index``.
- :mod:`~medcbir.encoders.embedding`: ``embed_archive``, an archive's embeddings with their keys;
  ``save_embeddings`` (``.npz`` / ``.parquet``).
- Users' own models: :mod:`~medcbir.encoders.spec` (encoder specs, ``hf:DIR``, sidecars; no
  torch), :mod:`~medcbir.encoders.external_models` (loading each kind from local files),
  :mod:`~medcbir.encoders.external` (``ExternalEncoderModule``: input adapter, model, one vector),
  :mod:`~medcbir.encoders.token_grid` (the feature layer, a ViT's tokens as a grid),
  :mod:`~medcbir.encoders.external_onnx` (an ONNX model behind the same adapter).
"""
