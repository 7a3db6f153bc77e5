"""The trainer on tiny random models: loss bookkeeping, one real step, exact resume, 2-process DDP, CLI."""

import argparse
import dataclasses
import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image

from florence2 import Florence2, Florence2Processor, ImageProcessor, load_model
from florence2.errors import CheckpointError
from florence2.model.florence2 import Florence2Model, shift_right
from florence2.tasks import TASKS
from florence2.tokenizer import train_bpe_tokenizer
from florence2.train import TrainConfig, Trainer, collate, indexed_source, lr_at, param_groups
from florence2.train.cli import add_finetune_parser, add_train_parser
from florence2.train.finetune import FinetuneConfig
from florence2.train.losses import distillation_loss, jitter_locations, location_smoothed_loss
from florence2.weights import read_weights
from tests.checkpoints import tiny_config

TARGETS = [
    "a red circle",
    "a blue square and a red circle",
    "the text HELLO 42",
    "two stars<loc_10><loc_20><loc_300><loc_400>",
    "circle",
]
PROMPTS = [spec.prompt.replace("{input}", "a red circle") for spec in TASKS.values()]
CORPUS = PROMPTS + TARGETS


def make_item(index: int) -> dict:
    """Item ``index`` of an endless, deterministic stream of small images, prompts and targets."""
    size = (32 + 8 * (index % 3), 48 - 8 * (index % 2))
    color = ((53 * index) % 256, (97 * index + 40) % 256, (31 * index + 120) % 256)
    return {
        "image": Image.new("RGB", size, color),
        "prompt": PROMPTS[index % len(PROMPTS)],
        "target": TARGETS[index % len(TARGETS)],
    }


def without_dropout(config):
    return config.replace(
        vision=dataclasses.replace(config.vision, drop_path_rate=0.0),
        text=dataclasses.replace(config.text, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0),
    )


@pytest.fixture(scope="module")
def processor():
    tokenizer = train_bpe_tokenizer(CORPUS * 20, vocab_size=320)
    return Florence2Processor(tokenizer, ImageProcessor(size=(64, 64)), max_positions=128)


def new_model(processor, seed=0, dropout=True) -> Florence2Model:
    config = tiny_config(vocab_size=processor.tokenizer.vocab_size)
    torch.manual_seed(seed)
    return Florence2Model(config if dropout else without_dropout(config))


def config(out_dir, **changes) -> TrainConfig:
    base = dict(out_dir=str(out_dir), total_steps=6, batch_size=4, lr=1e-3, warmup_steps=2, log_every=1)
    return TrainConfig(**{**base, **changes, "progress": False})


def command_parser() -> argparse.ArgumentParser:
    """The ``train`` and ``finetune`` command lines."""
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers()
    add_train_parser(commands)
    add_finetune_parser(commands)
    return parser


