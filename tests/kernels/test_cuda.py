"""CUDA: the safe default dispatch (checked everywhere) and, on a GPU, every CUDA path against a reference.

On a GPU: each kernel backend's encode/decode, forward and backward, against a float64 dense reference at
CLIP shapes in float32, bfloat16 and float16; splicing, ablation and the ablation sweep against the CPU;
bfloat16-autocast training against float32; torchrun with NCCL; device moves; and the hot loops' host
synchronisations. Run there with ``pytest -m cuda`` (``benchmarks/gpu/run.sh`` does). Without a GPU
every test marked ``cuda`` is skipped and says why.
"""

from __future__ import annotations

import copy
import functools
import itertools
import os
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig, kernels
from vit_sae_hooks.experiments import ablate_features, circuits, patching
from vit_sae_hooks.kernels import (
    decode_topk,
    encode_batch_topk,
    encode_topk,
    resolved_backend,
    use_backend,
)
from vit_sae_hooks.training import TensorActivations, TrainConfig, train_sae

from helpers.kernel_reference import (
    TOLERANCE,
    assert_close_scaled,
    assert_topk_matches,
    check_encode_decode,
    error_scale,
    make_encoder_problem,
    reference_pre,
)

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device here (torch.cuda.is_available() is False); run on a GPU machine: pytest -m cuda"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def on_cuda(test):
    """Mark ``test`` as a CUDA test, skipped with the reason where no GPU is present."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)(test))


CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)]


def _skip_unless_backend_runs(backend: str) -> None:
    if backend == "triton":
        pytest.importorskip("triton", reason="triton is not installed; backend='triton' cannot run")
    if backend == "native" and not kernels.native.available():
        pytest.skip(f"the native CPU kernel is unavailable: {kernels.native.status()}")


# ---------------------------------------------------------------- dispatch (runs everywhere)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_auto_runs_the_plain_torch_path_on_cuda_until_gpu_results_land(dtype):
    # A stand-in for a CUDA tensor: dispatch reads only the device, dtype and shape, so the rule is checked
    # on machines without a GPU too.
    cuda_tensor = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), dtype=dtype, shape=(16384, 768))
    assert resolved_backend(cuda_tensor, 49152) == "torch"
    assert resolved_backend(cuda_tensor, 1 << 30) == "torch"  # no chunking on CUDA either
    with use_backend("triton"):
        assert resolved_backend(cuda_tensor, 49152) == "triton"
    assert resolved_backend(cuda_tensor, 49152, backend="compile") == "compile"


@on_cuda
def test_auto_on_a_real_cuda_tensor_is_torch():
    for dtype in FLOAT_DTYPES:
        assert resolved_backend(torch.zeros(4, 8, device="cuda", dtype=dtype), 64) == "torch"


@pytest.mark.parametrize(
    ("device", "backend"),
    [("cpu", "torch"), ("cpu", "chunked"), ("cpu", "native"),
     *(pytest.param("cuda", backend, marks=CUDA_MARKS) for backend in ("torch", "chunked", "triton"))],
)
def test_encode_under_bfloat16_autocast_returns_the_inputs_dtype_and_decodes(device, backend):
    # The trainer runs the objective under bfloat16 autocast on CUDA: the encoder's GEMM may then run in
    # bfloat16, and the decode must still accept the values (it used to raise on the torch path).
    _skip_unless_backend_runs(backend)
    x, W_enc, b_enc = (t.to(device).requires_grad_(True) for t in _float_problem(9, 24, 40 * 32, seed=3))
    W_dec = (torch.randn(40 * 32, 24, generator=torch.Generator().manual_seed(4)) / 5).to(device).requires_grad_(True)
    with torch.autocast(device, dtype=torch.bfloat16):
        values, indices = encode_topk(x, W_enc, b_enc, 6, backend=backend)
        recon = decode_topk(values, indices, W_dec, None, backend=backend)
    assert values.dtype == recon.dtype == torch.float32
    recon.square().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in (x, W_enc, b_enc, W_dec))
    pre = x.detach().double() @ W_enc.detach().double() + b_enc.detach().double()
    # The GEMM saw bfloat16 inputs: selection and values are right to bfloat16's tolerance.
    atol = TOLERANCE[torch.bfloat16] * error_scale(x.detach(), W_enc.detach(), b_enc.detach())
    assert_topk_matches(values.detach().cpu(), indices.cpu(), pre.cpu(), 6, True, atol)


def _float_problem(n: int, d_in: int, d_sae: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d_in, generator=generator), torch.randn(d_in, d_sae, generator=generator) / d_in**0.5,
            0.1 * torch.randn(d_sae, generator=generator))


# ---------------------------------------------------------------- kernels at CLIP shapes
# (d_in, d_sae, k): a ViT-B/16 SAE at 64x expansion, and CLIP-Scope's ViT-L/14 SAE.
CLIP_SHAPES = [(768, 49152, 64), (1024, 65536, 32)]
# Tokens per backend: the default path and Triton at 16384 (a batch of 64 ViT-L/14 images), the opt-in
# paths at 4096, which keeps the whole file near two minutes on an H200.
ROWS = {"auto": 16384, "triton": 16384, "torch": 4096, "chunked": 4096, "compile": 4096}
SELECTION_ROWS = 2048
# Per-dtype tolerance as a fraction of the largest |pre-activation| (selection, values) or of the largest
# |expected| (reconstruction and gradients, 4x): 4 units in the last place of bfloat16 and float16 (output
# rounding is half of one), float32's accumulation error over d_in <= 1024 with room to spare.
CUDA_TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 4 * 2**-8, torch.float16: 4 * 2**-11}


@dataclass
class ClipProblem:
    x: torch.Tensor
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    grad_recon: torch.Tensor
    grad_values: torch.Tensor
    pre: torch.Tensor  # float64 pre-activations of the (rounded) inputs, [rows, d_sae]


@functools.lru_cache(maxsize=1)
def _clip_problem(d_in: int, d_sae: int, k: int, dtype: torch.dtype) -> ClipProblem:
    """Random inputs on the GPU in ``dtype`` and their float64 pre-activations, shared by the backends."""
    generator = torch.Generator(device="cuda").manual_seed(d_sae + k)
    n = max(ROWS.values())

    def draw(*shape: int, scale: float = 1.0) -> torch.Tensor:
        values = torch.randn(*shape, generator=generator, device="cuda", dtype=torch.float64)
        return (values * scale).to(dtype)

    x, W_enc, b_enc = draw(n, d_in), draw(d_in, d_sae, scale=d_in**-0.5), draw(d_sae, scale=0.1)
    W_dec, b_dec = draw(d_sae, d_in, scale=d_in**-0.5), draw(d_in)
    pre = torch.addmm(b_enc.double(), x.double(), W_enc.double())
    return ClipProblem(x, W_enc, b_enc, W_dec, b_dec, draw(n, d_in), draw(n, k), pre)


def _dense_reference_gradients(
    problem: ClipProblem, n: int, indices: torch.Tensor, active: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reconstruction and parameter gradients of the dense TopK SAE in float64 at the given latents.

    The same reference as ``kernel_reference.check_encode_decode`` (scatter the k values into zeros, dense
    decode, autograd), computed on the GPU: that one builds on the CPU, where these shapes take minutes.
    ``active`` is the ReLU mask of our forward, so values within tolerance of 0 cannot make it flaky.
    """
    leaves = [t.double().requires_grad_(True) for t in
              (problem.x[:n], problem.W_enc, problem.b_enc, problem.W_dec, problem.b_dec)]
    x, W_enc, b_enc, W_dec, b_dec = leaves
    chosen = torch.addmm(b_enc, x, W_enc).gather(1, indices) * active
    dense = torch.zeros(n, W_enc.shape[1], dtype=torch.float64, device="cuda").scatter(1, indices, chosen)
    recon = torch.addmm(b_dec, dense, W_dec)
    loss = (recon * problem.grad_recon[:n].double()).sum() + (chosen * problem.grad_values[:n].double()).sum()
    loss.backward()
    return recon.detach(), [leaf.grad for leaf in leaves]


