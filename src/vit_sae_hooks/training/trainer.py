"""The training loop: initialise from data, optimise, keep decoder rows unit-norm, checkpoint, resume, scale out."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.sae import SAE, SAEConfig
from vit_sae_hooks.sae.normalization import normalize
from vit_sae_hooks.training import distributed
from vit_sae_hooks.training.activations import ActivationData, TokenStream
from vit_sae_hooks.training.checkpoint import find_checkpoint, read_checkpoint, save_sae_atomically, write_checkpoint
from vit_sae_hooks.training.config import TrainConfig
from vit_sae_hooks.training.objective import STAT_NAMES, TrainingObjective, summarise

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], None]


def geometric_median(points: Float[Tensor, "n d"], iterations: int = 200, tolerance: float = 1e-7) -> Float[Tensor, " d"]:
    """The point minimising the summed distance to ``points`` (Weiszfeld's algorithm, in float64).

    Example:
        >>> geometric_median(torch.randn(1000, 64)).shape
        torch.Size([64])
    """
    data = points.double()
    median = data.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (data - median).norm(dim=1).clamp_min(1e-12)
        updated = (weights[:, None] * data).sum(0) / weights.sum()
        moved = float((updated - median).norm())
        median = updated
        if moved <= tolerance * max(float(median.norm()), 1.0):
            break
    return median.to(points.dtype)


def learning_rate_at(step: int, peak: float, config: TrainConfig) -> float:
    """The learning rate of ``step``: linear warm-up, constant, then linear decay over the last ``decay_fraction``.

    Example:
        >>> learning_rate_at(0, 1e-3, TrainConfig(warmup_steps=10))
        0.0001
    """
    factor = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    total = config.total_steps
    decay_steps = int(config.decay_fraction * total)
    if decay_steps and step >= total - decay_steps:
        factor *= (total - step) / decay_steps
    return peak * factor


def sparsity_coefficient_at(step: int, config: TrainConfig) -> float:
    """The architecture's sparsity coefficient (L1 for ReLU, L0 for JumpReLU, 0 for TopK) at ``step``, ramped
    up linearly.

    Example:
        >>> sparsity_coefficient_at(499, TrainConfig(architecture="standard", l1_coefficient=5.0, sparsity_warmup_steps=1000))
        2.5
    """
    ramp = min(1.0, (step + 1) / config.sparsity_warmup_steps) if config.sparsity_warmup_steps else 1.0
    return config.sparsity_coefficient * ramp


class _Run:
    """The mutable state of one training run; what a checkpoint stores and a resume restores."""

    def __init__(
        self, sae: SAE, optimizer: torch.optim.Optimizer, variance: float, step: int, tokens_since_fired: Tensor
    ) -> None:
        self.sae = sae
        self.optimizer = optimizer
        self.variance = variance
        self.step = step
        self.tokens_since_fired = tokens_since_fired
        # Refreshed every log_every steps (and stored in checkpoints) so a resumed run sees the same set.
        self.dead_latents = tokens_since_fired.new_empty(0)
        self.wandb_id: str | None = None


def train_sae(
    data: ActivationData,
    config: TrainConfig,
    out: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = False,
    device: torch.device | str | None = None,
    callbacks: Sequence[StepCallback] = (),
    progress: bool = True,
) -> SAE:
    """Train an SAE on ``data`` and return it; with ``out``, checkpoint periodically and save the result there.

    ``resume=True`` continues from the latest checkpoint under ``out`` (a path: from that checkpoint),
    giving the same SAE as an uninterrupted run; with none there yet, training starts fresh. Under
    ``torchrun`` each process trains on its own data shards and DDP averages the gradients.
    ``callbacks`` are called as ``callback(step, metrics)`` after every step.

    Example:
        >>> sae = train_sae(ImageActivations(model, "blocks.9.hook_resid_post", images), TrainConfig(k=32), out="runs/l9")
    """
    device = torch.device(device) if device is not None else distributed.init_from_environment()
    out_path = Path(out) if out is not None else None
    world, rank = distributed.world_size(), distributed.rank()
    n_shards = config.data_shards or world
    if n_shards % world:
        raise ConfigError(
            f"data_shards={n_shards} must be a multiple of the {world} processes; use {world * max(1, n_shards // world)}."
        )
    if config.batch_size % n_shards:
        raise ConfigError(f"batch_size={config.batch_size} must divide evenly over data_shards={n_shards}.")
    shards = list(range(rank, n_shards, world))
    streams = {shard: data.stream(shard, n_shards, config.seed) for shard in shards}

    checkpoint = _checkpoint_to_resume(resume, out_path)
    if checkpoint is not None:
        run = _resumed_run(checkpoint, data, config, n_shards, streams, device)
        logger.info("resuming from %s at step %d", checkpoint, run.step)
    else:
        run = _fresh_run(data, config, n_shards, streams, device)
    sae = run.sae
    objective = TrainingObjective(sae, config, run.variance)
    model: torch.nn.Module = objective
    if distributed.is_distributed():
        model = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)

    total = config.total_steps
    peak = config.learning_rate(sae.d_sae)
    per_shard = config.batch_size // n_shards
    use_autocast = config.autocast and device.type == "cuda"
    wandb_run = _start_wandb(config, sae.cfg, run) if rank == 0 else None
    bar = tqdm(total=total, initial=run.step, disable=not progress or rank != 0, file=sys.stderr, desc="train SAE")
    window = torch.zeros(len(STAT_NAMES) + sae.d_in, dtype=torch.float64, device=device)
    metrics: dict[str, float] = {}
    for step in range(run.step, total):
        batch = torch.cat([streams[shard].next_batch(per_shard) for shard in shards]).to(device, non_blocking=True)
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate_at(step, peak, config)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
            loss, stats, fired = model(batch, run.dead_latents, sparsity_coefficient_at(step, config))
        loss.backward()
        optimisation_step(sae, run.optimizer, config.grad_clip)

        # One collective per step: which latents fired anywhere, and the statistics for the progress bar.
        reduced = distributed.sum_over_processes(torch.cat([fired.double(), stats.double()]))
        fired_anywhere = reduced[: sae.d_sae] > 0
        run.tokens_since_fired = torch.where(fired_anywhere, 0, run.tokens_since_fired + config.batch_size)
        window += reduced[sae.d_sae :]
        run.step = step + 1
        if run.step % config.log_every == 0 or run.step == total:
            # The dead set is read back here, every log_every steps, so the steps between need no host sync.
            run.dead_latents = _dead_latents(run, config)
            dead_fraction = run.dead_latents.numel() / sae.d_sae
            metrics = summarise(window, dead_fraction)
            window.zero_()
            bar.set_postfix(
                loss=f"{metrics['loss']:.4f}", ev=f"{metrics['explained_variance']:.3f}",
                l0=f"{metrics['l0']:.1f}", dead=f"{metrics['dead_fraction']:.3f}",
            )
            if wandb_run is not None:
                wandb_run.log({**metrics, "lr": learning_rate_at(step, peak, config)}, step=run.step)
        bar.update(1)
        if out_path is not None and run.step % config.checkpoint_every == 0 and run.step < total:
            _checkpoint(out_path, run, config, n_shards, streams)
        for callback in callbacks:
            callback(run.step, metrics)
    bar.close()
    if out_path is not None and rank == 0:
        save_sae_atomically(sae, out_path)
    distributed.barrier()
    if wandb_run is not None:
        wandb_run.finish()
    return sae.eval()


def _dead_latents(run: _Run, config: TrainConfig) -> Tensor:
    """The latents that have not fired for ``dead_tokens`` tokens, as indices on the run's device."""
    return (run.tokens_since_fired >= config.dead_tokens).nonzero().flatten()


def _checkpoint_to_resume(resume: bool | str | os.PathLike, out: Path | None) -> Path | None:
    if resume is False or resume is None:
        return None
    if resume is True:
        if out is None:
            raise ConfigError("resume=True needs out= (the run folder holding checkpoints/); or pass the checkpoint path.")
        found = find_checkpoint(out)
        if found is None:
            logger.info("no checkpoint under %s yet; starting a fresh run", out)
        return found
    found = find_checkpoint(resume)
    if found is None:
        raise ConfigError(
            f"resume={str(resume)!r} holds no checkpoint (no step_* folder with cfg.json, sae_weights.safetensors and "
            "trainer_state.pt); pass a run folder written by vit-sae train, or drop --resume."
        )
    return found


def _sae_config(data: ActivationData, config: TrainConfig, scaling_factor: float | None) -> SAEConfig:
    return SAEConfig(
        d_in=data.d_in, d_sae=config.sae_width(data.d_in), architecture=config.architecture, k=config.k,
        normalize_activations=config.normalize_activations, scaling_factor=scaling_factor,
        hook_name=data.hook_name, token_set=data.token_set, model_name=data.model_name,
    )


def _initial_sample(config: TrainConfig, streams: dict[int, TokenStream], n_shards: int) -> Float[Tensor, "tokens d_in"]:
    # Drawn from the training streams themselves and gathered in shard order, so every process (and a
    # single process running the same shards) initialises from the same tokens.
    # A short run should not spend more tokens on initialisation than on training.
    per_shard = -(-min(config.init_tokens, config.tokens_budget) // n_shards)
    local = {shard: stream.next_batch(per_shard).float().cpu() for shard, stream in streams.items()}
    merged: dict[int, Tensor] = {}
    for part in distributed.gather_objects(local):
        merged.update(part)
    return torch.cat([merged[shard] for shard in sorted(merged)])


def _fresh_run(
    data: ActivationData, config: TrainConfig, n_shards: int, streams: dict[int, TokenStream], device: torch.device
) -> _Run:
    sample = _initial_sample(config, streams, n_shards)
    scaling_factor = None
    if config.normalize_activations == "scaling_factor":
        scaling_factor = float(math.sqrt(data.d_in) / sample.norm(dim=1).mean())
    sae_config = _sae_config(data, config, scaling_factor)
    sample, _ = normalize(sample, sae_config.normalize_activations, sae_config.scaling_factor)
    variance = float((sample - sample.mean(0)).pow(2).sum(1).mean())
    if not variance > 0:
        raise ConfigError("the first training tokens are all identical (zero variance); check the hook and the images.")
    torch.manual_seed(config.seed)
    sae = SAE(sae_config)
    with torch.no_grad():
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        sae.W_enc.copy_(sae.W_dec.T)
        if config.b_dec_init == "mean":
            sae.b_dec.copy_(sample.mean(0))
        elif config.b_dec_init == "geometric_median":
            sae.b_dec.copy_(geometric_median(sample))
    sae.prepare_for_training(config)
    sae = sae.to(device).train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.learning_rate(sae.d_sae), betas=config.adam_betas)
    tokens_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
    return _Run(sae, optimizer, variance, 0, tokens_since_fired)


def _resumed_run(
    checkpoint: Path, data: ActivationData, config: TrainConfig, n_shards: int, streams: dict[int, TokenStream],
    device: torch.device,
) -> _Run:
    sae, state = read_checkpoint(checkpoint, device=device)
    saved_config = TrainConfig.from_dict(json.loads(state["train_config"]))
    expected = _sae_config(data, config, sae.cfg.scaling_factor)
    mismatches = [
        f"{name} {getattr(sae.cfg, name)!r} (this run: {getattr(expected, name)!r})"
        for name in ("architecture", "k", "d_in", "d_sae", "hook_name", "token_set", "normalize_activations")
        if getattr(sae.cfg, name) != getattr(expected, name)
    ]
    mismatches += [
        f"{name} {value!r} (this run: {current!r})"
        for name, value, current in (
            ("batch_size", saved_config.batch_size, config.batch_size),
            ("data_shards", state["n_shards"], n_shards),
            ("seed", saved_config.seed, config.seed),
        )
        if value != current
    ]
    if mismatches:
        raise ConfigError(
            f"cannot resume from {checkpoint}: it was trained with " + "; ".join(mismatches) + ". Pass the same "
            "settings as the interrupted run (--arch, --k, --expansion, --hook, --tokens, --batch-size, --seed), "
            "or start a fresh run in another --out folder without --resume."
        )
    sae = sae.train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.learning_rate(sae.d_sae), betas=config.adam_betas)
    optimizer.load_state_dict(state["optimizer"])
    for shard, stream in streams.items():
        stream.load_state_dict(state["streams"][str(shard)])
    run = _Run(sae, optimizer, float(state["variance"]), int(state["step"]), state["tokens_since_fired"].to(device))
    run.dead_latents = state["dead_latents"].to(device) if "dead_latents" in state else _dead_latents(run, config)
    run.wandb_id = state.get("wandb_id")
    return run