def losses(out_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


# --- batches and loss ----------------------------------------------------------------------------


def test_collate_pads_prompts_and_masks_label_padding(processor):
    items = [make_item(i) for i in range(3)]
    batch = collate(items, processor, num_image_tokens=65)
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    tok = processor.tokenizer
    for row, item in enumerate(items):
        prompt, target = tok.encode(item["prompt"]), tok.encode(item["target"])
        assert target[0] == tok.bos_token_id and target[-1] == tok.eos_token_id
        assert batch["input_ids"][row, : len(prompt)].tolist() == prompt
        assert batch["attention_mask"][row].sum() == len(prompt)
        assert set(batch["input_ids"][row, len(prompt) :].tolist()) <= {tok.pad_token_id}
        assert batch["labels"][row, : len(target)].tolist() == target
        assert set(batch["labels"][row, len(target) :].tolist()) <= {-100}


def test_loss_ignores_padding(processor):
    model = new_model(processor).eval()
    items = [make_item(i) for i in range(4)]
    batch = collate(items, processor)
    assert (batch["labels"] == -100).any() and (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        out = model(**batch)
        # manual cross-entropy over the real target tokens only
        keep = batch["labels"] != -100
        manual = F.cross_entropy(out.logits[keep], batch["labels"][keep])
        # each item alone, nothing padded: the same per-token losses
        total, count = 0.0, 0
        for item in items:
            single = collate([item], processor)
            n = int((single["labels"] != -100).sum())
            total += float(model(**single).loss) * n
            count += n
    assert torch.allclose(out.loss, manual, atol=1e-6)
    assert out.loss.item() == pytest.approx(total / count, abs=1e-5)
    # the decoder saw the labels shifted once behind the start token
    start = model.config.text.decoder_start_token_id
    decoder_input_ids = shift_right(batch["labels"], start, model.config.text.pad_token_id)
    assert decoder_input_ids[:, 0].eq(start).all()
    assert decoder_input_ids[:, 1].eq(processor.tokenizer.bos_token_id).all()


def test_lr_schedule_warms_up_then_follows_a_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and lrs[9] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    assert lr_at(14, cfg) == pytest.approx(0.1)


def test_no_weight_decay_on_biases_norms_and_embeddings(processor):
    model = new_model(processor)
    model.vision_tower.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "language_model.encoder.layers.0.fc1.weight" in decayed
    assert "multi_modal_projector.image_projection.weight" in decayed
    for name in (
        "language_model.shared.weight",
        "language_model.decoder.embed_positions.weight",
        "language_model.encoder.layers.0.fc1.bias",
        "language_model.encoder.layers.0.self_attn_layer_norm.weight",
        "multi_modal_projector.image_position_embed.row_embeddings.weight",
    ):
        assert name in exempt
    assert not any(n.startswith("vision_tower.") for n in decayed | exempt)  # frozen: not optimised


def test_location_smoothed_loss_rewards_near_bins_and_keeps_other_tokens_one_hot():
    torch.manual_seed(0)
    first, bins = 10, 1000
    logits = torch.randn(2, 4, first + bins)
    labels = torch.tensor([[3, first + 500, first + 7, -100], [first + 999, 5, -100, -100]])
    # a tiny sigma is plain cross-entropy (the Gaussian collapses onto the label's bin)
    plain = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert location_smoothed_loss(logits, labels, first, bins, 1e-3).item() == pytest.approx(plain.item(), abs=1e-5)
    # by hand: a Gaussian over the bins for location labels, one-hot for the rest, mean over 5 tokens
    sigma = 4.0
    log_probs = torch.log_softmax(logits, -1)
    grid = torch.arange(bins, dtype=torch.float32)
    total = 0.0
    for b, t in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        label = int(labels[b, t])
        if label >= first:
            q = torch.exp(-0.5 * ((grid - (label - first)) / sigma) ** 2)
            total -= float((q / q.sum() * log_probs[b, t, first:]).sum())
        else:
            total -= float(log_probs[b, t, label])
    assert location_smoothed_loss(logits, labels, first, bins, sigma).item() == pytest.approx(total / 5, rel=1e-5)
    # a prediction two bins off costs less than one 200 bins off; one-hot treats both alike
    only = torch.tensor([[first + 500]])

    def peaked(k: int) -> torch.Tensor:
        out = torch.zeros(1, 1, first + bins)
        out[0, 0, first + k] = 8.0
        return out

    near, far = (location_smoothed_loss(peaked(k), only, first, bins, sigma) for k in (502, 700))
    assert near < far - 0.5
    assert F.cross_entropy(peaked(502)[0], only[0]) == pytest.approx(F.cross_entropy(peaked(700)[0], only[0]).item())
    # sigma 0 is one-hot; loc_weight scales the location terms, the mean stays over all 5 tokens
    assert location_smoothed_loss(logits, labels, first, bins, 0.0).item() == pytest.approx(plain.item(), rel=1e-6)
    terms = -log_probs[labels != -100].gather(-1, labels[labels != -100].unsqueeze(-1)).squeeze(-1)
    is_loc = labels[labels != -100] >= first
    for w in (0.0, 0.25, 3.0):
        expected = (terms[~is_loc].sum() + w * terms[is_loc].sum()) / 5
        weighted = location_smoothed_loss(logits, labels, first, bins, 0.0, w)
        assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)


def test_location_smoothing_trains_through_the_trainer(processor, tmp_path):
    items = [make_item(i) for i in range(4)]
    assert any("<loc_" in item["target"] for item in items)
    batch = collate(items, processor)
    first = processor.tokenizer.loc_token_id(0)
    model = new_model(processor, dropout=False)
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    before = float(location_smoothed_loss(logits, batch["labels"], first, 1000, 6.0))
    trainer = Trainer(
        model, processor, lambda *_: items, config(tmp_path, total_steps=1, warmup_steps=0, loc_sigma=6.0)
    )
    [record] = trainer.train()
    assert record["loss"] == pytest.approx(before, abs=1e-5)  # the logged loss is the smoothed one
    # a location weight alone takes the same path: words only (weight 0) give another loss
    words_only = float(location_smoothed_loss(logits, batch["labels"], first, 1000, 0.0, 0.0))
    assert abs(words_only - before) > 1e-3
    trainer = Trainer(
        new_model(processor, dropout=False),
        processor,
        lambda *_: items,
        config(tmp_path / "w", total_steps=1, warmup_steps=0, loc_weight=0.0),
    )
    [record] = trainer.train()
    assert record["loss"] == pytest.approx(words_only, abs=1e-5)
    with pytest.raises(ValueError, match="loc_sigma"):
        TrainConfig(loc_sigma=-1.0)
    with pytest.raises(ValueError, match="loc_sigma"):
        FinetuneConfig(out_dir=str(tmp_path), loc_sigma=-1.0)
    with pytest.raises(ValueError, match="loc_weight"):
        TrainConfig(loc_weight=-0.5)
    with pytest.raises(ValueError, match="loc_weight"):
        FinetuneConfig(out_dir=str(tmp_path), loc_weight=-0.5)
    # both commands take the option
    parser = command_parser()
    assert parser.parse_args(["train", "--out", "x", "--loc-sigma", "12"]).loc_sigma == 12.0
    assert parser.parse_args(["finetune", "--out", "x", "--loc-sigma", "8"]).loc_sigma == 8.0
    assert parser.parse_args(["train", "--out", "x"]).loc_sigma == 0.0
    assert parser.parse_args(["finetune", "--out", "x", "--loc-weight", "0.2"]).loc_weight == 0.2
    assert parser.parse_args(["train", "--out", "x"]).loc_weight == 1.0


# --- optimisation ------------------------------------------------------------------------------


def test_one_step_lowers_the_loss_on_a_fixed_batch(processor, tmp_path):
    model = new_model(processor, dropout=False)
    items = [make_item(i) for i in range(4)]
    batch = collate(items, processor)
    with torch.no_grad():
        before = float(model.eval()(**batch).loss)
    trainer = Trainer(model, processor, lambda *_: items, config(tmp_path, total_steps=1, warmup_steps=0))
    [record] = trainer.train()
    with torch.no_grad():
        after = float(model.eval()(**batch).loss)
    assert record["loss"] == pytest.approx(before, abs=1e-5)  # no dropout: the step's loss is the eval loss
    assert after < before - 0.05


def test_gradient_accumulation_matches_the_full_batch(processor, tmp_path):
    runs = []
    for accum in (1, 2):
        model = new_model(processor, dropout=False)
        cfg = config(tmp_path / f"accum{accum}", total_steps=3, grad_accum=accum)
        runs.append([r["loss"] for r in Trainer(model, processor, indexed_source(make_item), cfg).train()])
    assert runs[0] == pytest.approx(runs[1], abs=1e-5)


def test_anchor_decay_pulls_the_weights_back_towards_the_start(processor, tmp_path):
    start = {k: v.clone() for k, v in new_model(processor, dropout=False).state_dict().items()}
    ends = {}
    for decay in (0.0, 250.0, 1000.0):  # lr 1e-3 at step 0 of 2 warm-up steps is 5e-4: a pull of 0, 1/8, 1/2
        model = new_model(processor, dropout=False)
        cfg = config(tmp_path / str(decay), total_steps=1, warmup_steps=2, anchor_decay=decay)
        Trainer(model, processor, indexed_source(make_item), cfg).train()
        ends[decay] = model.state_dict()
    moved = [k for k in start if not torch.equal(ends[0.0][k], start[k])]
    assert moved
    for decay, share in ((250.0, 0.125), (1000.0, 0.5)):
        for k in moved:
            expected = ends[0.0][k] + share * (start[k] - ends[0.0][k])
            torch.testing.assert_close(ends[decay][k], expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="anchor_decay"):
        TrainConfig(anchor_decay=-1.0)
    with pytest.raises(ValueError, match="anchor_decay"):
        FinetuneConfig(out_dir=str(tmp_path), anchor_decay=-1.0)


def test_a_resumed_run_pulls_towards_the_first_start(processor, tmp_path):
    cfg = dict(save_every=2, anchor_decay=100.0)
    straight = Trainer(new_model(processor), processor, indexed_source(make_item), config(tmp_path / "a", **cfg))
    straight.train()
    first = Trainer(new_model(processor), processor, indexed_source(make_item), config(tmp_path / "b", **cfg))
    first.train(stop_at=4)
    # a new process starting from other weights: the anchors come from the checkpoint, not from these
    second = Trainer(new_model(processor, seed=1), processor, indexed_source(make_item), config(tmp_path / "b", **cfg))
    second.train(resume=True)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    a, b = read_weights(tmp_path / "a" / "checkpoint-last"), read_weights(tmp_path / "b" / "checkpoint-last")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distillation_loss_counts_only_what_the_teacher_gets_right():
    torch.manual_seed(0)
    first_loc, bins, vocab = 10, 100, 120
    teacher = torch.randn(1, 5, vocab)
    teacher[0, 2:4, first_loc + 10] = 20.0  # at positions 2 and 3 the teacher's first choice is bin 10
    word_right = int(teacher[0, 0].argmax())  # the word the teacher ranks first at position 0
    word_wrong = next(w for w in range(first_loc) if w != int(teacher[0, 1].argmax()))  # one it does not, at 1
    # bin 3 is 7 bins from the teacher's guess (counted), bin 90 is 80 bins away (left out); 4 is padding
    labels = torch.tensor([[word_right, word_wrong, first_loc + 3, first_loc + 90, -100]])
    assert float(distillation_loss(teacher.clone(), teacher, labels, first_loc, bins)) == pytest.approx(0, abs=1e-6)
    base = distillation_loss(torch.zeros(1, 5, vocab), teacher, labels, first_loc, bins)
    log_t = torch.log_softmax(teacher[0], -1)
    expected = sum(float((log_t[i].exp() * (log_t[i] - math.log(1 / vocab))).sum()) for i in (0, 2)) / 4
    assert float(base) == pytest.approx(expected, rel=1e-5)
    for position, counted in ((0, True), (1, False), (2, True), (3, False), (4, False)):
        student = torch.zeros(1, 5, vocab)
        student[0, position, 7] = 5.0
        changed = float(distillation_loss(student, teacher, labels, first_loc, bins)) != pytest.approx(float(base))
        assert changed == counted, position


def test_distill_starts_where_plain_training_starts_and_then_stays_closer(processor, tmp_path):
    start = {k: v.clone() for k, v in new_model(processor, dropout=False).state_dict().items()}
    runs, first_loss = {}, {}
    for weight in (0.0, 5.0):
        model = new_model(processor, dropout=False)
        records = Trainer(model, processor, indexed_source(make_item), config(tmp_path / str(weight), distill=weight))
        first_loss[weight] = records.train()[0]["loss"]
        runs[weight] = model.state_dict()
    # at the first step the student is the teacher: the KL is 0
    assert first_loss[5.0] == pytest.approx(first_loss[0.0], rel=1e-6)

    def distance(state):
        return sum(float((state[k] - start[k]).float().pow(2).sum()) for k in start) ** 0.5

    assert distance(runs[5.0]) < distance(runs[0.0])
    with pytest.raises(ValueError, match="distill"):
        TrainConfig(distill=-1.0)
    with pytest.raises(ValueError, match="distill"):
        FinetuneConfig(out_dir=str(tmp_path), distill=-1.0)
    parser = command_parser()
    assert parser.parse_args(["finetune", "--out", "x", "--distill", "0.5"]).distill == 0.5


def test_a_resumed_distill_run_matches_a_straight_one_and_checks_its_teacher(processor, tmp_path):
    cfg = dict(save_every=2, distill=1.0)
    Trainer(new_model(processor), processor, indexed_source(make_item), config(tmp_path / "a", **cfg)).train()
    Trainer(new_model(processor), processor, indexed_source(make_item), config(tmp_path / "b", **cfg)).train(stop_at=4)
    other = Trainer(new_model(processor, seed=1), processor, indexed_source(make_item), config(tmp_path / "b", **cfg))
    with pytest.raises(ValueError, match="another starting model"):
        other.train(resume=True)
    again = Trainer(new_model(processor), processor, indexed_source(make_item), config(tmp_path / "b", **cfg))
    again.train(resume=True)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    a, b = read_weights(tmp_path / "a" / "checkpoint-last"), read_weights(tmp_path / "b" / "checkpoint-last")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_jitter_moves_only_location_tokens_within_the_grid():
    first_loc, bins = 50, 1000
    ids = torch.tensor([[0, 7, first_loc, first_loc + 500, first_loc + 999, 2, 1]] * 200)
    torch.manual_seed(0)
    moved = jitter_locations(ids, first_loc, bins, 3)
    assert torch.equal(moved[:, [0, 1, 5, 6]], ids[:, [0, 1, 5, 6]])
    shift = moved[:, 3] - ids[:, 3]
    assert set(shift.tolist()) == {-3, -2, -1, 0, 1, 2, 3}
    assert set((moved[:, 2] - first_loc).tolist()) == {0, 1, 2, 3}  # clamped at the grid's ends
    assert set((moved[:, 4] - first_loc).tolist()) == {996, 997, 998, 999}


def test_loc_jitter_changes_what_the_decoder_reads_not_the_targets(processor, tmp_path):
    runs = {}
    for jitter in (0, 40):
        model = new_model(processor, dropout=False)
        cfg = config(tmp_path / str(jitter), total_steps=2, loc_jitter=jitter)
        runs[jitter] = [r["loss"] for r in Trainer(model, processor, indexed_source(make_item), cfg).train()]
    assert runs[40] != pytest.approx(runs[0], rel=1e-6)  # the targets hold location tokens (TARGETS[3])
    again = Trainer(new_model(processor, dropout=False), processor, indexed_source(make_item), cfg)
    assert [r["loss"] for r in again.train()] == runs[40]  # the draws are seeded per step
    with pytest.raises(ValueError, match="loc_jitter"):
        TrainConfig(loc_jitter=-1)
    with pytest.raises(ValueError, match="loc_jitter"):
        FinetuneConfig(out_dir=str(tmp_path), loc_jitter=1000)
    parser = command_parser()
    assert parser.parse_args(["train", "--out", "x", "--loc-jitter", "20"]).loc_jitter == 20
    assert parser.parse_args(["finetune", "--out", "x", "--loc-jitter", "8"]).loc_jitter == 8


# --- checkpoints and resume ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def straight_run(processor, tmp_path_factory):
    """6 uninterrupted steps with dropout on, checkpoints every 2 steps, evaluation every 3."""
    out = tmp_path_factory.mktemp("straight")
    eval_fn = lambda model, step: {"loss": float(model(**collate([make_item(0)], processor)).loss)}
    trainer = Trainer(
        new_model(processor), processor, indexed_source(make_item), config(out, save_every=2, eval_every=3), eval_fn
    )
    trainer.train()
    return trainer


def test_resume_continues_exactly(processor, straight_run, tmp_path):
    def crashing(step, rank, world_size, batch_size):
        if step == 5:
            raise KeyboardInterrupt  # killed while on step 6, after the step-4 checkpoint and step-5 log
        return indexed_source(make_item)(step, rank, world_size, batch_size)

    first = Trainer(new_model(processor), processor, crashing, config(tmp_path, save_every=2, eval_every=3))
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert len(losses(tmp_path)) == 5
    # a new process: other initial weights, which the checkpoint replaces
    second = Trainer(
        new_model(processor, seed=1), processor, indexed_source(make_item), config(tmp_path, save_every=2, eval_every=3)
    )
    second.train(resume=True)
    assert second.step == 6
    assert losses(tmp_path) == losses(straight_run.out_dir)  # the very same curve
    a, b = read_weights(tmp_path / "checkpoint-last"), read_weights(straight_run.checkpoint_dir)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_stop_at_then_resume_is_the_uninterrupted_run(processor, straight_run, tmp_path):
    cfg = config(tmp_path, save_every=2, eval_every=3)
    first = Trainer(new_model(processor), processor, indexed_source(make_item), cfg)
    first.train(stop_at=3)  # a curriculum phase boundary: saved at step 3 although save_every is 2
    assert first.step == 3 and len(losses(tmp_path)) == 3
    second = Trainer(new_model(processor, seed=1), processor, indexed_source(make_item), cfg)
    second.train(resume=True)
    assert losses(tmp_path) == losses(straight_run.out_dir)


def test_resume_says_where_it_resumes_and_refuses_when_there_is_nothing(processor, tmp_path, capsys):
    cfg = config(tmp_path, save_every=2)
    with pytest.raises(CheckpointError, match=r"nothing to resume: .*checkpoint-last/trainer_state\.pt"):
        Trainer(new_model(processor), processor, indexed_source(make_item), cfg).train(resume=True)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing ran
    Trainer(new_model(processor), processor, indexed_source(make_item), cfg).train(stop_at=2)
    capsys.readouterr()
    Trainer(new_model(processor), processor, indexed_source(make_item), cfg).train(resume=True)
    assert f"resuming from {tmp_path / 'checkpoint-last'} at step 2 of 6" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a pickle"])
def test_a_damaged_trainer_state_is_named(processor, tmp_path, damage):
    cfg = config(tmp_path, save_every=2)
    Trainer(new_model(processor), processor, indexed_source(make_item), cfg).train(stop_at=2)
    state = tmp_path / "checkpoint-last" / "trainer_state.pt"
    data = state.read_bytes()
    state.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "not a pickle": b"hello"}[damage])
    with pytest.raises(CheckpointError, match=r"cannot resume from .*trainer_state\.pt: the file is truncated"):
        Trainer(new_model(processor), processor, indexed_source(make_item), cfg).train(resume=True)