# Every backend in float32 and bfloat16; float16 (the same kernels as bfloat16 but for the cast) for the default
# path and Triton only; the compile backend in bfloat16 only (each dtype is another inductor build).
CLIP_CASES = [
    (shape, dtype, backend) for shape, dtype, backend in itertools.product(CLIP_SHAPES, FLOAT_DTYPES, ROWS)
    if (dtype != torch.float16 or backend in ("auto", "triton")) and (backend != "compile" or dtype == torch.bfloat16)
]


@on_cuda
@pytest.mark.parametrize(
    ("shape", "dtype", "backend"),
    CLIP_CASES,
    ids=lambda value: "x".join(map(str, value)) if isinstance(value, tuple) else str(value).removeprefix("torch."),
)
def test_every_backend_matches_float64_at_clip_shapes(shape, dtype, backend):
    _skip_unless_backend_runs(backend)
    d_in, d_sae, k = shape
    problem = _clip_problem(d_in, d_sae, k, dtype)
    n = ROWS[backend]
    leaves = [t.clone().requires_grad_(True) for t in
              (problem.x[:n], problem.W_enc, problem.b_enc, problem.W_dec, problem.b_dec)]
    x, W_enc, b_enc, W_dec, b_dec = leaves
    values, indices = encode_topk(x, W_enc, b_enc, k, backend=backend)
    recon = decode_topk(values, indices, W_dec, b_dec, backend=backend)
    ((recon * problem.grad_recon[:n]).sum() + (values * problem.grad_values[:n]).sum()).backward()
    assert values.dtype == recon.dtype == dtype and indices.dtype == torch.int64
    for name, tensor in zip(("values", "reconstruction", "x", "W_enc", "b_enc", "W_dec", "b_dec"),
                            (values, recon, *(leaf.grad for leaf in leaves)), strict=True):
        assert bool(torch.isfinite(tensor).all()), f"{name} has NaN or inf"

    tolerance = CUDA_TOLERANCE[dtype]
    # The selection check walks rows in Python: its first rows stand for all (the gradients use every row).
    rows = slice(0, SELECTION_ROWS)
    pre = problem.pre[rows]
    assert_topk_matches(values.detach()[rows], indices[rows], pre, k, True, tolerance * float(pre.abs().max()))
    ref_recon, ref_grads = _dense_reference_gradients(problem, n, indices, (values.detach() > 0).double())
    assert_close_scaled(recon.detach(), ref_recon, 4 * tolerance, "reconstruction")
    for name, ours, ref in zip(("x", "W_enc", "b_enc", "W_dec", "b_dec"), leaves, ref_grads, strict=True):
        assert ours.grad.dtype == dtype, name
        assert_close_scaled(ours.grad, ref, 4 * tolerance, name)


