"""The HTTP server: every endpoint, every error path, the dynamic batcher and the CLI wiring.

Predictions run on the embedded model (tiny, weak: results are checked for structure and for equality
with a direct ``Florence2.predict`` call, never for accuracy). Queue and option-forwarding tests use
stand-in predictors that block or record their calls, so they are deterministic.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra")
pytest.importorskip("multipart", reason="the server needs python-multipart (the 'serve' extra)")
pytest.importorskip("prometheus_client", reason="the server needs the 'serve' extra")

from fastapi.testclient import TestClient  # noqa: E402

from florence2 import Florence2  # noqa: E402
from florence2.cli import build_parser  # noqa: E402
from florence2.generation import DecodingOptions  # noqa: E402
from florence2.pipeline import DEFAULT_MODEL_DIR  # noqa: E402
from florence2.serve import ServeSettings  # noqa: E402
from florence2.serve.app import create_app, supported_options  # noqa: E402
from florence2.serve.batching import Batcher, QueueFullError, ShuttingDownError  # noqa: E402
from florence2.serve.metrics import parse_histogram  # noqa: E402
from florence2.tasks import TASKS  # noqa: E402

EXAMPLES = DEFAULT_MODEL_DIR.parent / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.png"))


# ---------------------------------------------------------------------------------------------
# Helpers and fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded() -> Florence2:
    return Florence2.from_pretrained()


@pytest.fixture(scope="module")
def png() -> bytes:
    return EXAMPLE_FILES[0].read_bytes()


@pytest.fixture
def serve(embedded):
    """``serve(predictor=None, **settings)`` -> a started TestClient; all are closed after the test."""
    clients = []

    def make(predictor=None, **settings) -> TestClient:
        client = TestClient(create_app(predictor or embedded, ServeSettings(**settings)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(serve) -> TestClient:
    return serve()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def roundtrip(value):
    return json.loads(json.dumps(value))


def assert_same(actual, expected, where="results"):
    """Equal structure, strings and coordinates; scores equal within float noise (batched matmuls
    may differ from single ones in the last bits)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-4, abs=1e-6), where
    else:
        assert actual == expected, where


def post_file(client, data: bytes, headers=None, **fields):
    return client.post(
        "/v1/predict", files={"image": ("image.png", data, "image/png")}, data=fields, headers=headers or {}
    )


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    return body["error"]


DECODING_OPTIONS = tuple(f.name for f in fields(DecodingOptions))


class StandIn:
    """Base of the stand-in predictors: ``info()`` lists the keyword options their ``predict``
    takes, as ``Florence2.info()`` does (by default those of a ``predict(..., batch_size, **decoding)``)."""

    options: tuple[str, ...] = ("batch_size", *DECODING_OPTIONS)

    def info(self) -> dict:
        return {"options": sorted(self.options)}


class RecordingPredictor(StandIn):
    """Stands in for Florence2: records every call, answers each task with a fixed dict, and blocks
    until ``release`` is set when ``block`` is true. Accepts the scoring options like predict."""

    options = ("batch_size", "progress", "score_threshold", "nms_iou", *DECODING_OPTIONS)

    def __init__(self, block: bool = False) -> None:
        self.calls: list[dict] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not block:
            self.release.set()

    def predict(
        self,
        image,
        task="<CAPTION>",
        text=None,
        region=None,
        *,
        batch_size=8,
        progress=False,
        score_threshold=None,
        nms_iou=None,
        **decoding,
    ):
        self.calls.append(
            {"images": len(image), "task": task, "text": text, "region": region, "batch_size": batch_size}
            | {"score_threshold": score_threshold, "nms_iou": nms_iou, "decoding": decoding}
        )
        self.started.set()
        assert self.release.wait(30)
        return [
            {t: {"bboxes": [[1.0, 2.0, 3.0, 4.0]], "labels": ["x"], "extra": [i]} for t in task}
            for i in range(len(image))
        ]


class NarrowPredictor(StandIn):
    """A predictor whose predict accepts no scoring options and only num_beams for decoding."""

    options = ("batch_size", "num_beams")

    def predict(self, image, task="<CAPTION>", text=None, region=None, *, batch_size=8, num_beams=None):
        return [{t: "ok" for t in task} for _ in image]


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------------
# Read-only endpoints
# ---------------------------------------------------------------------------------------------


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "auth_required": False}


def test_tasks_come_from_the_registry(client):
    tasks = client.get("/v1/tasks").json()["tasks"]
    assert [t["token"] for t in tasks] == list(TASKS)
    for task in tasks:
        spec = TASKS[task["token"]]
        assert (task["input"], task["description"], task["prompt"]) == (spec.input, spec.description, spec.prompt)


