"""LoRA: low-rank adapters on the linear layers of Florence-2, merged into plain weights on save.

>>> names = apply_lora(model, LoRAConfig(rank=8, alpha=16, targets=("language",)))
>>> ...train...                                 # only the adapters are trainable
>>> plain = merged_model(model)                 # a plain Florence2Model: W + (alpha / r) * B @ A
>>> save_peft_adapter(model, "adapter/")        # PEFT's files, for transformers + peft users

A wrapped layer computes ``y = x W^T + b + s * dropout(x) A^T B^T`` with ``A`` (r, in), ``B`` (out, r)
and ``s = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``). ``B`` starts at zero, so a fresh
adapter leaves the model unchanged. :class:`LoRALinear` *is* an ``nn.Linear`` holding the very same
``weight`` and ``bias`` parameters, so the model's state-dict names stay those of the checkpoint
layout, plus ``<layer>.lora_A`` and ``<layer>.lora_B``.

Targets (``LoRAConfig.targets``) are group names or module names:

==============  =====================================================================================
``language``    ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, ``fc1``, ``fc2`` of every encoder and
                decoder layer (self- and cross-attention)
``attention``   the attention projections of ``language`` only
``ffn``         ``fc1``/``fc2`` of the language model only
``vision``      DaViT's ``qkv``, ``proj`` (window and channel attention), ``fc1``, ``fc2``
``projector``   the image projection (vision width -> text width)
anything else   a module name, or its ending after a dot: ``q_proj``, ``decoder.layers.5.fc2``
==============  =====================================================================================

PEFT adapters trained elsewhere load with :func:`load_peft_adapter`: ``adapter_config.json`` +
``adapter_model.safetensors`` (or ``adapter_model.bin``), module names of either checkpoint layout
(``language_model.model.encoder.layers.0.self_attn.q_proj`` from the original remote code, or
``model.language_model.encoder.layers.0.self_attn.q_proj`` from native transformers).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from florence2.errors import CheckpointError, read_checkpoint_json
from florence2.model.florence2 import Florence2Model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_ADAPTER_WEIGHT_FILES = (ADAPTER_WEIGHTS, "adapter_model.bin")
_PEFT_PREFIX = "base_model.model."

_LANGUAGE_LAYER = r"^language_model\.(?:encoder|decoder)\.layers\.\d+\."
_VISION_BLOCK = r"^vision_tower\.blocks\.\d+\.\d+\.(?:spatial_block|channel_block)\."
TARGET_GROUPS: dict[str, str] = {
    "attention": _LANGUAGE_LAYER + r"(?:self_attn|encoder_attn)\.(?:q_proj|k_proj|v_proj|out_proj)$",
    "ffn": _LANGUAGE_LAYER + r"(?:fc1|fc2)$",
    "language": _LANGUAGE_LAYER + r"(?:(?:self_attn|encoder_attn)\.(?:q_proj|k_proj|v_proj|out_proj)|fc1|fc2)$",
    "vision": _VISION_BLOCK + r"(?:(?:window_attn|channel_attn)\.(?:qkv|proj)|ffn\.fc1|ffn\.fc2)$",
    "projector": r"^multi_modal_projector\.image_projection$",
}


@dataclass(frozen=True)
class LoRAConfig:
    """rank r, alpha (scale alpha / r, or alpha / sqrt(r) with use_rslora), dropout on the adapter's
    input, and targets (see the module docstring)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("language",)
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("LoRA needs at least one target")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.rank, self.use_rslora)


