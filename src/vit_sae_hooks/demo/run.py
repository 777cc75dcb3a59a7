"""``vit-sae demo``: the library's whole story on the shipped shapes ViT and SAE, offline, in well under a minute."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from vit_sae_hooks.data import shapes
from vit_sae_hooks.demo.build import CIRCUIT_SAE_NAMES, MODEL_NAME, SAE_NAME
from vit_sae_hooks.demo.classifier import TEST_SEED
from vit_sae_hooks.experiments import ablate_features, circuits, patching, steer
from vit_sae_hooks.model import HookedViT
from vit_sae_hooks.sae import SAE
from vit_sae_hooks.viz import build_site

FEATURES_PER_CLASS = 3
ABLATED_FEATURES = 5
STEERING_SCALES = (0.0, 1.0, 2.0, 4.0)
CIRCUIT_IMAGES, CIRCUIT_STEPS, CIRCUIT_NODES, CIRCUIT_FAITHFULNESS = 8, 16, 6, (4, 8, 16, 32)


@dataclass
class DemoReport:
    """Everything the demo measured, so tests and notebooks can use the numbers, not just the printout."""

    accuracy: float
    eval_row: dict[str, float]
    selective_features: dict[str, list[tuple[int, float]]]
    ablation: dict[str, float]
    steering: list[tuple[float, float]]
    steering_classes: tuple[str, str, int]
    sweep: list[tuple[int, float]]
    circuit: circuits.Circuit | None = None
    faithfulness: circuits.Faithfulness | None = None
    figures: list[Path] = field(default_factory=list)
    site: Path | None = None
    lines: list[str] = field(default_factory=list)


def _class_accuracy(logits: Tensor, labels: Tensor, class_id: int) -> float:
    chosen = labels == class_id
    return float((logits[chosen].argmax(-1) == class_id).float().mean())


@torch.no_grad()
def run_demo(out: str | os.PathLike | None = "vit-sae-demo", n_images: int = 1000, figures: bool = True) -> DemoReport:
    """Run every step of the demo on ``n_images`` held-out shape images and return what it measured; with
    ``figures``, write feature cards, a heatmap and the feature browser (``out/browser/index.html``) under ``out``.

    Example:
        >>> report = run_demo(out=None)
        >>> print("\\n".join(report.lines))
    """
    from vit_sae_hooks.evals import evaluate

    lines: list[str] = []
    say = lines.append
    model = HookedViT.from_pretrained(MODEL_NAME).eval()
    sae = SAE.from_pretrained(SAE_NAME)
    batch = shapes.make_batch(n_images, seed=TEST_SEED + 1)
    images, labels = batch.images, batch.labels
    acts_name = f"{sae.hook_name}.hook_sae_acts_post"

    # 1. accuracy and the SAE's evaluation row
    logits = model(images)
    accuracy = float((logits.argmax(-1) == labels).float().mean())
    result = evaluate(model, sae, images, labels=labels, head="model", batch_size=250, progress=False)
    say(f"Shapes ViT ({model.cfg.n_layers} blocks, d_model {model.cfg.d_model}) on {n_images} held-out images: "
        f"accuracy {accuracy:.1%}")
    say(f"TopK SAE (k={sae.cfg.k}, {sae.d_sae} features) at {sae.hook_name}, all tokens:")
    say(result.markdown_header())
    say(result.markdown_row())

    # 2. the features most selective for each class (mean activation over tokens, in-class minus out-of-class)
    _, cache = model.run_with_cache_with_saes(images, saes=[sae], names_filter=[acts_name])
    per_image = cache[acts_name].mean(1)
    selective: dict[str, list[tuple[int, float]]] = {}
    say("")
    say("Most selective features per class (mean activation in class minus outside it):")
    selectivity = torch.stack(
        [per_image[labels == c].mean(0) - per_image[labels != c].mean(0) for c in range(len(shapes.CLASSES))]
    )
    for class_id, name in enumerate(shapes.CLASSES):
        top = selectivity[class_id].topk(FEATURES_PER_CLASS)
        selective[name] = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        say(f"  {name:<9} " + ", ".join(f"#{f} ({s:+.2f})" for f, s in selective[name]))

    # 3. ablating a class's top features hurts that class, ablating as many random ones barely does
    target = max(range(len(shapes.CLASSES)), key=lambda c: selective[shapes.CLASSES[c]][0][1])
    target_name = shapes.CLASSES[target]
    chosen = selectivity[target].topk(ABLATED_FEATURES).indices.tolist()
    rng = random.Random(0)
    other_active = [f for f in range(sae.d_sae) if f not in chosen and per_image[:, f].max() > 0]
    random_features = rng.sample(other_active, ABLATED_FEATURES)

    def ablated_logits(features: list[int]) -> Tensor:
        return model.run_with_saes(images, saes=[sae], use_error_term=True,
                                   fwd_hooks=[(acts_name, ablate_features(features))])

    top_ablated = ablated_logits(chosen)
    other_classes = labels != target
    ablation = {
        "clean": _class_accuracy(logits, labels, target),
        "top": _class_accuracy(top_ablated, labels, target),
        "random": _class_accuracy(ablated_logits(random_features), labels, target),
        "others_after_top": float((top_ablated[other_classes].argmax(-1) == labels[other_classes]).float().mean()),
    }
    say("")
    say(f"Ablating the {ABLATED_FEATURES} top '{target_name}' features {chosen} (error term on, all tokens):")
    say(f"  '{target_name}' accuracy: clean {ablation['clean']:.1%} | top features ablated {ablation['top']:.1%} | "
        f"{ABLATED_FEATURES} random active features ablated {ablation['random']:.1%}")
    say(f"  other classes after ablating the top features: {ablation['others_after_top']:.1%}")

    # 4. steering with a class feature flips another class's predictions
    source = (target + 1) % len(shapes.CLASSES)
    feature = selective[target_name][0][0]
    typical = cache[acts_name][..., feature].amax(dim=(1,))[labels == target].mean().item()
    source_images = images[labels == source]
    steering = []
    for scale in STEERING_SCALES:
        steered = model.run_with_hooks(
            source_images, fwd_hooks=[(sae.hook_name, steer(sae, feature, alpha=scale * typical))]
        )
        steering.append((scale, float((steered.argmax(-1) == target).float().mean())))
    say("")
    say(f"Steering '{shapes.CLASSES[source]}' images with '{target_name}' feature #{feature} "
        f"(alpha = scale x its typical peak activation {typical:.2f}, on every token):")
    say("  " + " | ".join(f"scale {scale:g}: {share:.0%} predicted '{target_name}'" for scale, share in steering))

    # 5. which features matter for one image: an ablation sweep of its 16 most active features
    index = int((labels == target).nonzero()[0])
    image = images[index : index + 1]
    active = cache[acts_name][index].sum(0).topk(16).indices.tolist()

    def class_logit(output: Tensor) -> Tensor:
        return output[:, target].mean()

    effects = patching.ablation_sweep(model, sae, image, active, class_logit)
    sweep = sorted(zip(active, effects.tolist(), strict=True), key=lambda pair: pair[1])
    say("")
    say(f"Ablation sweep on image {index} ('{target_name}'): change of its '{target_name}' logit per feature")
    say("  " + ", ".join(f"#{f} {e:+.2f}" for f, e in sweep[:8]))

    # 6. the circuit of the class's logit through the SAEs after blocks 1, 2 and 3
    circuit_saes = [SAE.from_pretrained(name) for name in CIRCUIT_SAE_NAMES]
    class_images = images[labels == target][:CIRCUIT_IMAGES]
    with torch.enable_grad():
        circuit = circuits.feature_circuit(model, circuit_saes, class_images, class_logit, steps=CIRCUIT_STEPS,
                                           top_nodes=CIRCUIT_NODES)
    faithfulness = circuit.faithfulness(CIRCUIT_FAITHFULNESS)
    say("")
    say(f"Feature circuit of the '{target_name}' logit on {len(class_images)} '{target_name}' images through the "
        f"SAEs after blocks {', '.join(name.rsplit('/', 1)[1] for name in CIRCUIT_SAE_NAMES)} "
        f"(integrated gradients, {CIRCUIT_STEPS} steps, zero baseline, SAE errors as nodes):")
    for hook in circuit.hooks:
        top = [node for node in circuit.nodes_at(hook) if not node.is_error][:4]
        error, exact = circuit.node_attributions(hook)[-1], circuit.clean_metric - circuit.baseline_metric[hook]
        say(f"  {hook}: " + ", ".join(f"#{n.feature} {n.attribution:+.2f}" for n in top) + f", error {error:+.2f} "
            f"(all nodes sum to {circuit.node_attributions(hook).sum():+.2f}; exact {exact:+.2f})")
    for path, strength in circuit.top_paths(3):
        say(f"  path {strength:+.2f}: " + " -> ".join(
            "logit" if n.hook_name == circuits.METRIC else f"L{n.hook_name.split('.')[1]} " +
            ("error" if n.is_error else f"#{n.feature}") for n in path))
    say("  faithfulness (logit kept with only the top-n nodes of all SAEs): " + ", ".join(
        f"{n}: {fraction:.0%}" for n, fraction in zip(faithfulness.n_nodes, faithfulness.fraction.tolist(), strict=True)))

    report = DemoReport(
        accuracy=accuracy, eval_row=result.to_dict()["metrics"], selective_features=selective, ablation=ablation,
        steering=steering, steering_classes=(shapes.CLASSES[source], target_name, feature), sweep=sweep,
        circuit=circuit, faithfulness=faithfulness, lines=lines,
    )
    if figures and out is not None:
        report.figures = _write_figures(Path(out), model, sae, images, labels, selective, index)
        circuit_path = Path(out) / f"circuit_{target_name}.png"
        circuit.plot(circuit_path, images=images, unnormalize=(shapes.MEAN, shapes.STD),
                     title=f"Feature circuit of the '{target_name}' logit ({len(class_images)} held-out images)")
        report.figures.append(circuit_path)
        say("")
        say(f"Figures written to {out}/: " + ", ".join(path.name for path in report.figures))
        site = build_site(model, sae, images, Path(out) / "browser", labels=labels, class_names=shapes.CLASSES,
                          sae_name=SAE_NAME, progress=False)
        report.site = site.index
        say(f"Feature browser of all {site.n_features} features over the {site.n_images} images: open {site.url}")
    return report


def _write_figures(out: Path, model, sae, images, labels, selective, index) -> list[Path]:
    """A feature card for each class's most selective feature, and one image's heatmap for its class's feature."""
    from vit_sae_hooks import viz

    out.mkdir(parents=True, exist_ok=True)
    unnormalize = (shapes.MEAN, shapes.STD)
    features = [pairs[0][0] for pairs in selective.values()]
    top = viz.top_activating(model, sae, images, features, k=12, labels=labels, progress=False)
    top.class_names = list(shapes.CLASSES)
    paths = []
    for class_name, feature in zip(shapes.CLASSES, features, strict=True):
        path = out / f"feature_{feature}_{class_name}.png"
        viz.plot_feature_card(top, feature, unnormalize=unnormalize, path=path)
        paths.append(path)
    class_name = shapes.CLASSES[int(labels[index])]
    feature = selective[class_name][0][0]
    heatmap = viz.feature_heatmap(model, sae, images[index], feature)
    path = out / f"heatmap_image_{index}_feature_{feature}.png"
    viz.plot_heatmap(images[index], heatmap, unnormalize=unnormalize,
                     title=f"feature #{feature} on a held-out '{class_name}'", path=path)
    paths.append(path)
    return paths
