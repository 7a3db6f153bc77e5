"""What wraps every route: request metrics (a middleware) and the API key check (a dependency)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import BaseRoute, Match

from florence2.serve.metrics import ServerMetrics
from florence2.serve.requests import ApiError

# the route label of every request no route answers: one series however many paths clients try
UNMATCHED_ROUTE = "other"


def route_label(routes: Sequence[BaseRoute], scope: dict) -> str:
    """The path the route that answers ``scope`` was declared with (``/examples/{name}``; ``/static``
    for the mounted files), or :data:`UNMATCHED_ROUTE` when none does.

    Picked as the router picks: the first route that matches fully, else the first whose path
    matches with another method (it answers 405).
    """
    chosen = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            chosen = route
            break
        if match is Match.PARTIAL and chosen is None:
            chosen = route
    return getattr(chosen, "path", None) or UNMATCHED_ROUTE


class RequestMetricsMiddleware:
    """Counts every HTTP response by route template and status, and times it."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = route_label(scope["app"].routes, scope)  # before routing changes the scope
        status = 500

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.record_request(route, status, time.perf_counter() - started)


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
