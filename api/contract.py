"""The OpenAPI document, true to the server.

Litestar writes each operation from its handler's signature (parameters, JSON bodies, the
success answer). What a signature cannot say, each route declares next to its decorator
with ``opt=contract(...)``: the errors it raises (library classes, or framework statuses),
the raw body it reads, the headers it reads and the answers it gives with their headers.
``describe_api`` then completes every operation from that declaration and from the one
problem registry (``api/problems.py``):

- every error status the route can answer, as ``application/problem+json`` with the
  ``Problem`` schema, the problem types it may carry, and the headers those types carry;
- the errors every route can give: 401 (unless the route is public), 400 where the
  framework validates input, 500;
- ``security: []`` on the routes that need no token (``exclude_from_auth``);
- ``X-Request-ID`` on every answer.

Adding an error to a route is adding its class to that route's ``contract(...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Litestar

# The struct plugin is Litestar's own (not exported); a request struct differs only by
# one keyword, so it is extended rather than rewritten.
from litestar._openapi.schema_generation import SchemaCreator
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.enums import ParamType
from litestar.openapi.spec import (
    Link,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
)
from litestar.routes import HTTPRoute
from litestar.typing import FieldDefinition

from api import problems
from api.bodies import BODY, BodyKind
from api.problems import PROBLEM_MEDIA_TYPE, ProblemType
from chunkstore.config import Settings

PROBLEM_REF = "#/components/schemas/Problem"
REQUEST_ID_REF = "#/components/headers/X-Request-ID"

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    title="Problem",
    description=(
        "RFC 9457 problem details. `type` is `/problems/<slug>`, a page documenting the"
        " problem; extension members (`missing_chunks`, `reason`, `limit`, `errors`, ...)"
        " depend on the type."
    ),
    required=["type", "title", "status", "detail", "instance"],
    properties={
        "type": Schema(type=OpenAPIType.STRING, description="`/problems/<slug>`"),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER),
        "detail": Schema(type=OpenAPIType.STRING, description="What happened, what to do."),
        "instance": Schema(type=OpenAPIType.STRING, description="The request's path."),
        "request_id": Schema(
            type=OpenAPIType.STRING, description="Finds the request in the server's logs."
        ),
    },
)

REQUEST_ID_HEADER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.STRING),
    description="The request's id (the client's own `X-Request-ID` if well formed).",
)


@dataclass(frozen=True)
class Header:
    """A header a route reads or answers. ``maximum`` names a ``Settings`` field that
    bounds an integer value (the document states this server's configured limit)."""

    name: str
    description: str
    integer: bool = False
    required: bool = False
    enum: tuple[str, ...] = ()
    pattern: str | None = None
    maximum: str | None = None
    example: str | None = None

    def schema(self, settings: Settings) -> Schema:
        if self.integer:
            limit = getattr(settings, self.maximum) if self.maximum else None
            return Schema(type=OpenAPIType.INTEGER, minimum=0, maximum=limit)
        return Schema(
            type=OpenAPIType.STRING,
            enum=list(self.enum) or None,
            pattern=self.pattern,
            examples=[self.example] if self.example is not None else None,
        )

    def parameter(self, settings: Settings) -> Parameter:
        return Parameter(
            name=self.name,
            param_in=ParamType.HEADER,
            required=self.required,
            description=self.description,
            schema=self.schema(settings),
        )

    def answered(self, settings: Settings) -> OpenAPIHeader:
        return OpenAPIHeader(schema=self.schema(settings), description=self.description)


@dataclass(frozen=True)
class Body:
    """A request body that is bytes, not JSON."""

    media_type: str
    description: str
    required: bool = True


@dataclass(frozen=True)
class Answer:
    """A success answer. ``media_type`` None: no body; otherwise bytes of that type."""

    status: int
    description: str
    headers: tuple[Header, ...] = ()
    media_type: str | None = None


@dataclass(frozen=True)
class Follow:
    """An OpenAPI link from a route's success answer: the operation ``method path`` takes
    ``parameters`` (and ``body``) from it, e.g. ``{"upload_id": "$response.body#/upload_id"}``."""

    name: str
    method: str
    path: str
    parameters: tuple[tuple[str, Any], ...] = ()
    body: Any = None


@dataclass(frozen=True)
class Contract:
    raises: tuple[type[Exception] | int, ...] = ()
    body: Body | None = None
    headers: tuple[Header, ...] = ()
    answers: tuple[Answer, ...] = ()
    #: Headers on every answer of the route, errors included.
    always: tuple[Header, ...] = field(default=())
    follows: tuple[Follow, ...] = ()


def contract(
    *raises: type[Exception] | int,
    body: Body | None = None,
    headers: Sequence[Header] = (),
    answers: Sequence[Answer] = (),
    always: Sequence[Header] = (),
    follows: Sequence[Follow] = (),
    limit: BodyKind | None = None,
) -> dict[str, Any]:
    """``opt=`` for a route decorator: what the route raises, reads and answers beyond
    what its signature says. ``raises`` holds library error classes (see
    ``problems.STATUS_BY_ERROR``) or statuses of framework errors (404, 405, 413...).
    ``limit``: the kind of body the route takes, which sets its body limit
    (``api/bodies.py``; the control limit when not named)."""
    opt: dict[str, Any] = {
        "contract": Contract(
            tuple(raises), body, tuple(headers), tuple(answers), tuple(always), tuple(follows)
        )
    }
    if limit is not None:
        opt[BODY] = limit
    return opt


def describe_api(app: Litestar, settings: Settings) -> None:
    """Complete the app's OpenAPI document (built once, served from then on) from every
    route's contract and the problem registry."""
    openapi = app.openapi_schema
    openapi.components.schemas["Problem"] = PROBLEM_SCHEMA
    openapi.components.headers = {
        **(openapi.components.headers or {}),
        "X-Request-ID": REQUEST_ID_HEADER,
    }
    operation_ids = {
        (method.upper(), path): operation.operation_id
        for path, item in (openapi.paths or {}).items()
        for method in ("get", "put", "post", "delete", "options", "head", "patch")
        if isinstance(operation := getattr(item, method, None), Operation)
    }
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or openapi.paths is None:
            continue
        item = openapi.paths.get(route.path_format or "/")
        if item is None:
            continue
        for handler in route.route_handlers:
            for method in handler.http_methods:
                operation = getattr(item, method.lower(), None)
                if isinstance(operation, Operation):
                    public = bool(handler.opt.get("exclude_from_auth"))
                    found = handler.opt.get("contract")
                    routed = "{" in (route.path_format or "")
                    declared = found or Contract()
                    complete(operation, declared, public, routed, method, settings)
                    link(operation, declared.follows, operation_ids)


def complete(
    operation: Operation,
    declared: Contract,
    public: bool,
    routed: bool,
    method: str,
    settings: Settings,
) -> None:
    responses = operation.responses if operation.responses is not None else {}
    operation.responses = responses
    if public:
        operation.security = []
    if declared.body is not None:
        operation.request_body = RequestBody(
            content={
                declared.body.media_type: OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
                )
            },
            description=declared.body.description,
            required=declared.body.required,
        )
    if declared.headers:
        operation.parameters = [
            *(operation.parameters or []),
            *(header.parameter(settings) for header in declared.headers),
        ]
    for answer in declared.answers:
        responses[str(answer.status)] = OpenAPIResponse(
            description=answer.description,
            headers={header.name: header.answered(settings) for header in answer.headers},
            content=(
                {answer.media_type: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))}
                if answer.media_type
                else None
            ),
        )
    # The framework validates path parameters and JSON bodies: a 400 where it does.
    raises: list[type[Exception] | int] = [500, *declared.raises]
    if "400" in responses:
        raises.append(400)
    if not public:
        raises.append(401)
    if routed:  # a parameter holding an encoded "/" matches no route
        raises.append(404)
    for status, kinds in by_status(raises).items():
        responses[str(status)] = problem_response(kinds, bodiless=method == "HEAD")
    for response in responses.values():
        if isinstance(response, OpenAPIResponse):
            headers = response.headers if response.headers is not None else {}
            headers["X-Request-ID"] = Reference(ref=REQUEST_ID_REF)
            for header in declared.always:
                headers[header.name] = header.answered(settings)
            response.headers = headers