# Small and ragged: several latent blocks, tails, k = d_sae, no bias, no rows.
RAGGED = [
    (5, 7, 40, 3, torch.float32, True, True),
    (9, 33, 130, 8, torch.float32, False, True),
    (3, 20, 17, 17, torch.float32, True, False),
    (17, 24, 70, 5, torch.bfloat16, True, True),
    (4, 12, 50, 4, torch.float16, False, False),
    (0, 8, 20, 2, torch.float32, True, True),
    (300, 40, 600, 16, torch.float32, True, True),
]


def _on_cuda(function):
    """Run a CPU-built problem through ``function`` on the GPU and bring the results back, keeping autograd."""

    @functools.wraps(function)
    def wrapper(*tensors_then_rest):
        moved = [t.to("cuda") if isinstance(t, torch.Tensor) else t for t in tensors_then_rest]
        result = function(*moved)
        return tuple(r.cpu() for r in result) if isinstance(result, tuple) else result.cpu()

    return wrapper


@on_cuda
@pytest.mark.parametrize("backend", ["torch", "chunked", "triton"])
@pytest.mark.parametrize(("n", "d_in", "d_sae", "k", "dtype", "apply_relu", "with_bias"), RAGGED)
def test_ragged_shapes_on_cuda_match_the_dense_reference(backend, n, d_in, d_sae, k, dtype, apply_relu, with_bias):
    _skip_unless_backend_runs(backend)
    encode = functools.partial(encode_topk, backend=backend, chunk_size=7 if backend == "chunked" else None)
    decode = functools.partial(decode_topk, backend=backend)
    check_encode_decode(_on_cuda(encode), _on_cuda(decode), n, d_in, d_sae, k, dtype, 11, apply_relu, with_bias)


