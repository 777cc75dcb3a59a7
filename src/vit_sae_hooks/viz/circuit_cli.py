"""``vit-sae circuit``: the feature circuit of one class's logit through SAEs at several hooks, over an image
folder, written as JSON and a picture, with its top paths printed."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from vit_sae_hooks.errors import ConfigError, DataError


def model_class_names(model) -> list[str] | None:
    """The class names a classifier model records (``cfg.extra["class_names"]``, from ``id2label`` for
    transformers classifiers), or None."""
    names = model.cfg.extra.get("class_names")
    return list(names) if names else None


def class_index(name: str, class_names: Sequence[str] | None, n_outputs: int) -> int:
    """The output index of class ``name``: its place in ``class_names``, or ``name`` itself as a number.

    Example:
        >>> class_index("triangle", ["circle", "square", "triangle"], 3)
        2
    """
    if class_names is not None and name in class_names:
        return list(class_names).index(name)
    if name.lstrip("-").isdigit() and 0 <= int(name) < n_outputs:
        return int(name)
    known = f"one of {list(class_names)[:12]}{' ...' if len(class_names) > 12 else ''}" if class_names else \
        "an output index (the model records no class names; pass --classes to name them)"
    raise ConfigError(f"--class {name!r} is not a class of this model; use {known} or an index below {n_outputs}")


def _classes_argument(text: str | None) -> list[str] | None:
    if text is None:
        return None
    path = Path(text).expanduser()
    names = path.read_text().splitlines() if path.is_file() else text.split(",")
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise ConfigError(f"--classes {text!r} holds no class names; pass 'a,b,c' or a file with one name per line")
    return names


def _metric(args: argparse.Namespace, model) -> tuple[Callable[[Tensor], Tensor], int]:
    """The metric (the mean logit of ``--class``) and that class's output index."""
    transform: Callable[[Tensor], Tensor] = lambda output: output
    names = _classes_argument(args.classes) or model_class_names(model)
    n_outputs = model.cfg.d_output or model.cfg.d_model
    if args.head:
        from vit_sae_hooks.evals.heads import ZeroShotHead

        head = ZeroShotHead.load(Path(args.head.removeprefix("zero-shot:")).expanduser())
        transform, names, n_outputs = head, head.class_names, head.text_embeddings.shape[0]
    index = class_index(args.class_name, names, n_outputs)

    def metric(output: Tensor) -> Tensor:
        return transform(output)[:, index].mean()

    return metric, index


def _images(args: argparse.Namespace, model, class_name: str) -> tuple[Tensor, Tensor, str, object]:
    """The images of class ``class_name``'s subfolder (or every image), the whole folder's images (thumbnails and
    the mean baseline), which was used, and the preprocessing."""
    from vit_sae_hooks.data import ImageFolder, preprocess_for

    preprocess = preprocess_for(model)
    folder = ImageFolder(args.images, transform=preprocess)
    indices = list(range(len(folder)))
    chosen = [i for i in indices if folder.classes[folder.samples[i][1]] == class_name] \
        if class_name in folder.classes else indices
    where = f"the {len(chosen)} images of {args.images}/{class_name}" if class_name in folder.classes \
        else f"the images of {args.images}"
    if not chosen:
        raise DataError(f"{args.images} holds no images; pass a folder of images (or of class subfolders)")
    chosen = chosen[: args.limit]
    everything = indices[: args.reference_limit]
    images = torch.stack([folder[i][0] for i in chosen])
    reference = torch.stack([folder[i][0] for i in everything])
    return images, reference, f"{where} (first {len(chosen)})", preprocess


