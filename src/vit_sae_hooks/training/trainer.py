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
from vit_sae_hooks.training.activations import ActivationData, TokenStream, hook_columns
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
    """The mutable state of one SAE's training; what its checkpoint stores and a resume restores."""

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
        # Set by train_saes: the run's settings, columns of the shared batch, folder and loss module.
        self.config: TrainConfig
        self.inputs: slice
        self.targets: slice | None = None
        self.out: Path | None = None
        self.module: torch.nn.Module
        self.window: Tensor
        self.wandb: Any = None
        self.metrics: dict[str, float] = {}


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
    ``callbacks`` are called as ``callback(step, metrics)`` after every step. ``config.hook_name`` picks
    one of the data's hooks (default: its only one); ``config.hook_name_out`` makes it a transcoder.

    Example:
        >>> sae = train_sae(ImageActivations(model, "blocks.9.hook_resid_post", images), TrainConfig(k=32), out="runs/l9")
    """
    return train_saes(data, [config], outs=None if out is None else [out], resume=resume, device=device,
                      callbacks=callbacks, progress=progress)[0]


def train_saes(
    data: ActivationData,
    configs: Sequence[TrainConfig],
    outs: Sequence[str | os.PathLike] | None = None,
    resume: bool | str | os.PathLike = False,
    device: torch.device | str | None = None,
    callbacks: Sequence[StepCallback] = (),
    progress: bool = True,
) -> list[SAE]:
    """Train one SAE per config from one stream of ``data``: every batch is read once and used by all of them.

    The configs may read different hooks of the data (``config.hook_name``), be transcoders between them
    (``config.hook_name_out``), or differ in architecture, ``k`` or width; each SAE has its own optimiser,
    dead-latent counters, checkpoints (``outs[i]/checkpoints``) and saved result (``outs[i]``). They share
    the data settings (``batch_size``, ``tokens_budget``, ``seed``, ``data_shards``, ``init_tokens``).
    ``resume=True`` continues every run from its latest checkpoint (all at the same step).
    ``callbacks`` get ``(step, metrics)`` per SAE, with ``metrics["run"]`` its index.

    Example:
        >>> saes = train_saes(data, [TrainConfig(k=16), TrainConfig(k=32), TrainConfig(k=64)],
        ...                   outs=["runs/k16", "runs/k32", "runs/k64"])
    """
    configs = list(configs)
    if not configs:
        raise ConfigError("train_saes needs at least one TrainConfig.")
    _check_shared_settings(configs)
    outs = [None] * len(configs) if outs is None else [Path(out) for out in outs]
    if len(outs) != len(configs):
        raise ConfigError(f"got {len(configs)} configs but {len(outs)} output folders; pass one folder per config.")
    if len(configs) > 1 and resume not in (False, True, None):
        raise ConfigError("resume from one checkpoint path is for a single SAE; with several, pass resume=True.")
    device = torch.device(device) if device is not None else distributed.init_from_environment()
    config = configs[0]
    columns = hook_columns(data)
    world, rank = distributed.world_size(), distributed.rank()
    n_shards = config.data_shards or world
    if n_shards % world:
        raise ConfigError(
            f"data_shards={n_shards} must be a multiple of the {world} processes; use {world * max(1, n_shards // world)}."
        )
    if config.batch_size % n_shards:
        raise ConfigError(f"batch_size={config.batch_size} must divide evenly over data_shards={n_shards}.")
    slices = [_run_columns(columns, run_config) for run_config in configs]
    shards = list(range(rank, n_shards, world))
    streams = {shard: data.stream(shard, n_shards, config.seed) for shard in shards}

    checkpoints = [_checkpoint_to_resume(resume, out) for out in outs]
    if any(checkpoint is not None for checkpoint in checkpoints):
        if any(checkpoint is None for checkpoint in checkpoints):
            missing = [str(out) for out, checkpoint in zip(outs, checkpoints, strict=True) if checkpoint is None]
            raise ConfigError(f"cannot resume: {missing} hold no checkpoint while the other runs do; start them afresh.")
        runs = [
            _resumed_run(checkpoint, data, run_config, n_shards, device, inputs, targets)
            for checkpoint, run_config, (inputs, targets) in zip(checkpoints, configs, slices, strict=True)
        ]
        steps = {run.step for run in runs}
        if len(steps) > 1:
            raise ConfigError(f"cannot resume: the runs' latest checkpoints are at different steps {sorted(steps)}.")
        # Every run's checkpoint stores the same stream position (they were written at the same step).
        state = read_checkpoint(checkpoints[0], device="cpu")[1]
        for shard, stream in streams.items():
            stream.load_state_dict(state["streams"][str(shard)])
        logger.info("resuming %d run(s) from step %d", len(runs), runs[0].step)
    else:
        sample = _initial_sample(config, streams, n_shards)
        runs = [
            _fresh_run(data, sample, run_config, device, inputs, targets)
            for run_config, (inputs, targets) in zip(configs, slices, strict=True)
        ]
    for run, run_config, out in zip(runs, configs, outs, strict=True):
        run.config, run.out = run_config, out
        objective = TrainingObjective(run.sae, run_config, run.variance)
        run.module = objective
        if distributed.is_distributed():
            run.module = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
        run.window = torch.zeros(len(STAT_NAMES) + run.sae.d_out, dtype=torch.float64, device=device)
        run.wandb = _start_wandb(run_config, run.sae.cfg, run) if rank == 0 else None

    total = config.total_steps
    per_shard = config.batch_size // n_shards
    use_autocast = config.autocast and device.type == "cuda"
    start = runs[0].step
    description = "train SAE" if len(runs) == 1 else f"train {len(runs)} SAEs"
    bar = tqdm(total=total, initial=start, disable=not progress or rank != 0, file=sys.stderr, desc=description)
    for step in range(start, total):
        batch = torch.cat([streams[shard].next_batch(per_shard) for shard in shards]).to(device, non_blocking=True)
        for index, run in enumerate(runs):
            _train_step(run, batch, step, use_autocast)
            for callback in callbacks:
                callback(run.step, {**run.metrics, "run": index} if len(runs) > 1 else run.metrics)
        if progress and runs[0].metrics:
            shown = runs[0].metrics
            bar.set_postfix(
                loss=f"{shown['loss']:.4f}", ev=f"{shown['explained_variance']:.3f}", l0=f"{shown['l0']:.1f}",
                dead=f"{shown['dead_fraction']:.3f}",
            )
        bar.update(1)
        if runs[0].step % config.checkpoint_every == 0 and runs[0].step < total:
            positions = _stream_positions(streams)
            for run in runs:
                if run.out is not None:
                    _checkpoint(run, n_shards, positions)
    bar.close()
    for run in runs:
        if run.out is not None and rank == 0:
            save_sae_atomically(run.sae, run.out)
    distributed.barrier()
    for run in runs:
        if run.wandb is not None:
            run.wandb.finish()
    return [run.sae.eval() for run in runs]


def _train_step(run: _Run, batch: Tensor, step: int, use_autocast: bool) -> None:
    config = run.config
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate_at(step, config.learning_rate(run.sae.d_sae), config)
    inputs = batch[:, run.inputs]
    targets = batch[:, run.targets] if run.targets is not None else None
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
        loss, stats, fired = run.module(inputs, run.dead_latents, sparsity_coefficient_at(step, config), targets)
    loss.backward()
    optimisation_step(run.sae, run.optimizer, config.grad_clip)
    # One collective per step and SAE: which latents fired anywhere, and the statistics for the progress bar.
    d_sae = run.sae.d_sae
    reduced = distributed.sum_over_processes(torch.cat([fired.double(), stats.double()]))
    fired_anywhere = reduced[:d_sae] > 0
    run.tokens_since_fired = torch.where(fired_anywhere, 0, run.tokens_since_fired + config.batch_size)
    run.window += reduced[d_sae:]
    run.step = step + 1
    if run.step % config.log_every == 0 or run.step == config.total_steps:
        # The dead set is read back here, every log_every steps, so the steps between need no host sync.
        run.dead_latents = _dead_latents(run, config)
        run.metrics = summarise(run.window, run.dead_latents.numel() / d_sae)
        run.window.zero_()
        if run.wandb is not None:
            run.wandb.log({**run.metrics, "lr": learning_rate_at(step, config.learning_rate(d_sae), config)}, step=run.step)


def _check_shared_settings(configs: list[TrainConfig]) -> None:
    shared = ("batch_size", "tokens_budget", "seed", "data_shards", "init_tokens", "autocast")
    for name in shared:
        values = {getattr(config, name) for config in configs}
        if len(values) > 1:
            raise ConfigError(
                f"SAEs trained from one stream share {name}, but the configs have {sorted(map(str, values))}; "
                f"give them the same {name} (the data settings {shared} are common)."
            )


def _run_columns(columns: dict[str | None, slice], config: TrainConfig) -> tuple[slice, slice | None]:
    """The columns of the shared batch a run reads, and (for a transcoder) those it predicts."""

    def find(name: str | None, role: str) -> slice:
        if name is None:
            if len(columns) > 1:
                raise ConfigError(
                    f"the data holds several hooks {list(columns)}; set the config's {role} to the one to train on."
                )
            return next(iter(columns.values()))
        if name in columns:
            return columns[name]
        if len(columns) == 1 and next(iter(columns)) is None:
            return next(iter(columns.values()))
        raise ConfigError(f"the config's {role} is {name!r}, but the data holds {list(columns)}; read that hook too.")

    inputs = find(config.hook_name, "hook_name")
    targets = find(config.hook_name_out, "hook_name_out") if config.hook_name_out is not None else None
    return inputs, targets


def _stream_positions(streams: dict[int, TokenStream]) -> dict[str, dict[str, int]]:
    positions: dict[str, dict[str, int]] = {}
    for part in distributed.gather_objects({str(shard): stream.state_dict() for shard, stream in streams.items()}):
        positions.update(part)
    return positions


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


def _sae_config(
    data: ActivationData, config: TrainConfig, d_in: int, d_out: int | None, scaling_factor: float | None
) -> SAEConfig:
    d_sae = config.sae_width(d_in)
    prefixes = config.prefixes
    if prefixes is not None and prefixes[-1] < d_sae:
        prefixes = (*prefixes, d_sae)
    transcoder = {}
    if d_out is not None:
        transcoder = {"d_out": d_out, "hook_name_out": config.hook_name_out, "skip_connection": config.skip_connection,
                      "apply_b_dec_to_input": False}
    return SAEConfig(
        d_in=d_in, d_sae=d_sae, architecture=config.architecture, k=config.k, prefixes=prefixes,
        normalize_activations=config.normalize_activations, scaling_factor=scaling_factor,
        hook_name=config.hook_name or data.hook_name, token_set=data.token_set, model_name=data.model_name, **transcoder,
    )


def _initial_sample(config: TrainConfig, streams: dict[int, TokenStream], n_shards: int) -> Float[Tensor, "tokens d"]:
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
    data: ActivationData, sample: Tensor, config: TrainConfig, device: torch.device, inputs: slice, targets: slice | None,
) -> _Run:
    x = sample[:, inputs]
    y = sample[:, targets] if targets is not None else None
    scaling_factor = None
    if config.normalize_activations == "scaling_factor":
        scaling_factor = float(math.sqrt(x.shape[1]) / x.norm(dim=1).mean())
    sae_config = _sae_config(data, config, x.shape[1], None if y is None else y.shape[1], scaling_factor)
    target, _ = normalize(x, sae_config.normalize_activations, sae_config.scaling_factor)
    if y is not None:
        target = y
    variance = float((target - target.mean(0)).pow(2).sum(1).mean())
    if not variance > 0:
        raise ConfigError("the first training tokens are all identical (zero variance); check the hook and the images.")
    torch.manual_seed(config.seed)
    sae = SAE(sae_config)
    with torch.no_grad():
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        if y is None:
            sae.W_enc.copy_(sae.W_dec.T)
        # b_dec is what the reconstruction starts from: the centre of the target (a transcoder's output).
        if config.b_dec_init == "mean":
            sae.b_dec.copy_(target.mean(0))
        elif config.b_dec_init == "geometric_median":
            sae.b_dec.copy_(geometric_median(target))
    sae.prepare_for_training(config)
    sae = sae.to(device).train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.learning_rate(sae.d_sae), betas=config.adam_betas)
    tokens_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
    run = _Run(sae, optimizer, variance, 0, tokens_since_fired)
    run.inputs, run.targets = inputs, targets
    return run


def _resumed_run(
    checkpoint: Path, data: ActivationData, config: TrainConfig, n_shards: int, device: torch.device,
    inputs: slice, targets: slice | None,
) -> _Run:
    sae, state = read_checkpoint(checkpoint, device=device)
    saved_config = TrainConfig.from_dict(json.loads(state["train_config"]))
    d_out = None if targets is None else targets.stop - targets.start
    expected = _sae_config(data, config, inputs.stop - inputs.start, d_out, sae.cfg.scaling_factor)
    mismatches = [
        f"{name} {getattr(sae.cfg, name)!r} (this run: {getattr(expected, name)!r})"
        for name in ("architecture", "k", "d_in", "d_sae", "d_out", "prefixes", "hook_name", "hook_name_out",
                     "token_set", "normalize_activations")
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
    run = _Run(sae, optimizer, float(state["variance"]), int(state["step"]), state["tokens_since_fired"].to(device))
    run.dead_latents = state["dead_latents"].to(device) if "dead_latents" in state else _dead_latents(run, config)
    run.wandb_id = state.get("wandb_id")
    run.inputs, run.targets = inputs, targets
    return run


def _checkpoint(run: _Run, n_shards: int, positions: dict[str, dict[str, int]]) -> None:
    if distributed.rank() == 0:
        state: dict[str, Any] = {
            "step": run.step,
            "optimizer": run.optimizer.state_dict(),
            "tokens_since_fired": run.tokens_since_fired.cpu(),
            "dead_latents": run.dead_latents.cpu(),
            "variance": run.variance,
            "streams": positions,
            "n_shards": n_shards,
            "train_config": json.dumps(run.config.to_dict()),
            "wandb_id": run.wandb_id,
        }
        write_checkpoint(run.out, run.step, run.sae, state, run.config.keep_checkpoints)
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
