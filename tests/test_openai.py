"""The OpenAI-compatible API, driven by the official ``openai`` client, and the streaming under it.

The server runs the embedded model (tiny, weak): answers are checked against a direct
``Florence2.predict`` on the same image, never for accuracy. The client talks to the app through
FastAPI's TestClient (an ``httpx.Client``), or over a real socket (uvicorn) where a client has to
hang up in the middle of a stream. The last sections test the machinery under streaming: the
generation hook and the text pieces it gives.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra")
pytest.importorskip("prometheus_client", reason="the server needs the 'serve' extra")
openai = pytest.importorskip("openai", reason="these tests drive the server with the openai client (test extra)")

from fastapi.testclient import TestClient  # noqa: E402

from florence2 import Florence2  # noqa: E402
from florence2.generation import search  # noqa: E402
from florence2.parsing import clean_text, post_process_generation  # noqa: E402
from florence2.pipeline import DEFAULT_MODEL_DIR, _RowText  # noqa: E402
from florence2.serve import ServeSettings  # noqa: E402
from florence2.serve.app import create_app  # noqa: E402
from florence2.serve.metrics import parse_histogram  # noqa: E402
from florence2.serve.streaming import StreamSink  # noqa: E402
from tests.test_serve import LiveServer, assert_same, roundtrip, wait_until  # noqa: E402

EXAMPLES = sorted((DEFAULT_MODEL_DIR.parent / "examples").glob("*.png"))
KEY = "test-key"


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded() -> Florence2:
    return Florence2.from_pretrained()


@pytest.fixture(scope="module")
def png() -> bytes:
    return EXAMPLES[2].read_bytes()  # a green star and two circles, and the number 4


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def user(text: str | None, image: str | None) -> list[dict]:
    """One user message: an image_url part and a text part, as OpenAI's vision examples write it."""
    content = []
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": image}})
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


@pytest.fixture
def serve(embedded):
    """``serve(predictor=None, **settings)`` -> (openai client, TestClient); an API key is set."""
    opened = []

    def make(predictor=None, **settings):
        test_client = TestClient(create_app(predictor or embedded, ServeSettings(api_key=KEY, **settings)))
        test_client.__enter__()
        opened.append(test_client)
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=test_client, max_retries=0)
        return client, test_client

    yield make
    for test_client in opened:
        test_client.__exit__(None, None, None)


@pytest.fixture
def client(serve):
    return serve()[0]


def ask(client, text, image, **options):
    return client.chat.completions.create(model="florence2", messages=user(text, image), **options)


