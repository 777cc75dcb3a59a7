"""Time SAELens's TopKSAE forward against the encode GEMM floor, in an environment that has sae_lens.

SAELens pins TransformerLens < 4 and this library needs 4, so the two cannot share one
environment. ``bench_sae.py --saelens-python /path/to/python`` runs this script with that
interpreter for each N and reports SAELens's time as a ratio to the floor measured here, in the
same process, with the same tensors (the same seeded recipe as ``bench_sae.make_sae``).
Needs only torch and sae_lens; prints one JSON object.

    /path/to/saelens-env/bin/python benchmarks/saelens_topk.py --n 1600
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=49152)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--statistic", choices=["min", "median"], default="min")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import sae_lens
    from sae_lens import TopKSAE, TopKSAEConfig

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.d_in, generator=generator)
    weights = {
        "W_enc": torch.randn(args.d_in, args.d_sae, generator=generator) / args.d_in**0.5,
        "b_enc": 0.1 * torch.randn(args.d_sae, generator=generator),
        "W_dec": torch.randn(args.d_sae, args.d_in, generator=generator) / args.d_in**0.5,
        "b_dec": torch.randn(args.d_in, generator=generator),
    }
    # apply_b_dec_to_input=False: the same arithmetic as bench_sae's other rows (x @ W_enc + b_enc).
    sae = TopKSAE(TopKSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, dtype="float32", device="cpu",
                                apply_b_dec_to_input=False))
    with torch.no_grad():
        for name, value in weights.items():
            getattr(sae, name).copy_(value)
    floor_out = torch.empty(args.n, args.d_sae)
    candidates = {
        "gemm_floor": lambda: torch.mm(x, weights["W_enc"], out=floor_out),
        "saelens_topk": lambda: sae(x),
    }
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.no_grad():
        for function in candidates.values():
            function()
        for _ in range(args.repeats):
            for name, function in candidates.items():
                start = time.perf_counter()
                function()
                samples[name].append(time.perf_counter() - start)
    summarise = min if args.statistic == "min" else statistics.median
    print(json.dumps({"sae_lens": sae_lens.__version__, "threads": torch.get_num_threads(),
                      "seconds": {name: summarise(times) for name, times in samples.items()}}))


if __name__ == "__main__":
    main()
