"""Search an index (scripts/build_index.py) in the browser: a local web app with JSON endpoints.

    python scripts/serve.py --index INDEX_DIR [--host 127.0.0.1] [--port 8000] [--captions FILE]
    # then open http://127.0.0.1:8000/

The page takes a sentence (top-K image grid: thumbnail, rank, score, file name; click for the full image) or an
image (upload, or "more like this" on a result: similar images and, with ``--captions`` (one caption per line),
the best-matching captions), and shows the index facts. Scripts can call the same JSON endpoints
(``/api/text?q=...&k=20``, ``/api/image``, ``/api/similar?row=N``, ``/api/info``; see ``search/app.py``, which also
says why FastAPI + one static page rather than Gradio).

Safe by default: binds to loopback (``--host 0.0.0.0`` exposes it to the network: anyone who reaches the port can
search the index and view its images); serves only images listed in the index; uploads are limited to
``--max-upload-mb``. The model and the index are loaded once, before the server starts; the ranking is
``search/query.py``'s, the same as ``scripts/search.py``'s. Exit code 2 with one line on bad input.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402

from search.index import IndexFolderError  # noqa: E402
from search.query import QueryError, Searcher  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="index folder written by scripts/build_index.py")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--captions", help="text file, one caption per line, ranked for image queries")
    p.add_argument("--resume", help="checkpoint (default: the one recorded in the index)")
    p.add_argument("--shortlist", type=int, default=200, help="candidates re-scored for non-cosine methods")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted image upload")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error("--port must be in 0..65535")
    if args.max_upload_mb <= 0:
        p.error("--max-upload-mb must be > 0")
    return args


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from search.app import LOOPBACK_HOSTS, create_app, serve  # heavy imports after argument checks

    try:
        captions = None
        if args.captions:
            captions = [c.strip() for c in Path(args.captions).read_text().splitlines() if c.strip()]
            if not captions:
                raise QueryError(f"no captions in {args.captions}")
        searcher = Searcher.open(args.index, args.resume, args.device, args.shortlist, captions)
    except (QueryError, IndexFolderError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    local = is_loopback(args.host)
    if not local:
        logging.warning("serving on %s: anyone who reaches this address can search the index and view its images",
                        args.host)
    app = create_app(searcher, int(args.max_upload_mb * 1024 * 1024), LOOPBACK_HOSTS if local else None)
    print(f"serving {searcher.index.meta['n']} images of {args.index} on http://{args.host}:{args.port}/",
          flush=True)
    serve(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
