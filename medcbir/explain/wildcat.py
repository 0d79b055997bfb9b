"""WILDCAT class maps as an explanation (Durand et al. 2017; the trainable saliency of Aggarwal et al.).

The map of an image is its WILDCAT class map (:mod:`medcbir.encoders.wildcat`: the transfer
layer's M maps of one class, averaged) for a chosen class, bilinearly upsampled to the input
resolution. It needs an encoder fine-tuned with the head (``medcbir finetune ... --head
wildcat``). Which class:

- ``classes`` given (a class name or index, or one per image): that class ("for a given class");
- no ``targets`` (own-embedding explanation): the class the head predicts for the image;
- ``targets`` (explain a match): the class predicted *for the target*, i.e. for the query. When
  the target is the embedding of an image in the batch (``medcbir explain``: the query is row 0)
  that image's predicted class is used; otherwise (``explain-eval``'s query targets, whose query
  images are not in the batch) the class whose prototype (the head's mean training embedding
  of the class) is nearest to the target embedding.

The map is not a gradient: one forward gives every class's map, and it does not depend on the
target embedding beyond the choice of class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.errors import ConfigError
from medcbir.explain.base import check_images, evaluating, to_heatmap

#: cosine above which a target embedding is taken to be that of a batch image
SAME_EMBEDDING = 1.0 - 1e-5


def _given_classes(head, classes, n: int) -> torch.Tensor:
    if isinstance(classes, (str, int)) or (isinstance(classes, torch.Tensor) and classes.ndim == 0):
        return torch.full((n,), head.class_index(classes), dtype=torch.long)
    picked = [head.class_index(c) for c in classes]
    if len(picked) not in (1, n):
        raise ConfigError(f"classes must be one class or one per image ({n}), got {len(picked)}")
    return torch.tensor(picked * (n if len(picked) == 1 else 1), dtype=torch.long)


def target_classes(head, scores: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The class of each target embedding: that of the batch image it is the embedding of, else the nearest prototype's."""
    targets = F.normalize(torch.as_tensor(targets, dtype=torch.float32, device=embeddings.device).reshape(-1, embeddings.shape[1]), dim=1)
    if targets.shape[0] == 1:
        targets = targets.expand(embeddings.shape[0], -1)
    if targets.shape[0] != embeddings.shape[0]:
        raise ConfigError(f"targets must be B×D (B={embeddings.shape[0]}) or 1×D, got {tuple(targets.shape)}")
    predicted = scores.argmax(dim=1)
    similarity = targets @ embeddings.T  # target i vs batch image j
    best, which = similarity.max(dim=1)
    prototypes = head.prototypes.to(embeddings.device)
    if float(prototypes.abs().sum()) == 0:
        by_prototype = torch.full_like(predicted, -1)
    else:
        by_prototype = (targets @ F.normalize(prototypes, dim=1).T).argmax(dim=1)
    out = torch.where(best >= SAME_EMBEDDING, predicted[which], by_prototype)
    if bool((out < 0).any()):
        raise ConfigError("the WILDCAT head has no class prototypes to name a target's class; pass the class (--wildcat-class)")
    return out


def wildcat(encoder: nn.Module, images: torch.Tensor, targets: torch.Tensor | None = None, classes=None, relu: bool = False) -> torch.Tensor:
    """B×H×W WILDCAT class maps.

    Args:
        encoder: an encoder carrying a WILDCAT head (``encoder.wildcat``).
        images: B×C×H×W.
        targets: B×D (or 1×D) target embeddings, ``None`` = each image's own (see the module docstring).
        classes: a class (name or index) or one per image; overrides the choice by targets.
        relu: keep only positive evidence.
    """
    from medcbir.encoders.module import features_and_embeddings
    from medcbir.encoders.wildcat import head_of

    images = check_images(images)
    head = head_of(encoder)
    with evaluating(encoder), torch.no_grad():
        features, embeddings = features_and_embeddings(encoder, images)
        scores, maps = head(features)
        if classes is not None:
            chosen = _given_classes(head, classes, images.shape[0]).to(maps.device)
        elif targets is None:
            chosen = scores.argmax(dim=1)
        else:
            chosen = target_classes(head, scores, embeddings, targets)
        picked = maps[torch.arange(maps.shape[0], device=maps.device), chosen]
        if relu:
            picked = picked.clamp(min=0)
    return to_heatmap(picked, tuple(images.shape[-2:]))
