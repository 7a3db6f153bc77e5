"""ONNX export (florence2.export) and the ONNX Runtime backend (florence2.onnx_model).

Every graph is compared with the PyTorch model on the same inputs, generated ids with the PyTorch
predictor's for every task on the example images (greedy and 3 beams with the n-gram ban), and the
exported embedded model is run by transformers.js in Node where it is installed (.ci/run does)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from florence2.cli import main  # noqa: E402
from florence2.errors import CheckpointError, Florence2Error  # noqa: E402
from florence2.export.check import check_export  # noqa: E402
from florence2.export.onnx import ExportError, export_onnx  # noqa: E402
from florence2.generation import generate  # noqa: E402
from florence2.image import ImageProcessor  # noqa: E402
from florence2.onnx_model import GRAPHS, cache_names, graph_path, load_onnx_model, read_manifest  # noqa: E402
from florence2.pipeline import Florence2  # noqa: E402
from florence2.tasks import TASKS  # noqa: E402
from florence2.weights import load_model  # noqa: E402
from tests.checkpoints import random_model, tiny_config, write_native, write_original  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "florence2" / "assets" / "examples").glob("*.png"))
TRANSFORMERS_JS = ROOT / ".node" / "node_modules" / "@huggingface" / "transformers"
TOLERANCE = 1e-4
# generated tokens per answer in the generation tests (every task's answer, or its first 48 tokens:
# the longest answers, polygons, would make a 3-beam batch of every task slow on a small CPU)
MAX_NEW_TOKENS = 48
AGREEMENT_TASKS = ["<OD>", "<CAPTION>", "<OCR>"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for both backends (ONNX Runtime's sessions take torch's count): the embedded model
    is too small to gain from more, and on a shared 2-core machine PyTorch's two threads stall
    whenever another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """The embedded model exported with every variant."""
    return export_onnx(tmp_path_factory.mktemp("onnx") / "embedded", quantize="int8", dtype="fp16")


@pytest.fixture(scope="module")
def torch_predictor() -> Florence2:
    return Florence2.from_pretrained()


@pytest.fixture(scope="module")
def onnx_predictor(export) -> Florence2:
    return Florence2.from_pretrained(export, backend="onnxruntime")


@pytest.fixture(scope="module")
def torch_greedy_ids(torch_predictor) -> dict[str, torch.Tensor]:
    """PyTorch fp32 ids of the agreement tasks, greedy as the embedded model decodes."""
    return {task: _ids(torch_predictor.model, torch_predictor, [task]) for task in AGREEMENT_TASKS}


def _inputs(task: str) -> dict:
    spec = TASKS[task]
    if spec.input == "text":
        return {"text": "the purple circle"}
    if spec.input == "region":
        return {"region": [20, 20, 100, 100]}
    return {}


def _ids(model, predictor: Florence2, tasks: list[str], **decoding) -> torch.Tensor:
    """Generated ids of every (task, example image) pair, decoded as one padded batch."""
    prompts, images = [], []
    for task in tasks:
        for image in EXAMPLES:
            prepared = predictor.prepare_image(image)
            inputs = _inputs(task)
            prompts.append(
                predictor.processor.build_prompt(task, inputs.get("text"), inputs.get("region"), prepared.size)
            )
            images.append(prepared)
    pixel_values, _ = predictor.processor.image_processor.preprocess(images)
    input_ids, mask = predictor.processor.tokenize(prompts, predictor.num_image_tokens)
    return generate(model, pixel_values, input_ids, mask, max_new_tokens=MAX_NEW_TOKENS, **decoding)


def _assert_close(a, b, path="result"):
    """Equal structures and strings; floats (coordinates, scores) within 1e-4 relative."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=TOLERANCE, abs=1e-7), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


# --- the folder ---------------------------------------------------------------------------------


