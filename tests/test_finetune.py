"""Fine-tuning end to end on tiny random checkpoints: freezing, gradient checkpointing, long targets,
mixed datasets, the CLI, and checkpoints that load in transformers with the same logits."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from florence2 import Florence2, load_model
from florence2.cli import main
from florence2.errors import AnnotationError, TaskError
from florence2.model.florence2 import Florence2Model
from florence2.train import TrainConfig, Trainer, collate, indexed_source
from florence2.train.finetune import FinetuneConfig, check_lengths, finetune, freeze
from florence2.train.lora import LoRAConfig, apply_lora, lora_layers, save_peft_adapter
from florence2.weights import read_weights
from tests.checkpoints import tiny_config
from tests.test_lora import make_item, tiny_processor


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def checkpoint(processor, tmp_path_factory):
    """A tiny random checkpoint (native layout, with tokenizer and preprocessor config)."""
    torch.manual_seed(0)
    model = Florence2Model(tiny_config(vocab_size=processor.tokenizer.vocab_size)).init_weights()
    folder = tmp_path_factory.mktemp("tiny") / "ckpt"
    Florence2(model, processor).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A COCO dataset of 6 images, 1-2 boxes each."""
    root = tmp_path_factory.mktemp("coco")
    images, annotations = [], []
    for i in range(6):
        Image.new("RGB", (64, 48), (40 * i, 200 - 30 * i, 90)).save(root / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
        annotations.append({"id": 2 * i, "image_id": i, "category_id": 1 + i % 2, "bbox": [4 * i, 5, 20, 18]})
        if i % 3 == 0:
            annotations.append({"id": 2 * i + 1, "image_id": i, "category_id": 2, "bbox": [30, 20, 30, 20]})
    categories = [{"id": 1, "name": "red circle"}, {"id": 2, "name": "square"}]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def run(tmp_path, checkpoint, data, **changes) -> dict:
    settings = dict(
        out_dir=str(tmp_path), model=str(checkpoint), data=tuple(data), steps=2, batch_size=2, progress=False
    )
    return finetune(FinetuneConfig(**{**settings, **changes}))


# --- strategies -----------------------------------------------------------------------------------------


def test_frozen_parameters_do_not_change_and_are_not_optimised(processor, tmp_path):
    torch.manual_seed(0)
    model = Florence2Model(tiny_config(vocab_size=processor.tokenizer.vocab_size)).init_weights()
    frozen = freeze(model, ["vision", "projector", "embeddings"])
    assert frozen == ["vision_tower", "multi_modal_projector", "language_model.shared"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(out_dir=str(tmp_path), total_steps=1, batch_size=2, lr=1e-2, progress=False)
    trainer = Trainer(model, processor, indexed_source(make_item), cfg)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    frozen_names = [
        n for n in before if n.startswith(("vision_tower.", "multi_modal_projector.", "language_model.shared"))
    ]
    assert frozen_names and all(id(model.get_parameter(n)) not in in_optimizer for n in frozen_names)
    expected = sum(p.numel() for n, p in model.named_parameters() if n not in frozen_names)
    assert trainer.num_trainable == expected
    trainer.train()
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in frozen_names)
    moved = [n for n in before if n not in frozen_names and not torch.equal(before[n], after[n])]
    assert "language_model.encoder.layers.0.fc1.weight" in moved
    with pytest.raises(ValueError, match="unknown freeze group 'eyes'"):
        freeze(model, ["eyes"])


def test_gradient_checkpointing_gives_the_same_gradients(processor):
    batch = collate([make_item(i) for i in range(3)], processor)
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = Florence2Model(tiny_config(vocab_size=processor.tokenizer.vocab_size)).init_weights().train()
        model.set_gradient_checkpointing(checkpointed)
        torch.manual_seed(5)  # dropout and drop path draw the same masks, recomputation included
        model(**batch).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5), name
    with torch.no_grad():  # inference is unaffected
        model.eval()
        assert torch.equal(model(**batch).logits, model.set_gradient_checkpointing(False)(**batch).logits)


# --- data -------------------------------------------------------------------------------------------------


