"""SAE training throughput (tokens per second) of the TopK trainer against a dense-decode baseline, in one run.

Both rows run the same full training step (forward, loss, backward, decoder-gradient projection, gradient
clipping, Adam, unit-norm decoder rows) on the same batch and weights. ``ours`` is the trainer's objective:
``encode_topk`` + ``decode_topk`` with their sparse backward passes. ``dense`` is the TopK SAE as peers
train it: top-k of the pre-activations, scattered into an ``[N, d_sae]`` zero tensor, decoded by a GEMM,
differentiated by autograd. ``ours+auxk`` adds the AuxK loss with 10% of the latents dead. On CUDA the
forward runs under bfloat16 autocast, as the trainer runs it (``--no-autocast`` for float32).

    python benchmarks/bench_train.py --quick           # small shapes, smoke run
    python benchmarks/bench_train.py                   # d_in 768, d_sae 12288 and 49152, k 32, batch 1024
    python benchmarks/bench_train.py --json benchmarks/results/bench_train_cpu.json
    python benchmarks/bench_train.py --device cuda --batch 4096 --repeats 20   # as benchmarks/gpu/run.sh does
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from vit_sae_hooks import SAE, SAEConfig
from vit_sae_hooks.training import TrainConfig
from vit_sae_hooks.training.objective import TrainingObjective
from vit_sae_hooks.training.trainer import optimisation_step


class DenseObjective(TrainingObjective):
    """The same TopK reconstruction loss with a dense ``[N, d_sae]`` code, the peer libraries' formulation."""

    def forward(self, x, dead, sparsity_coefficient):
        sae = self.sae
        sae_in = x - sae.b_dec
        pre = sae_in @ sae.W_enc + sae.b_enc
        values, indices = pre.topk(sae.cfg.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
        recon = acts @ sae.W_dec + sae.b_dec
        loss = (x - recon).pow(2).sum(-1).mean() / self.variance
        return loss, None, None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="d_in 256, d_sae 4096 only")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-autocast", action="store_true", help="on CUDA, train in float32 (the trainer's autocast=False)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    autocast = device.type == "cuda" and not args.no_autocast
    d_in = 256 if args.quick else 768
    widths = [16 * d_in] if args.quick else [16 * d_in, 64 * d_in]
    batch = args.batch or 1024
    results = []
    for d_sae in widths:
        torch.manual_seed(0)
        config = TrainConfig(architecture="topk", k=args.k, d_sae=d_sae, batch_size=batch, tokens_budget=batch)
        x = torch.randn(batch, d_in, device=device)
        dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
        some_dead = dead.clone()
        some_dead[: d_sae // 10] = True
        rows = {
            "dense": (DenseObjective, dead),
            "ours": (TrainingObjective, dead),
            "ours+auxk": (TrainingObjective, some_dead),
        }
        steps = {}
        for name, (objective_class, dead_mask) in rows.items():
            sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=args.k)).to(device)
            objective = objective_class(sae, config, variance=float(d_in))
            optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)

            def step(objective=objective, sae=sae, optimizer=optimizer, dead_mask=dead_mask, x=x) -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = objective(x, dead_mask, 0.0)[0]
                loss.backward()
                optimisation_step(sae, optimizer, grad_clip=1.0)
                _sync(device)

            step()  # warm-up: allocator, Adam state
            steps[name] = step
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.repeats):
            # Rounds interleave the rows so machine drift spreads over all of them.
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        dense = statistics.median(times["dense"])
        for name in rows:
            seconds = statistics.median(times[name])
            results.append({
                "row": name, "d_in": d_in, "d_sae": d_sae, "k": args.k, "batch": batch, "autocast_bf16": autocast,
                "ms_per_step": seconds * 1e3, "tokens_per_s": batch / seconds, "speedup_vs_dense": dense / seconds,
            })
    print(f"training step, d_in {d_in}, k {args.k}, batch {batch}, {device}"
          f"{' (bfloat16 autocast)' if autocast else ''}, median of {args.repeats}")
    print(f"{'row':<10} {'d_sae':>7} {'ms/step':>9} {'tokens/s':>10} {'x dense':>8}")
    for row in results:
        print(f"{row['row']:<10} {row['d_sae']:>7} {row['ms_per_step']:>9.1f} {row['tokens_per_s']:>10.0f} "
              f"{row['speedup_vs_dense']:>8.2f}")
    if args.json:
        machine = {"device": str(device), "platform": platform.platform(), "processor": platform.processor(),
                   "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
