"""``florence2 serve``: run the HTTP server and web page (needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from florence2.config import add_device_arguments
from florence2.errors import Florence2Error
from florence2.serve.settings import API_KEY_ENV, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_IMAGE_PIXELS, ServeSettings


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    defaults = ServeSettings()
    p = sub.add_parser("serve", help="run the HTTP API and web page")
    p.add_argument("--model", help="checkpoint folder (either public layout) or hub id; default: embedded model")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    add_device_arguments(p)
    p.add_argument(
        "--api-key", default=None, help=f"require this key on /v1/* and /metrics (default: ${API_KEY_ENV}, if set)"
    )
    p.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size, help="1 turns batching off")
    p.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms, help="batching wait when idle")
    p.add_argument("--max-queue", type=int, default=defaults.max_queue, help="waiting requests before 503")
    p.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20, help="largest request body")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, help="largest image, w * h")
    p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="limit of the option")
    p.add_argument("--max-num-beams", type=int, default=defaults.max_num_beams, help="limit of the option")
    p.add_argument("--max-decodes", type=int, default=defaults.max_decodes, help="images decoded at once")
    p.add_argument(
        "--body-timeout", type=float, default=defaults.body_timeout_s, help="seconds a client may take to send a body"
    )
    p.add_argument(
        "--max-connections", type=int, default=defaults.max_connections, help="connections served at once (503 above)"
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from florence2.serve.app import create_app
    except ImportError as error:
        raise Florence2Error(
            f"florence2 serve needs the 'serve' extra: pip install 'florence2[serve]' ({error})"
        ) from error
    from florence2.pipeline import Florence2

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    try:
        settings = ServeSettings(
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_body_bytes=int(args.max_body_mb * 2**20),
            max_image_pixels=args.max_image_pixels,
            max_new_tokens=args.max_new_tokens,
            max_num_beams=args.max_num_beams,
            max_decodes=args.max_decodes,
            body_timeout_s=args.body_timeout,
            max_connections=args.max_connections,
            api_key=api_key,
        )
    except ValueError as error:
        raise Florence2Error(str(error)) from error
    if not _is_loopback(args.host) and settings.api_key is None:
        print(
            f"warning: serving on {args.host} without an API key: anyone who can reach it can use it "
            f"(set --api-key or ${API_KEY_ENV})",
            file=sys.stderr,
        )
    if settings.max_queue < settings.max_batch_size:
        print(
            f"warning: --max-queue {settings.max_queue} < --max-batch-size {settings.max_batch_size}: "
            "batches can never be larger than the queue",
            file=sys.stderr,
        )
    predictor = Florence2.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    app = create_app(predictor, settings, model_name=args.model or "embedded")
    print(f"florence2 serving on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr, flush=True)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, limit_concurrency=settings.max_connections
    )
    return 0