def _checkpoint(out: Path, run: _Run, config: TrainConfig, n_shards: int, streams: dict[int, TokenStream]) -> None:
    positions: dict[str, dict[str, int]] = {}
    for part in distributed.gather_objects({str(shard): stream.state_dict() for shard, stream in streams.items()}):
        positions.update(part)
    if distributed.rank() == 0:
        state: dict[str, Any] = {
            "step": run.step,
            "optimizer": run.optimizer.state_dict(),
            "tokens_since_fired": run.tokens_since_fired.cpu(),
            "dead_latents": run.dead_latents.cpu(),
            "variance": run.variance,
            "streams": positions,
            "n_shards": n_shards,
            "train_config": json.dumps(config.to_dict()),
            "wandb_id": run.wandb_id,
        }
        write_checkpoint(out, run.step, run.sae, state, config.keep_checkpoints)
    distributed.barrier()


def optimisation_step(sae: SAE, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
    """Apply the accumulated gradients: decoder-norm-preserving gradient, clipping, the step, unit-norm decoder rows.

    Example:
        >>> loss.backward(); optimisation_step(sae, optimizer, grad_clip=1.0)
    """
    _constrain_decoder_gradient(sae)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _project_parameters(sae)


def _constrain_decoder_gradient(sae: SAE) -> None:
    # Decoder rows stay unit-norm, so the part of their gradient along the row itself only changes the norm
    # that the projection undoes; removing it keeps Adam's moments about the directions that matter.
    grad = sae.W_dec.grad
    if grad is not None:
        rows = sae.W_dec.detach()
        grad -= (grad * rows).sum(dim=1, keepdim=True) * rows


def _project_parameters(sae: SAE) -> None:
    with torch.no_grad():
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sae.after_optimizer_step()


def _start_wandb(config: TrainConfig, sae_config: SAEConfig, run: _Run) -> Any:
    if config.wandb_project is None:
        return None
    try:
        import wandb
    except ImportError as error:
        raise ConfigError(
            f"wandb_project={config.wandb_project!r} needs Weights & Biases: pip install wandb, or drop --wandb."
        ) from error
    handle = wandb.init(
        project=config.wandb_project, id=run.wandb_id, resume="allow",
        config={"train": config.to_dict(), "sae": sae_config.to_dict()},
    )
    run.wandb_id = handle.id
    return handle