def content_of(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def prompt_tokens(embedded: Florence2, task: str, text: str | None = None) -> int:
    prompt = embedded.processor.build_prompt(task, text)
    _, mask = embedded.processor.tokenize([prompt], embedded.num_image_tokens)
    return embedded.num_image_tokens + int(mask.sum())


# ---------------------------------------------------------------------------------------------
# Chat completions
# ---------------------------------------------------------------------------------------------


def test_a_caption_is_a_standard_chat_completion(client, embedded, png):
    completion = ask(client, "<CAPTION>", data_url(png))
    expected = embedded.predict(png, "<CAPTION>", details=True)
    generation = expected["generation"]["<CAPTION>"]
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == "embedded" and abs(completion.created - time.time()) < 60
    (choice,) = completion.choices
    assert choice.index == 0 and choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content == expected["<CAPTION>"] == "A green star and two circles."
    assert completion.usage.prompt_tokens == prompt_tokens(embedded, "<CAPTION>")  # image tokens + prompt ids
    assert completion.usage.completion_tokens == generation["completion_tokens"]  # <s> ... </s>
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    extra = completion.model_extra["florence2"]  # the /v1/predict answer for the same request
    assert extra["tasks"] == ["<CAPTION>"] and extra["image"] == {"width": 128, "height": 128}
    assert_same(extra["results"], roundtrip({k: v for k, v in expected.items() if k != "generation"}))
    assert extra["timings"]["batch_size"] == 1


def test_od_content_keeps_location_tokens_and_the_parsed_boxes_come_with_it(client, embedded, png):
    completion = ask(client, "<OD>", data_url(png))
    content = completion.choices[0].message.content
    assert content.startswith("star<loc_") and "<s>" not in content and "</s>" not in content
    expected = embedded.predict(png, "<OD>")
    result = completion.model_extra["florence2"]["results"]["<OD>"]
    assert_same(result, roundtrip(expected["<OD>"]))
    assert len(result["bboxes"]) == len(result["scores"]) == 3
    # the content is what the reference's post-processing parses into the same boxes
    parsed = post_process_generation(content, "<OD>", (128, 128))["<OD>"]
    assert parsed["bboxes"] == result["bboxes"] and parsed["labels"] == result["labels"]


def test_a_grounding_prompt_carries_its_text(client, embedded, png):
    text = "A green star and two circles."
    completion = ask(client, f"<CAPTION_TO_PHRASE_GROUNDING>{text}", data_url(png))
    expected = embedded.predict(png, "<CAPTION_TO_PHRASE_GROUNDING>", text=text)
    result = completion.model_extra["florence2"]["results"]
    assert_same(result, roundtrip(expected))
    assert result["<CAPTION_TO_PHRASE_GROUNDING>"]["labels"]  # the phrases found boxes
    assert completion.usage.prompt_tokens == prompt_tokens(embedded, "<CAPTION_TO_PHRASE_GROUNDING>", text)
    # the task's text may also come as a text part of its own
    messages = user("<CAPTION_TO_PHRASE_GROUNDING>", data_url(png))
    messages[0]["content"].append({"type": "text", "text": text})
    split = client.chat.completions.create(model="florence2", messages=messages)
    assert split.choices[0].message.content == completion.choices[0].message.content


def test_a_free_prompt_goes_to_the_model_as_it_is(client, embedded, png):
    # the <CAPTION> task's own prompt, written out: the same answer as the task
    completion = ask(client, "What does the image describe?", data_url(png))
    assert completion.choices[0].message.content == embedded.predict(png, "<CAPTION>")["<CAPTION>"]
    assert completion.model_extra["florence2"]["tasks"] == []
    assert set(completion.model_extra["florence2"]["results"]) == {"text", "sequence_scores"}


def test_a_streamed_detailed_caption_joins_to_the_answer(client, embedded, png):
    whole = ask(client, "<DETAILED_CAPTION>", data_url(png))
    stream = ask(client, "<DETAILED_CAPTION>", data_url(png), stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 20  # word by word, not at the end
    assert "".join(pieces) == content_of(chunks) == whole.choices[0].message.content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert_same(finish[0].model_extra["florence2"]["results"], whole.model_extra["florence2"]["results"])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # include_usage: the last chunk


def test_beam_search_via_an_extra_field_streams_its_answer_at_the_end(client, embedded, png):
    expected = embedded.predict(png, "<CAPTION>", num_beams=3)["<CAPTION>"]
    whole = ask(client, "<CAPTION>", data_url(png), extra_body={"num_beams": 3})
    assert whole.choices[0].message.content == expected
    chunks = list(ask(client, "<CAPTION>", data_url(png), stream=True, extra_body={"num_beams": 3}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == [expected]


def test_max_tokens_limits_the_answer(client, embedded, png):
    completion = ask(client, "<MORE_DETAILED_CAPTION>", data_url(png), max_tokens=6)
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 6
    expected = embedded.predict(png, "<MORE_DETAILED_CAPTION>", max_new_tokens=6)["<MORE_DETAILED_CAPTION>"]
    assert completion.choices[0].message.content == expected
    newer = ask(client, "<MORE_DETAILED_CAPTION>", data_url(png), max_completion_tokens=6)
    assert newer.choices[0].message.content == expected


def test_models_lists_the_loaded_model(client):
    assert [model.id for model in client.models.list()] == ["embedded"]
    assert client.models.retrieve("embedded").owned_by == "florence2"
    with pytest.raises(openai.NotFoundError) as error:
        client.models.retrieve("microsoft/Florence-2-large")
    assert error.value.code == "model_not_found"


# ---------------------------------------------------------------------------------------------
# What the server refuses, in OpenAI's error shape
# ---------------------------------------------------------------------------------------------


def test_without_the_key_the_openai_routes_are_401(serve, png):
    _, test_client = serve()
    wrong = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=test_client, max_retries=0)
    no_key = {"Authorization": openai.omit}  # no Authorization header at all
    for client, headers in ((wrong, None), (wrong, no_key)):
        with pytest.raises(openai.AuthenticationError) as error:
            ask(client, "<CAPTION>", data_url(png), extra_headers=headers)
        assert error.value.status_code == 401 and error.value.code == "unauthorized"
        assert error.value.body["type"] == "authentication_error"
        assert error.value.response.headers["www-authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError):
            client.models.list(extra_headers=headers)
        with pytest.raises(openai.AuthenticationError):
            ask(client, "<CAPTION>", data_url(png), stream=True, extra_headers=headers)


def test_a_remote_image_url_is_refused_never_fetched(client):
    for url in ("https://example.com/car.jpg", "http://127.0.0.1:9/car.png", "file:///etc/passwd"):
        with pytest.raises(openai.BadRequestError) as error:
            ask(client, "<CAPTION>", url)
        assert error.value.status_code == 400 and error.value.code == "remote_image_url"
        assert "never fetches" in error.value.message and "data:image/png;base64" in error.value.message
        assert error.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize("temperature", [0.7, 1, 2.0])
def test_only_temperature_zero_is_accepted(client, png, temperature):
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, "<CAPTION>", data_url(png), temperature=temperature)
    assert error.value.code == "unsupported_parameter"
    assert "temperature" in error.value.message and "send temperature 0" in error.value.message
    assert ask(client, "<CAPTION>", data_url(png), temperature=0).choices[0].finish_reason == "stop"


def test_a_message_without_an_image_is_refused(client, png):
    for messages in (user("<CAPTION>", None), [{"role": "user", "content": "<CAPTION>"}]):
        with pytest.raises(openai.BadRequestError) as error:
            client.chat.completions.create(model="florence2", messages=messages)
        assert error.value.code == "missing_image" and "image_url" in error.value.message


@pytest.mark.parametrize(
    ("options", "code", "words"),
    [
        ({"messages": user("<CAPTON>", "IMAGE")}, "unknown_task", "CAPTON"),
        ({"messages": user("<OCR> what", "IMAGE")}, "bad_input", "takes no input"),
        ({"messages": user(None, "IMAGE")}, "missing_text", "task token"),
        ({"messages": user("<CAPTION>", "data:image/png;base64,!!!")}, "bad_base64", "base64"),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, "bad_request", "user"),
        ({"n": 2}, "unsupported_parameter", "n=2"),
        ({"top_p": 0.5}, "unsupported_parameter", "top_p"),
        ({"extra_body": {"num_beams": 99}}, "too_many_beams", "num_beams"),
        ({"max_tokens": 100_000}, "too_many_new_tokens", "max_new_tokens"),
    ],
)
def test_invalid_requests_are_400_with_a_code(client, png, options, code, words):
    options = {"messages": user("<CAPTION>", "IMAGE"), **options}
    options["messages"] = json.loads(json.dumps(options["messages"]).replace("IMAGE", data_url(png)))
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="florence2", **options)
    assert error.value.code == code and words in error.value.message


def test_a_stream_that_fails_before_any_text_is_a_plain_error(client, png):
    # passes the server's checks but not the model's 512 positions: known only inside the batch
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, "<CAPTION_TO_PHRASE_GROUNDING>" + "a red circle " * 150, data_url(png), stream=True)
    assert error.value.code == "bad_input" and "tokens" in error.value.message


