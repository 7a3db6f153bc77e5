import pytest

from florence2.errors import TaskError
from florence2.parsing import PARSERS
from florence2.tasks import TASKS, TaskSpec, build_prompt, construct_prompt, get_task

# Reference §3.3, verbatim.
NO_INPUT_PROMPTS = {
    "<OCR>": "What is the text in the image?",
    "<OCR_WITH_REGION>": "What is the text in the image, with regions?",
    "<CAPTION>": "What does the image describe?",
    "<DETAILED_CAPTION>": "Describe in detail what is shown in the image.",
    "<MORE_DETAILED_CAPTION>": "Describe with a paragraph what is shown in the image.",
    "<OD>": "Locate the objects with category name in the image.",
    "<DENSE_REGION_CAPTION>": "Locate the objects in the image, with their descriptions.",
    "<REGION_PROPOSAL>": "Locate the region proposals in the image.",
}
WITH_INPUT_PROMPTS = {
    "<CAPTION_TO_PHRASE_GROUNDING>": "Locate the phrases in the caption: {input}",
    "<REFERRING_EXPRESSION_SEGMENTATION>": "Locate {input} in the image with mask",
    "<REGION_TO_SEGMENTATION>": "What is the polygon mask of region {input}",
    "<OPEN_VOCABULARY_DETECTION>": "Locate {input} in the image.",
    "<REGION_TO_CATEGORY>": "What is the region {input}?",
    "<REGION_TO_DESCRIPTION>": "What does the region {input} describe?",
    "<REGION_TO_OCR>": "What text is in the region {input}?",
}
RESULT_TYPES = {
    "<OCR>": "pure_text",
    "<OCR_WITH_REGION>": "ocr",
    "<CAPTION>": "pure_text",
    "<DETAILED_CAPTION>": "pure_text",
    "<MORE_DETAILED_CAPTION>": "pure_text",
    "<OD>": "description_with_bboxes",
    "<DENSE_REGION_CAPTION>": "description_with_bboxes",
    "<REGION_PROPOSAL>": "bboxes",
    "<CAPTION_TO_PHRASE_GROUNDING>": "phrase_grounding",
    "<REFERRING_EXPRESSION_SEGMENTATION>": "polygons",
    "<REGION_TO_SEGMENTATION>": "polygons",
    "<OPEN_VOCABULARY_DETECTION>": "description_with_bboxes_or_polygons",
    "<REGION_TO_CATEGORY>": "pure_text",
    "<REGION_TO_DESCRIPTION>": "pure_text",
    "<REGION_TO_OCR>": "pure_text",
}
BOX = "<loc_53><loc_333><loc_932><loc_772>"


def test_registry_matches_reference():
    assert len(TASKS) == 15
    assert {t for t, s in TASKS.items() if s.input == "none"} == set(NO_INPUT_PROMPTS)
    assert {t: s.prompt for t, s in TASKS.items()} == {**NO_INPUT_PROMPTS, **WITH_INPUT_PROMPTS}
    assert {t: s.result_type for t, s in TASKS.items()} == RESULT_TYPES
    assert all(spec.token == token and spec.description for token, spec in TASKS.items())
    assert {s.result_type for s in TASKS.values()} == set(PARSERS)
    assert {t for t, s in TASKS.items() if s.input == "region"} == {
        "<REGION_TO_SEGMENTATION>",
        "<REGION_TO_CATEGORY>",
        "<REGION_TO_DESCRIPTION>",
        "<REGION_TO_OCR>",
    }


def test_task_spec_is_frozen():
    with pytest.raises(AttributeError):
        TASKS["<OD>"].prompt = "x"  # type: ignore[misc]
    assert isinstance(TASKS["<OD>"], TaskSpec)


@pytest.mark.parametrize("name", ["<OD>", "OD", "od", " <od> "])
def test_get_task_spellings(name):
    assert get_task(name).token == "<OD>"


def test_get_task_unknown_lists_valid_names():
    with pytest.raises(TaskError) as info:
        get_task("<DETECT>")
    assert "<DETECT>" in str(info.value)
    assert all(token in str(info.value) for token in TASKS)


@pytest.mark.parametrize("token", list(NO_INPUT_PROMPTS))
def test_no_input_tasks(token):
    assert build_prompt(token) == NO_INPUT_PROMPTS[token]
    assert build_prompt(token, "  ") == NO_INPUT_PROMPTS[token]
    with pytest.raises(TaskError):
        build_prompt(token, "a red car")
    with pytest.raises(TaskError):
        build_prompt(token, region=[1, 2, 3, 4], image_size=(10, 10))


def test_text_tasks():
    assert build_prompt("<OPEN_VOCABULARY_DETECTION>", " wheels ") == "Locate wheels in the image."
    assert build_prompt("caption_to_phrase_grounding", "A red car.") == "Locate the phrases in the caption: A red car."
    assert build_prompt("<REFERRING_EXPRESSION_SEGMENTATION>", "a car") == "Locate a car in the image with mask"
    for bad in (None, "", "   "):
        with pytest.raises(TaskError):
            build_prompt("<OPEN_VOCABULARY_DETECTION>", bad)
    with pytest.raises(TaskError):
        build_prompt("<OPEN_VOCABULARY_DETECTION>", region=[0, 0, 5, 5], image_size=(10, 10))


def test_region_tasks_quantize_boxes():
    prompt = build_prompt("<REGION_TO_CATEGORY>", region=(34, 160, 597, 371), image_size=(640, 480))
    assert prompt == f"What is the region {BOX}?"
    assert build_prompt("<REGION_TO_OCR>", f" {BOX} ") == f"What text is in the region {BOX}?"
    assert build_prompt("REGION_TO_SEGMENTATION", BOX) == f"What is the polygon mask of region {BOX}"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"text": "the car"},
        {"text": "<loc_1><loc_2><loc_3>"},
        {"text": BOX + "x"},
        {"text": "<loc_1><loc_2><loc_3><loc_1000>"},
        {"region": (0, 0, 10, 10)},  # no image_size
        {"region": (0, 0, 10), "image_size": (100, 100)},
        {"region": (50, 0, 10, 10), "image_size": (100, 100)},  # x1 < x0
        {"region": (0, 0, 10, 10), "image_size": (100, 100), "text": BOX},
    ],
)
def test_region_task_rejects_bad_input(kwargs):
    with pytest.raises(TaskError):
        build_prompt("<REGION_TO_DESCRIPTION>", **kwargs)


def test_free_prompt():
    assert build_prompt(None, "What color is the car?") == "What color is the car?"
    with pytest.raises(TaskError):
        build_prompt(None)
    with pytest.raises(TaskError):
        build_prompt(None, "x", region=(0, 0, 1, 1), image_size=(2, 2))


def test_construct_prompt_like_reference():
    # Reference §5.2 (_construct_prompts).
    assert construct_prompt("This is a simple text.") == "This is a simple text."
    assert construct_prompt("<OCR>") == "What is the text in the image?"
    assert construct_prompt("<CAPTION>") == "What does the image describe?"
    assert construct_prompt("<CAPTION_TO_PHRASE_GROUNDING> a red car") == "Locate the phrases in the caption: a red car"
    assert construct_prompt(f"<REGION_TO_OCR>{BOX}") == f"What text is in the region {BOX}?"
    with pytest.raises(TaskError):
        construct_prompt("<OCR> extra text")
