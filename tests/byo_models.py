"""Users' own models, randomly initialised and saved locally in each format an encoder spec reads.

Tiny on purpose (the suite runs on 2 cores): a MONAI DenseNet121 with a small config (class path +
kwargs + a state-dict file), a Hugging Face ResNet with safetensors weights and a ViT, both saved
with ``save_pretrained``, an ONNX export with a ``.onnx.json`` sidecar, and a TorchScript file.
Each entry of :func:`write_models` is what ``--encoder`` takes, plus the bare model to compare
with.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

SIZE = 64
DENSENET_KWARGS = {"spatial_dims": 2, "in_channels": 1, "out_channels": 16, "init_features": 8, "growth_rate": 8,
                   "block_config": [2, 2, 2, 2], "bn_size": 2}
VIT_MEAN, VIT_STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


class SmallConvNet(nn.Module):
    """A two-layer CNN with a B×16×h×w output (the ONNX and TorchScript models)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def hf_resnet(folder: Path) -> Path:
    from transformers import ResNetConfig, ResNetModel

    quiet_transformers()
    torch.manual_seed(1)
    ResNetModel(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                             image_size=SIZE)).save_pretrained(folder)
    # As a Hugging Face image processor describes its input (hf:DIR reads size, mean and std here).
    write_json(folder / "preprocessor_config.json", {"do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
                                                     "image_std": [0.229, 0.224, 0.225], "size": {"height": SIZE, "width": SIZE}})
    return folder


def hf_vit(folder: Path) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(2)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=SIZE,
                       patch_size=16, num_channels=3)).save_pretrained(folder)
    return folder


def write_models(root: Path) -> dict[str, dict]:
    """Every kind, saved under ``root``: ``{name: {"encoder": --encoder argument, "folder": what to copy to move it,
    "model": bare model, "weights": its weights file, ...}}``."""
    from monai.networks.nets import DenseNet121

    root.mkdir(parents=True, exist_ok=True)
    models: dict[str, dict] = {}

    torch.manual_seed(0)
    densenet = DenseNet121(**DENSENET_KWARGS).eval()
    torch.save(densenet.state_dict(), root / "densenet.pt")
    spec = write_json(root / "densenet.json", {"kind": "torch", "model": "monai.networks.nets.DenseNet121", "kwargs": DENSENET_KWARGS,
                                                "weights": "densenet.pt", "input": {"size": SIZE}})
    models["densenet"] = {"encoder": str(spec), "folder": root, "model": densenet, "weights": root / "densenet.pt", "channels": 1, "mean": [0.0], "std": [1.0]}

    resnet_dir = hf_resnet(root / "hf-resnet")
    from transformers import ResNetModel, ViTModel

    models["hf-resnet"] = {"encoder": f"hf:{resnet_dir}", "folder": resnet_dir, "model": ResNetModel.from_pretrained(resnet_dir).eval(),
                           "weights": resnet_dir / "model.safetensors", "channels": 3,
                           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

    vit_dir = hf_vit(root / "hf-vit")
    spec = write_json(root / "vit.json", {"kind": "huggingface", "model": "hf-vit", "output": "cls",
                                          "input": {"mean": VIT_MEAN, "std": VIT_STD}})
    models["hf-vit"] = {"encoder": str(spec), "folder": root, "model": ViTModel.from_pretrained(vit_dir).eval(), "weights": vit_dir / "model.safetensors",
                        "channels": 3, "mean": VIT_MEAN, "std": VIT_STD}

    torch.manual_seed(3)
    net = SmallConvNet().eval()
    onnx_path = root / "convnet.onnx"
    torch.onnx.export(net, (torch.rand(2, 3, SIZE, SIZE),), str(onnx_path), input_names=["x"], output_names=["features"],
                      dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}}, opset_version=17, dynamo=False)
    write_json(Path(str(onnx_path) + ".json"), {"input": {"size": SIZE, "channels": 3, "mean": [0.5], "std": [0.5]}})
    models["onnx"] = {"encoder": str(onnx_path), "folder": root, "model": net, "weights": onnx_path, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}

    torch.manual_seed(4)
    scripted = SmallConvNet().eval()
    torch.jit.trace(scripted, torch.rand(1, 3, SIZE, SIZE)).save(str(root / "convnet.ts"))
    spec = write_json(root / "torchscript.json", {"kind": "torchscript", "model": "convnet.ts", "input": {"size": SIZE, "channels": 3}})
    models["torchscript"] = {"encoder": str(spec), "folder": root, "model": scripted, "weights": root / "convnet.ts", "channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3}
    return models


def reference_vectors(entry: dict, images: torch.Tensor, output: str = "pooled") -> torch.Tensor:
    """A direct forward of the bare model on medcbir's preprocessed images (B×1×S×S in [0, 1]):
    the window repeated to the model's channels, normalised by hand, the output reduced to one
    vector per image, L2-normalised. What the encoder's embeddings must equal."""
    mean = torch.tensor(entry["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(entry["std"]).view(1, -1, 1, 1)
    x = (images.repeat(1, entry["channels"], 1, 1) - mean) / std
    model = entry["model"]
    with torch.no_grad():
        if entry["encoder"].startswith("hf:"):
            out = model(pixel_values=x).pooler_output.flatten(1)
        elif "vit" in entry["encoder"]:
            out = model(pixel_values=x).last_hidden_state[:, 0]
        else:
            out = model(x)
            out = out.mean(dim=(2, 3)) if out.ndim == 4 else out
    return torch.nn.functional.normalize(out.float(), dim=1)


def changed_copy(entry: dict, name: str, root: Path) -> str:
    """A copy of the model's files with one weight changed; the ``--encoder`` argument of the copy."""
    src = Path(entry["folder"])
    dst = root / "changed"
    shutil.copytree(src, dst)
    weights = dst / Path(entry["weights"]).relative_to(src)
    if name.startswith("hf-"):
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights))
        key = sorted(state)[0]
        state[key] = state[key].clone()
        state[key].view(-1)[0] += 0.5
        save_file(state, str(weights), metadata={"format": "pt"})
    elif name == "densenet":
        state = torch.load(weights, weights_only=True)
        key = next(k for k, v in state.items() if v.is_floating_point())
        state[key].view(-1)[0] += 0.5
        torch.save(state, weights)
    elif name == "onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(weights))
        tensor = model.graph.initializer[0]
        array = numpy_helper.to_array(tensor).copy()
        array.reshape(-1)[0] += 0.5
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
        onnx.save(model, str(weights))
    else:
        module = torch.jit.load(str(weights))
        with torch.no_grad():
            next(iter(module.parameters())).view(-1)[0] += 0.5
        module.save(str(weights))
    arg = entry["encoder"]
    if arg.startswith("hf:"):
        return f"hf:{dst}"
    return str(dst / Path(arg).name)
