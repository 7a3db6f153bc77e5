"""Model numerics against the reference implementation (transformers' Florence2ForConditionalGeneration)."""

import itertools

import pytest
import torch

from florence2.config import VARIANTS, Florence2Config
from florence2.errors import CheckpointError
from florence2.generation import generate
from florence2.model.florence2 import Florence2Model
from florence2.weights import load_model
from tests.checkpoints import random_model, tiny_config, write_native, write_original

transformers = pytest.importorskip("transformers")


def native_inputs(config: Florence2Config, prompt: torch.Tensor, mask: torch.Tensor, image_hw: tuple[int, int]):
    """The native model's inputs: ``<image>`` placeholders in front of the prompt."""
    n_img = config.num_image_tokens(image_hw)
    B = prompt.shape[0]
    ids = torch.cat([torch.full((B, n_img), config.image_token_id), prompt], 1)
    return ids, torch.cat([torch.ones(B, n_img, dtype=torch.long), mask], 1)


PROMPTS = torch.tensor([[0, 5, 6, 7, 2, 1, 1], [0, 8, 9, 10, 11, 12, 2], [0, 3, 2, 1, 1, 1, 1]])
MASK = (PROMPTS != 1).long()


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """Our tiny random model saved by us, and the reference loading that same folder."""
    model = random_model(tiny_config(vocab_size=60))
    with torch.no_grad():  # make EOS likely enough that hypotheses end at different lengths
        model.language_model.shared.weight[2] *= 2.5
    folder = write_native(model, tmp_path_factory.mktemp("tiny") / "ckpt")
    ref = transformers.Florence2ForConditionalGeneration.from_pretrained(folder).eval()
    return load_model(folder), ref


def test_save_pretrained_loads_in_transformers_with_same_logits(tiny_pair):
    ours, ref = tiny_pair
    torch.manual_seed(1)
    px = torch.randn(3, 3, 64, 64)
    dec = torch.randint(3, 59, (3, 9))
    ids, mask = native_inputs(ours.config, PROMPTS, MASK, (64, 64))
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values=px, attention_mask=mask, decoder_input_ids=dec).logits
        got = ours(px, PROMPTS, dec, attention_mask=MASK).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize(("num_beams", "ngram"), [(1, 0), (1, 3), (3, 0), (3, 3), (4, 3)])
def test_generated_ids_identical_to_reference(tiny_pair, num_beams, ngram):
    ours, ref = tiny_pair
    mismatches = []
    lengths = set()
    for seed, (lp, es) in itertools.product(range(4), [(1.0, True), (2.0, True), (0.5, False)]):
        if num_beams == 1 and (lp, es) != (1.0, True):
            continue
        torch.manual_seed(seed)
        px = torch.randn(3, 3, 32, 32)
        ids, mask = native_inputs(ours.config, PROMPTS, MASK, (32, 32))
        opts = dict(
            num_beams=num_beams, no_repeat_ngram_size=ngram, max_new_tokens=40, length_penalty=lp, early_stopping=es
        )
        expected = ref.generate(
            input_ids=ids,
            pixel_values=px,
            attention_mask=mask,
            do_sample=False,
            forced_bos_token_id=0,
            forced_eos_token_id=2,
            **opts,
        )
        got = generate(ours, px, PROMPTS, attention_mask=MASK, **opts)
        lengths.add(got.shape[1])
        if got.shape != expected.shape or not torch.equal(got, expected):
            mismatches.append((seed, lp, es, expected.tolist(), got.tolist()))
    assert not mismatches
    assert len(lengths) > 1 or num_beams == 1  # hypotheses of several lengths were exercised


