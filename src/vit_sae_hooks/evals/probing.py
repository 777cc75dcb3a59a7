"""Sparse probing (as in SAEBench, after Gurnee et al. 2023): can a handful of an SAE's features tell image classes
apart, and how close do they come to a probe on the whole activation?

For each class ``c`` (a task "``c`` against the rest", balanced by drawing as many other images as there are
images of ``c``), the ``k`` features whose mean image-level activation differs most between the two sides of the
training images are chosen, a logistic regression is fitted on them alone, and its accuracy is measured on
held-out images. The baseline fits the same regression on every dimension of the SAE's input. An image's level of
a feature is its mean (or max) over the tokens the SAE reads.

Example:
    >>> result = sparse_probing(model, sae, "imagenet/train_subset", "imagenet/val_subset", ks=(1, 2, 5))
    >>> print(result.markdown())
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_sae_hooks.checks import positive_int
from vit_sae_hooks.data.batches import image_batches, limited_batches
from vit_sae_hooks.errors import ConfigError, DataError
from vit_sae_hooks.hook_names import stop_layer

if TYPE_CHECKING:
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.sae import SAE

Pooling = Literal["mean", "max"]


@dataclass
class PooledActivations:
    """Image-level activations: each image's mean (or max) over the SAE's tokens, of its features and its input.

    Example:
        >>> pooled = pooled_activations(model, sae, "imagenet/val", limit=2000); pooled.features.shape
        torch.Size([2000, 49152])
    """

    features: Float[Tensor, "n_images d_sae"]
    inputs: Float[Tensor, "n_images d_in"]
    labels: Int[Tensor, " n_images"] | None
    class_names: list[str] | None


def pooled_activations(
    model: HookedViT, sae: SAE, data: Any, labels: Int[Tensor, " n"] | None = None, pooling: Pooling = "mean",
    batch_size: int = 64, limit: int | None = None, num_workers: int | None = None, progress: bool = True,
) -> PooledActivations:
    """Each image's features and SAE input, pooled over the tokens the SAE reads (``sae.token_set``).

    ``data`` is what :func:`~vit_sae_hooks.evals.evaluate` takes: a preprocessed images tensor (with ``labels``),
    an image folder (class sub-folders give labels), a dataset or a loader. The model runs up to the SAE's block.

    Example:
        >>> pooled = pooled_activations(model, sae, images, labels=labels, pooling="max")
    """
    from tqdm.auto import tqdm

    if pooling not in ("mean", "max"):
        raise ConfigError(f"pooling={pooling!r} is not 'mean' or 'max'")
    hook = sae.output_hook_name
    captured: dict[str, Tensor] = {}

    def pool(name: str):
        def capture(acts: Tensor, hook: Any) -> None:
            # [batch, rows, d] for per-token hooks; [batch, d] for per-image ones, which need no pooling.
            if acts.ndim == 3:
                acts = acts.mean(1) if pooling == "mean" else acts.amax(1)
            captured[name] = acts.detach().float().cpu()

        return capture

    # The spliced SAE's hook points sit under the hook it writes (a transcoder's output hook).
    hooks = [(f"{hook}.hook_sae_acts_post", pool("features")), (f"{hook}.hook_sae_input", pool("inputs"))]
    stop_at = stop_layer(hook)
    stop = {"stop_at_layer": stop_at} if stop_at is not None else {"return_type": None}
    parameter = next(model.parameters())
    batches, total, dataset = image_batches(model, data, labels, batch_size, limit, num_workers)
    features, inputs, all_labels = [], [], []
    with (
        torch.no_grad(), model.saes([sae], use_error_term=False),
        tqdm(total=total, unit="img", desc=f"pooled {hook}", file=sys.stderr, disable=not progress) as bar,
    ):
        for images, batch_labels in limited_batches(batches, limit):
            model.run_with_hooks(images.to(parameter.device, parameter.dtype), fwd_hooks=hooks, **stop)
            features.append(captured["features"])
            inputs.append(captured["inputs"])
            all_labels.append(None if batch_labels is None else torch.as_tensor(batch_labels).long().cpu())
            bar.update(images.shape[0])
    if not features:
        raise DataError("the data yielded no images; check the folder, dataset, loader or limit")
    if any(label is None for label in all_labels) and not all(label is None for label in all_labels):
        raise DataError("some batches have labels and some do not; yield labels with every batch or with none")
    classes = getattr(dataset, "classes", None)
    return PooledActivations(
        torch.cat(features), torch.cat(inputs), None if all_labels[0] is None else torch.cat(all_labels),
        list(classes) if classes else None,
    )


def fit_logistic_regression(
    x: Float[Tensor, "n d"], y: Int[Tensor, " n"], l2: float = 1e-3, max_iter: int = 200,
) -> tuple[Float[Tensor, " d"], float]:
    """Weights and bias minimising the mean logistic loss of ``y ∈ {0, 1}`` on ``x`` plus ``l2 · ‖w‖² / 2``.

    Full-batch L-BFGS in float64 (the loss is strictly convex, so the optimum is unique).

    Example:
        >>> weight, bias = fit_logistic_regression(features, labels)
        >>> predicted = (features.double() @ weight + bias) > 0
    """
    x, target = x.double(), y.double()
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-10,
                                  tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, target)
        loss = loss + l2 * weight.pow(2).sum() / 2
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), float(bias.detach())


@dataclass
class ProbeResult:
    """Sparse-probing accuracies: mean over tasks for each ``k``, the dense baseline, and per task.

    Example:
        >>> result.accuracy[1], result.baseline_accuracy
        (0.81, 0.97)
    """

    ks: tuple[int, ...]
    accuracy: dict[int, float]
    baseline_accuracy: float | None
    tasks: list[str]
    per_task: dict[str, dict[int, float]]
    chosen: dict[str, list[int]] = field(repr=False)
    pooling: str = "mean"

    def markdown(self) -> str:
        """A markdown table: one row per ``k`` (and the baseline), the mean test accuracy over tasks."""
        lines = ["| probe | features | mean accuracy |", "|---|---|---|"]
        lines += [f"| sparse, top {k} | {k} | {100 * self.accuracy[k]:.1f} % |" for k in self.ks]
        if self.baseline_accuracy is not None:
            lines.append(f"| dense (SAE input) | all | {100 * self.baseline_accuracy:.1f} % |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"ks": list(self.ks), "accuracy": {str(k): v for k, v in self.accuracy.items()},
                "baseline_accuracy": self.baseline_accuracy, "pooling": self.pooling, "tasks": self.tasks,
                "per_task": {task: {str(k): v for k, v in values.items()} for task, values in self.per_task.items()},
                "chosen": self.chosen}


def top_mean_difference(
    features: Float[Tensor, "n d_sae"], positive: Tensor, k: int,
) -> Int[Tensor, " k"]:
    """The ``k`` features whose mean differs most (in absolute value) between the ``positive`` rows and the rest.

    Example:
        >>> top_mean_difference(pooled.features, labels == 3, k=5)
        tensor([ 812, 40121,   77, 9000, 12])
    """
    difference = features[positive].double().mean(0) - features[~positive].double().mean(0)
    return difference.abs().topk(k).indices


def sparse_probing(
    model: HookedViT, sae: SAE, train: Any, test: Any, ks: Sequence[int] = (1, 2, 5),
    train_labels: Int[Tensor, " n_train"] | None = None, test_labels: Int[Tensor, " n_test"] | None = None,
    pooling: Pooling = "mean", tasks: Iterable[int | str] | None = None, class_names: Sequence[str] | None = None,
    baseline: bool = True, l2: float = 1e-3, seed: int = 0, batch_size: int = 64, limit: int | None = None,
    num_workers: int | None = None, progress: bool = True,
) -> ProbeResult:
    """Sparse-probing accuracy of ``sae``'s features on the classes of ``train``/``test`` (see the module doc).

    ``train``/``test`` are labelled image data as :func:`pooled_activations` takes them (the same classes);
    ``tasks`` restricts the classes probed (ids or names; default all with images on both sides); ``class_names``
    names the label ids where the data does not (a tensor). ``limit`` caps each of the two sets.

    Example:
        >>> result = sparse_probing(model, sae, train_images, test_images, train_labels=y, test_labels=y_test)
        >>> result.accuracy
        {1: 0.81, 2: 0.86, 5: 0.93}
    """
    ks = _checked_ks(ks, sae.d_sae)
    options = dict(pooling=pooling, batch_size=batch_size, limit=limit, num_workers=num_workers, progress=progress)
    fit = pooled_activations(model, sae, train, train_labels, **options)
    held_out = pooled_activations(model, sae, test, test_labels, **options)
    if class_names is not None:
        fit.class_names = held_out.class_names = list(class_names)
    return probe_pooled(fit, held_out, ks, tasks, baseline, l2, seed, pooling)


def probe_pooled(
    fit: PooledActivations, held_out: PooledActivations, ks: Sequence[int] = (1, 2, 5),
    tasks: Iterable[int | str] | None = None, baseline: bool = True, l2: float = 1e-3, seed: int = 0,
    pooling: str = "mean",
) -> ProbeResult:
    """:func:`sparse_probing` on image-level activations already pooled (e.g. to probe several ``k`` or seeds).

    Each task is one class against the rest, balanced on both sides by drawing as many other images as the class
    has (all others where there are fewer), with a generator seeded by ``seed``. Features are standardised with
    the training rows' mean and deviation before each fit.

    Example:
        >>> fit, held_out = pooled_activations(model, sae, train), pooled_activations(model, sae, test)
        >>> probe_pooled(fit, held_out, ks=(1, 10, 50)).accuracy
        {1: 0.81, 10: 0.92, 50: 0.95}
    """
    ks = _checked_ks(ks, fit.features.shape[1])
    if fit.labels is None or held_out.labels is None:
        raise DataError("sparse probing needs labelled images: class sub-folders, a labelled dataset, or *_labels=")
    class_names = fit.class_names or held_out.class_names
    ids = _task_ids(tasks, fit.labels, held_out.labels, class_names)
    generator = torch.Generator().manual_seed(seed)
    per_task: dict[str, dict[int, float]] = {}
    chosen: dict[str, list[int]] = {}
    baselines = []
    for label in ids:
        name = class_names[label] if class_names and label < len(class_names) else str(label)
        train_rows, test_rows = (_balanced(pooled.labels, label, generator) for pooled in (fit, held_out))
        y_train = (fit.labels[train_rows] == label).long()
        y_test = (held_out.labels[test_rows] == label).long()
        x_train, x_test = fit.features[train_rows], held_out.features[test_rows]
        order = top_mean_difference(x_train, y_train.bool(), max(ks))
        chosen[name] = order.tolist()
        per_task[name] = {
            k: probe_accuracy(x_train[:, order[:k]], y_train, x_test[:, order[:k]], y_test, l2) for k in ks
        }
        if baseline:
            baselines.append(probe_accuracy(fit.inputs[train_rows], y_train, held_out.inputs[test_rows], y_test, l2))
    return ProbeResult(
        ks=ks, accuracy={k: sum(task[k] for task in per_task.values()) / len(per_task) for k in ks},
        baseline_accuracy=sum(baselines) / len(baselines) if baseline else None,
        tasks=list(per_task), per_task=per_task, chosen=chosen, pooling=pooling,
    )


def probe_accuracy(
    x_train: Float[Tensor, "n d"], y_train: Int[Tensor, " n"], x_test: Float[Tensor, "m d"], y_test: Int[Tensor, " m"],
    l2: float = 1e-3,
) -> float:
    """Test accuracy of a logistic regression fitted on standardised ``x_train`` (the training mean and deviation
    standardise both sides; constant columns are only centred).

    Example:
        >>> probe_accuracy(features[:800], labels[:800], features[800:], labels[800:])
        0.93
    """
    mean = x_train.double().mean(0)
    scale = x_train.double().std(0, unbiased=False)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    weight, bias = fit_logistic_regression((x_train.double() - mean) / scale, y_train, l2)
    predicted = ((x_test.double() - mean) / scale @ weight + bias) > 0
    return float((predicted.long() == y_test).double().mean())


def _checked_ks(ks: Sequence[int], d_sae: int) -> tuple[int, ...]:
    ks = tuple(positive_int("k", k) for k in ks)
    if not ks:
        raise ConfigError("ks is empty; pass the feature counts to probe with, e.g. ks=(1, 2, 5)")
    if max(ks) > d_sae:
        raise ConfigError(f"k={max(ks)} is more than the SAE's {d_sae} features")
    return ks


def _task_ids(tasks: Iterable[int | str] | None, train: Tensor, test: Tensor, class_names: list[str] | None) -> list[int]:
    present = sorted(set(train.tolist()) & set(test.tolist()))
    if tasks is None:
        ids = present
    else:
        ids = []
        for task in tasks:
            if isinstance(task, str) and (not class_names or task not in class_names):
                raise ConfigError(f"task {task!r} is not a class name; the classes are {class_names}")
            ids.append(class_names.index(task) if isinstance(task, str) else int(task))
        missing = [task for task in ids if task not in present]
        if missing:
            raise DataError(f"classes {missing} have no images in the training or the test data; probe classes {present}")
    if not ids or len(set(train.tolist())) < 2 or len(set(test.tolist())) < 2:
        raise DataError("sparse probing needs at least two classes with images in both the training and the test data")
    return ids


def _balanced(labels: Tensor, label: int, generator: torch.Generator) -> Int[Tensor, " rows"]:
    """Every image of ``label`` and as many others, drawn with ``generator`` (all others if there are fewer)."""
    positive = (labels == label).nonzero().flatten()
    negative = (labels != label).nonzero().flatten()
    drawn = negative[torch.randperm(negative.numel(), generator=generator)[: positive.numel()]]
    return torch.cat([positive, drawn.sort().values])