def link(
    operation: Operation,
    follows: Sequence[Follow],
    operation_ids: dict[tuple[str, str], str | None],
) -> None:
    """Links from the first success answer, so that a client (or a stateful test) knows
    where the id it got goes next."""
    if not follows or not operation.responses:
        return
    status = min(code for code in operation.responses if code.startswith("2"))
    response = operation.responses[status]
    assert isinstance(response, OpenAPIResponse)
    response.links = {
        follow.name: Link(
            operation_id=operation_ids[(follow.method, follow.path)],
            parameters=dict(follow.parameters) or None,
            request_body=follow.body,
        )
        for follow in follows
    }


def by_status(raises: Sequence[type[Exception] | int]) -> dict[int, list[ProblemType]]:
    grouped: dict[int, list[ProblemType]] = {}
    for raised in raises:
        kind = (
            problems.framework_problem_type(raised)
            if isinstance(raised, int)
            else problems.problem_type(raised)
        )
        kinds = grouped.setdefault(kind.status, [])
        if kind not in kinds:
            kinds.append(kind)
    return dict(sorted(grouped.items()))


def problem_response(kinds: Sequence[ProblemType], bodiless: bool = False) -> OpenAPIResponse:
    lines = [f"`{kind.uri}`: {kind.title}" for kind in kinds]
    headers: dict[str, Any] = {}
    for kind in kinds:
        for header in kind.headers:
            headers[header.name] = OpenAPIHeader(
                schema=Schema(type=OpenAPIType.INTEGER if header.integer else OpenAPIType.STRING),
                description=f"{header.description} (`{kind.slug}`)",
            )
    return OpenAPIResponse(
        description="\n\n".join(lines),
        headers=headers,
        # A HEAD answer carries the headers of its problem, never a body.
        content=None
        if bodiless
        else {PROBLEM_MEDIA_TYPE: OpenAPIMediaType(schema=Reference(ref=PROBLEM_REF))},
    )


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """A request body that refuses unknown fields (``forbid_unknown_fields``) says so in
    its schema (``additionalProperties: false``), so a client generated from the document
    never sends one."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        if not super().is_plugin_supported_field(field_definition):
            return False
        info = msgspec.inspect.type_info(field_definition.type_)
        return isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        # Litestar drops the constraints of a list's items (``list[Digest]``); restore the
        # pattern, which decoding enforces.
        info = msgspec.inspect.type_info(field_definition.type_)
        assert isinstance(info, msgspec.inspect.StructType)
        for struct_field in info.fields:
            kind = struct_field.type
            if not isinstance(kind, msgspec.inspect.ListType):
                continue
            item = kind.item_type
            if isinstance(item, msgspec.inspect.Metadata):
                item = item.type
            listed = (schema.properties or {}).get(struct_field.encode_name)
            if (
                isinstance(item, msgspec.inspect.StrType)
                and item.pattern
                and isinstance(listed, Schema)
                and isinstance(listed.items, Schema)
            ):
                listed.items.pattern = item.pattern
        return schema