def test_info_reports_model_limits_and_options(serve, embedded):
    info = serve(max_num_beams=3, max_batch_size=4).get("/v1/info").json()
    assert info["model"]["parameters"] == sum(p.numel() for p in embedded.model.parameters())
    assert info["limits"]["max_num_beams"] == 3 and info["batching"]["max_batch_size"] == 4
    assert set(info["options"]) == supported_options(embedded)
    assert {"num_beams", "max_new_tokens"} <= set(info["options"])


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page.text and "/static/style.css" in page.text
    for path in ("/static/app.js", "/static/style.css"):
        assert client.get(path).status_code == 200
    # no third-party code: every script and stylesheet is served by the app itself
    static = Path(__file__).resolve().parents[1] / "florence2" / "serve" / "static"
    for file in static.iterdir():
        assert "http://" not in file.read_text() and "https://" not in file.read_text(), file


def test_examples_are_listed_and_served(client):
    examples = client.get("/examples").json()["examples"]
    assert [e["name"] for e in examples] == [f.name for f in EXAMPLE_FILES]
    image = client.get(examples[0]["url"])
    assert image.status_code == 200 and image.content == EXAMPLE_FILES[0].read_bytes()
    assert image.headers["content-type"] == "image/png"


@pytest.mark.parametrize("name", ["missing.png", "annotations.jsonl", "..%2Fmodel%2Fconfig.json", "%2Fetc%2Fpasswd"])
def test_examples_never_serve_other_files(client, name):
    assert error_of(client.get(f"/examples/{name}"), 404) == "not_found"


