"""Routing details Litestar leaves to the application: truthful ``Allow`` answers.

Litestar gives a path whose first handler is not an OPTIONS one an OPTIONS handler of
its own whose ``Allow`` lists only the methods registered until then; a handler added to
the path later is missing from it (``OPTIONS /api/v1/files/{id}`` answered ``Allow: GET,
OPTIONS`` though DELETE is served). A path that serves several methods therefore
registers an explicit OPTIONS handler first, which reads the methods from the router.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, route
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute


def allowed_methods(request: Request[Any, Any, Any]) -> str:
    """Every method the matched path serves, as the router knows them."""
    template = request.scope.get("path_template")
    for candidate in request.app.routes:
        if isinstance(candidate, HTTPRoute) and candidate.path_format == template:
            return ", ".join(sorted(candidate.methods))
    return "OPTIONS"


def options_handler(path: str) -> HTTPRouteHandler:
    """An OPTIONS handler for ``path`` that lists every method the path serves."""

    @route(
        path,
        http_method=HttpMethod.OPTIONS,
        status_code=204,
        exclude_from_auth=True,
        sync_to_thread=False,
        # Undocumented, as Litestar's own OPTIONS handlers are.
        include_in_schema=False,
    )
    def methods(request: Request[Any, Any, Any]) -> Response[None]:
        return Response(content=None, status_code=204, headers={"Allow": allowed_methods(request)})

    return methods