def run_circuit(args: argparse.Namespace) -> int:
    """Compute the circuit, write ``circuit.json`` and ``circuit.png`` under ``--out`` and print its top paths."""
    from vit_sae_hooks.experiments import circuits
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.sae import SAE

    if not args.sae:
        raise ConfigError("pass SAEs at two or more hooks: --sae A --sae B [--sae C ...]")
    model = HookedViT.from_pretrained(args.model).eval()
    saes = [SAE.from_pretrained(name).eval() for name in args.sae]
    metric, index = _metric(args, model)
    images, reference, where, preprocess = _images(args, model, args.class_name)
    circuit = circuits.feature_circuit(
        model, saes, images, metric, baseline=args.baseline, method=args.method, steps=args.steps,
        positions=args.positions, top_nodes=args.top_nodes, node_threshold=args.node_threshold,
        reference_images=reference if args.baseline == "mean" else None,
    )
    out = Path(args.out)
    json_path = circuit.to_json(out / "circuit.json")
    png_path = out / "circuit.png"
    circuit.plot(png_path, images=reference, unnormalize=preprocess,
                 title=f"Feature circuit of '{args.class_name}' (output {index}) on {len(images)} images")
    steps = f", {args.steps} steps" if args.method == "integrated_gradients" else ""
    print(f"Circuit of the '{args.class_name}' logit (output {index}) on {where}; {args.method}{steps}, "
          f"baseline {args.baseline}: clean metric {circuit.clean_metric:.4g}")
    for hook in circuit.hooks:
        exact = circuit.clean_metric - circuit.baseline_metric[hook]
        total = float(circuit.node_attributions(hook).sum())
        print(f"  {hook}: attributions sum to {total:+.4g} (every node at its baseline: {exact:+.4g}); "
              f"kept {len(circuit.nodes_at(hook))} nodes")
    print("Top paths (strength = the weakest edge along the path):")
    for path, strength in circuit.top_paths(args.paths):
        print(f"  {strength:+.4g}  " + " -> ".join(node.name for node in path))
    print(f"Wrote {json_path} and {png_path}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``vit-sae circuit``."""
    parser = commands.add_parser(
        "circuit", help="the feature circuit of a class's logit through SAEs at several hooks (JSON + picture)",
        description="Attribution graph over SAE features and error nodes across hooks (docs/experiments.md).",
    )
    parser.add_argument("--model", required=True, help="hub id or local folder of the base model")
    parser.add_argument("--sae", action="append", default=[],
                        help="an SAE (registry short name, hub id or path); repeat, in the model's order")
    parser.add_argument("--images", required=True,
                        help="image folder; with class subfolders, the --class subfolder's images are used")
    parser.add_argument("--class", dest="class_name", required=True,
                        help="the class whose mean logit is the metric: a name (the model's, --classes, or the "
                             "--head's) or an output index")
    parser.add_argument("--out", required=True, help="folder for circuit.json and circuit.png")
    parser.add_argument("--classes", help="class names of the model's outputs: 'a,b,c' or a file, one per line")
    parser.add_argument("--head", metavar="zero-shot:FILE", help="a saved zero-shot head (vit-sae eval --build-head)")
    parser.add_argument("--baseline", choices=circuits_baselines(), default="zero")
    parser.add_argument("--method", choices=("integrated_gradients", "attribution"), default="integrated_gradients")
    parser.add_argument("--steps", type=int, default=16, help="integrated-gradient steps (default: 16)")
    parser.add_argument("--positions", choices=("summed", "per_token"), default="summed")
    parser.add_argument("--top-nodes", type=int, default=8, help="nodes kept per hook (default: 8)")
    parser.add_argument("--node-threshold", type=float, help="also drop nodes with |attribution| below this")
    parser.add_argument("--limit", type=int, default=16, help="images of the class used (default: 16)")
    parser.add_argument("--reference-limit", type=int, default=256,
                        help="images read for thumbnails and the mean baseline (default: 256)")
    parser.add_argument("--paths", type=int, default=5, help="top paths printed (default: 5)")
    parser.set_defaults(run=run_circuit)


def circuits_baselines() -> tuple[str, ...]:
    """The named baselines the command offers."""
    from vit_sae_hooks.experiments.circuits import BASELINES

    return BASELINES