def test_openapi_declares_both_request_forms_and_the_models(client):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/predict"]["post"]
    content = operation["requestBody"]["content"]
    form = content["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary"
    assert {"task", "text", "region", "num_beams", "max_new_tokens"} <= set(form["properties"])
    assert {"image", "tasks", "region", "num_beams"} <= set(content["application/json"]["schema"]["properties"])
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/PredictResponse")
    for status in ("401", "413", "422", "503"):
        assert operation["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorResponse"
        )
    components = schema["components"]["schemas"]
    assert {"PredictResponse", "Timings", "ImageInfo", "TasksResponse", "ErrorResponse"} <= set(components)
    assert {"/v1/tasks", "/v1/info", "/health", "/metrics", "/examples"} <= set(schema["paths"])


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


def test_multipart_prediction_equals_direct_predict(client, embedded, png):
    response = post_file(client, png, task=["OD", "caption"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tasks"] == ["<OD>", "<CAPTION>"]
    assert body["image"] == {"width": 128, "height": 128}
    assert_same(body["results"], roundtrip(embedded.predict(png, ["<OD>", "<CAPTION>"])))
    timings = body["timings"]
    assert timings["batch_size"] == 1
    assert all(timings[k] >= 0 for k in ("decode_ms", "queue_ms", "inference_ms", "total_ms"))
    assert timings["total_ms"] >= timings["inference_ms"]


def test_json_prediction_with_region_and_decoding_options(client, embedded, png):
    options = {"num_beams": 2, "max_new_tokens": 20, "no_repeat_ngram_size": 3, "length_penalty": 1.0}
    payload = {"image": b64(png), "tasks": ["<REGION_TO_CATEGORY>"], "region": [10, 20, 90, 100], **options}
    response = client.post("/v1/predict", json=payload)
    assert response.status_code == 200, response.text
    direct = embedded.predict(png, "<REGION_TO_CATEGORY>", region=[10, 20, 90, 100], **options)
    assert_same(response.json()["results"], roundtrip(direct))


def test_json_accepts_a_data_url_and_a_comma_separated_task_string(client, embedded, png):
    payload = {"image": "data:image/png;base64," + b64(png), "tasks": "od, CAPTION"}
    body = client.post("/v1/predict", json=payload).json()
    assert body["tasks"] == ["<OD>", "<CAPTION>"]
    assert_same(body["results"], roundtrip(embedded.predict(png, ["<OD>", "<CAPTION>"])))


def test_task_field_forms_are_equivalent(client, png):
    repeated = post_file(client, png, task=["<OD>", "<CAPTION>"]).json()
    comma = post_file(client, png, task="od,caption").json()
    assert repeated["tasks"] == comma["tasks"] == ["<OD>", "<CAPTION>"]
    assert_same(repeated["results"], comma["results"])
    default = post_file(client, png).json()
    assert default["tasks"] == ["<CAPTION>"]


def test_text_and_region_inputs_go_to_the_tasks_that_take_them(client, embedded, png):
    tasks = ["<CAPTION>", "<OPEN_VOCABULARY_DETECTION>", "<REGION_TO_DESCRIPTION>"]
    response = post_file(client, png, task=tasks, text="circle", region="10,20,90,100")
    assert response.status_code == 200, response.text
    direct = embedded.predict(png, tasks, text="circle", region=[10, 20, 90, 100])
    assert_same(response.json()["results"], roundtrip(direct))


def test_results_pass_through_unchanged(serve, png):
    predictor = RecordingPredictor()
    body = post_file(serve(predictor), png, task="OD").json()
    assert body["results"] == {"<OD>": {"bboxes": [[1.0, 2.0, 3.0, 4.0]], "labels": ["x"], "extra": [0]}}


def test_score_options_work_when_the_model_has_them(client, embedded, png):
    response = post_file(client, png, task="OD", score_threshold="0.02", nms_iou="0.5")
    if {"score_threshold", "nms_iou"} <= supported_options(embedded):
        assert response.status_code == 200, response.text
        od = response.json()["results"]["<OD>"]
        assert all(score >= 0.02 for score in od.get("scores", []))
        assert_same(od, roundtrip(embedded.predict(png, "OD", score_threshold=0.02, nms_iou=0.5)["<OD>"]))
    else:
        assert error_of(response, 422) == "unsupported_option"


def test_options_are_forwarded_to_predict(serve, png):
    predictor = RecordingPredictor()
    client = serve(predictor)
    fields = {"task": "OD", "score_threshold": "0.25", "nms_iou": "0.5", "num_beams": "2", "max_new_tokens": "9"}
    assert post_file(client, png, **fields).status_code == 200
    call = predictor.calls[-1]
    assert (call["score_threshold"], call["nms_iou"]) == (0.25, 0.5)
    assert call["decoding"] == {"num_beams": 2, "max_new_tokens": 9}
    assert call["task"] == ["<OD>"] and call["images"] == 1


def test_options_a_predictor_does_not_accept_are_refused(serve, png):
    client = serve(NarrowPredictor())
    assert set(client.get("/v1/info").json()["options"]) == {"num_beams"}
    assert post_file(client, png, task="OD", num_beams="2").status_code == 200
    for field in ("score_threshold", "max_new_tokens"):
        response = post_file(client, png, task="OD", **{field: "0.5" if field == "score_threshold" else "5"})
        assert error_of(response, 422) == "unsupported_option"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"tasks": ["<NOPE>"]}, 422, "unknown_task"),
        ({"tasks": " , "}, 422, "unknown_task"),
        ({"image": "not base64!"}, 422, "bad_base64"),
        ({"image": "data:image/png,abc"}, 422, "bad_base64"),
        ({"image": b64(b"these bytes are not an image")}, 422, "bad_image"),
        ({"image": ""}, 422, "bad_image"),
        ({"region": [1, 2, 3]}, 422, "bad_region"),
        ({"region": "a,b,c,d"}, 422, "bad_region"),
        ({"region": [50, 10, 20, 40]}, 422, "bad_region"),
        ({"region": [0, 0, 500, 40]}, 422, "bad_region"),
        ({"region": [-1, 0, 20, 40]}, 422, "bad_region"),
        ({"tasks": ["<OD>"], "region": [0, 0, 20, 40]}, 422, "bad_input"),
        ({"tasks": ["<OD>"], "text": "a car"}, 422, "bad_input"),
        ({"tasks": ["<OD>", "<CAPTION>"], "region": [0, 0, 20, 40]}, 422, "bad_input"),
        ({"tasks": ["<CAPTION_TO_PHRASE_GROUNDING>"]}, 422, "bad_input"),
        ({"tasks": ["<REGION_TO_CATEGORY>"]}, 422, "bad_input"),
        ({"max_new_tokens": 100_000}, 422, "too_many_new_tokens"),
        ({"num_beams": 6}, 422, "too_many_beams"),
        ({"num_beams": 0}, 422, "bad_request"),
        ({"score_threshold": 1.5}, 422, "bad_request"),
        ({"unknown_option": 1}, 422, "bad_request"),
        ({"tasks": ["<CAPTION_TO_PHRASE_GROUNDING>"], "text": "x" * 2001}, 422, "text_too_long"),
    ],
)
def test_json_errors(client, png, payload, status, code):
    body = {"image": b64(png), "tasks": ["<REGION_TO_CATEGORY>"], **payload}
    assert error_of(client.post("/v1/predict", json=body), status) == code


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"{not json", "bad_json"), (b"\xff\xfe", "bad_json")],
)
def test_malformed_json_is_400(client, body, code):
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert error_of(response, 400) == code


