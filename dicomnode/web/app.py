"""The Starlette application: results page, study pages, JSON API, /healthz, /metrics, /demo.

Built by :func:`build_app` from a :class:`WebContext`; nothing happens at import.
Endpoints that touch the database or files are plain functions (Starlette runs
them in its thread pool); the demo's model pass runs there too.

Routes:
    ``GET /``                          recent studies (``?state=done&positive=1``)
    ``GET /studies/{uid}``             one study: findings, heatmaps, timeline, sends
    ``GET /heatmaps/{sop_uid}``        a heatmap SC's pixels as PNG
    ``GET /api/studies``               JSON list (``state``, ``positive``, ``since``, ``limit``)
    ``GET /api/studies/{uid}``         JSON detail
    ``GET /healthz``                   200 "ok" or 503 with the reasons
    ``GET /metrics``                   Prometheus text exposition
    ``GET|POST /demo``                 try a shipped model on an upload; nothing stored or sent
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from dicomnode.config import HttpSettings
from dicomnode.domain import JobState, ResultKind
from dicomnode.errors import DicomNodeError
from dicomnode.store.files import FileStore
from dicomnode.web import studies
from dicomnode.web.collector import QueueCollector, exposition
from dicomnode.web.demo import DemoModels, model_names
from dicomnode.web.images import sc_file_to_png

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
#: Largest upload the demo takes (bytes).
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: Prometheus text format content type.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HealthCheck = Callable[[], list[str]]
"""Returns the reasons the node is unhealthy (empty: healthy)."""


@dataclass
class WebContext:
    """What the web app reads: the queue, the data folder, its settings, the node's health.

    Attributes:
        sessions: session factory of the queue database.
        files: the data folder.
        http: the web settings (``show_phi``, ``token``).
        health: the node's liveness check (see :data:`HealthCheck`).
        clock: naive UTC now.
        demo: the demo's model cache.
    """

    sessions: sessionmaker[Session]
    files: FileStore
    http: HttpSettings
    health: HealthCheck
    clock: Callable[[], datetime]
    demo: DemoModels = field(default_factory=DemoModels)


class BearerAuth(BaseHTTPMiddleware):
    """Refuse requests without ``Authorization: Bearer <token>`` (401)."""

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.expected = f"Bearer {token}".encode()

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self.expected):
            return PlainTextResponse(
                "401: send Authorization: Bearer <http.token>\n", status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)


def parse_filter(request: Request) -> studies.StudyFilter:
    """The study filter of a request's query (``state``, ``positive``, ``since``, ``limit``).

    Raises:
        HTTPException: 400 with what is wrong.
    """
    query = request.query_params
    state_text = query.get("state") or None
    try:
        state = JobState(state_text) if state_text else None
    except ValueError:
        raise HTTPException(400, f"state must be one of {', '.join(s.value for s in JobState)}") from None
    positive = (query.get("positive") or "").lower() in ("1", "true", "yes", "on")
    since = None
    if query.get("since"):
        try:
            parsed = datetime.fromisoformat(query["since"])
        except ValueError:
            raise HTTPException(400, "since must be an ISO 8601 time, e.g. 2026-12-04T10:00:00Z") from None
        if parsed.tzinfo is not None:
            from datetime import UTC

            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        since = parsed
    try:
        limit = int(query.get("limit", "100"))
    except ValueError:
        raise HTTPException(400, "limit must be a whole number") from None
    if not 1 <= limit <= 1000:
        raise HTTPException(400, "limit must lie in 1..1000")
    return studies.StudyFilter(state=state, positive=positive, since=since, limit=limit)


def when(value: str | None) -> str:
    """An API time (``2026-12-04T19:43:18Z``) as the page shows it: ``2026-12-04 19:43:18``."""
    return value.replace("T", " ").removesuffix("Z") if value else ""


def build_app(context: WebContext) -> Starlette:
    """The web application over ``context``."""
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))  # autoescapes
    templates.env.filters["when"] = when
    collector = QueueCollector(context.sessions, context.files.data_dir, context.clock)

    def _detail(uid: str) -> dict[str, Any]:
        with context.sessions() as session:
            found = studies.study_detail(session, uid, context.files if context.http.show_phi else None)
        if found is None:
            raise HTTPException(404, f"no study {uid}")
        return found

    def index(request: Request) -> Response:
        filters = parse_filter(request)
        with context.sessions() as session:
            rows = studies.list_studies(session, filters)
        page: Response = templates.TemplateResponse(request, "index.html", {
            "rows": rows, "filters": filters, "states": [s.value for s in JobState],
        })
        return page

    def study_page(request: Request) -> Response:
        detail = _detail(request.path_params["uid"])
        page: Response = templates.TemplateResponse(
            request, "study.html", {"study": detail, "show_phi": context.http.show_phi}
        )
        return page

    def heatmap_png(request: Request) -> Response:
        with context.sessions() as session:
            path = studies.result_file(session, context.files, request.path_params["sop_uid"], ResultKind.HEATMAP_SC)
        if path is None or not path.is_file():
            raise HTTPException(404, "no such heatmap")
        try:
            png = sc_file_to_png(path)
        except (OSError, ValueError) as exc:
            raise HTTPException(500, f"cannot render the heatmap: {exc}") from exc
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def api_studies(request: Request) -> Response:
        filters = parse_filter(request)
        with context.sessions() as session:
            rows = studies.list_studies(session, filters)
        return JSONResponse({"studies": rows, "count": len(rows)})

    def api_study(request: Request) -> Response:
        return JSONResponse(_detail(request.path_params["uid"]))

    def healthz(request: Request) -> Response:
        problems = context.health()
        if problems:
            return PlainTextResponse("unhealthy: " + "; ".join(problems) + "\n", status_code=503)
        return PlainTextResponse("ok\n")

    def metrics(request: Request) -> Response:
        return Response(exposition(collector), media_type=METRICS_CONTENT_TYPE)

    async def demo(request: Request) -> Response:
        names = await run_in_threadpool(model_names)
        values: dict[str, Any] = {"models": names, "chosen": names[0] if names else None, "result": None, "error": None}
        if request.method == "POST":
            form = await request.form(max_files=1, max_fields=4)
            upload = form.get("file")
            chosen = str(form.get("model") or values["chosen"])
            values["chosen"] = chosen
            if not isinstance(upload, UploadFile):
                values["error"] = "choose a DICOM, PNG or JPEG file"
            else:
                content = await upload.read(MAX_UPLOAD_BYTES + 1)
                if len(content) > MAX_UPLOAD_BYTES:
                    values["error"] = f"file larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB"
                else:
                    try:
                        values["result"] = await run_in_threadpool(context.demo.analyse, chosen, content)
                    except DicomNodeError as exc:
                        values["error"] = str(exc)
        status = 400 if values["error"] else 200
        page: Response = templates.TemplateResponse(request, "demo.html", values, status_code=status)
        return page

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # pragma: no cover - registered for HTTPException only
            raise exc
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return PlainTextResponse(f"{exc.status_code}: {exc.detail}\n", status_code=exc.status_code)

    middleware = [Middleware(BearerAuth, token=context.http.token)] if context.http.token else []
    return Starlette(
        routes=[
            Route("/", index),
            Route("/studies/{uid}", study_page),
            Route("/heatmaps/{sop_uid}", heatmap_png),
            Route("/api/studies", api_studies),
            Route("/api/studies/{uid}", api_study),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            Route("/demo", demo, methods=["GET", "POST"]),
        ],
        middleware=middleware,
        exception_handlers={HTTPException: http_error},
    )
