"""Checkpoints: read every registered layout into our model strictly, and write the native layout.

The layouts themselves (how each names its tensors and writes its config) are registered in
:mod:`florence2.layouts`; this module reads and writes the files.

Tied copies of the token embedding (``lm_head``, ``encoder/decoder.embed_tokens``) are accepted
and checked against ``shared``; a checkpoint we write stores ``shared`` only, as transformers does.
Loading is strict: missing, unexpected or wrongly shaped tensors raise :class:`CheckpointError`
naming them.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch

from florence2.config import CHECKPOINT_SETTINGS, DecodingOptions, Florence2Config
from florence2.errors import CheckpointError, read_checkpoint_json
from florence2.layouts import (
    WRITTEN_LAYOUT,
    StateDict,
    config_from_dict,
    convert_native,
    convert_original,
    convert_state_dict,
    detect_layout,
)
from florence2.model.florence2 import Florence2Model, sinusoid_table
from florence2.model.hardware import auto_dtype
from florence2.quantization import is_quantized

__all__ = [
    "CHECKPOINT_SETTINGS",
    "StateDict",
    "convert_native",
    "convert_original",
    "convert_state_dict",
    "detect_layout",
    "generation_config_dict",
    "load_model",
    "load_state_dict_strict",
    "native_state_dict",
    "parse_dtype",
    "read_config",
    "read_generation_settings",
    "read_weights",
    "recover_interrupted_save",
    "resolve_checkpoint",
    "save_model",
]


class WritesFiles(Protocol):
    """Anything that adds its files to a checkpoint folder (a processor: tokenizer, preprocessor)."""

    def save_pretrained(self, folder: Path, image_seq_length: int | None = None) -> None: ...


_EMBED = "language_model.shared.weight"
# keys that are the token embedding under other names (weight tying)
_TIED_ALIASES = (
    "lm_head.weight",
    "language_model.encoder.embed_tokens.weight",
    "language_model.decoder.embed_tokens.weight",
)
_TEMPORAL = "multi_modal_projector.visual_temporal_embed.pos_idx_to_embed"


def _resolve_ties(state: StateDict) -> StateDict:
    aliases = [k for k in _TIED_ALIASES if k in state]
    if _EMBED not in state and aliases:
        state[_EMBED] = state[aliases[0]]
    for alias in aliases:
        tensor = state.pop(alias)
        if tensor.shape != state[_EMBED].shape or not torch.equal(tensor, state[_EMBED]):
            raise CheckpointError(f"{alias} differs from the token embedding; untied output heads are not supported")
    return state


def load_state_dict_strict(model: Florence2Model, state: StateDict, *, take: bool = False) -> None:
    """Copy ``state`` (our key names) into ``model``, failing on any missing/unexpected/misshaped key.

    ``take``: a tensor of the model's dtype and layout becomes the model's tensor instead of being
    copied (for a model just built to receive ``state``: its own tensors are never touched, which
    saves writing every weight once; ties between parameters are kept, since each parameter object
    stays the same and only its data is replaced). safetensors maps the file privately, so the
    weights are read from it on first use, as transformers does, and writing to them never changes
    the file."""
    state = _resolve_ties(dict(state))
    expected = model.state_dict()
    if _TEMPORAL not in state and _TEMPORAL in expected:
        # a fixed sinusoid table; some exports drop buffers, so rebuild it rather than fail
        state[_TEMPORAL] = sinusoid_table(*expected[_TEMPORAL].shape)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {'; '.join(wrong[:20])}")
    if problems:
        raise CheckpointError("checkpoint does not match the model config:\n  " + "\n  ".join(problems))
    taken: set[int] = set()  # storages already given to a parameter: a second one gets a copy
    with torch.no_grad():
        for key in expected:
            source = state[key]
            owner, _, name = key.rpartition(".")
            target = getattr(model.get_submodule(owner), name)  # now, not as it was before the loop
            if source.data_ptr() == target.data_ptr():
                continue  # a tied parameter, already given this tensor under its other name
            storage = source.untyped_storage().data_ptr()
            if take and storage not in taken and _can_take(source, target):
                target.data = source
                taken.add(storage)
            else:
                target.copy_(source.to(target.dtype))


def _can_take(source: torch.Tensor, target: torch.Tensor) -> bool:
    return (
        source.dtype == target.dtype
        and source.device == target.device
        and source.is_contiguous()
        and source.storage_offset() == 0
        and source.numel() * source.element_size() == source.untyped_storage().nbytes()
        and not source.requires_grad
    )


# --- files ---------------------------------------------------------------------------------------

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _read_tensor_file(path: Path) -> StateDict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # safe unpickling only: tensors and plain containers, never arbitrary objects
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad checkpoint file
        raise CheckpointError(f"cannot read weights from {path}: {e}") from e


def read_weights(folder: Path) -> StateDict:
    """All tensors of a checkpoint folder (single file or sharded with an index)."""
    for name in _WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise CheckpointError(f"malformed shard index {path}: {e}") from e
            state: StateDict = {}
            for shard in shards:
                state.update(_read_tensor_file(folder / shard))
            return state
        return _read_tensor_file(path)
    raise CheckpointError(f"no weights in {folder}: expected one of {', '.join(_WEIGHT_FILES)}")


def read_config(folder: Path) -> Florence2Config:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no config.json in {folder}")
    return config_from_dict(read_checkpoint_json(path))


def read_generation_settings(folder: Path) -> dict:
    """The decoding settings a checkpoint's ``generation_config.json`` sets (none when it has none)."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return {}
    return DecodingOptions.settings_from_generation_config(read_checkpoint_json(path))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A local checkpoint folder for ``path``: a folder, a weights file inside one, or a hub id."""
    p = Path(path).expanduser()
    recover_interrupted_save(p)
    if p.is_file():
        return p.parent
    if p.is_dir():
        return p
    text = str(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:
            raise CheckpointError(
                f"{text!r} is not a local folder; to download it from the hub install the 'hub' extra "
                "(pip install 'florence2[hub]')"
            ) from e
        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"]))
    raise CheckpointError(f"checkpoint not found: {text}")


def load_model(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> Florence2Model:
    """Build a :class:`Florence2Model` from a checkpoint folder of either layout (or a hub id).

    ``dtype``: torch.float32 (default), torch.float16 or torch.bfloat16 (or their names), or
    ``"auto"``: what ``device`` computes natively (:func:`parse_dtype`). The model is returned in eval mode."""
    folder = resolve_checkpoint(path)
    config = read_config(folder)
    state = convert_state_dict(read_weights(folder))
    dtype = parse_dtype(dtype, device)
    with _without_init():  # uninitialised tensors: the checkpoint fills every one
        model = Florence2Model(config)
    load_state_dict_strict(model, state, take=True)
    return model.to(device=device or "cpu", dtype=dtype).eval()


@contextlib.contextmanager
def _without_init() -> Iterator[None]:
    """Skip ``torch.nn.init`` while building a model whose tensors the checkpoint fills anyway.

    Building on the CPU without initialisers costs only the allocation; building on the meta device
    would route the constructors' tensor ops through decompositions that import ``torch._dynamo``
    (seconds on every cold start)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {name: getattr(torch.nn.init, name) for name in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def parse_dtype(dtype: torch.dtype | str | None, device: str | torch.device | None = None) -> torch.dtype:
    """A torch dtype from a dtype or its name (``"float16"``, ``"fp16"``, ``"bf16"``, ...); None: float32.

    ``"auto"``: the fastest dtype ``device`` (default the CPU) computes natively
    (:func:`florence2.model.hardware.auto_dtype`): bfloat16 on CPUs with AMX or AVX512-BF16, float32
    on other CPUs, bfloat16 on GPUs that have it and float16 on older ones."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return auto_dtype(device)
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted([*names, 'auto'])}")
    return names[dtype]


# --- writing -------------------------------------------------------------------------------------


def native_state_dict(model: Florence2Model) -> StateDict:
    """Our state dict in the native transformers layout (tied embedding stored once)."""
    return {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}


def generation_config_dict(config: Florence2Config) -> dict:
    """The official decoding defaults with ``config``'s token ids, as ``generation_config.json``."""
    return DecodingOptions.for_model(config).generation_config()


def save_model(
    model: Florence2Model,
    folder: str | os.PathLike,
    dtype: torch.dtype | None = None,
    processor: WritesFiles | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``config.json``, ``generation_config.json`` and ``model.safetensors`` (native layout),
    plus the ``processor``'s tokenizer and preprocessor config when given, atomically: files are
    written to a temporary sibling folder that then replaces ``folder``. ``extra_files(tmp_folder)``
    may add more files (a trainer's state) before the swap. A save killed at any moment leaves a
    complete checkpoint (the new or the previous one); one process writes a folder at a time."""
    from safetensors.torch import save_file

    if is_quantized(model):
        raise CheckpointError("this model is quantized for inference; save the float model it was made from")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(folder)
    for stale in folder.parent.glob(f".{glob.escape(folder.name)}.*"):  # temporaries of killed saves
        if stale != _previous_copy(folder) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        state = native_state_dict(model)
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_file({k: v.cpu() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(WRITTEN_LAYOUT.write_config(model.config), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config_dict(model.config), indent=2) + "\n")
        if processor is not None:
            processor.save_pretrained(tmp, model.config.num_image_tokens(processor.image_size))
        if extra_files is not None:
            extra_files(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                file.chmod(0o644)  # some writers create private files; a checkpoint is for sharing
        # At every moment one complete copy exists: ``folder``, or (after the first rename)
        # ``.NAME.old``, which the next save or load puts back (recover_interrupted_save).
        old = _previous_copy(folder)
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)  # folder is complete: an older copy is not needed
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _previous_copy(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def recover_interrupted_save(folder: str | os.PathLike) -> bool:
    """Put back the previous copy of a checkpoint whose save was interrupted between its two renames
    (``folder`` missing, ``.NAME.old`` present). True when something was put back."""
    folder = Path(folder)
    old = _previous_copy(folder)
    if folder.exists() or not old.is_dir():
        return False
    os.replace(old, folder)
    return True