def test_json_body_must_be_an_object(client):
    assert error_of(client.post("/v1/predict", json=[1, 2]), 422) == "bad_request"


def test_multipart_errors(client, png):
    no_image = client.post("/v1/predict", data={"task": "OD"}, files={"other": ("x.txt", b"x", "text/plain")})
    assert error_of(no_image, 422) in ("bad_image", "bad_request")
    not_a_file = client.post(
        "/v1/predict", data={"image": "abc", "task": "OD"}, files={"x": ("x", b"", "application/octet-stream")}
    )
    assert error_of(not_a_file, 422) in ("bad_image", "bad_request")
    assert error_of(post_file(client, b"GIF89a broken"), 422) == "bad_image"
    assert error_of(post_file(client, png, task="OD", num_beams="two"), 422) == "bad_request"
    assert error_of(post_file(client, png, task="REGION_TO_OCR", region="1,2,3"), 422) == "bad_region"
    broken = client.post(
        "/v1/predict", content=b"--xyz\r\nnot a part", headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert error_of(broken, 400) in ("bad_multipart", "bad_image")


def test_a_path_or_url_from_the_client_is_never_opened(client):
    path = str(EXAMPLE_FILES[0].resolve())
    for image in (path, "file://" + path, "http://127.0.0.1/x.png"):
        assert client.post("/v1/predict", json={"image": image, "tasks": "OD"}).status_code == 422
        as_text_field = client.post("/v1/predict", files={"image": (None, image), "task": (None, "OD")})
        assert error_of(as_text_field, 422) == "bad_image"
        assert client.post("/v1/predict", data={"image": image, "task": "OD"}).status_code == 415  # url-encoded


def test_non_finite_numbers_in_results_become_null(serve, png):
    class NaNPredictor(StandIn):
        def predict(self, image, task="<CAPTION>", text=None, region=None, *, batch_size=8, **decoding):
            return [{t: {"bboxes": [[1.0, 2.0, 3.0, 4.0]], "scores": [math.nan]} for t in task} for _ in image]

    response = post_file(serve(NaNPredictor()), png, task="OD")
    assert response.status_code == 200
    assert response.json()["results"]["<OD>"]["scores"] == [None]


def test_errors_raised_by_the_model_are_reported(client, serve, png):
    # the embedded model has 512 positions: this prompt fits the text limit but not the model
    long_text = "a red circle " * 150
    response = post_file(client, png, task="CAPTION_TO_PHRASE_GROUNDING", text=long_text)
    assert error_of(response, 422) == "bad_input" and "tokens" in response.json()["detail"]

    class Broken(StandIn):
        def predict(self, image, task="<CAPTION>", text=None, region=None, *, batch_size=8, **decoding):
            raise RuntimeError("out of memory")

    response = post_file(serve(Broken()), png, task="OD")
    assert error_of(response, 500) == "inference_failed"


def test_other_content_types_are_415(client):
    response = client.post("/v1/predict", content=b"abc", headers={"content-type": "text/plain"})
    assert error_of(response, 415) == "unsupported_media_type"


def test_body_size_limit_is_413(serve, png):
    client = serve(max_body_bytes=1000)
    big = b"\x89PNG" + bytes(2000)
    assert error_of(post_file(client, big, task="OD"), 413) == "body_too_large"
    assert error_of(client.post("/v1/predict", json={"image": b64(big)}), 413) == "body_too_large"
    # without Content-Length (chunked): counted while reading
    chunks = iter([b'{"image": "' + b"A" * 600, b"A" * 600 + b'"}'])
    response = client.post("/v1/predict", content=chunks, headers={"content-type": "application/json"})
    assert error_of(response, 413) == "body_too_large"


def test_image_pixel_limit_is_413(serve, png):
    client = serve(max_image_pixels=128 * 127)  # the example is 128x128
    assert error_of(post_file(client, png, task="OD"), 413) == "image_too_large"
    assert (
        serve(max_image_pixels=128 * 128)
        .post("/v1/predict", files={"image": ("a.png", png, "image/png")}, data={"task": "OD"})
        .status_code
        == 200
    )


def test_unknown_routes_are_json_404(client):
    assert error_of(client.get("/v1/nothing"), 404) == "not_found"


# ---------------------------------------------------------------------------------------------
# API key
# ---------------------------------------------------------------------------------------------


def test_api_key_protects_the_api_but_not_health_or_page(serve, png):
    client = serve(api_key="s3cret")
    assert client.get("/health").json() == {"status": "ok", "auth_required": True}
    assert client.get("/").status_code == 200 and client.get("/examples").status_code == 200
    for path in ("/v1/tasks", "/v1/info", "/metrics"):
        response = client.get(path)
        assert error_of(response, 401) == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        assert error_of(client.get(path, headers={"Authorization": "Bearer wrong"}), 401) == "unauthorized"
        assert error_of(client.get(path, headers={"X-API-Key": "s3cre"}), 401) == "unauthorized"
        assert error_of(client.get(path, headers={"Authorization": "Basic s3cret"}), 401) == "unauthorized"
        assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200
    # checked before the body is read: garbage without a key is a 401, not a 400
    garbage = client.post("/v1/predict", content=b"{oops", headers={"content-type": "application/json"})
    assert error_of(garbage, 401) == "unauthorized"
    assert error_of(post_file(client, png, task="OD"), 401) == "unauthorized"
    assert post_file(client, png, headers={"X-API-Key": "s3cret"}, task="OD").status_code == 200
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}