# ---------------------------------------------------------------- experiments, device moves
def _tiny_model_and_sae(dtype: torch.dtype = torch.float64) -> tuple[HookedViT, SAE]:
    torch.manual_seed(0)
    config = HookedViTConfig(n_layers=3, d_model=48, n_heads=4, d_mlp=96, image_size=32, patch_size=8, ln_pre=True,
                             act_fn="gelu", head_type="linear", d_output=10)
    model = HookedViT(config).to(dtype).eval()
    sae = SAE(SAEConfig(d_in=48, d_sae=384, architecture="topk", k=12, hook_name="blocks.1.hook_resid_post",
                        normalize_activations="layer_norm", dtype=str(dtype).removeprefix("torch.")))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
    return model, sae


def _images(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=dtype)


def _experiments(model: HookedViT, sae: SAE, images: torch.Tensor) -> dict[str, torch.Tensor]:
    acts = f"{sae.hook_name}.hook_sae_acts_post"
    per_image = torch.zeros(images.shape[0], model.cfg.n_ctx, dtype=torch.bool)
    per_image[::2, 1::3] = True

    def metric(output: torch.Tensor) -> torch.Tensor:
        return (output[:, 0] - output[:, 3]).mean()

    with torch.no_grad():
        spliced, cache = model.run_with_cache_with_saes(images, saes=[sae], names_filter=[acts])
        return {
            "spliced": spliced,
            "feature activations": cache[acts],
            "spliced on patches": model.run_with_saes(images, saes=[sae], tokens="patches"),
            "spliced by a per-image mask": model.run_with_saes(images, saes=[sae], tokens=per_image),
            "ablated": model.run_with_saes(images, saes=[sae], use_error_term=True,
                                           fwd_hooks=[(acts, ablate_features([1, 5, 9, 200]))]),
            "sweep (fast)": patching.ablation_sweep(model, sae, images, list(range(0, 384, 24)), metric, method="fast"),
            "sweep (naive)": patching.ablation_sweep(model, sae, images, list(range(0, 384, 24)), metric,
                                                     method="naive"),
            **_patching_and_circuits(model, sae, images, metric),
        }


def _patching_and_circuits(model: HookedViT, sae: SAE, images: torch.Tensor, metric) -> dict[str, torch.Tensor]:
    corrupted = images.flip(0)
    attribution = patching.feature_attribution(model, sae, images, corrupted, metric)
    circuit = circuits.feature_circuit(model, [sae], images, metric, steps=4, top_nodes=5)
    with torch.no_grad():
        return {
            "activation patching (resid)": patching.resid(model, images, corrupted, metric),
            "activation patching (heads)": patching.heads(model, images, corrupted, metric),
            "activation patching (heads by position)": patching.heads_by_position(model, images, corrupted, metric,
                                                                                  layers=[1]),
            "attribution patching": attribution.scores,
            "circuit node attributions": circuit.node_attributions(sae.hook_name),
        }


