"""The training recipe ``medcbir train`` and the demo use by default (README, "Training recipe").

Chosen by ``benchmarks/quality.py`` (phantom, patient-disjoint) and on real MR across subjects:
SimCLR whose positives are the archive augmentations of a slice *and* slices of other series
(other patients) at the same relative position in the same plane, every pair of in-batch views at
the same anatomy counted as positives (positional contrastive learning, Zeng et al. 2021, in the
supervised-contrastive form of Khosla et al. 2020). Kept free of torch imports so the CLI can
show it as its defaults without loading a network library.
"""

RECIPE = {"method": "simclr", "augment": "archive", "position_delta": 0.05, "position_p": 1.0}