def test_api_key_from_the_environment(monkeypatch, embedded):
    monkeypatch.setenv("FLORENCE2_API_KEY", "from-env")
    with TestClient(create_app(embedded)) as client:
        assert client.get("/v1/tasks").status_code == 401
        assert client.get("/v1/tasks", headers={"X-API-Key": "from-env"}).status_code == 200


def test_no_key_means_open(monkeypatch, embedded):
    monkeypatch.delenv("FLORENCE2_API_KEY", raising=False)
    with TestClient(create_app(embedded)) as client:
        assert client.get("/v1/tasks").status_code == 200


# ---------------------------------------------------------------------------------------------
# Queue, batching, metrics
# ---------------------------------------------------------------------------------------------


def test_full_queue_is_503_with_retry_after(serve, png):
    predictor = RecordingPredictor(block=True)
    client = serve(predictor, max_queue=2, max_batch_size=1, max_wait_ms=0)
    batcher = client.app.state.batcher
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(post_file, client, png, task="OD")
        assert predictor.started.wait(10)  # the worker holds request 1 ...
        waiting = [pool.submit(post_file, client, png, task="OD") for _ in range(2)]
        wait_until(lambda: batcher.depth == 2)  # ... and 2 more wait: the queue is full
        assert client.get("/health").status_code == 200  # inference runs off the event loop
        refused = post_file(client, png, task="OD")
        assert error_of(refused, 503) == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
        metrics = client.get("/metrics").text
        assert "florence2_queue_depth 2" in metrics and "florence2_inference_busy 1" in metrics
        predictor.release.set()
        responses = [running.result(30)] + [f.result(30) for f in waiting]
    assert [r.status_code for r in responses] == [200, 200, 200]
    metrics = client.get("/metrics").text
    assert 'florence2_http_requests_total{route="/v1/predict",status="503"} 1' in metrics
    assert 'florence2_http_requests_total{route="/v1/predict",status="200"} 3' in metrics
    assert "florence2_queue_rejected_total 1" in metrics
    assert "florence2_queue_depth 0" in metrics


def test_concurrent_requests_share_one_batch_with_direct_results(serve, embedded):
    images = [f.read_bytes() for f in EXAMPLE_FILES[:4]]
    client = serve(max_batch_size=len(images), max_wait_ms=5000)
    started = time.monotonic()
    with ThreadPoolExecutor(len(images)) as pool:
        responses = list(pool.map(lambda data: post_file(client, data, task="OD"), images))
    assert time.monotonic() - started < 5  # the batch ran once full, not at the end of the wait
    for data, response in zip(images, responses):
        assert response.status_code == 200, response.text
        assert response.json()["timings"]["batch_size"] == len(images)
        assert_same(response.json()["results"], roundtrip(embedded.predict(data, "<OD>")))
    sizes = parse_histogram(client.get("/metrics").text, "florence2_batch_size")
    assert sizes["+Inf"] == 1 and sizes["4"] == 1 and sizes["3"] == 0  # one batch, of 4