def test_resume_after_a_save_killed_between_its_renames(processor, straight_run, tmp_path):
    cfg = config(tmp_path, save_every=2, eval_every=3)
    Trainer(new_model(processor), processor, indexed_source(make_item), cfg).train(stop_at=4)
    folder = tmp_path / "checkpoint-last"
    folder.rename(tmp_path / ".checkpoint-last.old")  # as a kill after the first rename leaves it
    second = Trainer(new_model(processor, seed=1), processor, indexed_source(make_item), cfg)
    second.train(resume=True)
    assert second.step == 6 and losses(tmp_path) == losses(straight_run.out_dir)


def test_checkpoint_is_a_native_model_folder_with_logs(straight_run, tmp_path):
    out, folder = straight_run.out_dir, straight_run.checkpoint_dir
    assert (folder / "trainer_state.pt").is_file() and (folder / "tokenizer.json").is_file()
    model = load_model(folder)
    trained = straight_run.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    predictor = Florence2.from_pretrained(folder)
    caption = predictor.predict(make_item(0)["image"], "<CAPTION>", max_new_tokens=4, num_beams=1)
    assert isinstance(caption["<CAPTION>"], str)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "grad_norm", "samples_per_s", "elapsed"} <= set(records[0])
    assert "eval/loss" in records[2] and "eval/loss" in records[5] and "eval/loss" not in records[3]
    assert all(math.isfinite(r["loss"]) for r in records)
    with Image.open(out / "metrics.png") as png:
        assert png.format == "PNG" and png.width > 100