@on_cuda
def test_splicing_ablation_patching_and_circuits_on_cuda_equal_the_cpu_results():
    # float64 on both devices, so rounding cannot flip a top-k choice: what differs is the device plumbing.
    model, sae = _tiny_model_and_sae()
    images = _images()
    expected = _experiments(model, sae, images)
    results = _experiments(copy.deepcopy(model).to("cuda"), copy.deepcopy(sae).to("cuda"), images.to("cuda"))
    for name, value in results.items():
        assert value.is_cuda, name
        assert expected[name].abs().max() > 0, name
        torch.testing.assert_close(value.cpu(), expected[name], rtol=1e-9, atol=1e-11, msg=lambda m, n=name: f"{n}: {m}")


@on_cuda
def test_hooked_vit_and_sae_move_to_cuda_and_back(tmp_path):
    model, sae = _tiny_model_and_sae()
    images = _images()
    tokens = torch.randn(5, 48, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def both_states() -> dict[str, torch.Tensor]:
        return {**model.state_dict(), **{f"sae.{name}": tensor for name, tensor in sae.state_dict().items()}}

    state = {name: tensor.clone() for name, tensor in both_states().items()}
    expected_logits, expected_recon = model(images), sae(tokens)
    model.to("cuda")
    sae.to("cuda")
    for tensor in itertools.chain(model.parameters(), model.buffers(), sae.parameters(), sae.buffers()):
        assert tensor.is_cuda and tensor.dtype == torch.float64
    torch.testing.assert_close(model(images.cuda()).cpu(), expected_logits, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(sae(tokens.cuda()).cpu(), expected_recon, rtol=1e-9, atol=1e-11)
    model.to("cpu")
    sae.to("cpu")
    moved_back = both_states()
    assert moved_back.keys() == state.keys()
    for name, tensor in moved_back.items():
        assert tensor.device.type == "cpu" and torch.equal(tensor, state[name]), name
    # Loading straight onto the GPU in bfloat16, and saving from it.
    loaded = HookedViT.from_pretrained(model.save_pretrained(tmp_path / "model"), device="cuda", dtype=torch.bfloat16)
    assert all(p.is_cuda and p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert loaded(images.cuda().bfloat16()).shape == (4, 10)
    half_sae = sae.to("cuda", torch.bfloat16)
    assert half_sae(torch.randn(3, 48, device="cuda")).dtype == torch.float32  # forward returns the input's dtype
    reloaded = SAE.load(half_sae.save(tmp_path / "sae"))
    assert reloaded.W_enc.dtype == torch.bfloat16 and torch.equal(reloaded.W_enc, half_sae.W_enc.cpu())


# ---------------------------------------------------------------- training
def _sparse_tokens(d: int, n_atoms: int, n: int, seed: int = 0) -> torch.Tensor:
    """CPU tokens made of 8 of ``n_atoms`` unit directions, plus noise and an offset (as test_training.sparse_data).

    Drawn on the GPU, where it takes milliseconds; kept on the CPU, where training data usually waits.
    """
    generator = torch.Generator(device="cuda").manual_seed(seed)
    dictionary = torch.randn(n_atoms, d, generator=generator, device="cuda")
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    atoms = torch.randint(0, n_atoms, (n, 8), generator=generator, device="cuda")
    weights = torch.rand(n, 8, generator=generator, device="cuda") + 0.5
    tokens = torch.nn.functional.embedding_bag(atoms, dictionary, per_sample_weights=weights, mode="sum")
    return (tokens + 0.01 * torch.randn(n, d, generator=generator, device="cuda") + 0.3).cpu()


# The bfloat16-autocast run's mean loss over its last 20 steps may differ from the float32 run's by at
# most this fraction of it. Calibrated with the same loop under CPU autocast (bfloat16 GEMM inputs, float32
# accumulation; d_in 128, d_sae 2048, batch 2048, 200 steps, seeds 0 and 1): the two differed by 0.01%,
# while the loss itself fell 5x.
AUTOCAST_LOSS_BAND = 0.02


@on_cuda
def test_bfloat16_autocast_training_stays_within_the_band_of_float32():
    tokens = _sparse_tokens(d=256, n_atoms=2048, n=200_000)
    last_losses = {}
    for autocast in (False, True):
        losses: list[float] = []

        def record(step: int, metrics: dict[str, float], losses: list[float] = losses) -> None:
            if step % 20 == 0:  # metrics then hold the mean of the last 20 steps
                losses.append(metrics["loss"])

        config = TrainConfig(k=32, expansion_factor=16, batch_size=4096, tokens_budget=200 * 4096, warmup_steps=20,
                             log_every=20, autocast=autocast, seed=0)
        train_sae(TensorActivations(tokens), config, device="cuda", progress=False, callbacks=[record])
        # It learns: on the CPU this loop (float32) fell from 0.89 in the first 20 steps to 0.48 in the last.
        assert len(losses) == 10 and losses[-1] < 0.7 * losses[0], losses
        last_losses[autocast] = losses[-1]
    fp32, bf16 = last_losses[False], last_losses[True]
    assert abs(bf16 - fp32) <= AUTOCAST_LOSS_BAND * fp32, f"bfloat16 {bf16:.4f} vs float32 {fp32:.4f}"


# ---------------------------------------------------------------- host synchronisations in hot loops
@contextmanager
def _host_syncs() -> Iterator[list[str]]:
    """Collect the Python line of every synchronising CUDA call made inside the block (``file:line``)."""
    sites: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield sites
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for warning in caught:
        if "synchroniz" in str(warning.message):
            sites.append(f"{'/'.join(Path(warning.filename).parts[-3:])}:{warning.lineno}")


@on_cuda
@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encode_decode_forward_and_backward_make_no_host_sync(backend, dtype):
    _skip_unless_backend_runs(backend)
    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4096, 768, device="cuda", generator=generator).to(dtype)
    W_enc, W_dec = (torch.randn(shape, device="cuda", generator=generator).div(28).to(dtype).requires_grad_(True)
                    for shape in ((768, 49152), (49152, 768)))
    b_enc, b_dec = (torch.zeros(size, device="cuda", dtype=dtype, requires_grad=True) for size in (49152, 768))

    def step() -> None:
        values, indices = encode_topk(x, W_enc, b_enc, 64, backend=backend)
        decode_topk(values, indices, W_dec, b_dec, backend=backend).float().square().sum().backward()

    step()  # compilation, cuBLAS handles and the allocator's first blocks may synchronise once
    with _host_syncs() as sites:
        step()
    assert not sites, f"host synchronisations at {sorted(set(sites))}"


@on_cuda
def test_the_spliced_model_forward_makes_no_host_sync():
    model, sae = _tiny_model_and_sae(torch.float32)
    model, sae = model.to("cuda"), sae.to("cuda")
    images = _images(torch.float32).cuda()

    def forward() -> None:
        with torch.inference_mode():
            model.run_with_saes(images, saes=[sae], tokens="patches")

    forward()
    with _host_syncs() as sites:
        forward()
    assert not sites, f"host synchronisations at {sorted(set(sites))}"


@on_cuda
def test_training_steps_make_no_host_sync(record_property):
    tokens = _sparse_tokens(d=128, n_atoms=512, n=20_000)
    config = TrainConfig(k=16, expansion_factor=8, batch_size=2048, tokens_budget=8 * 2048, warmup_steps=2,
                         log_every=1000, seed=0)
    watched_steps = range(3, 6)  # steps 4 and 5 run entirely between the callbacks that switch the watch on and off

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def watch(step: int, metrics: dict[str, float]) -> None:
            torch.cuda.set_sync_debug_mode("warn" if step in watched_steps[:-1] else 0)

        try:
            train_sae(TensorActivations(tokens), config, device="cuda", progress=False, callbacks=[watch])
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sites = sorted({f"{'/'.join(Path(w.filename).parts[-3:])}:{w.lineno}"
                    for w in caught if "synchroniz" in str(w.message)})
    record_property("host_syncs", ", ".join(sites))
    assert not sites, f"host synchronisations per training step at {sites}"


# ---------------------------------------------------------------- batch top-k
@on_cuda
@pytest.mark.parametrize("backend", ["torch", "chunked", "triton"])
@pytest.mark.parametrize("apply_relu", [True, False])
def test_batch_topk_on_cuda_keeps_the_batchs_largest_as_float64_does(backend, apply_relu):
    _skip_unless_backend_runs(backend)
    n, d_sae, k = 512, 4096, 32
    x, W_enc, b_enc = make_encoder_problem(n, 64, d_sae, torch.float32, seed=5)
    leaves = [t.cuda().requires_grad_(True) for t in (x, W_enc, b_enc)]
    values, indices = encode_batch_topk(*leaves, k, apply_relu, backend=backend)
    dense = torch.zeros(n, d_sae, dtype=torch.float64).scatter_add(-1, indices.cpu(), values.detach().cpu().double())
    pre = reference_pre(x, W_enc, b_enc)
    scores = pre.relu() if apply_relu else pre
    total = k * n
    atol = CUDA_TOLERANCE[torch.float32] * error_scale(x, W_enc, b_enc)
    ours = dense.flatten().sort(descending=True).values[:total]
    torch.testing.assert_close(ours, scores.flatten().sort(descending=True).values[:total], atol=atol, rtol=0)
    kept = dense != 0
    torch.testing.assert_close(dense[kept], scores[kept], atol=atol, rtol=0)
    values.sum().backward()  # d/d b_enc of the kept values: how many tokens keep each latent
    expected = (kept & (dense > 0) if apply_relu else kept).sum(0).double()
    torch.testing.assert_close(leaves[2].grad.cpu().double(), expected, atol=1e-3, rtol=0)


# ---------------------------------------------------------------- torchrun (last: the slowest to start)
NCCL_TRAINING = """
import sys

import torch
import torch.distributed as dist

from vit_sae_hooks.training import TensorActivations, TrainConfig, distributed, train_sae

device = distributed.init_from_environment()
assert device.type == "cuda", device
# The library starts no process group for one process; start NCCL as a multi-GPU run's processes do.
dist.init_process_group("nccl", device_id=device)
total = torch.full((4,), float(dist.get_rank() + 1), device=device)
dist.all_reduce(total)
assert total.tolist() == [1.0] * 4, total
print("nccl all_reduce ok:", dist.get_backend(), dist.get_world_size())
tokens = torch.randn(20000, 64, generator=torch.Generator().manual_seed(0))
config = TrainConfig(k=8, expansion_factor=4, batch_size=1024, tokens_budget=8192, init_tokens=2048, warmup_steps=2)
sae = train_sae(TensorActivations(tokens), config, out=sys.argv[1], device=device, progress=False)
print("trained on", sae.W_enc.device)
dist.destroy_process_group()
"""


def _torchrun(arguments: list[str], timeout: int = 90) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *arguments]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@on_cuda
def test_torchrun_one_process_trains_on_the_gpu_next_to_an_nccl_group(tmp_path):
    script = tmp_path / "train_nccl.py"
    script.write_text(NCCL_TRAINING)
    done = _torchrun([str(script), str(tmp_path / "sae")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nccl all_reduce ok: nccl 1" in done.stdout and "trained on cuda:0" in done.stdout
    assert SAE.load(tmp_path / "sae").d_sae == 256


@on_cuda
def test_torchrun_train_command_uses_the_local_gpu(tmp_path):
    from PIL import Image

    model, _ = _tiny_model_and_sae(torch.float32)
    folder = model.save_pretrained(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    pixels = torch.randint(0, 255, (24, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for index, image in enumerate(pixels.numpy()):
        Image.fromarray(image).save(images / f"{index:03d}.png")
    done = _torchrun(["-m", "vit_sae_hooks.train", "--model", str(folder), "--images", str(images),
                      "--hook", "blocks.1.hook_resid_post", "--tokens-budget", "2048", "--batch-size", "256",
                      "--expansion", "2", "--k", "4", "--held-out", "4", "--workers", "0", "--quiet",
                      "--out", str(tmp_path / "run")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "% Explained var." in done.stdout
    assert SAE.load(tmp_path / "run").d_sae == 96