def test_requests_that_differ_are_batched_apart(serve, png):
    predictor = RecordingPredictor()
    client = serve(predictor, max_batch_size=8, max_wait_ms=300)
    requests = [
        {"task": "OD"},
        {"task": "CAPTION"},
        {"task": "OD"},
        {"task": "CAPTION"},
        {"task": "OD", "num_beams": "2"},
        {"task": "CAPTION_TO_PHRASE_GROUNDING", "text": "a red circle"},
        {"task": "CAPTION_TO_PHRASE_GROUNDING", "text": "two stars"},
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(lambda fields: post_file(client, png, **fields), requests))
    assert all(r.status_code == 200 for r in responses)
    sizes = [r.json()["timings"]["batch_size"] for r in responses]
    assert sizes == [2, 2, 2, 2, 1, 2, 2]  # different texts share a batch: one text per image
    calls = sorted((c["task"], c["images"], tuple(c["decoding"].items())) for c in predictor.calls)
    assert calls == [
        (["<CAPTION>"], 2, ()),
        (["<CAPTION_TO_PHRASE_GROUNDING>"], 2, ()),
        (["<OD>"], 1, (("num_beams", 2),)),
        (["<OD>"], 2, ()),
    ]
    grounding = next(c for c in predictor.calls if c["task"] == ["<CAPTION_TO_PHRASE_GROUNDING>"])
    assert sorted(grounding["text"]) == ["a red circle", "two stars"]
    assert all(c["batch_size"] == c["images"] for c in predictor.calls)