# ---------------------------------------------------------------------------------------------
# One queue: chat completions batch with /v1/predict requests
# ---------------------------------------------------------------------------------------------


def test_chat_completions_and_predictions_share_one_batch(serve, embedded, png):
    client, test_client = serve(max_batch_size=4, max_wait_ms=3000)
    headers = {"Authorization": f"Bearer {KEY}"}

    def predict(_):
        response = test_client.post(
            "/v1/predict", files={"image": ("a.png", png, "image/png")}, data={"task": "OD"}, headers=headers
        )
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(4) as pool:
        native = [pool.submit(predict, i) for i in range(2)]
        chat = pool.submit(ask, client, "<OD>", data_url(png))
        streamed = pool.submit(lambda: list(ask(client, "<OD>", data_url(png), stream=True)))
        native, chat, streamed = [f.result(60) for f in native], chat.result(60), streamed.result(60)
    expected = roundtrip(embedded.predict(png, "<OD>"))
    for answer in native:
        assert answer["timings"]["batch_size"] == 4
        assert_same(answer["results"], expected)  # no "generation" key: the native answer is unchanged
    assert chat.model_extra["florence2"]["timings"]["batch_size"] == 4
    assert content_of(streamed) == chat.choices[0].message.content
    sizes = parse_histogram(test_client.get("/metrics", headers=headers).text, "florence2_batch_size")
    assert sizes["+Inf"] == 1 and sizes["4"] == 1 and sizes["3"] == 0  # one batch of four


