"""``medcbir encoder-spec``: write the spec that makes a user's own model a medcbir encoder."""

from __future__ import annotations

import json
from pathlib import Path

import click

from medcbir.encoders.spec import FIELDS, KINDS, spec_file_record, with_model_defaults
from medcbir.fsutil import atomic_path


def _numbers(value: str | None, name: str):
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers", param_hint=name) from None


def _kwargs(value: str | None) -> dict | None:
    if value is None:
        return None
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc})", param_hint="--kwargs") from None
    if not isinstance(data, dict):
        raise click.BadParameter("a JSON object, e.g. '{\"spatial_dims\": 2}'", param_hint="--kwargs")
    return data


@click.command("encoder-spec", context_settings={"max_content_width": 120})
@click.option("--kind", required=True, type=click.Choice(KINDS), help=FIELDS["kind"])
@click.option("--model", required=True, help=FIELDS["model"])
@click.option("--class", "hf_class", default=None, help=FIELDS["class"])
@click.option("--kwargs", default=None, metavar="JSON", help=FIELDS["kwargs"])
@click.option("--weights", default=None, help=FIELDS["weights"])
@click.option("--size", type=int, default=None, help="input.size: " + FIELDS["input.size"])
@click.option("--channels", type=int, default=None, help="input.channels: " + FIELDS["input.channels"])
@click.option("--mean", default=None, metavar="M[,M...]", help="input.mean: " + FIELDS["input.mean"])
@click.option("--std", default=None, metavar="S[,S...]", help="input.std: " + FIELDS["input.std"])
@click.option("--windows", default=None, metavar="POLICY[;POLICY...]", help=FIELDS["windows"] + " Channels separated by ';'.")
@click.option("--crop", type=click.Choice(["body", "none"]), default=None, help=FIELDS["crop"])
@click.option("--fov-mm", type=float, default=None, help="fov_mm: " + FIELDS["fov_mm"] + " 0 = fit the body box.")
@click.option("--output", default=None, help=FIELDS["output"])
@click.option("--feature-layer", default=None, help="feature_layer: " + FIELDS["feature_layer"])
@click.option("--prefix-tokens", type=int, default=None, help="prefix_tokens: " + FIELDS["prefix_tokens"])
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The spec file to write (JSON; paths in it relative to its folder). Sidecar: name it MODEL.onnx.json beside MODEL.onnx.")
@click.option("--json", "as_json", is_flag=True, help="Print the spec written (and the checked encoder) as JSON.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Open the encoder once (one forward of a small batch) and print its dimension, fingerprint and feature layer.")
def encoder_spec(kind, model, hf_class, kwargs, weights, size, channels, mean, std, windows, crop, fov_mm, output, feature_layer,
                 prefix_tokens, out, check, as_json=False) -> None:
    """Write an encoder spec (--out) for your own model; then use it as --encoder everywhere.

    \b
    The spec is a JSON object with the fields kind, model, class, kwargs, weights,
    input {size, channels, mean, std}, windows, crop, fov_mm, output, feature_layer and
    prefix_tokens; each option below writes one (README, "Bring your own encoder").
    \b
    Everything loads from local files: a Hugging Face model is a folder saved with
    save_pretrained (config.json + model.safetensors or pytorch_model.bin [+ preprocessor_config.json]);
    a hub name without a local folder is refused. Unset fields take the model folder's own values
    (input size, mean/std from preprocessor_config.json) or medcbir's defaults.
    \b
    Shortcuts without a spec file: --encoder hf:DIR (a Hugging Face folder), and --encoder
    model.onnx with the spec's other fields in model.onnx.json beside it.
    \b
    What works per kind: index, search, evaluate, embed and RELAX/occlusion explanations for
    every kind; gradient methods, Grad-CAM-style methods, finetune --head wildcat and train --init
    for huggingface, torch and timm; gradient methods (not Grad-CAM: no hookable layers) for
    torchscript. timm needs the timm package (and torchvision), absent from medcbir's setup.
    """
    data = {
        "kind": kind,
        "model": model,
        "class": hf_class,
        "kwargs": _kwargs(kwargs),
        "weights": weights,
        "input": {k: v for k, v in {"size": size, "channels": channels, "mean": _numbers(mean, "--mean"), "std": _numbers(std, "--std")}.items() if v is not None},
        "windows": [w.strip() for w in windows.split(";") if w.strip()] if windows else None,
        "crop": crop,
        "output": output,
        "feature_layer": feature_layer,
        "prefix_tokens": prefix_tokens,
    }
    if fov_mm is not None:
        data["fov_mm"] = fov_mm or None
    data = {k: v for k, v in data.items() if v not in (None, {}) or k == "fov_mm"}
    out = out.expanduser().absolute()
    spec = with_model_defaults(data, Path.cwd(), str(out))  # paths as given, relative to here
    record = spec_file_record(spec, out.parent)
    checked = None
    if check:
        from medcbir.encoders.runtime import open_encoder

        encoder = open_encoder(spec)
        layer = getattr(getattr(encoder, "module", None), "backbone", None)
        layer_name = getattr(layer, "layer_name", None)
        checked = {"fingerprint": encoder.fingerprint, "dim": encoder.dim, "input": spec.preprocessing().describe(), "feature_layer": layer_name}
        if not as_json:
            click.echo(f"encoder {encoder.fingerprint[:12]}: {spec.describe()}, {encoder.dim}-d, input {spec.preprocessing().describe()}"
                       + (f", feature layer {layer_name}" if layer_name else ""))
    out.parent.mkdir(parents=True, exist_ok=True)

    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if as_json:
        click.echo(json.dumps({"spec": str(out), "record": record, "encoder": checked}, default=str))
        return
    click.echo(f"wrote {out}")
