"""Server settings: limits on what a client may send and how requests are batched."""

from __future__ import annotations

from dataclasses import dataclass

# Images are resized to the model input (768x768 for the official checkpoints), so large photos
# only cost decoding time and memory: 25 MP covers 5000x5000 and every common phone camera, and a
# decoded image of that size is 75 MB. Together with the queue bound this caps the memory held by
# waiting requests.
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
DEFAULT_MAX_BODY_BYTES = 20 * 2**20
# the environment variable that holds the API key when --api-key is not given
API_KEY_ENV = "FLORENCE2_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching settings of one server.

    Attributes:
        max_batch_size: most requests run together in one model batch (1 turns batching off).
        max_wait_ms: how long the first queued request of a batch waits for companions while the
            model is idle; under load a batch forms from what queued during the previous one.
        max_queue: most requests waiting for the model; one more is answered 503 with Retry-After.
        max_body_bytes: largest request body (the image, base64 or multipart, plus fields); 413 above.
        max_image_pixels: largest decoded image, width * height; 413 above.
        max_new_tokens: largest ``max_new_tokens`` a request may ask for.
        max_num_beams: largest ``num_beams`` a request may ask for.
        max_text_chars: longest ``text`` input.
        max_decodes: most images decoded at once (each holds up to ``max_image_pixels`` x 4 bytes
            while it is decoded; a decoded image is turned into model input at once and let go).
        body_timeout_s: longest time a client may take to send its body; 408 after it.
        max_connections: most connections served at once (uvicorn's ``limit_concurrency``; 503 above);
            together with ``max_body_bytes`` it bounds the memory held by bodies being read.
        api_key: when set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer KEY`` or
            ``X-API-Key: KEY``; ``/health``, the page and the example images stay open. Printable
            ASCII only (an HTTP header cannot carry anything else).
    """

    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_new_tokens: int = 1024
    max_num_beams: int = 5
    max_text_chars: int = 2000
    max_decodes: int = 2
    body_timeout_s: float = 30.0
    max_connections: int = 100
    api_key: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_batch_size",
            "max_body_bytes",
            "max_image_pixels",
            "max_new_tokens",
            "max_num_beams",
            "max_text_chars",
            "max_decodes",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.body_timeout_s <= 0:
            raise ValueError(f"body_timeout_s must be > 0, got {self.body_timeout_s}")
        if self.api_key is not None and not self.api_key.strip():
            object.__setattr__(self, "api_key", None)
        if self.api_key is not None and not all(" " < c <= "~" for c in self.api_key):
            raise ValueError(
                "the API key must be printable ASCII without spaces: clients send it in an HTTP header, "
                "which cannot carry other characters, so any other key could never match"
            )