def test_best_checkpoint_keeps_the_best_evaluation(processor, tmp_path):
    scores = {2: 0.2, 4: 0.7, 6: 0.4}
    eval_fn = lambda model, step: {"score": scores[step], "loss": 1.0 / step}
    cfg = config(tmp_path, eval_every=2, best_metric="score")
    trainer = Trainer(new_model(processor), processor, indexed_source(make_item), cfg, eval_fn)
    trainer.train()
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best == {"metric": "eval/score", "value": 0.7, "step": 4}  # "score": higher is better
    assert not (tmp_path / "best" / "trainer_state.pt").exists()
    assert load_model(tmp_path / "best").config == trainer.model.config
    assert TrainConfig(best_metric="eval/loss", eval_every=1).best_is_min
    assert not TrainConfig(best_metric="od_mAP50", eval_every=1).best_is_min
    with pytest.raises(ValueError, match="needs evaluations"):
        TrainConfig(best_metric="loss")
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")
    cfg = config(tmp_path / "other", eval_every=2, best_metric="accuracy")
    with pytest.raises(KeyError, match="'accuracy' is not among the evaluation's metrics"):
        Trainer(new_model(processor), processor, indexed_source(make_item), cfg, eval_fn).train()


# --- DDP -----------------------------------------------------------------------------------------


