"""The hot loops never wait for the device: no value read back and no data-dependent shape per call or step.

On a GPU each such operation stalls the CPU until the GPU has caught up, so a training step or a spliced
forward that makes one cannot queue the next. tests/kernels/test_cuda.py checks this with CUDA's own
``set_sync_debug_mode`` on a GPU; these tests check the same operations on this CPU machine by recording aten
calls (tests/helpers/host_reads.py), for the paths CUDA runs (``backend="torch"``, which ``auto`` picks there)
and for every trainable architecture.
"""

from __future__ import annotations

import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.kernels import decode_topk, encode_topk, use_backend
from vit_sae_hooks.training import TensorActivations, TrainConfig, train_sae

from helpers.host_reads import HostRead, host_reads


def _project_reads(reads: list[HostRead], allow_batch_topk_widening: bool = False) -> list[str]:
    """The reads that would synchronise a GPU, as readable strings.

    torch.optim.Adam keeps its step count on the CPU (unless capturable or fused), so reading it is no device
    synchronisation on a GPU either. A batch top-k (BatchTopK, Matryoshka) asks once per call whether a token
    filled all its candidates and needs more (``encode_batch_topk``'s widening loop, docs/performance.md): that
    one read is by design, and allowed where the caller says so.
    """

    def allowed(read: HostRead) -> bool:
        if any("/torch/optim/" in frame.filename for frame in read.stack):
            return True
        innermost = read.project_frames[-1:]
        return allow_batch_topk_widening and bool(innermost) and innermost[0].name == "encode_batch_topk" \
            and innermost[0].filename.endswith("/kernels/batch_topk.py") and read.op == "aten.nonzero.default"

    return [str(read) for read in reads if not allowed(read)]


def test_the_recorder_finds_reads_back_and_data_dependent_shapes():
    x = torch.randn(8, 4)
    with host_reads(project="test_no_host_reads") as reads:
        x.sum().item()
        bool(x.any())
        _ = x[x > 0]
        x[x > 0] = 0
        _ = (x != 0).nonzero()
        _ = x.masked_fill(x > 0, 1)  # neither of these reads back
        _ = x[torch.arange(3)]
    assert [read.op for read in reads] == [
        "aten._local_scalar_dense.default", "aten._local_scalar_dense.default", "aten.index.Tensor",
        "aten.index_put_.default", "aten.nonzero.default",
    ]
    assert all(read.where for read in reads)


@pytest.mark.parametrize("k", [1, 16])
def test_topk_encode_and_decode_forward_and_backward_read_nothing_back(k):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=generator)
    W_enc, W_dec = (torch.randn(shape, generator=generator).div(6).requires_grad_(True) for shape in ((32, 256), (256, 32)))
    b_enc, b_dec = (torch.zeros(size, requires_grad=True) for size in (256, 32))
    with host_reads() as reads:
        values, indices = encode_topk(x, W_enc, b_enc, k, backend="torch")
        decode_topk(values, indices, W_dec, b_dec, backend="torch").square().sum().backward()
    assert not _project_reads(reads)


FAMILIES = {
    "topk": dict(architecture="topk", k=8),
    "batchtopk": dict(architecture="batchtopk", k=8),
    "matryoshka": dict(architecture="matryoshka", k=8, prefixes=(32, 128)),
    "relu": dict(architecture="standard"),
    "jumprelu": dict(architecture="jumprelu"),
    "gated": dict(architecture="gated"),
    "transcoder": dict(architecture="topk", k=8, skip_connection=True),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_spliced_forward_and_backward_read_nothing_back(name):
    torch.manual_seed(0)
    model = HookedViT(HookedViTConfig(n_layers=3, d_model=32, n_heads=4, d_mlp=64, image_size=12, patch_size=4,
                                      head_type="linear", d_output=5)).eval()
    hooks = (dict(hook_name="blocks.1.ln2.hook_normalized", hook_name_out="blocks.1.hook_mlp_out", d_out=32,
                  apply_b_dec_to_input=False)
             if name == "transcoder" else dict(hook_name="blocks.1.hook_resid_post", normalize_activations="layer_norm"))
    options = {key: value for key, value in FAMILIES[name].items() if key != "skip_connection" or name == "transcoder"}
    sae = SAE(SAEConfig(d_in=32, d_sae=128, **options, **hooks))
    images = torch.randn(4, 3, 12, 12, requires_grad=True)
    model(images)  # first calls may set things up once
    with use_backend("torch"), host_reads() as reads:
        with torch.inference_mode():
            model.run_with_saes(images.detach(), saes=[sae], tokens="patches")
        model.run_with_saes(images, saes=[sae], use_error_term=True)[:, 0].sum().backward()
    assert not _project_reads(reads)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_training_steps_read_nothing_back_between_logs(name):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(8192, 32, generator=generator) + 0.3
    options = dict(FAMILIES[name])
    data = TensorActivations(tokens)
    if name == "transcoder":
        data = TensorActivations({"in": tokens, "out": tokens[:, :24] @ torch.randn(24, 24, generator=generator)})
        options.update(hook_name="in", hook_name_out="out")
    config = TrainConfig(**options, expansion_factor=4, batch_size=256, tokens_budget=8 * 256, warmup_steps=2,
                         init_tokens=1024, log_every=1000, seed=0)
    recorders = []

    def watch(step: int, metrics: dict[str, float]) -> None:
        # Steps 4 and 5 run entirely inside the watch (step 3's callback opens it, step 5's closes it).
        if step == 3:
            recorders.append(host_reads())
            recorders.append(recorders[0].__enter__())
        elif step == 5:
            recorders[0].__exit__(None, None, None)

    with use_backend("torch"):
        train_sae(data, config, device="cpu", progress=False, callbacks=[watch])
    assert len(recorders) == 2
    batch_topk = name in ("batchtopk", "matryoshka")
    assert not _project_reads(recorders[1], allow_batch_topk_widening=batch_topk)
    if batch_topk:  # the allowance is not idle: the widening check did read, at least once per step
        widening = [read for read in recorders[1] if read.op == "aten.nonzero.default"]
        assert len(widening) >= 2, [str(read) for read in recorders[1]]