def test_reference_written_checkpoint_loads(tmp_path):
    v = transformers.Florence2VisionConfig(
        depths=[1, 1],
        patch_size=[7, 3],
        patch_stride=[4, 2],
        patch_padding=[3, 1],
        patch_prenorm=[False, True],
        embed_dim=[16, 32],
        num_heads=[1, 2],
        num_groups=[1, 2],
        window_size=3,
        projection_dim=24,
    )
    t = transformers.BartConfig(
        vocab_size=80,
        d_model=24,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=128,
    )
    cfg = transformers.Florence2Config(vision_config=v.to_dict(), text_config=t.to_dict(), image_token_id=79)
    torch.manual_seed(0)
    ref = transformers.Florence2ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ref.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    px = torch.randn(2, 3, 48, 48)
    prompt = PROMPTS[:2]
    dec = torch.randint(3, 79, (2, 5))
    ids, mask = native_inputs(ours.config, prompt, MASK[:2], (48, 48))
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values=px, attention_mask=mask, decoder_input_ids=dec).logits
        got = ours(px, prompt, dec, attention_mask=MASK[:2]).logits
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_both_layouts_load_to_the_same_numbers(tmp_path, fmt):
    model = random_model(tiny_config())
    native = load_model(write_native(model, tmp_path / "native"))
    original = load_model(write_original(model, tmp_path / "original", fmt))
    a, b = native.state_dict(), original.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    px = torch.randn(1, 3, 64, 64)
    dec = torch.tensor([[2, 0, 7]])
    with torch.no_grad():
        assert torch.equal(native(px, PROMPTS[:1], dec).logits, original(px, PROMPTS[:1], dec).logits)


def test_param_counts_of_the_official_variants():
    counts = {}
    for name in ("base", "large"):
        with torch.device("meta"):
            model = Florence2Model(VARIANTS[name])
        counts[name] = sum(p.numel() for p in model.parameters())
    assert counts == {"base": 231_414_016, "large": 770_173_952}


def test_loading_names_missing_unexpected_and_misshaped_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = write_native(random_model(tiny_config()), tmp_path / "ckpt")
    state = load_file(folder / "model.safetensors")
    del state["model.vision_tower.convs.0.conv.weight"]
    state["model.extra.weight"] = torch.zeros(1)
    state["model.language_model.encoder.layers.0.fc1.bias"] = torch.zeros(5)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_model(folder)
    msg = str(err.value)
    assert "vision_tower.convs.0.conv.weight" in msg and "missing" in msg
    assert "extra.weight" in msg and "unexpected" in msg
    assert "encoder.layers.0.fc1.bias" in msg and "(5,)" in msg


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed"):
        load_model(tmp_path)
    folder = write_native(random_model(tiny_config()), tmp_path / "ok")
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(folder)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_load_matches_fp32(tmp_path, dtype):
    model = random_model(tiny_config(), std=0.1)
    folder = write_native(model, tmp_path / "ckpt")
    full, half = load_model(folder), load_model(folder, dtype=dtype)
    assert half.dtype == dtype
    px = torch.randn(1, 3, 64, 64)
    dec = torch.tensor([[2, 0, 7, 8]])
    with torch.no_grad():
        a = full(px, PROMPTS[:1], dec).logits
        b = half(px, PROMPTS[:1], dec).logits.float()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_too_long_prompt_is_an_error_not_a_truncation():
    model = random_model(tiny_config(max_positions=70))
    px = torch.randn(1, 3, 64, 64)  # 65 image tokens
    with pytest.raises(ValueError, match="exceed"):
        generate(model, px, torch.tensor([[0, 5, 6, 7, 8, 2]]), num_beams=1, max_new_tokens=2)


def test_dropout_and_drop_path_only_in_training():
    model = random_model(tiny_config(), std=0.1)
    px = torch.randn(2, 3, 64, 64)
    dec = torch.tensor([[2, 0, 7], [2, 0, 9]])
    with torch.no_grad():
        a = model(px, PROMPTS[:2], dec, attention_mask=MASK[:2]).logits
        b = model(px, PROMPTS[:2], dec, attention_mask=MASK[:2]).logits
        assert torch.equal(a, b)
        model.train()
        c = model(px, PROMPTS[:2], dec, attention_mask=MASK[:2]).logits
    assert not torch.allclose(a, c)


def test_loss_shifts_labels_once_and_ignores_padding():
    model = random_model(tiny_config(), std=0.1)
    px = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([[0, 7, 8, 2], [0, 9, 2, -100]])
    out = model(px, PROMPTS[:2], attention_mask=MASK[:2], labels=labels)
    dec = torch.tensor([[2, 0, 7, 8], [2, 0, 9, 2]])
    logits = model(px, PROMPTS[:2], dec, attention_mask=MASK[:2]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.allclose(out.loss, expected)