def test_the_openai_routes_are_counted_by_their_paths(serve, png):
    client, test_client = serve()
    ask(client, "<CAPTION>", data_url(png))
    client.models.list()
    with pytest.raises(openai.BadRequestError):
        ask(client, "<CAPTION>", "https://example.com/a.png")
    count = test_client.app.state.metrics.value
    assert count("florence2_http_requests_total", route="/v1/chat/completions", status="200") == 1
    assert count("florence2_http_requests_total", route="/v1/chat/completions", status="400") == 1
    assert count("florence2_http_requests_total", route="/v1/models", status="200") == 1


# ---------------------------------------------------------------------------------------------
# A client that hangs up stops its own generation
# ---------------------------------------------------------------------------------------------


class Slowed:
    """The embedded model with each streamed piece delayed, so that a generation lasts long enough to
    leave in the middle of; records every batch's results."""

    def __init__(self, inner: Florence2, delay: float) -> None:
        self.inner, self.delay, self.results = inner, delay, []
        self.prepare_image = inner.prepare_image

    def info(self) -> dict:
        return self.inner.info()

    def predict(self, images, task, *, stream=None, **options):
        def slowed(callback):
            return None if callback is None else lambda t, piece: time.sleep(self.delay) or callback(t, piece)

        if stream is not None:
            stream = [slowed(callback) for callback in stream]
        results = self.inner.predict(images, task, stream=stream, **options)
        self.results.append(results)
        return results


def test_a_client_that_disconnects_stops_its_row_and_the_batch_goes_on(embedded, png):
    pytest.importorskip("uvicorn")
    task = "<MORE_DETAILED_CAPTION>"
    full = embedded.predict(png, task, details=True)["generation"][task]
    assert full["completion_tokens"] > 100
    predictor = Slowed(embedded, delay=0.01)
    app = create_app(predictor, ServeSettings(api_key=KEY, max_batch_size=2, max_wait_ms=5000))
    with LiveServer(app) as server:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=KEY, max_retries=0)
        read = []

        def leave_early():
            stream = ask(client, task, data_url(png), stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    read.append(chunk.choices[0].delta.content)
                if len(read) == 3:
                    break
            stream.close()  # hang up in the middle

        with ThreadPoolExecutor(2) as pool:
            leaving = pool.submit(leave_early)
            staying = pool.submit(lambda: list(ask(client, task, data_url(png), stream=True)))
            leaving.result(60)
            chunks = staying.result(60)
        wait_until(lambda: predictor.results and not app.state.batcher.busy, timeout=30)
    assert content_of(chunks) == full["text"]  # the one that stayed got its whole answer
    ((first, second),) = predictor.results  # one batch of both
    generations = sorted((r["generation"][task] for r in (first, second)), key=lambda g: g["completion_tokens"])
    left, stayed = generations
    assert left["finish_reason"] == "cancelled" and stayed == full
    assert left["completion_tokens"] < full["completion_tokens"] // 2  # stopped soon after the hang-up
    assert full["text"].startswith(left["text"]) and left["text"].startswith("".join(read))


def test_a_lone_stream_whose_client_leaves_ends_its_batch(embedded, png):
    pytest.importorskip("uvicorn")
    task = "<MORE_DETAILED_CAPTION>"
    predictor = Slowed(embedded, delay=0.01)
    app = create_app(predictor, ServeSettings(api_key=KEY, max_wait_ms=0))
    with LiveServer(app) as server:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=KEY, max_retries=0)
        stream = ask(client, task, data_url(png), stream=True)
        next(iter(stream))
        stream.close()
        wait_until(lambda: predictor.results and not app.state.batcher.busy, timeout=30)
    ((result,),) = predictor.results
    generation = result["generation"][task]
    assert generation["finish_reason"] == "cancelled"
    full = embedded.predict(png, task, details=True)["generation"][task]
    assert generation["completion_tokens"] < full["completion_tokens"] // 2


