"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright.

A uvicorn server on a free loopback port serves the embedded model; the tests pick an example,
run tasks through the page and check what it draws. Screenshots go to ``out/test-artifacts/``.
Skipped (with the reason) when Chromium or Playwright is not installed; ``.ci/run`` installs both.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra")
pytest.importorskip("uvicorn", reason="the server needs the 'serve' extra")
pytest.importorskip("prometheus_client", reason="the server needs the 'serve' extra")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")

CHROMIUM = os.environ.get("FLORENCE2_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)", allow_module_level=True)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "out" / "test-artifacts"
TIMEOUT_MS = 60_000


class _Server:
    """uvicorn on a loopback socket bound to port 0, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.socket.close()


@pytest.fixture(scope="module")
def predictor():
    from florence2 import Florence2

    return Florence2.from_pretrained()


@pytest.fixture(scope="module")
def server(predictor) -> Iterator[_Server]:
    from florence2.serve import ServeSettings, create_app

    with _Server(create_app(predictor, ServeSettings())) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        except sync_api.Error as error:
            pytest.skip(f"Chromium at {CHROMIUM} does not start under Playwright: {error}")
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.requested = []
    page.errors = []
    page.on("request", lambda r: page.requested.append(r.url))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()


def _only_local(page, base: str) -> None:
    outside = [u for u in page.requested if not u.startswith((base, "blob:", "data:"))]
    assert not outside, outside  # no CDN, no third-party requests
    assert not page.errors, page.errors


def _canvas_pixels(page) -> str:
    return page.evaluate("() => document.getElementById('canvas').toDataURL()")


def _distinct_colours(page) -> int:
    return page.evaluate(
        """() => {
            const c = document.getElementById('canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < d.length; i += 4 * 7) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
            return seen.size;
        }"""
    )


def _open_example(page, base: str, name: str = "000000.png") -> None:
    page.goto(base + "/")
    page.wait_for_function("document.body.dataset.state === 'idle'")
    page.click(f"#examples button[data-name='{name}']")
    page.wait_for_function("!document.getElementById('run').disabled")


def _run(page) -> dict:
    page.click("#run")
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)")
    assert page.evaluate("document.body.dataset.state") == "done", page.text_content("#status")
    return json.loads(page.text_content("#json"))


def test_detection_on_an_example_is_drawn_with_its_json(page, server):
    _open_example(page, server.url)
    assert page.locator("#task option").count() == 15
    page.select_option("#task", "<OD>")
    before = _canvas_pixels(page)
    assert _distinct_colours(page) > 3  # the example image is on the canvas (a blank one has 1 colour)

    data = _run(page)
    od = data["results"]["<OD>"]
    assert data["tasks"] == ["<OD>"] and data["image"] == {"width": 128, "height": 128}
    assert len(od["bboxes"]) >= 1  # the embedded model finds something on this example
    assert int(page.get_attribute("#canvas", "data-shapes")) == len(od["bboxes"])
    legend = page.locator("#legend li")
    assert legend.count() == len(od["bboxes"])
    first = legend.first.text_content()
    assert od["labels"][0] in first
    if "scores" in od:  # drawn with the label when the model gives scores
        assert f"{od['scores'][0]:.2f}" in first
    assert _canvas_pixels(page) != before  # boxes and labels were drawn over the image
    assert "inference" in page.text_content("#timing")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page-od.png"), full_page=True)
    _only_local(page, server.url)


def test_region_task_takes_a_region_drawn_on_the_image(page, server):
    _open_example(page, server.url, "000001.png")
    page.select_option("#task", "<REGION_TO_CATEGORY>")
    assert page.is_visible("#region") and not page.is_visible("#text")
    box = page.locator("#canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.1)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.3, steps=5)
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    region = [float(v) for v in page.input_value("#region").split(",")]
    assert region == pytest.approx([32, 12.8, 89.6, 64], abs=1.5)  # 128-px image, drawn at 640 px

    data = _run(page)
    answer = data["results"]["<REGION_TO_CATEGORY>"]
    assert isinstance(answer, str)
    assert page.is_visible("#answer") and page.text_content("#answer") == (answer or "(empty answer)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page-region.png"), full_page=True)
    _only_local(page, server.url)


def _drawable(result: dict) -> int:
    instances = [i for i in result.get("polygons", []) if any(len(ring) >= 2 for ring in i)]
    return len(result.get("bboxes", [])) + len(result.get("quad_boxes", [])) + len(instances)


@pytest.mark.parametrize(
    ("task", "text"),
    [
        ("<OCR_WITH_REGION>", ""),
        ("<REFERRING_EXPRESSION_SEGMENTATION>", "the green circle"),
        ("<CAPTION_TO_PHRASE_GROUNDING>", "A green circle and a green star."),
    ],
)
def test_every_result_layout_is_drawn(page, server, task, text):
    _open_example(page, server.url, "000002.png")
    page.select_option("#task", task)
    if text:
        page.fill("#text", text)
    result = _run(page)["results"][task]
    assert int(page.get_attribute("#canvas", "data-shapes")) == _drawable(result)
    assert page.locator("#legend li").count() == _drawable(result)
    _only_local(page, server.url)


def test_a_caption_appears_piece_by_piece_while_it_is_generated(page, server):
    _open_example(page, server.url, "000002.png")
    page.select_option("#task", "<DETAILED_CAPTION>")
    # every text the answer shows on its way, recorded as the page changes it
    page.evaluate(
        """() => {
            window.seen = [];
            new MutationObserver(() => window.seen.push(document.getElementById('answer').textContent))
                .observe(document.getElementById('answer'), {childList: true, characterData: true, subtree: true});
        }"""
    )
    data = _run(page)
    answer = data["results"]["<DETAILED_CAPTION>"]
    assert page.text_content("#answer") == answer and page.is_visible("#answer")
    seen = [text for text in page.evaluate("window.seen") if text]
    assert len(seen) > 10  # shown piece by piece, not at the end
    assert all(answer.startswith(text) for text in seen) and seen[-1] == answer
    assert data["tasks"] == ["<DETAILED_CAPTION>"] and "inference" in page.text_content("#timing")
    _only_local(page, server.url)


def test_text_task_needs_its_text_and_errors_are_shown(page, server):
    _open_example(page, server.url)
    page.select_option("#task", "<OPEN_VOCABULARY_DETECTION>")
    page.click("#run")
    assert "needs a text" in page.text_content("#status")
    page.fill("#text", "circle")
    data = _run(page)
    assert set(data["results"]["<OPEN_VOCABULARY_DETECTION>"]) >= {"bboxes", "bboxes_labels", "polygons"}
    # a server-side error (beams over the limit) is reported on the page
    page.click("details.options summary")
    page.fill("#num_beams", "99")
    page.click("#run")
    page.wait_for_function("document.body.dataset.state === 'error'")
    assert "too_many_beams" in page.text_content("#status")
    _only_local(page, server.url)


def test_the_page_asks_for_the_api_key(browser, predictor):
    from florence2.serve import ServeSettings, create_app

    with _Server(create_app(predictor, ServeSettings(api_key="page-key"))) as server:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url + "/")
        page.wait_for_function("document.body.dataset.state === 'idle'")
        assert page.is_visible("#api-key")
        assert "API key" in page.text_content("#status")
        page.fill("#api-key", "page-key")
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.querySelectorAll('#task option').length === 15")
        page.click("#examples button[data-name='000002.png']")
        page.wait_for_function("!document.getElementById('run').disabled")
        page.select_option("#task", "<CAPTION>")
        data = _run(page)
        assert isinstance(data["results"]["<CAPTION>"], str)
        context.close()