def test_export_writes_the_transformers_js_layout(export):
    for variant in ("fp32", "int8", "fp16"):
        for graph in GRAPHS:
            assert graph_path(export, graph, variant).is_file()
    assert (export / "onnx" / "vision_encoder_int8.onnx").is_file() and (
        export / "onnx" / "encoder_model_fp16.onnx"
    ).is_file()
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
                 "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):  # fmt: skip
        assert (export / name).is_file(), name
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "florence2" and config["is_encoder_decoder"] is True
    assert config["text_config"]["decoder_layers"] == 3
    preprocessor = json.loads((export / "preprocessor_config.json").read_text())
    assert preprocessor["task_prompts_without_inputs"]["<CAPTION>"] == "What does the image describe?"
    assert preprocessor["task_prompts_with_input"]["<REGION_TO_CATEGORY>"] == "What is the region {input}?"
    assert preprocessor["tasks_answer_post_processing_type"]["<OD>"] == "description_with_bboxes"
    assert preprocessor["image_seq_length"] == 65 and preprocessor["size"] == {"height": 128, "width": 128}
    generation = json.loads((export / "generation_config.json").read_text())
    assert generation["num_beams"] == 1 and generation["no_repeat_ngram_size"] == 0  # the embedded model's
    manifest = read_manifest(export)
    assert manifest["variants"] == ["fp32", "int8", "fp16"] and manifest["parameters"] == 2_781_440
    assert max(manifest["max_abs_difference"].values()) <= TOLERANCE


def test_graph_inputs_and_outputs(export):
    import onnxruntime as ort

    def signature(graph):
        session = ort.InferenceSession(str(graph_path(export, graph)), providers=["CPUExecutionProvider"])
        return (
            {i.name: (i.type, i.shape) for i in session.get_inputs()},
            {o.name: (o.type, o.shape) for o in session.get_outputs()},
        )

    inputs, outputs = signature("vision_encoder")
    assert inputs == {"pixel_values": ("tensor(float)", ["batch_size", 3, 128, 128])}
    assert list(outputs) == ["image_features"] and outputs["image_features"][1][::2] == ["batch_size", 128]
    inputs, outputs = signature("embed_tokens")
    assert inputs == {"input_ids": ("tensor(int64)", ["batch_size", "sequence_length"])}
    assert outputs == {"inputs_embeds": ("tensor(float)", ["batch_size", "sequence_length", 128])}
    inputs, outputs = signature("encoder_model")
    assert inputs["attention_mask"] == ("tensor(int64)", ["batch_size", "encoder_sequence_length"])
    assert inputs["inputs_embeds"] == ("tensor(float)", ["batch_size", "encoder_sequence_length", 128])
    assert list(outputs) == ["last_hidden_state"]
    inputs, outputs = signature("decoder_model_merged")
    past, present = cache_names("past_key_values", 3), cache_names("present", 3)
    assert set(inputs) == {
        "inputs_embeds",
        "encoder_hidden_states",
        "encoder_attention_mask",
        "use_cache_branch",
        *past,
    }
    assert inputs["use_cache_branch"] == ("tensor(bool)", [1])
    # transformers.js builds the first, empty cache from these shapes: heads and head size fixed
    assert inputs["past_key_values.0.decoder.key"] == (
        "tensor(float)",
        ["batch_size", 4, "past_decoder_sequence_length", 32],
    )
    assert inputs["past_key_values.2.encoder.value"][1][::3] == ["batch_size", 32]
    assert list(outputs) == ["logits", *present]
    assert outputs["logits"] == ("tensor(float)", ["batch_size", "decoder_sequence_length", 1624])


# --- parity ---------------------------------------------------------------------------------------


def test_every_graph_matches_pytorch_on_the_embedded_model(export):
    differences = check_export(export, load_model(ROOT / "florence2" / "assets" / "model"))
    assert set(differences) == set(GRAPHS)
    assert max(differences.values()) <= TOLERANCE, differences


