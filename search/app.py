"""The web app of ``scripts/serve.py``: one static page and JSON endpoints over a :class:`search.query.Searcher`.

FastAPI + uvicorn with one plain HTML/JS page (``search/static/``) rather than Gradio: the app is a handful of
routes whose safety rules (which files may be served, upload limits, error bodies) are written here in full and
tested; the JSON endpoints the page calls are the same ones scripts use; the page is three small files with no
build step and no assets fetched from anywhere; and FastAPI's dependencies (starlette, pydantic) are small,
well-kept and easy to pin, where Gradio brings a large front-end bundle and its own queueing and file-serving rules.

Routes (every error is ``{"error": "<one line>"}`` with a 4xx status; an internal error is logged with its
traceback here and answered with a 500 and one line, never a trace):

    GET  /                             the page (also /app.js, /app.css)
    GET  /api/info                     index facts: model, checkpoint, number of images, index kind, ...
    GET  /api/text?q=...&k=20          text -> images
    POST /api/image  (multipart file)  uploaded image -> similar images (+ captions with --captions); ?k=
    GET  /api/similar?row=N&k=20       "more like this": image N of the index -> similar images (+ captions)
    GET  /image/<path>                 a file of the index (PNG for formats browsers do not show, e.g. .tif)
    GET  /thumb/<path>                 its JPEG thumbnail

Result rows are ``{"rank", "score", "row", "file", "image", "thumb"}``. Only paths listed in the index are served:
an absolute path, a ``..`` or ``.`` segment or a backslash is refused (400) before any lookup, and a path that is
not in the index is not found (404), so nothing outside the index can be read.

Other sites' pages (:class:`RequestGuard`, before any route runs):

* Host check (DNS rebinding: a page whose name is made to resolve to this server reads it as its own origin): a
  request is answered only when its ``Host`` header is one of ``allowed_hosts`` (``scripts/serve.py``: the names of
  the address it binds, plus ``--allow-host``); any other Host gets a 400.
* Origin check (cross-site request forgery: any page may POST a multipart upload without a CORS preflight): a
  state-changing request (every method but GET / HEAD / OPTIONS) that a browser marks as coming from another origin
  (an ``Origin`` header other than this server's own scheme, host and port, ``Origin: null``, or
  ``Sec-Fetch-Site: cross-site`` / ``same-site``) gets a 403. Requests without these headers (scripts, curl) are
  not from a web page and pass. The page itself is same-origin, so its uploads pass. GET routes change nothing,
  and without CORS headers another origin cannot read their answers.
"""
from __future__ import annotations

import io
import logging
import re
import socket
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from search.query import Hit, QueryError, Searcher, open_image

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD = 20 * 1024 * 1024  # bytes; remote-sensing tiles are rarely above a few MB
MAX_K = 100
THUMB = 256  # thumbnail side in pixels
BROWSER_FORMATS = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # methods that change nothing: no Origin check
DEFAULT_PORTS = {"http": 80, "https": 443}
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                      "frame-ancestors 'none'"}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


def megabytes(n: int) -> str:
    return f"{n / 2 ** 20:.3g} MB"


def check_path(rel: str) -> str:
    """A path as listed in the index, or HTTP 400 for an absolute / dotted / backslashed one."""
    if (not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel or re.match(r"^[A-Za-z]:", rel)
            or any(part in ("", ".", "..") for part in rel.split("/"))):
        raise HTTPException(400, "path refused: only the relative paths of images in the index are served")
    return rel


