"""LoRA: targets, merging (same logits), PEFT adapter files of both checkpoint layouts, trainer checkpoints."""

import dataclasses
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from florence2 import Florence2Processor, ImageProcessor, load_model
from florence2.errors import CheckpointError
from florence2.tasks import TASKS
from florence2.tokenizer import train_bpe_tokenizer
from florence2.train import TrainConfig, Trainer, indexed_source
from florence2.train.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    has_lora,
    load_peft_adapter,
    lora_layers,
    merge_lora,
    merged_model,
    resolve_targets,
    save_peft_adapter,
)
from florence2.weights import read_weights
from tests.checkpoints import random_model, tiny_config

PROMPTS = torch.tensor([[0, 5, 6, 7, 2, 1], [0, 8, 9, 10, 11, 2]])
MASK = (PROMPTS != 1).long()
DECODER = torch.tensor([[2, 0, 7, 8, 9], [2, 0, 12, 13, 2]])


def logits(model, px):
    with torch.no_grad():
        return model.eval()(px, PROMPTS, DECODER, attention_mask=MASK).logits


def randomize_adapters(model, seed=1, std=0.2):
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_A.normal_(0, std)
            layer.lora_B.normal_(0, std)


def test_targets_resolve_to_the_layers_of_this_model():
    model = random_model(tiny_config())  # 2 encoder, 2 decoder layers; DaViT with 1 + 2 blocks
    language = resolve_targets(model, ["language"])
    assert len(language) == 2 * (4 + 2) + 2 * (8 + 2)
    assert "language_model.decoder.layers.1.encoder_attn.k_proj" in language
    vision = resolve_targets(model, ["vision"])
    assert len(vision) == 3 * 2 * 4
    assert "vision_tower.blocks.1.1.channel_block.channel_attn.qkv" in vision
    assert "vision_tower.blocks.0.0.spatial_block.ffn.fc2" in vision
    assert resolve_targets(model, ["q_proj", "v_proj"]) == [n for n in language if n.endswith(("q_proj", "v_proj"))]
    assert resolve_targets(model, ["projector"]) == ["multi_modal_projector.image_projection"]
    assert len(resolve_targets(model, ["attention", "ffn"])) == len(language)
    with pytest.raises(ValueError, match="'query' matches no linear layer.*q_proj"):
        resolve_targets(model, ["query"])


def test_fresh_adapters_change_nothing_and_only_adapters_train():
    model = random_model(tiny_config())
    px = torch.randn(2, 3, 64, 64)
    before = logits(model, px)
    keys = set(model.state_dict())
    names = apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=("language", "vision")))
    assert torch.equal(logits(model, px), before)  # B starts at zero
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{k}" for n in names for k in ("lora_A", "lora_B")}
    assert set(model.state_dict()) == keys | trainable  # the base names are unchanged
    layer = model.get_submodule(names[0])
    assert isinstance(layer, LoRALinear) and isinstance(layer, torch.nn.Linear) and layer.scaling == 2.0
    with pytest.raises(ValueError, match="already applied"):
        apply_lora(model, LoRAConfig(targets=("q_proj",)))


def test_merged_weights_give_the_logits_of_the_adapter_model():
    model = random_model(tiny_config(), std=0.1)
    keys = set(model.state_dict())
    apply_lora(model, LoRAConfig(rank=3, alpha=5, dropout=0.1, targets=("language", "vision", "projector")))
    randomize_adapters(model)
    px = torch.randn(2, 3, 64, 64)
    adapted = logits(model, px)
    plain = merged_model(model)
    assert not has_lora(plain) and set(plain.state_dict()) == keys
    assert (logits(plain, px) - adapted).abs().max() < 1e-5
    assert has_lora(model)  # merged_model leaves the adapter model as it was
    merge_lora(model)
    assert not has_lora(model) and set(model.state_dict()) == keys
    assert (logits(model, px) - adapted).abs().max() < 1e-5


# --- PEFT adapter files --------------------------------------------------------------------------------

# (PEFT module path in the original remote-code layout, in the native transformers layout, ours)
LAYOUT_NAMES = [
    (
        "language_model.model.encoder.layers.0.self_attn.q_proj",
        "model.language_model.encoder.layers.0.self_attn.q_proj",
        "language_model.encoder.layers.0.self_attn.q_proj",
    ),
    (
        "language_model.model.decoder.layers.1.encoder_attn.v_proj",
        "model.language_model.decoder.layers.1.encoder_attn.v_proj",
        "language_model.decoder.layers.1.encoder_attn.v_proj",
    ),
    (
        "language_model.model.decoder.layers.0.fc2",
        "model.language_model.decoder.layers.0.fc2",
        "language_model.decoder.layers.0.fc2",
    ),
    (
        "vision_tower.blocks.0.0.spatial_block.window_attn.fn.qkv",
        "model.vision_tower.blocks.0.0.spatial_block.window_attn.qkv",
        "vision_tower.blocks.0.0.spatial_block.window_attn.qkv",
    ),
    (
        "vision_tower.blocks.1.1.channel_block.ffn.fn.net.fc1",
        "model.vision_tower.blocks.1.1.channel_block.ffn.fc1",
        "vision_tower.blocks.1.1.channel_block.ffn.fc1",
    ),
]


