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

Other sites' pages (``search.app.RequestGuard``): requests are answered only when addressed (``Host`` header) to a
name of the bound address: ``127.0.0.1``, ``localhost``, ``::1`` on loopback; the given address or name otherwise;
for ``0.0.0.0`` / ``::`` the loopback names and this machine's host name, fully qualified name and addresses.
``--allow-host NAME`` (repeatable; ``*.example.org`` for a domain, ``*`` for any name, which gives up the DNS
rebinding protection) adds the names clients use, e.g. the name a reverse proxy forwards (keep the ``Host``
header there). Uploads and other state-changing requests from a page of another origin are refused.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402

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
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a further Host name clients reach the server by (repeatable; *.domain for a domain, * for "
                        "any name: no DNS rebinding protection)")
    args = p.parse_args(argv)
    for name in args.allow_host:
        if not HOST_NAME.match(name):
            p.error(f"--allow-host {name!r}: give a host name or address without scheme or port "
                    "(e.g. search.example.org, *.example.org, 192.168.1.5)")
    if not 0 <= args.port <= 65535:
        p.error("--port must be in 0..65535")
    if args.max_upload_mb <= 0:
        p.error("--max-upload-mb must be > 0")
    return args


HOST_NAME = re.compile(r"^(\*|(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|\[?[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]?)$")
WILDCARD_BINDS = ("0.0.0.0", "::", "[::]", "")


def machine_names() -> list[str]:
    """This machine's host name, fully qualified name and the addresses they resolve to (best effort)."""
    names = [socket.gethostname(), socket.getfqdn()]
    try:
        names += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
    except OSError:
        pass
    return names


def allowed_hosts_for(host: str, extra: list[str]) -> list[str] | None:
    """Host header names the server answers when bound to ``host``, plus ``extra`` (``--allow-host``).

    Returns:
        The names (lower case, in order, no repeats), or None when ``extra`` holds ``*`` (any name).
    """
    from search.app import LOOPBACK_HOSTS

    if "*" in extra:
        return None
    if host in WILDCARD_BINDS:
        names = [*LOOPBACK_HOSTS, *machine_names()]
    elif is_loopback(host):
        names = [*LOOPBACK_HOSTS, host]
    else:
        names = [host]
    return list(dict.fromkeys(n.lower().strip("[]") for n in [*names, *extra] if n))


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
    from search.app import create_app, serve  # heavy imports after argument checks

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
    hosts = allowed_hosts_for(args.host, args.allow_host)
    if hosts is None:
        logging.warning("--allow-host '*': requests addressed to any name are answered (no DNS rebinding protection)")
    app = create_app(searcher, int(args.max_upload_mb * 1024 * 1024), hosts)
    print(f"serving {searcher.index.meta['n']} images of {args.index} on http://{args.host}:{args.port}/ "
          f"(requests addressed to {', '.join(hosts) if hosts is not None else 'any name'})", flush=True)
    serve(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
