"""int8 dynamic quantization of the linear layers."""

import pytest
import torch

from florence2 import CheckpointError, Florence2
from florence2.pipeline import DEFAULT_MODEL_DIR
from florence2.quantization import is_quantized, quantize_int8
from florence2.weights import save_model
from tests.checkpoints import random_model, tiny_config


def _inputs(config, batch=2):
    torch.manual_seed(0)
    pixel_values = torch.randn(batch, 3, 64, 64)
    input_ids = torch.randint(3, config.text.vocab_size, (batch, 7))
    decoder_ids = torch.randint(3, config.text.vocab_size, (batch, 5))
    return pixel_values, input_ids, decoder_ids


def test_int8_model_stays_close_to_fp32_and_quantizes_every_linear_layer():
    config = tiny_config()
    model = random_model(config, std=0.05).eval()
    pixel_values, input_ids, decoder_ids = _inputs(config)
    with torch.inference_mode():
        reference = model(pixel_values, input_ids, decoder_input_ids=decoder_ids).logits
        features = model.encode_image(pixel_values)
    quantize_int8(model)
    assert is_quantized(model)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())  # every linear layer converted
    assert model.language_model.shared.weight.dtype == torch.float32  # the embedding itself stays fp32
    with torch.inference_mode():
        logits = model(pixel_values, input_ids, decoder_input_ids=decoder_ids).logits
        features_q = model.encode_image(pixel_values)
    cos = torch.nn.functional.cosine_similarity(logits.flatten(), reference.flatten(), dim=0)
    assert cos > 0.99
    assert torch.nn.functional.cosine_similarity(features.flatten(), features_q.flatten(), dim=0) > 0.99
    assert not torch.equal(logits, reference)  # it really runs the int8 path


def test_vision_tower_can_stay_float():
    model = random_model(tiny_config(), std=0.05).eval()
    quantize_int8(model, vision=False)
    assert any(type(m) is torch.nn.Linear for m in model.vision_tower.modules())
    assert is_quantized(model.language_model)


def test_refuses_non_cpu_fp32_models_and_saving(tmp_path):
    half = random_model(tiny_config(), std=0.05).to(torch.float16)
    with pytest.raises(ValueError, match="float32 model on the CPU"):
        quantize_int8(half)
    model = quantize_int8(random_model(tiny_config(), std=0.05).eval())
    with pytest.raises(CheckpointError, match="quantized"):
        save_model(model, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_predictor_with_int8_answers_like_fp32_on_an_example():
    image = sorted((DEFAULT_MODEL_DIR.parent / "examples").glob("*.png"))[0]
    fp32 = Florence2.from_pretrained().predict(image, ["<OD>", "<CAPTION>"])
    int8 = Florence2.from_pretrained(quantize="int8").predict(image, ["<OD>", "<CAPTION>"])
    assert set(int8) == set(fp32)
    assert isinstance(int8["<CAPTION>"], str) and int8["<CAPTION>"]
    assert len(int8["<OD>"]["scores"]) == len(int8["<OD>"]["bboxes"])


def test_unknown_quantization_is_an_error():
    with pytest.raises(ValueError, match="unknown quantization"):
        Florence2.from_pretrained(quantize="int4")