def test_long_targets_are_reported_and_skipped_or_errors(processor, tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    lines = [
        {"image": "a.png", "prefix": "<CAPTION>", "suffix": "a red circle"},
        {"image": "a.png", "prefix": "<OCR>", "suffix": " ".join(["HELLO"] * 200)},
        {"image": "a.png", "prefix": " ".join(["circle"] * 100), "suffix": "x"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    from florence2.data.formats import read_jsonl

    examples = read_jsonl(path)
    kept, report = check_lengths(examples, processor, num_image_tokens=65)
    assert kept == examples[:1]
    assert len(report) == 2
    assert f"1 of 3 examples have targets longer than the decoder's 128 positions: {path}:2 (<OCR>" in report[0]
    assert "prompts longer than the 63 positions" in report[1] and f"{path}:3 (free prompt" in report[1]
    with pytest.raises(AnnotationError, match=rf"{path}:2 \(<OCR>, \d+ tokens\)"):
        check_lengths(examples, processor, num_image_tokens=65, policy="error")


def test_mixed_datasets_follow_their_weights(checkpoint, coco, tmp_path):
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "blue.png")
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"image": "blue.png", "caption": "a blue square"}) + "\n")
    data = [f"coco:{coco}@tasks=OD+REGION_TO_CATEGORY", f"captions:{captions}@weight=4"]
    result = run(tmp_path / "run", checkpoint, data, task_weights={"REGION_TO_CATEGORY": 0.5})
    assert Counter(e.task for e in result.train_examples) == {"<OD>": 6, "<REGION_TO_CATEGORY>": 8, "<CAPTION>": 1}
    source = result.trainer.train_source
    drawn = Counter(item.task for step in range(200) for item in source(step, 0, 1, 2))
    # expected draws per epoch: OD 6 x 1, region 8 x 0.5, caption 1 x 4
    assert drawn["<OD>"] / drawn["<CAPTION>"] == pytest.approx(6 / 4, rel=0.15)
    assert drawn["<REGION_TO_CATEGORY>"] / drawn["<CAPTION>"] == pytest.approx(4 / 4, rel=0.15)
    assert any("coco:" in note and "14 examples" in note for note in result.notes)


# --- runs and checkpoints -----------------------------------------------------------------------------------


def native_inputs(config, prompt, mask, image_hw):
    n_img = config.num_image_tokens(image_hw)
    ids = torch.cat([torch.full((prompt.shape[0], n_img), config.image_token_id), prompt], 1)
    return ids, torch.cat([torch.ones(prompt.shape[0], n_img, dtype=torch.long), mask], 1)


@pytest.mark.parametrize("strategy", ["full", "lora", "new word"])
def test_finetuned_checkpoint_loads_in_transformers_with_the_same_logits(checkpoint, coco, tmp_path, strategy):
    transformers = pytest.importorskip("transformers")
    lora = LoRAConfig(rank=2, alpha=4, targets=("language", "vision")) if strategy == "lora" else None
    words = ("red circle",) if strategy == "new word" else ()
    result = run(tmp_path, checkpoint, [f"coco:{coco}"], lora=lora, lr=1e-2, freeze=("vision",), add_words=words)
    folder = result.checkpoint
    assert (folder / "finetune.json").is_file() and (folder / "trainer_state.pt").is_file()
    assert (folder / "adapter" / "adapter_model.safetensors").is_file() == (strategy == "lora")
    ours = load_model(folder)
    start = read_weights(checkpoint)
    assert any(not torch.equal(v, start[k]) for k, v in read_weights(folder).items())  # it trained
    if strategy != "lora":  # frozen vision tower: bit-identical
        assert all(torch.equal(v, start[k]) for k, v in read_weights(folder).items() if ".vision_tower." in k)
    ref = transformers.Florence2ForConditionalGeneration.from_pretrained(folder).eval()
    torch.manual_seed(1)
    px = torch.randn(2, 3, 64, 64)
    prompt = torch.tensor([[0, 5, 6, 7, 2, 1], [0, 8, 9, 10, 11, 2]])
    mask = (prompt != 1).long()
    dec = torch.randint(3, 300, (2, 7))
    ids, full_mask = native_inputs(ours.config, prompt, mask, (64, 64))
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values=px, attention_mask=full_mask, decoder_input_ids=dec).logits
        got = ours(px, prompt, dec, attention_mask=mask).logits
        trained = result.trainer.model.eval()(px, prompt, dec, attention_mask=mask).logits
    assert (got - expected).abs().max().item() < 1e-4
    assert (got - trained).abs().max().item() < 1e-5  # merged LoRA = the adapter model