def lora_scaling(alpha: float, rank: int, use_rslora: bool = False) -> float:
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` (its weight and bias, frozen) plus a trainable update ``s * B @ A``.

    x: (..., in_features) -> (..., out_features). ``lora_A`` (r, in) starts Kaiming-uniform as in
    ``nn.Linear``, ``lora_B`` (out, r) at zero.
    """

    def __init__(self, base: nn.Linear, rank: int, scaling: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # take over base's parameters instead of creating new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        kwargs = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kwargs))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kwargs))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = scaling
        self.dropout = dropout

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        h = F.dropout(x, self.dropout, self.training) if self.dropout else x
        return out + F.linear(F.linear(h, self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``s * B @ A`` (out, in), computed in float32."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return (self.weight.float() + self.delta_weight()).to(self.weight.dtype)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the update merged into its weight."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = nn.Parameter(self.merged_weight().detach(), requires_grad=self.weight.requires_grad)
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}, dropout={self.dropout}"


# --- applying, merging -----------------------------------------------------------------------------


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def resolve_targets(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules ``targets`` select, in model order.

    Raises:
        ValueError: a target that selects no linear layer (the message lists some that exist).
    """
    names = _linear_names(model)
    chosen: set[str] = set()
    for target in targets:
        if target in TARGET_GROUPS:
            pattern = re.compile(TARGET_GROUPS[target])
            hits = {n for n in names if pattern.search(n)}
        else:
            hits = {n for n in names if n == target or n.endswith("." + target)}
        if not hits:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ValueError(
                f"LoRA target {target!r} matches no linear layer of this model; groups: "
                f"{', '.join(TARGET_GROUPS)}; layer names end in: {', '.join(leaves)}"
            )
        chosen |= hits
    return [n for n in names if n in chosen]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


def apply_lora(model: Florence2Model, config: LoRAConfig, freeze_base: bool = True) -> list[str]:
    """Wrap the target layers of ``model`` in :class:`LoRALinear`, in place; returns their names.

    ``freeze_base``: turn ``requires_grad`` off for every other parameter, so that only the adapters
    train (the trainer's optimizer then holds the adapters alone)."""
    names = resolve_targets(model, config.targets)
    already = [n for n in names if isinstance(model.get_submodule(n), LoRALinear)]
    if already:
        raise ValueError(f"LoRA is already applied to {', '.join(already[:5])}")
    if freeze_base:
        model.requires_grad_(False)
    for name in names:
        base = model.get_submodule(name)
        _set_module(model, name, LoRALinear(base, config.rank, config.scaling, config.dropout))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Name -> LoRA layer, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRA layer by a plain ``nn.Linear`` holding the merged weight, in place."""
    for name, layer in lora_layers(model).items():
        _set_module(model, name, layer.to_linear())
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the merged model (our key names), without changing ``model``."""
    state = model.state_dict()
    for name, layer in lora_layers(model).items():
        state[f"{name}.weight"] = layer.merged_weight().detach()
        del state[f"{name}.lora_A"], state[f"{name}.lora_B"]
    return state


def merged_model(model: Florence2Model) -> Florence2Model:
    """``model`` itself without LoRA layers; otherwise a plain copy with every update merged (tensors
    other than the merged weights are shared, not copied)."""
    if not has_lora(model):
        return model
    with torch.device("meta"):
        plain = Florence2Model(model.config)
    plain.load_state_dict(merged_state_dict(model), strict=True, assign=True)
    return plain.train(model.training)


# --- PEFT files --------------------------------------------------------------------------------------


def save_peft_adapter(model: nn.Module, folder: str | os.PathLike, base_model: str | None = None) -> Path:
    """Write the LoRA layers as a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``)
    for the native transformers model (``Florence2ForConditionalGeneration``): module names
    ``model.<our name>``, keys ``base_model.model.model.<name>.lora_A.weight``."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, ranks, alphas = {}, {}, {}
    for name, layer in layers.items():
        key = f"{_PEFT_PREFIX}model.{name}"
        tensors[f"{key}.lora_A.weight"] = layer.lora_A.detach().cpu().contiguous()
        tensors[f"{key}.lora_B.weight"] = layer.lora_B.detach().cpu().contiguous()
        ranks[name], alphas[name] = layer.rank, layer.scaling * layer.rank
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    dropouts = {layer.dropout for layer in layers.values()}
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": max(dropouts),
        "target_modules": [f"model.{name}" for name in layers],
        "rank_pattern": {f"model.{n}": r for n, r in ranks.items() if r != rank},
        "alpha_pattern": {f"model.{n}": a for n, a in alphas.items() if a != alpha},
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "inference_mode": True,
        "init_lora_weights": True,
    }
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)(?:\.[^.]+)?\.weight$")


def _our_module_name(path: str, model: nn.Module) -> str | None:
    """A PEFT module path (either checkpoint layout) -> our module name, or None when nothing matches."""
    from florence2.layouts import module_path_layout

    probe = {f"{path}.weight": torch.empty(0)}
    converted = module_path_layout(path).convert_state(probe)
    name = next(iter(converted)).removesuffix(".weight")
    modules = dict(model.named_modules())
    for candidate in (name, f"language_model.{name}"):  # the second: adapters of the language model alone
        if isinstance(modules.get(candidate), nn.Linear):
            return candidate
    return None


def _pattern_value(patterns: dict[str, Any], path: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module path ending in it."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(?:.*\.)?(?:{key})$", path):
            return value
    return default


def read_peft_adapter(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``adapter_config.json`` and the adapter tensors of a PEFT LoRA adapter folder."""
    folder = Path(folder)
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"no {ADAPTER_CONFIG} in {folder}")
    config = read_checkpoint_json(config_path)
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise CheckpointError(f"{config_path}: peft_type {config.get('peft_type')!r} is not LORA")
    for flag in ("use_dora", "fan_in_fan_out"):
        if config.get(flag):
            raise CheckpointError(f"{config_path}: {flag}=true adapters are not supported")
    for name in _ADAPTER_WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return config, load_file(str(path))
            return config, torch.load(path, map_location="cpu", weights_only=True)  # tensors only, never code
        except Exception as e:  # noqa: BLE001 - any reader failure is a bad adapter file
            raise CheckpointError(f"cannot read adapter weights from {path}: {e}") from e
    raise CheckpointError(f"no adapter weights in {folder}: expected {' or '.join(_ADAPTER_WEIGHT_FILES)}")


def load_peft_adapter(
    model: Florence2Model, folder: str | os.PathLike, merge: bool = True, dropout: float | None = None
) -> list[str]:
    """Load a PEFT LoRA adapter onto ``model``; returns the names of the layers it changes.

    merge: add ``s * B @ A`` to the weights (the model stays plain); otherwise wrap the layers in
        trainable :class:`LoRALinear` initialised from the adapter (to continue training it).
    dropout: the adapter dropout when not merging (default: the adapter's ``lora_dropout``).

    Raises:
        CheckpointError: missing or malformed files, unsupported adapter kinds, keys that name no
            linear layer of this model (all listed), a lora_A without its lora_B, wrong shapes.
    """
    config, tensors = read_peft_adapter(folder)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    paths: dict[str, str] = {}
    unmatched: list[str] = []
    for key, tensor in tensors.items():
        match = _PEFT_KEY.match(key.removeprefix(_PEFT_PREFIX))
        name = _our_module_name(match["module"], model) if match else None
        if name is None:
            unmatched.append(key)
            continue
        if name in pairs and match["kind"] in pairs[name]:
            raise CheckpointError(f"{folder}: two {match['kind']} tensors for {name}")
        pairs.setdefault(name, {})[match["kind"]] = tensor
        paths[name] = match["module"]
    if unmatched:
        raise CheckpointError(
            f"{folder}: {len(unmatched)} adapter keys match no linear layer of this model: "
            + ", ".join(sorted(unmatched)[:20])
        )
    if not pairs:
        raise CheckpointError(f"{folder}: the adapter holds no LoRA tensors")
    problems = []
    for name, pair in pairs.items():
        layer = model.get_submodule(name)
        if set(pair) != {"lora_A", "lora_B"}:
            problems.append(f"{name}: only {', '.join(pair)}")
            continue
        a, b = pair["lora_A"], pair["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[1] != layer.in_features:
            problems.append(f"{name}: lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)} vs layer {layer}")
        elif b.shape[0] != layer.out_features:
            problems.append(f"{name}: lora_B {tuple(b.shape)} vs layer {layer}")
    if problems:
        raise CheckpointError(f"{folder}: adapter does not fit this model:\n  " + "\n  ".join(problems))
    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    rslora = bool(config.get("use_rslora", False))
    dropout = float(config.get("lora_dropout", 0.0)) if dropout is None else dropout
    for name, pair in pairs.items():
        a, b = pair["lora_A"], pair["lora_B"]
        r = a.shape[0]  # the rank is the tensors' (rank_pattern only restates it)
        scaling = lora_scaling(float(_pattern_value(config.get("alpha_pattern"), paths[name], alpha)), r, rslora)
        layer = model.get_submodule(name)
        with torch.no_grad():
            if merge:
                target = layer.weight
                delta = (b.float() @ a.float()) * scaling
                target.copy_((target.float() + delta.to(target.device)).to(target.dtype))
            else:
                if isinstance(layer, LoRALinear):
                    raise CheckpointError(f"{name} already has a LoRA adapter")
                lora = LoRALinear(layer, r, scaling, dropout)
                lora.lora_A.copy_(a)
                lora.lora_B.copy_(b)
                _set_module(model, name, lora)
    return list(pairs)


def load_lora_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``<layer>.lora_A`` / ``<layer>.lora_B`` tensors (our names) into the model's LoRA layers,
    strictly: every LoRA layer must be covered, and nothing else."""
    layers = lora_layers(model)
    expected = {f"{n}.{k}" for n in layers for k in ("lora_A", "lora_B")}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"LoRA state does not match the model: missing {missing[:10]}, unexpected {unexpected[:10]}"
        )
    with torch.no_grad():
        for key in expected:
            name, kind = key.rsplit(".", 1)
            getattr(layers[name], kind).copy_(tensors[key])


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors under our names (``<layer>.lora_A``, ``<layer>.lora_B``)."""
    return {
        f"{name}.{kind}": getattr(layer, kind).detach()
        for name, layer in lora_layers(model).items()
        for kind in ("lora_A", "lora_B")
    }


def count_parameters(params: Sequence[nn.Parameter] | Iterable[nn.Parameter]) -> int:
    """Elements of distinct parameters (tied ones counted once)."""
    seen: dict[int, int] = {}
    for p in params:
        seen[id(p)] = p.numel()
    return sum(seen.values())