@pytest.mark.parametrize("layout", ["native", "original"])
def test_tiny_random_checkpoint_exports_and_generates_the_same_ids(tmp_path, layout):
    model = random_model(tiny_config(), seed=3, std=0.2)
    folder = (write_native if layout == "native" else write_original)(model, tmp_path / "checkpoint")
    ImageProcessor(size=(32, 32)).save_pretrained(folder)  # 17 image tokens within 128 positions
    out = export_onnx(tmp_path / "onnx", folder)
    assert not (out / "tokenizer.json").exists()  # a checkpoint without a tokenizer exports graphs and configs
    differences = check_export(out, model)
    assert max(differences.values()) <= TOLERANCE, differences
    onnx_model = load_onnx_model(out)
    assert not isinstance(onnx_model, torch.nn.Module)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32, generator=generator)
    ids = torch.randint(3, 299, (3, 6), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    for decoding in ({"num_beams": 1}, {"num_beams": 3, "no_repeat_ngram_size": 3}):
        expected = generate(model, pixels, ids, mask, max_new_tokens=12, **decoding)
        assert torch.equal(generate(onnx_model, pixels, ids, mask, max_new_tokens=12, **decoding), expected)


@pytest.mark.parametrize(
    "decoding", [{"num_beams": 1, "no_repeat_ngram_size": 0}, {"num_beams": 3, "no_repeat_ngram_size": 3}]
)
def test_ids_identical_for_every_task_on_the_examples(torch_predictor, onnx_predictor, decoding):
    tasks = list(TASKS)
    expected = _ids(torch_predictor.model, torch_predictor, tasks, **decoding)
    got = _ids(onnx_predictor.model, onnx_predictor, tasks, **decoding)
    assert expected.shape[0] == len(tasks) * len(EXAMPLES)
    assert torch.equal(got, expected)


def test_predictor_results_match_with_several_tasks_batching_and_beams(torch_predictor, onnx_predictor):
    tasks = ["<CAPTION>", "<OD>", "<OCR_WITH_REGION>"]
    for options in ({}, {"num_beams": 3, "no_repeat_ngram_size": 3}):
        options["max_new_tokens"] = MAX_NEW_TOKENS
        expected = torch_predictor.predict(EXAMPLES, tasks, batch_size=3, **options)
        _assert_close(onnx_predictor.predict(EXAMPLES, tasks, batch_size=3, **options), expected)
    region = {"region": [[10, 10, 90, 90]] * len(EXAMPLES)}
    expected = torch_predictor.predict(EXAMPLES, "<REGION_TO_DESCRIPTION>", **region)
    _assert_close(onnx_predictor.predict(EXAMPLES, "<REGION_TO_DESCRIPTION>", **region), expected)


def test_onnx_predictor_info(onnx_predictor):
    info = onnx_predictor.info()
    assert info["backend"] == "onnxruntime" and info["parameters"] == 2_781_440
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["num_image_tokens"] == 65


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_reduced_variants_token_agreement(export, torch_predictor, torch_greedy_ids, variant, record_property):
    """int8 and fp16 graphs are not exact: report how many generated tokens agree with PyTorch fp32
    (position by position; a first different token shifts the rest)."""
    options = {"quantize": "int8"} if variant == "int8" else {"dtype": "float16"}
    predictor = Florence2.from_pretrained(export, backend="onnxruntime", **options)
    assert predictor.model.variant == variant
    differences = check_export(export, torch_predictor.model, variant)
    agreement = {}
    for task in AGREEMENT_TASKS:
        expected = torch_greedy_ids[task]
        got = _ids(predictor.model, predictor, [task])
        length = max(expected.shape[1], got.shape[1])
        pad = torch_predictor.processor.tokenizer.pad_token_id

        def padded(ids, length=length, pad=pad):
            return torch.nn.functional.pad(ids, (0, length - ids.shape[1]), value=pad)

        real = (padded(expected) != pad) | (padded(got) != pad)
        agreement[task] = float(((padded(expected) == padded(got)) & real).sum() / real.sum())
    record_property(f"{variant}_token_agreement", agreement)
    record_property(f"{variant}_max_abs_difference", differences)
    print(f"\n{variant}: generated tokens equal to PyTorch fp32 {agreement}; graph differences {differences}")
    assert min(agreement.values()) >= 0.5, agreement


# --- command line ---------------------------------------------------------------------------------


def test_cli_export_and_predict_with_onnxruntime(tmp_path, export, capsys):
    image = str(EXAMPLES[1])
    assert main(["predict", image, "--task", "OD", "--task", "CAPTION", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(["predict", image, "--task", "OD", "--task", "CAPTION", "--json", "--backend", "onnxruntime",
                 "--model", str(export)]) == 0  # fmt: skip
    _assert_close(json.loads(capsys.readouterr().out), expected)
    model = random_model(tiny_config(), seed=1, std=0.2)
    folder = write_native(model, tmp_path / "checkpoint")
    ImageProcessor(size=(32, 32)).save_pretrained(folder)
    assert main(["export", "onnx", "--out", str(tmp_path / "out"), "--model", str(folder), "--quantize", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "fp32, int8 graphs" in printed and "onnx/decoder_model_merged_int8.onnx" in printed
    assert read_manifest(tmp_path / "out")["variants"] == ["fp32", "int8"]


# --- bad input ------------------------------------------------------------------------------------


def test_clear_errors(tmp_path, export, monkeypatch, capsys):
    with pytest.raises(CheckpointError, match="export it: florence2 export onnx --model"):
        Florence2.from_pretrained(None, backend="onnxruntime")  # the embedded PyTorch checkpoint
    with pytest.raises(CheckpointError, match="is not an ONNX export"):
        load_onnx_model(tmp_path)
    fp32_only = tmp_path / "fp32"
    shutil.copytree(export, fp32_only, ignore=shutil.ignore_patterns("*_int8.onnx", "*_fp16.onnx"))
    with pytest.raises(CheckpointError, match="missing onnx/vision_encoder_int8.onnx.*holds the fp32 graphs"):
        load_onnx_model(fp32_only, quantize="int8")
    with pytest.raises(ValueError, match="float32 or float16"):
        load_onnx_model(export, dtype="bfloat16")
    with pytest.raises(ExportError, match="unknown quantization 'int4'"):
        export_onnx(tmp_path / "x", quantize="int4")
    with pytest.raises(ExportError, match="unknown dtype 'bf16'"):
        export_onnx(tmp_path / "x", dtype="bf16")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_onnx(tmp_path / "busy")
    for argv in (
        ["export", "onnx", "--out", "x", "--quantize", "int4"],
        ["export", "onnx", "--out", "x", "--dtype", "bf16"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(Florence2Error, match=r"pip install 'florence2\[onnx\]'"):
        load_onnx_model(export)
    with pytest.raises(ExportError, match=r"pip install 'florence2\[onnx\]'"):
        export_onnx(tmp_path / "y")


# --- transformers.js ------------------------------------------------------------------------------


def test_transformers_js_runs_the_export_with_our_results(export, torch_predictor):
    """The exported embedded model in Node with transformers.js (its Florence-2 model, processor and
    greedy generation, local files only) gives our predictor's caption and boxes; its int8 graphs give
    what our ONNX Runtime backend gives with them."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (TRANSFORMERS_JS / "package.json").is_file():
        pytest.skip("@huggingface/transformers is not installed in .node/ (npm install --prefix .node, see .ci/run)")
    script = ROOT / "tests" / "js" / "florence2_transformers.mjs"
    tasks = ["<CAPTION>", "<OD>"]
    int8 = Florence2.from_pretrained(export, backend="onnxruntime", quantize="int8")
    for dtype, predictor in (("fp32", torch_predictor), ("int8", int8)):
        for image in EXAMPLES[:2]:
            run = subprocess.run(
                [node, str(script), str(TRANSFORMERS_JS), str(export), dtype, str(image), "100", *tasks],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert run.returncode == 0, run.stderr[-3000:]
            theirs = json.loads(run.stdout.strip().splitlines()[-1])
            ours = predictor.predict(image, tasks, max_new_tokens=100)
            assert theirs["<CAPTION>"]["result"] == ours["<CAPTION>"], dtype
            assert theirs["<OD>"]["result"]["labels"] == ours["<OD>"]["labels"], dtype
            boxes = [[pytest.approx(v, abs=1e-6) for v in box] for box in ours["<OD>"]["bboxes"]]
            assert theirs["<OD>"]["result"]["bboxes"] == boxes, dtype
            assert len(boxes) > 0
