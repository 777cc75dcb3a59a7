"""saev layout: ``sae.pt`` is one JSON header line followed by a ``torch.save`` state dict in the same file.

Header schemas (saev's ``nn.modeling.load``): none (the first releases, e.g. ``osunlp/SAE_CLIP_24K_*``:
``{d_vit, exp_factor, ...}``, always ReLU), 1 (either ``cls`` naming the activation with a flat ``cfg``, or an
``activation`` payload), 2-5 (``cfg.activation = {"cls": "Relu"|"TopK"|"BatchTopK", "params": {...}}``).

Mapping: ``W_enc [d_model, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_model]``, ``b_dec``. Before schema 2 saev
subtracted ``b_dec`` from the input (``apply_b_dec_to_input=True``); since then it does not. ``TopK`` keeps
the top-k *signed* pre-activations (no ReLU), ``BatchTopK`` thresholds each token at inference with the scalar
buffer ``activation.threshold`` (uniform ``threshold`` here). saev records neither a layer nor a model: the
layer comes from a ``layer_{L}`` folder in the path (saev's releases use it) as ``blocks.{L}.hook_resid_post``
(saev reads the output of block ``L``), the token set is ``patches`` (saev trains on content tokens: no CLS, no
registers), and registry entries fill in the model.

The first releases were trained on ``(x - mean) / scalar`` with dataset statistics that are not in the file;
:meth:`~vit_sae_hooks.sae.SAE.fold_input_affine` folds them in when you have them.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

from vit_sae_hooks.errors import CheckpointFormatError, ConfigError
from vit_sae_hooks.sae.formats._io import LoadedCheckpoint, build_config, checked_checkpoint, integer_entry
from vit_sae_hooks.sae.safe_pickle import load_torch_checkpoint

logger = logging.getLogger(__name__)

SUFFIX = ".pt"
_ACTIVATIONS = {"Relu": "standard", "TopK": "topk", "BatchTopK": "batchtopk"}
_LAYER_FOLDER = re.compile(r"^layer_(\d+)$")


def matches(path: Path) -> bool:
    """Whether the file ``path`` starts with a JSON header line, as saev's ``sae.pt`` does.

    Example:
        >>> matches(Path("tests/fixtures/saev_topk/sae.pt"))
        True
    """
    with open(path, "rb") as handle:
        return handle.read(1) == b"{"


def read(path: Path) -> LoadedCheckpoint:
    """The saev SAE in the file ``path``.

    Example:
        >>> checkpoint = read(Path("tests/fixtures/saev_topk/sae.pt"))
    """
    with open(path, "rb") as handle:
        first_line = handle.readline()
        rest = handle.read()
    try:
        header = json.loads(first_line)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointFormatError(f"{path}: the first line is not saev's JSON header ({error}).") from error
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: saev's header is a JSON object; found {type(header).__name__}.")
    state = load_torch_checkpoint(io.BytesIO(rest), source=path)
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{path}: after the header saev stores a state dict; found {type(state).__name__}.")
    fields = _config_fields(header, path)
    tensors = dict(state)
    if fields["architecture"] == "batchtopk":
        threshold = tensors.pop("activation.threshold", None)
        if threshold is None:
            raise CheckpointFormatError(
                f"{path}: this saev BatchTopK SAE has no 'activation.threshold', the learned threshold that per-image "
                "inference needs (saev stores it since schema 4); re-save it with a current saev after training, or "
                "load the matching schema-4+ checkpoint."
            )
        tensors["threshold"] = threshold.reshape(()).expand(fields["d_sae"]).clone()
    config = build_config(path, **fields, hook_name=_hook_name(path), token_set="patches")
    return checked_checkpoint(config, tensors, path)


def _config_fields(header: dict[str, Any], path: Path) -> dict[str, Any]:
    schema = header.get("schema")
    if schema is None:
        # The first releases: the header is the training config itself, and the SAE is always ReLU.
        logger.warning(
            "%s is one of saev's first-format SAEs: they were trained on (x - dataset mean) / scalar, and those "
            "statistics are not in the file; fold them in with sae.fold_input_affine(mean, scalar) before reading "
            "raw activations.", path,
        )
        d_model = integer_entry(header, "d_vit", path)
        d_sae = header.get("d_sae") or d_model * integer_entry(header, "exp_factor", path)
        return {"d_in": d_model, "d_sae": d_sae, "architecture": "standard", "apply_b_dec_to_input": True}
    if schema not in (1, 2, 3, 4, 5):
        raise CheckpointFormatError(f"{path}: saev header schema {schema!r} is unknown; this reader knows 1-5.")
    cfg = header.get("cfg")
    if not isinstance(cfg, dict):
        raise CheckpointFormatError(f"{path}: saev schema {schema} has a 'cfg' object; found {cfg!r}.")
    activation_name, params = _activation(header, cfg, schema, path)
    d_model = integer_entry(cfg, "d_model", path)
    d_sae = cfg.get("d_sae") or d_model * integer_entry(cfg, "exp_factor", path)
    fields: dict[str, Any] = {
        "d_in": d_model, "d_sae": d_sae, "architecture": _ACTIVATIONS[activation_name],
        # saev stopped subtracting b_dec from the input when it moved to schema 2.
        "apply_b_dec_to_input": schema == 1,
    }
    if activation_name != "Relu":
        fields["k"] = params.get("top_k", 32)
        fields["topk_apply_relu"] = False
    return fields


def _activation(header: dict[str, Any], cfg: dict[str, Any], schema: int, path: Path) -> tuple[str, dict[str, Any]]:
    if schema == 1 and header.get("cls") in _ACTIVATIONS:
        return header["cls"], {"top_k": cfg.get("top_k", 32)}
    payload = cfg.get("activation")
    if payload is None and schema == 1:
        return "Relu", {}
    if not isinstance(payload, dict) or payload.get("cls") not in _ACTIVATIONS:
        found = payload.get("cls") if isinstance(payload, dict) else payload
        raise ConfigError(
            f"{path}: saev activation {found!r} is not supported; vit_sae_hooks loads {sorted(_ACTIVATIONS)}."
        )
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise CheckpointFormatError(f"{path}: the activation's 'params' is {params!r}, expected an object.")
    return payload["cls"], params


def _hook_name(path: Path) -> str | None:
    for folder in path.parents:
        match = _LAYER_FOLDER.match(folder.name)
        if match:
            return f"blocks.{int(match.group(1))}.hook_resid_post"
    return None