class LiveServer:
    """uvicorn on a free loopback port, in a thread (for what TestClient cannot do: disconnects)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), timeout=30)
        assert self.server.started
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.socket.close()

    def post(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        status, data = response.status, response.read()
        conn.close()
        return status, data


def test_a_request_whose_client_left_is_dropped_before_it_runs(png):
    pytest.importorskip("uvicorn")
    predictor = RecordingPredictor(block=True)
    app = create_app(predictor, ServeSettings(max_batch_size=1, max_wait_ms=0))
    body = json.dumps({"image": b64(png), "tasks": "OD"}).encode()
    with LiveServer(app) as server, ThreadPoolExecutor(1) as pool:
        held = pool.submit(server.post, body, "application/json")
        assert predictor.started.wait(10)  # the worker holds the first request
        leaving = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        leaving.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
        wait_until(lambda: app.state.batcher.depth == 1)
        leaving.close()  # the second client goes away while queued
        wait_until(
            lambda: app.state.metrics.value("florence2_http_requests_total", route="/v1/predict", status="499") == 1
        )
        predictor.release.set()
        assert held.result(30)[0] == 200
        assert server.post(body, "application/json")[0] == 200
    assert [call["images"] for call in predictor.calls] == [1, 1]  # the one that left never ran


def test_batch_size_one_turns_batching_off(serve, png):
    predictor = RecordingPredictor()
    client = serve(predictor, max_batch_size=1, max_wait_ms=300)
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: post_file(client, png, task="OD"), range(3)))
    assert [r.json()["timings"]["batch_size"] for r in responses] == [1, 1, 1]
    assert [c["images"] for c in predictor.calls] == [1, 1, 1]


def test_metrics_text_format(client, png):
    post_file(client, png, task="OD")
    client.get("/v1/tasks")
    response = client.get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    for name, kind in [
        ("florence2_http_requests_total", "counter"),
        ("florence2_http_request_duration_seconds", "histogram"),
        ("florence2_queue_depth", "gauge"),
        ("florence2_batch_size", "histogram"),
        ("florence2_batch_inference_seconds", "histogram"),
        ("florence2_queue_wait_seconds", "histogram"),
    ]:
        assert f"# TYPE {name} {kind}" in text
    assert 'florence2_http_requests_total{route="/v1/predict",status="200"} 1' in text
    assert 'florence2_http_requests_total{route="/v1/tasks",status="200"} 1' in text
    assert 'florence2_http_request_duration_seconds_count{route="/v1/predict"} 1' in text
    assert 'florence2_batch_size_bucket{le="+Inf"} 1' in text
    for line in text.splitlines():
        if not line.startswith("#"):
            name_and_labels, value = line.rsplit(" ", 1)
            assert math.isfinite(float(value)), line


def test_metrics_label_each_route_by_the_path_it_was_declared_with(client):
    client.get("/examples/missing.png")
    client.get("/static/app.js")
    client.post("/health")  # 405: the path matches, the method does not
    for path in ("/nothing", "/v1/nothing", "/a/b/c", "/examples/a/b"):
        client.get(path)
    client.app.get("/v1/added")(lambda: {"added": True})  # a route added later needs nothing else
    assert client.get("/v1/added").json() == {"added": True}
    count = client.app.state.metrics.value
    assert count("florence2_http_requests_total", route="/examples/{name}", status="404") == 1
    assert count("florence2_http_requests_total", route="/static", status="200") == 1
    assert count("florence2_http_requests_total", route="/health", status="405") == 1
    assert count("florence2_http_requests_total", route="other", status="404") == 4  # one label for all
    assert count("florence2_http_requests_total", route="/v1/added", status="200") == 1


def test_each_app_has_its_own_metrics(serve, png):
    first, second = serve(RecordingPredictor()), serve(RecordingPredictor())
    assert post_file(first, png, task="OD").status_code == 200
    text = second.get("/metrics").text
    assert 'route="/v1/predict"' not in text and 'florence2_batch_size_bucket{le="+Inf"} 0' in text
    assert "_created" not in text  # only the series listed in docs/serving.md
    assert parse_histogram(first.get("/metrics").text, "florence2_batch_size")["1"] == 1


def test_a_predictor_without_info_is_refused_at_start():
    class Bare:
        def predict(self, image, task="<CAPTION>", text=None, region=None, *, batch_size=8, **decoding):
            return [{t: "ok" for t in task} for _ in image]

    with pytest.raises(TypeError, match=r"info\(\)"):
        create_app(Bare(), ServeSettings())


# ---------------------------------------------------------------------------------------------
# Hostile clients
# ---------------------------------------------------------------------------------------------


def test_a_text_that_is_not_valid_unicode_is_422_before_it_queues(serve, png):
    predictor = RecordingPredictor()
    client = serve(predictor)
    # JSON may carry a lone surrogate escape; no tokenizer can encode the string it decodes to
    body = json.dumps({"image": b64(png), "tasks": "OPEN_VOCABULARY_DETECTION", "text": "\ud800x"})
    assert "\\ud800" in body
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert error_of(response, 422) == "bad_input" and "Unicode" in response.json()["detail"]
    assert predictor.calls == []


def test_a_request_that_fails_inside_a_batch_fails_alone_from_the_same_batch(serve, embedded, png):
    # the embedded model has 512 positions: this text passes the server's checks but not the model's
    texts = ["a red circle", "a red circle " * 150, "a red circle", "a red circle"]
    client = serve(max_batch_size=len(texts), max_wait_ms=5000)
    with ThreadPoolExecutor(len(texts)) as pool:
        responses = list(
            pool.map(lambda text: post_file(client, png, task="CAPTION_TO_PHRASE_GROUNDING", text=text), texts)
        )
    assert error_of(responses[1], 422) == "bad_input" and "tokens" in responses[1].json()["detail"]
    expected = roundtrip(embedded.predict([png] * 3, "<CAPTION_TO_PHRASE_GROUNDING>", text="a red circle"))
    for response, want in zip([responses[0], *responses[2:]], expected):
        assert response.status_code == 200, response.text
        assert response.json()["timings"]["batch_size"] == len(texts)
        assert_same(response.json()["results"], want)
    sizes = parse_histogram(client.get("/metrics").text, "florence2_batch_size")
    assert sizes["+Inf"] == 1 and sizes["4"] == 1  # one batch of 4, nobody rerun alone


@pytest.mark.parametrize(
    "body",
    [b"[" * 1100 + b"]" * 1100, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"[" * 200_000],
    ids=["balanced", "objects", "unbalanced"],
)
def test_deeply_nested_json_is_a_json_400(client, body):
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert error_of(response, 400) == "bad_json"
    assert client.get("/health").status_code == 200


def test_a_body_without_content_type_is_415(client, png):
    body = json.dumps({"image": b64(png), "tasks": "OD"}).encode()
    response = client.post("/v1/predict", content=body, headers={"content-type": ""})
    assert error_of(response, 415) == "unsupported_media_type"


def test_a_full_queue_refuses_before_the_image_is_decoded(serve, png, monkeypatch):
    import florence2.serve.app as app_module

    decoded = []
    real = app_module.decode_image
    monkeypatch.setattr(app_module, "decode_image", lambda *args: decoded.append(1) or real(*args))
    predictor = RecordingPredictor(block=True)
    client = serve(predictor, max_queue=1, max_batch_size=1, max_wait_ms=0)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post_file, client, png, task="OD")
        assert predictor.started.wait(10)
        waiting = pool.submit(post_file, client, png, task="OD")
        wait_until(lambda: client.app.state.batcher.depth == 1)
        assert error_of(post_file(client, png, task="OD"), 503) == "queue_full"
        assert len(decoded) == 2  # the refused request cost no decoding
        predictor.release.set()
        assert running.result(30).status_code == 200 and waiting.result(30).status_code == 200


def test_queued_images_are_model_input_not_full_size_pixels(serve, embedded, png):
    seen = []

    class Watching(StandIn):
        options = tuple(embedded.info()["options"])
        prepare_image = staticmethod(embedded.prepare_image)

        def predict(self, image, task="<CAPTION>", **kwargs):
            seen.extend(image)
            return embedded.predict(image, task, **kwargs)

    response = post_file(serve(Watching()), png, task="OD")
    assert response.status_code == 200 and response.json()["image"] == {"width": 128, "height": 128}
    assert [type(item).__name__ for item in seen] == ["PreparedImage"]
    assert_same(response.json()["results"], roundtrip(embedded.predict(png, "<OD>")))


def test_a_slow_body_is_cut_off_with_408(png):
    pytest.importorskip("uvicorn")
    app = create_app(RecordingPredictor(), ServeSettings(body_timeout_s=0.5))
    with LiveServer(app) as server:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            answer = b""
            try:
                for _ in range(40):  # one byte every 0.1 s, for up to 4 s
                    sock.sendall(b" ")
                    time.sleep(0.1)
                    sock.setblocking(False)
                    try:
                        answer += sock.recv(65536)
                    except BlockingIOError:
                        pass
                    finally:
                        sock.setblocking(True)
                    if b"\r\n\r\n" in answer:
                        break
            except (BrokenPipeError, ConnectionResetError):
                pass
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"body_timeout" in answer
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("key", ["clé", "two words", "tab\tkey"])
def test_an_api_key_no_header_can_carry_is_refused_at_start(key):
    with pytest.raises(ValueError, match="printable ASCII"):
        ServeSettings(api_key=key)


# ---------------------------------------------------------------------------------------------
# The batcher alone
# ---------------------------------------------------------------------------------------------


def test_batcher_gives_each_request_its_own_error():
    def run(key, items):
        if any(item < 0 for item in items):
            raise ValueError(f"negative item in {list(items)}")
        return [item * 10 for item in items]

    batcher = Batcher(run, max_batch_size=4, max_wait_s=0.5, max_queue=8)
    futures = [batcher.submit("k", item) for item in (1, -2, 3)]
    assert futures[0].result(10).result == 10 and futures[2].result(10).result == 30
    with pytest.raises(ValueError, match=r"\[-2\]"):
        futures[1].result(10)
    batcher.stop()


def test_batcher_bounds_the_queue_and_fails_waiting_requests_on_stop():
    release = threading.Event()
    batcher = Batcher(lambda key, items: release.wait(10) and list(items), max_batch_size=1, max_wait_s=0, max_queue=1)
    first = batcher.submit("k", 1)
    wait_until(lambda: batcher.busy)
    second = batcher.submit("k", 2)
    with pytest.raises(QueueFullError) as raised:
        batcher.submit("k", 3)
    assert raised.value.retry_after_s >= 1
    threading.Timer(0.05, release.set).start()
    batcher.stop()
    assert first.result(10).result == 1
    with pytest.raises(ShuttingDownError):
        second.result(10)
    with pytest.raises(ShuttingDownError):
        batcher.submit("k", 4)


def test_batcher_skips_cancelled_requests():
    seen = []
    release = threading.Event()

    def run(key, items):
        release.wait(10)
        seen.extend(items)
        return list(items)

    batcher = Batcher(run, max_batch_size=1, max_wait_s=0, max_queue=8)
    first = batcher.submit("k", 1)
    wait_until(lambda: batcher.busy)
    cancelled = batcher.submit("k", 2)
    kept = batcher.submit("k", 3)
    assert cancelled.cancel()
    release.set()
    assert first.result(10).result == 1 and kept.result(10).result == 3
    assert seen == [1, 3]
    batcher.stop()


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def test_serve_command_builds_the_app_from_its_options(monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app, **kwargs))
    monkeypatch.setenv("FLORENCE2_API_KEY", "k1")
    args = build_parser().parse_args(["serve", "--port", "8123", "--max-batch-size", "1", "--max-queue", "5"])
    assert args.host == "127.0.0.1"  # loopback unless asked
    assert args.func(args) == 0
    settings = seen["app"].state.settings
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    assert (settings.max_batch_size, settings.max_queue, settings.api_key) == (1, 5, "k1")

    args = build_parser().parse_args(["serve", "--api-key", "k2", "--max-body-mb", "1"])
    args.func(args)
    assert seen["app"].state.settings.api_key == "k2"
    assert seen["app"].state.settings.max_body_bytes == 2**20