def _strategy(model: Florence2Model, strategy: str) -> Florence2Model:
    """Full training, or a frozen vision tower with LoRA on the language model's attention."""
    if strategy == "lora":
        from florence2.train.finetune import freeze
        from florence2.train.lora import LoRAConfig, apply_lora

        freeze(model, ["vision"])
        torch.manual_seed(0)  # the adapters' initial A (DDP also broadcasts rank 0's at start)
        apply_lora(model, LoRAConfig(rank=2, alpha=4, dropout=0.0, targets=("attention",)), freeze_base=False)
    return model


def _ddp_worker(rank: int, world_size: int, port: int, init: str, out: str, strategy: str = "full") -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    predictor = Florence2.from_pretrained(init)
    model = _strategy(predictor.model, strategy)
    trainer = Trainer(model, predictor.processor, indexed_source(make_item), config(out, total_steps=3))
    trainer.train()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_two_ddp_processes_match_one_process(processor, tmp_path, strategy):
    init = tmp_path / "init"
    Florence2(new_model(processor, dropout=False), processor).save_pretrained(init)
    single = Florence2.from_pretrained(init)
    model = _strategy(single.model, strategy)
    Trainer(model, single.processor, indexed_source(make_item), config(tmp_path / "one", total_steps=3)).train()
    args = (2, _free_port(), str(init), str(tmp_path / "two"), strategy)
    mp.spawn(_ddp_worker, args=args, nprocs=2, join=True)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    a, b = read_weights(tmp_path / "one" / "checkpoint-last"), read_weights(tmp_path / "two" / "checkpoint-last")
    # attention key biases get a zero gradient in exact arithmetic (softmax ignores a shift), so
    # Adam turns their rounding noise into updates of either sign: compare everything else
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a if not k.endswith("k_proj.bias"))


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_trains_a_tiny_model_and_resumes(tmp_path):
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    common = ["train", "--out", str(tmp_path), "--batch-size", "2", "--image-size", "64", "--scene-size", "64"]
    common += ["--vocab-size", "300", "--tasks", "CAPTION=2,OD,REGION_TO_CATEGORY", "--no-progress", "--log-every", "1"]
    args = parser.parse_args([*common, "--steps", "2", "--eval-every", "2"])
    assert args.func(args) == 0
    args = parser.parse_args([*common, "--steps", "3", "--resume"])
    assert args.func(args) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and "eval/loss" in records[1]
    assert records[2]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))  # fresh model's lr
    assert Florence2.from_pretrained(tmp_path / "checkpoint-last").model.config.text.d_model == 128


def test_cli_eval_seed_picks_the_held_out_world(tmp_path):
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    common = ["--batch-size", "2", "--image-size", "64", "--scene-size", "64", "--vocab-size", "300"]
    common += ["--tasks", "CAPTION,OD", "--no-progress", "--steps", "1", "--eval-every", "1"]

    def losses(name: str, *extra: str) -> tuple[float, float]:
        args = parser.parse_args(["train", "--out", str(tmp_path / name), *common, *extra])
        assert args.func(args) == 0
        (record,) = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return record["loss"], record["eval/loss"]

    default, same, other = losses("default"), losses("same", "--eval-seed", "1"), losses("other", "--eval-seed", "9")
    assert default == same  # the default held-out world is --seed + 1
    assert other[0] == default[0] and other[1] != default[1]  # training untouched, another held-out world