def _host_port(netloc: str, scheme: str) -> tuple[str, int | None] | None:
    """(lower-case host without IPv6 brackets, port or the scheme's default) of ``host[:port]``; None if malformed."""
    try:
        parts = urlsplit(f"//{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.username is not None or parts.path or parts.query:
        return None
    return host.lower(), port if port is not None else DEFAULT_PORTS.get(scheme)


def host_matches(host: str, patterns: Sequence[str]) -> bool:
    """Whether ``host`` (lower case, no port) is one of ``patterns``: exact names, ``*.domain`` or ``*``."""
    for pattern in patterns:
        pattern = pattern.lower().strip("[]")
        if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


class RequestGuard:
    """ASGI middleware: the Host check and the Origin check of the module docstring, answered as one-line errors.

    Args:
        app: the wrapped app.
        allowed_hosts: accepted ``Host`` names (``*.domain`` and ``*`` allowed); None accepts any Host.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] | None) -> None:
        self.app, self.allowed_hosts = app, list(allowed_hosts) if allowed_hosts is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.refusal(scope["method"], Headers(scope=scope), scope.get("scheme", "http"))
            if refused is not None:
                await error(*refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, method: str, headers: Headers, scheme: str) -> tuple[int, str] | None:
        """(status, message) of a refused request, or None."""
        raw = headers.get("host", "")
        here = _host_port(raw, scheme)
        if here is None:
            return 400, f"bad Host header {raw[:100]!r}"
        if self.allowed_hosts is not None and not host_matches(here[0], self.allowed_hosts):
            return 400, (f"Host {here[0][:100]!r} is not a name of this server (a page using DNS rebinding?); if "
                         f"it is, start scripts/serve.py with --allow-host {here[0][:100]}")
        if method.upper() in SAFE_METHODS:
            return None
        site = headers.get("sec-fetch-site", "").lower()
        origin = headers.get("origin")
        if origin is not None:
            there = _host_port(urlsplit(origin).netloc, urlsplit(origin).scheme) if origin != "null" else None
            if there is None or urlsplit(origin).scheme != scheme or there != here:
                return 403, (f"cross-site request refused: a page of {origin[:100]} may not send {method} requests "
                             "to this server; use the search page of this server itself")
        elif site in ("cross-site", "same-site"):
            return 403, (f"cross-site request refused: the browser marks this {method} as sent by a page of another "
                         f"site (Sec-Fetch-Site: {site}); use the search page of this server itself")
        return None


class App:
    """Request handlers bound to one searcher (the model and the index are loaded once, before the app)."""

    def __init__(self, searcher: Searcher, max_upload: int = MAX_UPLOAD):
        self.searcher, self.max_upload = searcher, max_upload
        self.root = Path(searcher.index.meta["images_root"])
        self.thumb = lru_cache(maxsize=1024)(self._thumb)

    def rows(self, hits: list[Hit]) -> list[dict]:
        return [{"rank": r, "score": round(h.score, 6), "row": h.row, "file": h.file,
                 "image": "/image/" + quote(h.file), "thumb": "/thumb/" + quote(h.file)}
                for r, h in enumerate(hits, 1)]

    def file_path(self, rel: str) -> Path:
        """Disk path of an index file given by its relative path (400 / 404 otherwise)."""
        if check_path(rel) not in self.searcher.rows:
            raise HTTPException(404, f"not an image of this index: {rel}")
        path = self.root / rel
        if not path.is_file():
            raise HTTPException(404, f"{rel} is in the index but no longer on disk")
        return path

    def _thumb(self, rel: str) -> bytes:
        img = open_image(self.file_path(rel), rel)
        img.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    def image_query(self, data: bytes, name: str, k: int) -> dict:
        img = open_image(io.BytesIO(data), name or "the upload")
        emb = self.searcher.embed_image(img, name or "upload.png")
        return {"query": f"images like {name}", "results": self.rows(self.searcher.similar(emb, k)),
                "captions": self.caption_rows(emb, k)}

    def caption_rows(self, emb: Any, k: int) -> list[dict]:
        return [{"rank": r, "score": round(s, 6), "caption": c}
                for r, (s, c) in enumerate(self.searcher.captions(emb, k), 1)]


def create_app(searcher: Searcher, max_upload: int = MAX_UPLOAD,
               allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS) -> FastAPI:
    """The FastAPI app over ``searcher``.

    Args:
        max_upload: largest accepted image upload in bytes (413 above).
        allowed_hosts: Host header names accepted (:class:`RequestGuard`; default the loopback names; ``None``: any
            Host, which leaves the server open to DNS rebinding). ``scripts/serve.py`` passes the names of the
            address it binds plus ``--allow-host``. Cross-site state-changing requests are refused either way.
    """
    state = App(searcher, max_upload)
    app = FastAPI(title="rsitr search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.searcher = searcher
    app.add_middleware(RequestGuard, allowed_hosts=allowed_hosts)
    k_param = Query(20, ge=1, le=MAX_K, description="number of results")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or "request"
        return error(400, f"bad parameter {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(QueryError)
    async def bad_query(request: Request, exc: QueryError) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error(500, "internal error (the server log has the details)")

    def static(name: str, media: str) -> Response:
        return Response((STATIC / name).read_bytes(), media_type=media, headers=HEADERS)

    @app.get("/")
    def page() -> Response:
        return static("index.html", "text/html; charset=utf-8")

    @app.get("/app.js")
    def script() -> Response:
        return static("app.js", "text/javascript; charset=utf-8")

    @app.get("/app.css")
    def style() -> Response:
        return static("app.css", "text/css; charset=utf-8")

    @app.get("/api/info")
    def info() -> dict:
        return searcher.facts()

    @app.get("/api/text")
    def text(q: str = Query("", description="the sentence"), k: int = k_param) -> dict:
        return {"query": q.strip(), "results": state.rows(searcher.text(q, k))}

    @app.get("/api/similar")
    def similar(row: int = Query(..., ge=0), k: int = k_param) -> dict:
        emb = searcher.stored(row)  # the index's own embedding: nothing is encoded
        name = searcher.index.files[row]
        return {"query": f"images like {name}", "results": state.rows(searcher.similar(emb, k)),
                "captions": state.caption_rows(emb, k)}

    @app.post("/api/image")
    async def image(request: Request, k: int = k_param) -> dict:
        size = request.headers.get("content-length", "")
        if not size.isdigit():  # the server holds the body to its declared length, so this bounds what is read
            raise HTTPException(411, "an upload needs a Content-Length header")
        if int(size) > max_upload + 65536:  # allowance for the multipart framing
            raise HTTPException(413, f"upload too large: at most {megabytes(max_upload)}")
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "no image uploaded: send the image as the multipart field 'file'")
        data = await upload.read(max_upload + 1)
        if len(data) > max_upload:
            raise HTTPException(413, f"upload too large: at most {megabytes(max_upload)}")
        if not data:
            raise HTTPException(400, "the uploaded file is empty")
        return await run_in_threadpool(state.image_query, data, Path(upload.filename or "upload").name, k)

    @app.get("/image/{rel:path}")
    def full_image(rel: str) -> Response:
        path = state.file_path(rel)
        media = BROWSER_FORMATS.get(path.suffix.lower())
        if media:
            return FileResponse(path, media_type=media, headers=HEADERS)
        buf = io.BytesIO()
        open_image(path, rel).save(buf, format="PNG")  # e.g. .tif, which browsers do not show
        return Response(buf.getvalue(), media_type="image/png", headers=HEADERS)

    @app.get("/thumb/{rel:path}")
    def thumbnail(rel: str) -> Response:
        return Response(state.thumb(rel), media_type="image/jpeg",
                        headers={**HEADERS, "Cache-Control": "max-age=3600"})

    return app


def _server(app: FastAPI, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run ``app`` with uvicorn until interrupted."""
    _server(app, host, port).run()


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` from a background thread on a free port of ``host`` (tests, benchmarks).

    Yields:
        The base URL, e.g. ``http://127.0.0.1:40123``; the server is stopped on exit.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = _server(app, host, port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
