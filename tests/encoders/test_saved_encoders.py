"""Encoders saved by an earlier medcbir keep loading, with the fingerprints their indexes record.

``data/thumbnail8-wildcat.pt`` and ``.onnx``: the ``thumbnail:8`` encoder with a two-class WILDCAT
head, saved and exported by medcbir 0.1.0 at commit 47fd36a, when the encoder code lived in
``medcbir.train``. The figures below were printed by that commit on the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medcbir.encoders.runtime import load_encoder_module
from medcbir.encoders.runtime import open_encoder
from medcbir.encoders.wildcat import predict

DATA = Path(__file__).parent / "data"

#: What indexes built with the built-in encoders record (medcbir 0.1.0, commit 47fd36a).
BUILTIN_FINGERPRINTS = {
    "default": "70d03176db65a391ce13d6e43736971d65009bf2346b3ad28cb77e012f85f329",
    "classic": "70d03176db65a391ce13d6e43736971d65009bf2346b3ad28cb77e012f85f329",
    "default-v1": "becbd04b664fe980764eda5be8666e7f5689396b255fc51e3313ee5fd76a969c",
    "default-v2": "1607ac7d6d3195ff864595f6b77683554abc8b68119c134227c3e2de61f21e8d",
    "random": "1607ac7d6d3195ff864595f6b77683554abc8b68119c134227c3e2de61f21e8d",
    "random:3": "b84158236eacad32896c01cc41c8f3f10ce8211b0947502dd8788856dc574902",
    "thumbnail": "0130bff836613e0bde97e94a58b23f7a36ff78cb0d4ad5198d66d91cee4f3ad3",
    "thumbnail:8": "2c368a930d88e1ee51bec4790065c78e188c030e7d512e8aaac2b2401e58eaab",
    "hog": "52af1740468aafe8a38260c3d39485bdac82a70602f0a7661dea4fac3bcc4274",
}


def _images() -> torch.Tensor:
    ramp = torch.linspace(0, 1, 224 * 224).reshape(1, 1, 224, 224)
    return torch.cat([ramp, ramp.flip(-1).transpose(-1, -2)])


@pytest.mark.parametrize("name", sorted(BUILTIN_FINGERPRINTS))
def test_builtin_encoders_keep_their_fingerprints(name):
    assert open_encoder(name).fingerprint == BUILTIN_FINGERPRINTS[name]


def test_a_checkpoint_saved_earlier_loads_with_its_head():
    module = load_encoder_module(DATA / "thumbnail8-wildcat.pt")
    assert module.fingerprint == BUILTIN_FINGERPRINTS["thumbnail:8"]
    assert module.wildcat.classes == ["liver", "kidney"]
    scores, maps = predict(module, _images())
    np.testing.assert_allclose(scores.numpy(), [[0.157097, 0.088088], [0.157097, 0.088088]], atol=1e-5)
    assert maps.shape == (2, 2, 224, 224)


def test_an_onnx_export_made_earlier_opens_with_its_outputs():
    encoder = open_encoder(DATA / "thumbnail8-wildcat.onnx")
    assert encoder.kind == "onnx" and encoder.fingerprint == BUILTIN_FINGERPRINTS["thumbnail:8"]
    images = _images().numpy()
    np.testing.assert_allclose(encoder.embed(images)[:, :3], [[0.0131325, 0.0132535, 0.0133746], [0.0139799, 0.0410965, 0.0682132]], atol=1e-6)
    embeddings, scores, maps = encoder.session.run(None, {"images": images})
    assert embeddings.shape == (2, 64) and maps.shape == (2, 2, 224, 224)
    np.testing.assert_allclose(scores, [[0.157097, 0.088088], [0.157097, 0.088088]], atol=1e-5)