# ---------------------------------------------------------------------------------------------
# The generation hook
# ---------------------------------------------------------------------------------------------


class CountingDecoder:
    """A model behind the Seq2SeqDecoder interface that counts its decoding steps."""

    def __init__(self, model) -> None:
        self.model, self.steps = model, 0

    def new_cache(self, *args):
        return self.model.new_cache(*args)

    def decode(self, *args):
        self.steps += 1
        return self.model.decode(*args)


def encoded(embedded: Florence2, task: str):
    """Encoder memory of the four examples with one task's prompt, and the decoding options."""
    features = torch.stack([image.features for image in embedded.encode_images(EXAMPLES)])
    prompts = [embedded.processor.build_prompt(task)] * len(EXAMPLES)
    ids, mask = embedded.processor.tokenize(prompts, embedded.num_image_tokens)
    with torch.inference_mode():
        memory, memory_mask = embedded.model.encode(features, ids, mask)
    return memory, memory_mask


@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_hook_that_stops_nothing_changes_no_id(embedded, num_beams):
    memory, mask = encoded(embedded, "<DETAILED_CAPTION>")
    options = embedded.decoding_options(num_beams=num_beams)
    calls = []
    with torch.inference_mode():
        plain = search(embedded.model, memory, mask, options)
        hooked = search(embedded.model, memory, mask, options, on_step=lambda t, f: calls.append((t, f.clone())))
    assert torch.equal(plain.sequences, hooked.sequences)
    assert torch.equal(plain.token_logprobs, hooked.token_logprobs)
    assert torch.equal(plain.sequence_scores, hooked.sequence_scores)
    if num_beams == 1:  # once per step, with each row's new id
        assert len(calls) == plain.sequences.shape[1] - 1
        assert torch.equal(torch.stack([t for t, _ in calls], 1), plain.sequences[:, 1:])
        assert calls[-1][1].all() and not calls[0][1].any()
    else:
        assert calls and all(t is None for t, _ in calls)


def test_a_stopped_row_ends_where_it_is_and_the_others_are_unchanged(embedded):
    memory, mask = encoded(embedded, "<DETAILED_CAPTION>")
    options = embedded.decoding_options()
    step = 0

    def stop_row_one_at_step_three(tokens, finished):
        nonlocal step
        step += 1
        return torch.tensor([False, step >= 3, False, False])

    with torch.inference_mode():
        plain = search(embedded.model, memory, mask, options)
        hooked = search(embedded.model, memory, mask, options, on_step=stop_row_one_at_step_three)
    pad = options.pad_token_id
    assert torch.equal(hooked.sequences[1, :4], plain.sequences[1, :4])  # start + the 3 steps taken
    assert (hooked.sequences[1, 4:] == pad).all()  # then nothing: no EOS, padding
    for row in (0, 2, 3):
        assert torch.equal(hooked.sequences[row], plain.sequences[row])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_the_search_ends_when_every_row_is_stopped(embedded, num_beams):
    memory, mask = encoded(embedded, "<MORE_DETAILED_CAPTION>")
    options = embedded.decoding_options(num_beams=num_beams)
    with torch.inference_mode():
        full = CountingDecoder(embedded.model)
        search(full, memory, mask, options)
        stopped = CountingDecoder(embedded.model)
        out = search(stopped, memory, mask, options, on_step=lambda t, f: torch.ones(len(EXAMPLES), dtype=torch.bool))
    assert full.steps > 50 and stopped.steps <= 2
    assert out.sequences.shape[0] == len(EXAMPLES)


