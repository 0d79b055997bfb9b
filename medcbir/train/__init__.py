"""medcbir.train: training encoders (self-supervised methods, the trainer, views, the HU dataset,
WILDCAT fine-tuning, ONNX export).

One module per job; this package imports none of them, so :mod:`medcbir.train.recipe` (the
default recipe the CLI shows) loads without torch. What an encoder is, how it is saved and how it
runs is :mod:`medcbir.encoders`.

- :mod:`~medcbir.train.loop`: the epoch loop every run shares (seeded batch order, checkpoint,
  log, bit-for-bit resume, the SGD + cosine recipe);
- :mod:`~medcbir.train.trainer`: ``TrainConfig``, ``train`` (self-supervised runs);
- :mod:`~medcbir.train.batches`: what a method trains on (single images with optional partners,
  runs of slices), chosen by the method's ``batches``;
- :mod:`~medcbir.train.methods`: ``METHODS``, ``build_method`` (SimCLR, MoCo, SimSiam,
  rotation, sequence sorting: one module each);
- :mod:`~medcbir.train.views`: augmentations (``VIEWS``, ``make_views``, the archive augment);
- :mod:`~medcbir.train.dataset`: the HU cache and the patient split;
- :mod:`~medcbir.train.finetune`: ``FinetuneConfig``, ``finetune`` (the WILDCAT head);
- :mod:`~medcbir.train.onnx_export`: ``export_onnx`` with its parity check;
- :mod:`~medcbir.train.recipe`: ``RECIPE``, the default training recipe.
"""