def write_peft_adapter(folder, model, layout: int, rank=2, alpha=6.0, extra_config=None, extra_keys=()):
    """A PEFT adapter written by hand in PEFT's key format (``base_model.model.<path>.lora_A.weight``)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    tensors, expected = {}, {}
    for names in LAYOUT_NAMES:
        layer = model.get_submodule(names[2])
        a, b = torch.randn(rank, layer.in_features) * 0.3, torch.randn(layer.out_features, rank) * 0.3
        tensors[f"base_model.model.{names[layout]}.lora_A.weight"] = a
        tensors[f"base_model.model.{names[layout]}.lora_B.weight"] = b
        expected[names[2]] = (a, b)
    for key in extra_keys:
        tensors[key] = torch.zeros(rank, 4)
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.05,
        "target_modules": sorted({n[layout].rsplit(".", 1)[-1] for n in LAYOUT_NAMES}),
        "bias": "none",
        **(extra_config or {}),
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return expected


@pytest.mark.parametrize("layout", [0, 1], ids=["original", "native"])
def test_peft_adapter_of_either_layout_loads(tmp_path, layout):
    base = random_model(tiny_config(), std=0.1)
    expected = write_peft_adapter(tmp_path / "adapter", base, layout, rank=2, alpha=6.0)
    merged = random_model(tiny_config(), std=0.1)
    changed = load_peft_adapter(merged, tmp_path / "adapter", merge=True)
    assert sorted(changed) == sorted(expected)
    base_state, merged_state = base.state_dict(), merged.state_dict()
    for name, (a, b) in expected.items():
        assert torch.allclose(merged_state[f"{name}.weight"], base_state[f"{name}.weight"] + 3.0 * b @ a, atol=1e-6)
    untouched = [k for k in base_state if k.removesuffix(".weight") not in expected]
    assert all(torch.equal(base_state[k], merged_state[k]) for k in untouched)
    # unmerged: trainable LoRA layers with the same numbers
    wrapped = random_model(tiny_config(), std=0.1)
    load_peft_adapter(wrapped, tmp_path / "adapter", merge=False)
    assert set(lora_layers(wrapped)) == set(expected)
    px = torch.randn(2, 3, 64, 64)
    assert (logits(wrapped, px) - logits(merged, px)).abs().max() < 1e-5


def test_peft_adapter_patterns_and_errors(tmp_path):
    model = random_model(tiny_config(), std=0.1)
    pattern = {"alpha_pattern": {"fc2": 2.0}, "use_rslora": True}
    expected = write_peft_adapter(tmp_path / "a", model, 1, rank=4, alpha=6.0, extra_config=pattern)
    merged = random_model(tiny_config(), std=0.1)
    load_peft_adapter(merged, tmp_path / "a")
    a, b = expected["language_model.decoder.layers.0.fc2"]
    weight = model.state_dict()["language_model.decoder.layers.0.fc2.weight"] + (2.0 / 2.0) * b @ a  # alpha/sqrt(r)
    assert torch.allclose(merged.state_dict()["language_model.decoder.layers.0.fc2.weight"], weight, atol=1e-6)

    bad = [
        "base_model.model.model.language_model.encoder.layers.0.self_attn.query.lora_A.weight",
        "base_model.model.lm_head.lora_A.weight",
    ]
    write_peft_adapter(tmp_path / "b", model, 1, extra_keys=bad)
    with pytest.raises(CheckpointError, match="2 adapter keys match no linear layer.*lm_head.*self_attn.query"):
        load_peft_adapter(random_model(tiny_config()), tmp_path / "b")
    write_peft_adapter(tmp_path / "c", model, 0, extra_config={"use_dora": True})
    with pytest.raises(CheckpointError, match="use_dora"):
        load_peft_adapter(random_model(tiny_config()), tmp_path / "c")
    write_peft_adapter(tmp_path / "d", model, 1)
    config = tiny_config()
    small = random_model(config.replace(text=dataclasses.replace(config.text, d_model=16)))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_peft_adapter(small, tmp_path / "d")
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        load_peft_adapter(model, tmp_path)


def test_saved_peft_adapter_round_trips(tmp_path):
    model = random_model(tiny_config(), std=0.1)
    apply_lora(model, LoRAConfig(rank=2, alpha=4, targets=("language", "vision")))
    randomize_adapters(model)
    save_peft_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 4 and config["peft_type"] == "LORA"
    assert "model.language_model.encoder.layers.0.self_attn.q_proj" in config["target_modules"]
    fresh = random_model(tiny_config(), std=0.1)
    load_peft_adapter(fresh, tmp_path / "adapter")
    px = torch.randn(2, 3, 64, 64)
    assert (logits(fresh, px) - logits(model, px)).abs().max() < 1e-5


# --- with the trainer ---------------------------------------------------------------------------------------

TARGETS = ["a red circle", "two stars<loc_10><loc_20><loc_300><loc_400>", "circle", "the text HELLO"]
PROMPT_TEXTS = [spec.prompt.replace("{input}", "a red circle") for spec in TASKS.values()]


def tiny_processor() -> Florence2Processor:
    tokenizer = train_bpe_tokenizer((PROMPT_TEXTS + TARGETS) * 20, vocab_size=320)
    return Florence2Processor(tokenizer, ImageProcessor(size=(64, 64)), max_positions=128)


def make_item(index: int) -> dict:
    color = ((53 * index) % 256, (97 * index + 40) % 256, (31 * index + 120) % 256)
    return {
        "image": Image.new("RGB", (40, 32 + 8 * (index % 2)), color),
        "prompt": PROMPT_TEXTS[index % len(PROMPT_TEXTS)],
        "target": TARGETS[index % len(TARGETS)],
    }


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def lora_model(processor, seed=0):
    model = random_model(tiny_config(vocab_size=processor.tokenizer.vocab_size), seed=seed, std=0.1)
    apply_lora(model, LoRAConfig(rank=2, alpha=4, dropout=0.1, targets=("language", "vision")))
    return model


def train_config(out, **changes):
    base = dict(out_dir=str(out), total_steps=4, batch_size=2, lr=1e-2, log_every=1, save_every=2, progress=False)
    return TrainConfig(**{**base, **changes})


def test_trainer_trains_adapters_only_and_saves_a_plain_checkpoint(processor, tmp_path):
    model = lora_model(processor)
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    trainer = Trainer(model, processor, indexed_source(make_item), train_config(tmp_path, total_steps=2))
    adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert trainer.num_trainable == adapters < trainer.num_parameters
    trainer.train()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base.items())  # the base never moves
    assert any(not torch.equal(layer.lora_B, torch.zeros_like(layer.lora_B)) for layer in lora_layers(model).values())
    folder = trainer.checkpoint_dir
    loaded = load_model(folder)  # strict: a plain checkpoint in the native layout
    px = torch.randn(2, 3, 64, 64)
    assert (logits(loaded, px) - logits(model, px)).abs().max() < 1e-5
    assert (folder / "adapter" / "adapter_config.json").is_file()
    fresh = random_model(tiny_config(vocab_size=processor.tokenizer.vocab_size), std=0.1)
    load_peft_adapter(fresh, folder / "adapter")
    assert (logits(fresh, px) - logits(model, px)).abs().max() < 1e-5
    info = json.loads((tmp_path / "train_config.json").read_text())
    assert info["trainable_parameters"] == adapters


def test_lora_resume_continues_exactly(processor, tmp_path):
    straight = Trainer(lora_model(processor), processor, indexed_source(make_item), train_config(tmp_path / "a"))
    straight.train()
    first = Trainer(lora_model(processor), processor, indexed_source(make_item), train_config(tmp_path / "b"))
    first.train(stop_at=2)
    second = Trainer(lora_model(processor), processor, indexed_source(make_item), train_config(tmp_path / "b"))
    second.train(resume=True)
    losses = lambda out: [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    a, b = read_weights(tmp_path / "a" / "checkpoint-last"), read_weights(tmp_path / "b" / "checkpoint-last")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_peft_adapter_bin_file_loads_and_garbage_is_named(tmp_path):
    model = random_model(tiny_config(), std=0.1)
    write_peft_adapter(tmp_path / "a", model, 0)
    merged = random_model(tiny_config(), std=0.1)
    load_peft_adapter(merged, tmp_path / "a")
    from safetensors.torch import load_file

    torch.save(load_file(tmp_path / "a" / "adapter_model.safetensors"), tmp_path / "a" / "adapter_model.bin")
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    from_bin = random_model(tiny_config(), std=0.1)
    load_peft_adapter(from_bin, tmp_path / "a")
    assert all(torch.equal(v, from_bin.state_dict()[k]) for k, v in merged.state_dict().items())
    (tmp_path / "a" / "adapter_model.bin").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"cannot read adapter weights from .*adapter_model\.bin"):
        load_peft_adapter(from_bin, tmp_path / "a")
