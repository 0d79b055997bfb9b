"""Classical descriptors as encoders: HOG and thumbnail + HOG (the ``classic`` built-in)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from medcbir.encoders.architecture import hog_dim
from medcbir.encoders.classic import ClassicDescriptor, GradientHistogram
from medcbir.encoders.backbones import feature_layer
from medcbir.encoders.builtin import builtin_encoder_module
from medcbir.encoders.names import is_builtin


def test_a_vertical_edge_votes_in_the_horizontal_gradient_bin():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 16:] = 1.0  # a vertical edge: the gradient points along +x (orientation 0)
    hog = GradientHistogram(size=32, cell=8, bins=9)
    votes = {}
    hog.features.register_forward_hook(lambda m, i, o: votes.setdefault("cells", o.detach()))
    out = hog(x)
    cells = votes["cells"][0]  # bins × 4 × 4
    assert out.shape == (1, hog_dim(32, 8, 9))
    per_bin = cells.sum((1, 2))
    # orientation 0 lies between the centres of bins 8 (170°) and 0 (10°): split half and half
    assert per_bin[0] == pytest.approx(per_bin[8].item(), rel=1e-5)
    assert per_bin[1:8].abs().max() < 1e-4 * per_bin[0]
    # the edge's two columns of pixels fall in the cells of column 1 (x = 8..15) and 2 (x = 16..23)
    assert cells[:, :, (0, 3)].abs().max() < 1e-4 * cells.max()


def test_hog_ignores_intensity_scale_and_offset():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 128, 128)
    hog = GradientHistogram()
    ref = hog(x)
    torch.testing.assert_close(hog(3.0 * x + 0.5), ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(hog(x.flip(-1)), ref)


def test_blocks_are_unit_length_after_clipping():
    torch.manual_seed(1)
    out = GradientHistogram(size=64, cell=16, bins=9)(torch.rand(1, 1, 64, 64))
    blocks = out.reshape(1, 3, 3, 36)
    torch.testing.assert_close(blocks.norm(dim=-1), torch.ones(1, 3, 3), atol=1e-4, rtol=0)
    # L2-Hys recomputed independently (numpy) from the cell histograms the module hooks at `features`
    hog = GradientHistogram(size=64, cell=16, bins=9)
    seen = {}

    def keep(module, args, result):
        seen["cells"] = result.detach().numpy().copy()  # returns None: the output is left as it is

    hog.features.register_forward_hook(keep)
    torch.manual_seed(1)
    image = torch.rand(1, 1, 64, 64)
    image[..., 20:44, 30:] += 3.0  # a strong edge: some blocks have bins far above 0.2 before clipping
    out = hog(image).reshape(3, 3, 36).numpy()
    cells = seen["cells"][0]  # bins × 4 × 4
    clipped_any = False
    for i in range(3):
        for j in range(3):
            v = np.concatenate([cells[:, i + di, j + dj] for di in (0, 1) for dj in (0, 1)])
            v = v / np.sqrt((v * v).sum() + 1e-10)
            clipped_any |= bool(v.max() > 0.2)
            v = np.minimum(v, 0.2)
            v = v / np.sqrt((v * v).sum() + 1e-10)
            np.testing.assert_allclose(out[i, j], v, atol=1e-5)
    assert clipped_any  # the clipping step was exercised, not only the two normalisations


def test_classic_is_the_mean_of_thumbnail_and_hog_cosines():
    torch.manual_seed(2)
    a, b = torch.rand(1, 1, 224, 224), torch.rand(1, 1, 224, 224)
    classic = ClassicDescriptor()
    ea, eb = classic(a), classic(b)
    thumb = lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 16).flatten(1)  # noqa: E731
    hog = GradientHistogram()
    cos = lambda u, v: torch.nn.functional.cosine_similarity(u, v).item()  # noqa: E731
    assert float(ea.norm()) == pytest.approx(1.0, abs=1e-5)
    assert cos(ea, eb) == pytest.approx(0.5 * (cos(thumb(a), thumb(b)) + cos(hog(a), hog(b))), abs=1e-5)


def test_builtin_names_and_gradients_reach_the_input():
    for name in ("classic", "hog"):
        assert is_builtin(name)
        enc = builtin_encoder_module(name)
        assert enc.arch["backbone"] == name and enc.dim == enc.arch["dim"]
        x = torch.rand(2, 1, 224, 224, requires_grad=True)
        y = enc(x)
        assert y.shape == (2, enc.dim)
        y[:, :5].sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert feature_layer(enc.backbone) is enc.backbone.features
    assert builtin_encoder_module("classic").fingerprint == builtin_encoder_module("classic").fingerprint
    assert builtin_encoder_module("classic").fingerprint != builtin_encoder_module("hog").fingerprint


def test_area_matrix_is_area_resampling():
    from medcbir.encoders.classic import area_matrix

    torch.manual_seed(3)
    x = torch.rand(1, 1, 64, 64)
    a = area_matrix(64, 16)
    torch.testing.assert_close(a @ x @ a.t(), torch.nn.functional.interpolate(x, size=16, mode="area"))
    # non-integer ratios keep the mean and map a constant to itself
    b = area_matrix(224, 128)
    torch.testing.assert_close(b.sum(1), torch.ones(128))
    torch.testing.assert_close((b @ x.new_ones(224, 224) @ b.t()), torch.ones(128, 128))


def test_classic_exports_to_onnx_with_parity(tmp_path):
    from medcbir.encoders.checkpoint import save_checkpoint
    from medcbir.train.onnx_export import export_onnx

    checkpoint = save_checkpoint(tmp_path / "classic.pt", builtin_encoder_module("default"))
    report = export_onnx(checkpoint, tmp_path / "classic.onnx")
    assert report.dim == builtin_encoder_module("default").dim and report.max_abs_diff < 1e-4


def test_onnx_classic_is_finite_and_equal_on_flat_regions(tmp_path):
    # RELAX masks and body padding give flat regions (zero gradient); torch's atan2(0, 0) is 0, but an
    # exported atan2 that divides y by x gives NaN there, and the orientation bin a NaN index
    import onnxruntime as ort

    from medcbir.encoders.checkpoint import save_checkpoint
    from medcbir.train.onnx_export import export_onnx

    checkpoint = save_checkpoint(tmp_path / "classic.pt", builtin_encoder_module("default"))
    export_onnx(checkpoint, tmp_path / "classic.onnx")
    torch.manual_seed(3)
    x = torch.rand(3, 1, 224, 224)
    # exact zeros, as padding, clipped air and RELAX's masked-out cells give (near-constant non-zero regions are
    # ill-conditioned on any runtime: area-resampling rounding becomes their orientation, amplified by the block norm)
    x[0] = 0.0  # all flat
    x[1, :, :, :112] = 0.0  # half flat
    x[2, :, 50:150, 50:150] = 0.0  # a masked-out square
    session = ort.InferenceSession(str(tmp_path / "classic.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = builtin_encoder_module("default")(x).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-4)