def test_added_words_get_a_token_and_a_row_starting_at_their_pieces_mean(checkpoint, coco, processor, tmp_path):
    vocab = processor.tokenizer.vocab_size
    pieces = processor.tokenizer.encode("red circle")[1:-1]
    assert len(pieces) > 1
    like = processor.tokenizer.encode("square")[1:-1]
    result = run(tmp_path, checkpoint, [f"coco:{coco}"], steps=0, add_words=("red circle", "zebra = square"))
    start, tuned = Florence2.from_pretrained(checkpoint), Florence2.from_pretrained(result.checkpoint)
    tokenizer = tuned.processor.tokenizer
    assert tokenizer.encode("red circle<loc_3>") == [0, vocab, tokenizer.loc_token_id(3), 2]
    assert tuned.processor.batch_decode([[0, vocab, tokenizer.loc_token_id(3), 2]]) == ["<s>red circle<loc_3></s>"]
    old, new = start.model.language_model.shared.weight, tuned.model.language_model.shared.weight
    assert new.shape[0] == vocab + 2 == tuned.model.config.text.vocab_size
    assert torch.equal(new[:vocab], old)
    torch.testing.assert_close(new[vocab], old[pieces].mean(0))  # its own pieces
    assert tokenizer.encode("zebra") == [0, vocab + 1, 2]
    torch.testing.assert_close(new[vocab + 1], old[like].mean(0))  # started from "square"
    assert tuned.model.config.image_token_id == start.model.config.image_token_id  # inside the old vocabulary
    # the <image> placeholder one past the vocabulary moves to one past the new one
    model = Florence2Model(tiny_config(vocab_size=vocab).replace(image_token_id=vocab))
    assert model.resize_token_embeddings(vocab + 2).config.image_token_id == vocab + 2
    with pytest.raises(ValueError, match="only grows"):
        model.resize_token_embeddings(vocab)
    # a word that already is one token is left alone; malformed words and LoRA are refused
    assert processor.tokenizer.add_words(["s"]) == {}  # a byte: one token already
    with pytest.raises(TaskError, match="word to add"):
        processor.tokenizer.add_words([" arrow"])
    with pytest.raises(TaskError, match="word to add"):
        run(tmp_path / "bad", checkpoint, [f"coco:{coco}"], steps=0, add_words=("=square",))
    with pytest.raises(ValueError, match="add_words"):
        FinetuneConfig(out_dir=str(tmp_path), add_words=("arrow",), lora=LoRAConfig(rank=2))


def test_cli_finetune_with_lora_evaluation_and_best(checkpoint, coco, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(checkpoint), "--data", f"coco:{coco}@tasks=OD+OPEN_VOCABULARY_DETECTION"]
    argv += ["--out", str(out), "--steps", "4", "--batch-size", "2", "--lora", "--lora-rank", "2"]
    argv += ["--lora-targets", "q_proj,v_proj", "--eval-fraction", "0.3", "--eval-every", "2", "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "trainable parameters in the optimizer:" in err and "best:" in err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/loss"] for r in records if "eval/loss" in r]
    best = json.loads((out / "best" / "best.json").read_text())
    assert len(evals) == 2 and best["value"] == min(evals) and best["metric"] == "eval/loss"
    assert load_model(out / "best").config == load_model(out / "checkpoint-last").config
    info = json.loads((out / "checkpoint-last" / "finetune.json").read_text())
    assert info["held_out"]["images"] >= 1 and info["train"]["images"] + info["held_out"]["images"] == 6
    # resuming a finished run changes nothing
    assert main([*argv, "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(records)


def test_cropped_training_items_reach_the_trainer(checkpoint, coco, tmp_path, monkeypatch):
    import florence2.train.finetune as module

    seen = []
    real = module.by_target_length

    def spy(source):
        def wrapped(*args):
            items = source(*args)
            seen.extend(items)
            return items

        return real(wrapped)

    monkeypatch.setattr(module, "by_target_length", spy)
    run(tmp_path, checkpoint, [f"coco:{coco}@tasks=OD"], crop=0.6, steps=3)
    assert len(seen) == 6 and all(isinstance(item, dict) and item["source"].endswith("(cropped)") for item in seen)
    assert all(isinstance(item["image"], Image.Image) for item in seen)
    with pytest.raises(ValueError, match="crop must lie in"):
        FinetuneConfig(out_dir=str(tmp_path), crop=1.5)


def test_cli_errors(checkpoint, tmp_path, capsys):
    assert main(["finetune", "--model", str(checkpoint), "--out", str(tmp_path)]) == 2
    assert "give at least one --data" in capsys.readouterr().err
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "prefix": "<OD>"}\n')
    assert main(["finetune", "--model", str(checkpoint), "--out", str(tmp_path), "--data", f"jsonl:{bad}"]) == 2
    assert f"{bad}:1: missing field 'suffix'" in capsys.readouterr().err
    assert (
        main(["finetune", "--model", str(checkpoint), "--out", str(tmp_path), "--data", "x", "--freeze", "eyes"]) == 2
    )


def test_steps_0_merges_a_peft_adapter_into_a_plain_checkpoint(checkpoint, tmp_path):
    model = load_model(checkpoint)
    apply_lora(model, LoRAConfig(rank=2, targets=("language",)))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.1)
    save_peft_adapter(model, tmp_path / "adapter")
    argv = ["finetune", "--model", str(checkpoint), "--adapter", str(tmp_path / "adapter"), "--steps", "0"]
    assert main([*argv, "--out", str(tmp_path / "merged")]) == 0
    merged = Florence2.from_pretrained(tmp_path / "merged" / "checkpoint-last")
    px = torch.randn(1, 3, 64, 64)
    prompt, dec = torch.tensor([[0, 5, 6, 2]]), torch.tensor([[2, 0, 9]])
    with torch.no_grad():
        assert torch.allclose(merged.model(px, prompt, dec).logits, model.eval()(px, prompt, dec).logits, atol=1e-5)
    assert Path(tmp_path / "merged" / "checkpoint-last" / "tokenizer.json").is_file()