# ---------------------------------------------------------------------------------------------
# Text pieces
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clean_up_spaces", [False, True])
def test_pieces_join_to_the_decoded_text_across_split_characters(embedded, clean_up_spaces):
    tokenizer = copy.copy(embedded.processor.tokenizer)
    tokenizer.clean_up_tokenization_spaces = clean_up_spaces
    ids = tokenizer.encode("A café 中文 🙂 it is n't here . Is it ?")
    prefixes = [clean_text(tokenizer.decode(ids[:k])) for k in range(1, len(ids) + 1)]
    assert any("\ufffd" in text for text in prefixes)  # some ids hold part of a character
    row = _RowText(tokenizer)
    pieces = [row.push(i) for i in ids]
    final = clean_text(tokenizer.decode(ids))
    pieces.append(row.finish(final))
    assert "".join(pieces) == final
    assert not any("\ufffd" in piece for piece in pieces)
    assert len([p for p in pieces if p]) >= 8  # as the text grows, not at the end
    if clean_up_spaces:
        assert final.endswith("isn't here. Is it?")


def test_predict_streams_each_image_to_its_own_callback(embedded):
    pieces = {0: [], 2: []}
    streams = [lambda t, p: pieces[0].append((t, p)), None, lambda t, p: pieces[2].append((t, p)), None]
    results = embedded.predict(EXAMPLES, ["<CAPTION>", "<OD>"], stream=streams, details=True)
    assert results == embedded.predict(EXAMPLES, ["<CAPTION>", "<OD>"], details=True)
    for image, got in pieces.items():
        for task in ("<CAPTION>", "<OD>"):
            text = "".join(p for t, p in got if t == task)
            assert text == results[image]["generation"][task]["text"]
    assert "<loc_" in results[0]["generation"]["<OD>"]["text"]  # region tasks stream location tokens as text


def test_native_predict_streams_pieces_then_the_result(serve, embedded, png):
    _, test_client = serve()
    headers = {"Authorization": f"Bearer {KEY}"}
    response = test_client.post(
        "/v1/predict",
        files={"image": ("a.png", png, "image/png")},
        data={"task": "DETAILED_CAPTION", "stream": "true"},
        headers=headers,
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"piece"} and len(kinds) > 20
    text = "".join(piece["text"] for kind, piece in events if kind == "piece")
    result = events[-1][1]
    assert (
        text
        == result["results"]["<DETAILED_CAPTION>"]
        == embedded.predict(png, "<DETAILED_CAPTION>")["<DETAILED_CAPTION>"]
    )
    assert set(result) == {"tasks", "image", "results", "timings"}
    # an input the model refuses before generating anything is a plain JSON error, as without stream
    bad = test_client.post(
        "/v1/predict",
        files={"image": ("a.png", png, "image/png")},
        data={"task": "CAPTION_TO_PHRASE_GROUNDING", "text": "a red circle " * 150, "stream": "true"},
        headers=headers,
    )
    assert bad.status_code == 422 and bad.json()["error"] == "bad_input"


def test_a_sink_stops_when_cancelled_rerun_after_it_began_or_its_loop_is_gone():
    """A batch that fails as a whole is run again one request at a time; a stream that had begun
    cannot go on from the rerun (its client gets an error event instead of a second answer)."""
    loop = asyncio.new_event_loop()
    try:
        sink = StreamSink(loop)
        sink.restart()
        assert sink.on_piece("<CAPTION>", "") and not sink.started  # nothing sent yet
        assert sink.on_piece("<CAPTION>", "A") and sink.started
        sink.restart()  # the rerun
        assert sink.broken and sink.on_piece("<CAPTION>", "A") is False
        loop.run_until_complete(asyncio.sleep(0))
        assert sink.queue.get_nowait() == ("<CAPTION>", "A") and sink.queue.empty()  # sent once
        cancelled = StreamSink(loop)
        cancelled.cancel()
        assert cancelled.on_piece("<CAPTION>", "A") is False
    finally:
        loop.close()
    orphan = StreamSink(loop)  # the loop is gone: the row stops, nothing raises in the model's thread
    assert orphan.on_piece("<CAPTION>", "A") is False and orphan.cancelled
