"""What wraps every route: request metrics (a middleware) and the API key check (a dependency)."""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from florence2.serve.metrics import ServerMetrics
from florence2.serve.requests import ApiError


def _route_label(path: str) -> str:
    if path.startswith("/static/"):
        return "/static"
    if path.startswith("/examples/"):
        return "/examples/{name}"
    if path in _KNOWN_PATHS:
        return path
    return "other"


_KNOWN_PATHS = {
    "/",
    "/health",
    "/metrics",
    "/v1/predict",
    "/v1/tasks",
    "/v1/info",
    "/examples",
    "/openapi.json",
    "/docs",
    "/redoc",
}


class RequestMetricsMiddleware:
    """Counts every HTTP response by route and status, and times it."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = _route_label(scope.get("path", ""))
            self.metrics.requests.inc(route, str(status))
            self.metrics.latency.observe(time.perf_counter() - started, route)


_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
_API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")


class RequireApiKey:
    """A dependency that answers 401 unless the request carries the key (either header)."""

    def __init__(self, api_key: str) -> None:
        self._expected = api_key.encode()

    async def __call__(
        self,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
        key: Annotated[str | None, Depends(_API_KEY_HEADER)],
    ) -> None:
        given = [v for v in (credentials.credentials if credentials else None, key) if v]
        # compare_digest: the time taken does not tell how much of a key matched
        if not any(hmac.compare_digest(v.encode(), self._expected) for v in given):
            raise ApiError(
                401,
                "unauthorized",
                "a valid API key is needed: 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )
