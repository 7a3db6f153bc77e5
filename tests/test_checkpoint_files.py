"""Checkpoint files on disk: a save killed at any moment leaves a loadable checkpoint, and the files
are readable by others."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from florence2.weights import load_model, recover_interrupted_save, save_model
from tests.checkpoints import random_model, tiny_config

ROOT = Path(__file__).resolve().parent.parent

# a child process saves version 2 over version 1 and dies (os._exit, like kill -9) just before
# the filesystem step numbered CRASH_AT: renames and removals, counted in order
CHILD = textwrap.dedent(
    """
    import os, shutil, sys
    from tests.checkpoints import random_model, tiny_config
    from florence2.weights import save_model

    crash_at, folder = int(sys.argv[1]), sys.argv[2]
    steps = [0]

    def step(real):
        def run(*args, **kwargs):
            if steps[0] == crash_at:
                os._exit(9)
            steps[0] += 1
            return real(*args, **kwargs)
        return run

    os.replace = step(os.replace)
    shutil.rmtree = step(shutil.rmtree)
    save_model(random_model(tiny_config(), seed=2), folder)
    print(steps[0])
    """
)


def _version(folder: Path) -> int:
    """Which of the two random models (seed 1 or 2) a checkpoint holds."""
    loaded = load_model(folder).state_dict()
    for seed in (1, 2):
        if all(torch.equal(v, loaded[k]) for k, v in random_model(tiny_config(), seed=seed).state_dict().items()):
            return seed
    raise AssertionError("the checkpoint holds neither version")


def _save_killed_at(step: int, folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(step), str(folder)], capture_output=True, text=True, env=env, cwd=ROOT
    )


def test_a_save_killed_at_any_step_leaves_a_loadable_checkpoint(tmp_path):
    save_model(random_model(tiny_config(), seed=1), tmp_path / "uninterrupted")
    done = _save_killed_at(10_000, tmp_path / "uninterrupted")  # counts the steps of a whole save
    assert done.returncode == 0, done.stderr
    steps = int(done.stdout)
    assert steps >= 4  # remove a stale copy, two renames, remove the previous copy
    for crash_at in range(steps):
        folder = tmp_path / f"killed-at-{crash_at}" / "checkpoint-last"
        save_model(random_model(tiny_config(), seed=1), folder)
        result = _save_killed_at(crash_at, folder)
        assert result.returncode == 9, result.stderr
        assert _version(folder) in (1, 2), crash_at  # loads (the previous copy is put back if needed)
        save_model(random_model(tiny_config(), seed=2), folder)  # and the next save completes
        assert _version(folder) == 2
        assert sorted(p.name for p in folder.parent.iterdir()) == ["checkpoint-last"]


def test_recovery_puts_back_only_a_missing_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    old = tmp_path / ".ckpt.old"
    old.mkdir()
    (old / "marker").write_text("previous")
    assert recover_interrupted_save(folder) and (folder / "marker").read_text() == "previous"
    old.mkdir()
    assert not recover_interrupted_save(folder)  # a complete checkpoint is left alone
    assert not recover_interrupted_save(tmp_path / "never-saved")


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_checkpoint_files_are_readable_by_others(tmp_path):
    folder = save_model(random_model(tiny_config()), tmp_path / "ckpt")
    for file in folder.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) & 0o044 == 0o044, file.name
    assert stat.S_IMODE(folder.stat().st_mode) & 0o055 == 0o055


def test_loading_takes_the_read_tensors_and_keeps_every_parameter_its_own(tmp_path, monkeypatch):
    """load_model gives the model the tensors it read (no second copy of the weights) where their
    dtype matches, and never lets two distinct parameters share memory: a checkpoint that stores one
    tensor under two untied names still loads into two independent parameters."""
    from florence2 import weights
    from tests.checkpoints import write_native

    model = random_model(tiny_config())
    write_native(model, tmp_path / "ckpt")
    read = {}
    real_read = weights.read_weights

    def remember(folder):
        state = real_read(folder)
        read.update(state)
        return state

    monkeypatch.setattr(weights, "read_weights", remember)
    loaded = load_model(tmp_path / "ckpt")
    ptrs = {t.data_ptr() for t in read.values()}
    params = dict(loaded.named_parameters())
    taken = [name for name, p in params.items() if p.data_ptr() in ptrs]
    assert len(taken) == len(params)  # every float32 parameter is a tensor that was read, not a copy
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p)
    # the tensors may be mapped from the file: changing the model must never change the checkpoint
    file_bytes = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    with torch.no_grad():
        for p in loaded.parameters():
            p.add_(1.0)
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == file_bytes

    # one tensor under two names the model does not tie: the second parameter gets a copy
    first, second = "language_model.encoder.layers.0.fc1.bias", "language_model.decoder.layers.0.fc1.bias"
    shared = torch.randn_like(model.state_dict()[first])

    real_convert = weights.convert_state_dict

    def same_tensor_twice(folder):
        state = real_convert(real_read(folder))
        state[first] = state[second] = shared
        return state

    monkeypatch.setattr(weights, "read_weights", same_tensor_twice)
    monkeypatch.setattr(weights, "convert_state_dict", lambda state: state)
    twice = load_model(tmp_path / "ckpt")
    a, b = twice.get_parameter(first), twice.get_parameter(second)
    before = shared.clone()
    assert torch.equal(a, before) and torch.equal(b, before) and a.data_ptr() != b.data_ptr()
    with torch.no_grad():
        a.add_(1.0)
    assert torch.equal(b, before)
