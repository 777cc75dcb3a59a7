"""A feature circuit over three SAEs against the brute-force route: exactly ablating every candidate node.

Attribution ranks every node of every SAE from a fixed number of passes (``steps`` per hook, plus ``steps`` per
kept target node for the edges), whatever ``d_sae``; exact ablation needs one forward pass per node. The
brute force here is the library's fastest exact route, ``patching.ablation_sweep`` (encode once, then only the
blocks after the hook, batched over features), timed on a random sample of the candidate nodes (every feature
active on the images) and extrapolated per node to all of them; the sample also gives the rank agreement
(Spearman) between attribution and exact ablation. The ViT is random with the ViT-B/32 shape and the SAEs are
random TopK SAEs (weights do not change the cost), each with its decoder bias at the mean activation of its hook
on the images, as training initialises it: with ``b_dec = 0`` the zero baseline would put the whole residual
stream at the origin, where the next LayerNorm jumps, and integrated gradients could not be complete.

    python benchmarks/bench_circuits.py --quick      # 4 layers, small SAEs: a smoke run
    python benchmarks/bench_circuits.py --json benchmarks/results/bench_circuits_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.experiments import circuits, patching


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [x.argsort().argsort().double() for x in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def _sae(hook_name: str, d_sae: int, k: int, seed: int) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=768, d_sae=d_sae, architecture="topk", k=k, hook_name=hook_name))
    with torch.no_grad():  # a decoder of unit directions and its transpose as encoder, as trained SAEs start
        directions = torch.nn.functional.normalize(torch.randn(d_sae, 768), dim=-1)
        sae.W_dec.copy_(directions)
        sae.W_enc.copy_(directions.T)
    return sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 layers, d_sae 768, 2 images")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--top-nodes", type=int, default=8)
    parser.add_argument("--sample", type=int, default=96, help="candidate nodes per SAE ablated exactly")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers, n_images, expansion, sample = (4, 2, 1, 16) if args.quick else (12, args.images, args.expansion, args.sample)
    torch.manual_seed(0)
    model = HookedViT(HookedViTConfig(n_layers=layers, d_model=768, n_heads=12, d_mlp=3072, image_size=224,
                                      patch_size=32, ln_pre=True, act_fn="quick_gelu", head_type="linear",
                                      d_output=10)).eval()
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in ((1, 2, 3) if args.quick else (3, 6, 9))]
    saes = [_sae(hook, 768 * expansion, args.k, seed) for seed, hook in enumerate(hooks)]
    images = torch.randn(n_images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(images, names_filter=hooks)
    with torch.no_grad():
        for sae in saes:
            sae.b_dec.copy_(cache[sae.hook_name].mean((0, 1)))

    def metric(output: torch.Tensor) -> torch.Tensor:
        return output[:, 0].mean()

    timings = {}
    start = time.perf_counter()
    circuit = circuits.feature_circuit(model, saes, images, metric, steps=args.steps, top_nodes=args.top_nodes)
    timings["circuit_ig_edges"] = time.perf_counter() - start
    start = time.perf_counter()
    circuits.feature_circuit(model, saes, images, metric, steps=args.steps, edges=False)
    timings["circuit_ig_nodes_only"] = time.perf_counter() - start
    start = time.perf_counter()
    linear = circuits.feature_circuit(model, saes, images, metric, method="attribution", edges=False)
    timings["circuit_attribution_nodes_only"] = time.perf_counter() - start

    # Brute force: exact single-node ablation (the fast sweep) of a random sample of each SAE's active features.
    generator = torch.Generator().manual_seed(2)
    candidates, brute_seconds, measured, rhos = 0, 0.0, 0, {}
    completeness = {hook: (float(circuit.node_attributions(hook).sum()), circuit.clean_metric - circuit.baseline_metric[hook])
                    for hook in hooks}
    for sae in saes:
        attributions = linear.node_attributions(sae.hook_name)[:-1]
        active = (attributions != 0).nonzero().flatten()
        candidates += len(active) + 1  # the features active on the images, and the error node
        chosen = active[torch.randperm(len(active), generator=generator)[: min(sample, len(active))]]
        start = time.perf_counter()
        exact = -patching.ablation_sweep(model, sae, images, chosen.tolist(), metric)
        brute_seconds += time.perf_counter() - start
        measured += len(chosen)
        rhos[sae.hook_name] = {
            "attribution": _spearman(attributions[chosen], exact),
            "integrated_gradients": _spearman(circuit.node_attributions(sae.hook_name)[:-1][chosen], exact),
        }
    per_node = brute_seconds / measured
    timings["brute_force_all_candidates_extrapolated"] = per_node * candidates
    ratio_ig = timings["brute_force_all_candidates_extrapolated"] / timings["circuit_ig_nodes_only"]
    ratio_linear = timings["brute_force_all_candidates_extrapolated"] / timings["circuit_attribution_nodes_only"]

    print(f"3 TopK SAEs (d_sae {768 * expansion}, k {args.k}) at {hooks}, ViT-B/32 shape with {layers} layers, "
          f"{n_images} images, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"feature_circuit, integrated gradients ({args.steps} steps), nodes and edges (top {args.top_nodes} per hook): "
          f"{timings['circuit_ig_edges']:.1f} s ({len(circuit.nodes)} nodes, {len(circuit.edges)} edges)")
    print(f"feature_circuit, integrated gradients, nodes only: {timings['circuit_ig_nodes_only']:.1f} s")
    print(f"feature_circuit, attribution (one step), nodes only: {timings['circuit_attribution_nodes_only']:.1f} s")
    print(f"brute force (exact ablation sweep): {per_node * 1000:.1f} ms per node measured on {measured} nodes; "
          f"{candidates} candidate nodes -> {timings['brute_force_all_candidates_extrapolated']:.1f} s extrapolated")
    print(f"ratio brute force / circuit: {ratio_ig:.1f}x (integrated gradients), {ratio_linear:.1f}x (attribution)")
    for hook, (total, exact) in completeness.items():
        print(f"completeness at {hook}: integrated gradients sum {total:+.4f}, exact {exact:+.4f}")
    for hook, values in rhos.items():
        print(f"Spearman vs exact ablation on the sampled nodes at {hook}: attribution {values['attribution']:.2f}, "
              f"integrated gradients {values['integrated_gradients']:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"hooks": hooks, "layers": layers, "images": n_images, "d_sae": 768 * expansion, "k": args.k,
                       "steps": args.steps, "top_nodes": args.top_nodes, "seconds": timings,
                       "brute_force_nodes_measured": measured, "candidate_nodes": candidates,
                       "ratio_brute_force_over_ig_nodes": ratio_ig, "ratio_brute_force_over_attribution": ratio_linear,
                       "spearman_on_sample": rhos, "completeness_ig_sum_vs_exact": completeness,
                       "threads": torch.get_num_threads(),
                       "machine": platform.processor() or platform.machine()}, handle, indent=1)


if __name__ == "__main__":
    main()
