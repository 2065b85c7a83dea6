"""search/app.py refuses what it must: path traversal, oversized and non-image uploads, empty or bad queries,
requests addressed to a foreign Host (DNS rebinding) and state-changing requests from other sites' pages (CSRF).

The app runs over a stub model (an image's embedding is its mean colour), so every accepted request has a known
answer: the refusals are checked next to the same requests done right.
"""
import http.client
import io
import json
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models.base import RetrievalModel
from search.app import LOOPBACK_HOSTS, create_app, running
from search.index import load_index, write_index
from search.query import Searcher

COLORS = {"red.png": (250, 10, 10), "green.png": (10, 240, 20), "sub/blue.tif": (0, 0, 255),
          "sub/grey.jpg": (128, 128, 128)}
LIMIT = 64 * 1024  # upload limit of the app under test
BASE = "http://127.0.0.1:8000"  # where the test client says it sends its requests (Host and same origin)


class MeanColour(RetrievalModel):
    """Image embedding: mean RGB (+1 so that none is zero). Text embedding: the word count as a colour."""

    def encode_image(self, batch):
        return batch["images"].mean(dim=(2, 3)) + 1

    def encode_text(self, batch):
        n = batch["lengths"].float()[:, None]
        return torch.cat([n, torch.ones_like(n), torch.ones_like(n)], dim=1)


class Words:
    def encode(self, text):
        return list(range(1, len(text.split()) + 1))

    def collate(self, ids):
        return {"lengths": torch.tensor([len(i) for i in ids])}


def to_tensor(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for name, rgb in COLORS.items():
        (root / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32), rgb).save(root / name)
    (root.parent / "secret.txt").write_text("not for the web")
    files = sorted(COLORS)
    emb = np.stack([np.asarray(COLORS[f], np.float32) / 255 + 1 for f in files])
    out = tmp_path_factory.mktemp("idx") / "index"
    write_index(out, files, emb, images_root=str(root), checkpoint_id="stub", extra={"method": "stub"})
    loaded = SimpleNamespace(model=MeanColour(), tokenizer=Words(), transform=to_tensor, device="cpu")
    app = create_app(Searcher(load_index(out), loaded), max_upload=LIMIT)  # default: the loopback names only
    return TestClient(app, base_url=BASE, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def live(client):
    """The same app behind a real uvicorn server on a free loopback port."""
    with running(client.app) as url:
        yield urlsplit(url)


def raw_get(live, path: str) -> tuple[int, dict | None, str]:
    """GET with the path sent byte for byte (httpx, like browsers, resolves ``..`` segments before sending).

    Returns:
        (status, JSON body or None, body text).
    """
    conn = http.client.HTTPConnection(live.hostname, live.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        is_json = resp.getheader("content-type", "").startswith("application/json")
        return resp.status, json.loads(text) if is_json else None, text
    finally:
        conn.close()


def png_bytes(rgb, size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_listed_files_are_served(client):
    r = client.get("/image/sub/grey.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).getpixel((5, 5)) == pytest.approx((128, 128, 128), abs=3)
    r = client.get("/image/sub/blue.tif")  # browsers do not show TIFF: converted to PNG
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).getpixel((0, 0)) == (0, 0, 255)
    r = client.get("/thumb/red.png")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "JPEG"


@pytest.mark.parametrize("path", [
    "/image/../secret.txt", "/image/sub/../../secret.txt", "/thumb/../secret.txt",
    "/image/%2e%2e/secret.txt", "/image/%2E%2E%2Fsecret.txt", "/image/sub%2F..%2F..%2Fsecret.txt",
    "/image//etc/passwd", "/image/%2Fetc%2Fpasswd", "/thumb/%2Fetc%2Fpasswd", "/image/..%5Csecret.txt",
    "/image/C:%5Cwindows%5Cwin.ini", "/image/./red.png", "/image/red.png%00.txt",
])
def test_traversal_and_absolute_paths_are_refused(live, path):
    status, body, text = raw_get(live, path)
    assert status == 400, (path, status, text)
    assert body == {"error": "path refused: only the relative paths of images in the index are served"}


@pytest.mark.parametrize("path", ["/image/secret.txt", "/image/%252e%252e/secret.txt", "/image/blue.tif",
                                  "/thumb/nothere.png"])
def test_paths_outside_the_index_are_not_found(live, path):
    status, body, text = raw_get(live, path)
    assert status == 404 and body["error"].startswith("not an image of this index"), (path, status, text)
    assert "not for the web" not in text


def test_oversized_upload_is_refused(client):
    for extra in (LIMIT, 3 * LIMIT):  # a PNG with trailing bytes: read up to the limit / refused from its header
        big = png_bytes((1, 2, 3), (512, 512)) + b"\0" * extra
        r = client.post("/api/image", files={"file": ("big.png", big, "image/png")})
        assert r.status_code == 413 and r.json() == {"error": "upload too large: at most 0.0625 MB"}
    ok = png_bytes((1, 2, 3), (64, 64))
    assert len(ok) < LIMIT and client.post("/api/image", files={"file": ("ok.png", ok)}).status_code == 200

    def chunks():  # no Content-Length header: the body's length would be unbounded
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n"
        yield big
        yield b"\r\n--b--\r\n"

    r = client.post("/api/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 411 and r.json() == {"error": "an upload needs a Content-Length header"}


def test_non_image_uploads_are_refused(client):
    for name, data in [("notes.txt", b"hello, not an image"), ("fake.png", b"\x89PNG\r\n\x1a\nbroken"),
                       ("x.html", b"<script>alert(1)</script>")]:
        r = client.post("/api/image", files={"file": (name, data, "image/png")})
        assert r.status_code == 415 and r.json() == {"error": f"{name} is not a readable image "
                                                              f"(.tif, .png or .jpg expected)"}
    r = client.post("/api/image", files={"file": ("empty.png", b"", "image/png")})
    assert r.status_code == 400 and r.json() == {"error": "the uploaded file is empty"}
    r = client.post("/api/image", data={"other": "x"})
    assert r.status_code == 400 and "multipart field 'file'" in r.json()["error"]


def test_image_upload_done_right(client):
    r = client.post("/api/image", params={"k": 2}, files={"file": ("q.png", png_bytes((240, 20, 30)), "image/png")})
    assert r.status_code == 200
    body = r.json()
    assert [h["file"] for h in body["results"]] == ["red.png", "sub/grey.jpg"]  # cosine of mean colours + 1
    assert body["results"][0]["thumb"] == "/thumb/red.png" and body["captions"] == []


@pytest.mark.parametrize("query, message", [
    ("", "empty query: type a sentence describing the images you look for"),
    ("   ", "empty query: type a sentence describing the images you look for"),
    ("?!", "the query has no words: type a sentence describing the images you look for"),
    ("x" * 1001, "query too long (1001 characters, at most 1000)"),
])
def test_empty_and_bad_queries_get_a_message(client, query, message):
    r = client.get("/api/text", params={"q": query})
    assert r.status_code == 400 and r.json() == {"error": message}


def test_bad_parameters_get_a_message_not_a_trace(client):
    for url, message in [("/api/text?q=a&k=0", "bad parameter k"), ("/api/text?q=a&k=x", "bad parameter k"),
                         ("/api/text?q=a&k=1000", "bad parameter k"), ("/api/similar?row=-1", "bad parameter row"),
                         ("/api/similar", "bad parameter row")]:
        r = client.get(url)
        assert r.status_code == 400 and r.json()["error"].startswith(message), (url, r.text)
    r = client.get("/api/similar?row=4")
    assert r.status_code == 400 and r.json() == {"error": "no image 4 in the index (it has 4)"}
    r = client.get("/api/text", params={"q": "two words", "k": 4})
    assert r.status_code == 200 and len(r.json()["results"]) == 4


def test_internal_errors_answer_one_line(client, monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.app.state.searcher, "text", boom)
    r = client.get("/api/text?q=anything")
    assert r.status_code == 500 and r.json() == {"error": "internal error (the server log has the details)"}
    assert "secret" not in r.text and "Traceback" not in r.text


def test_foreign_hosts_are_refused_when_bound_to_loopback(client):
    assert client.get("/api/info").json()["images"] == 4
    for host in ("evil.example:8000", "evil.example", "127.0.0.1.evil.example"):
        r = client.get("/api/info", headers={"host": host})
        assert r.status_code == 400 and r.json()["error"].startswith(f"Host '{host.split(':')[0]}' is not a name of "
                                                                     "this server"), host
    assert client.get("/api/info", headers={"host": "localhost:8000"}).status_code == 200
    assert client.get("/api/info", headers={"host": "[::1]:8000"}).status_code == 200
    anyhost = TestClient(create_app(client.app.state.searcher, allowed_hosts=None), base_url="http://anything.example")
    assert anyhost.get("/api/info").json()["kind"] == "flat"


def _counting(client, monkeypatch) -> list:
    calls, real = [], client.app.state.searcher.embed_image
    monkeypatch.setattr(client.app.state.searcher, "embed_image", lambda *a: (calls.append(1), real(*a))[1])
    return calls


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"}, {"origin": "null"}, {"origin": "http://127.0.0.1:3000"},
    {"origin": "https://127.0.0.1:8000"}, {"origin": "http://localhost:8000"},
    {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
])
def test_cross_site_uploads_are_refused(client, monkeypatch, headers):
    """A page of another origin POSTs a multipart upload (no CORS preflight needed): refused before it is read."""
    calls = _counting(client, monkeypatch)
    r = client.post("/api/image", files={"file": ("q.png", png_bytes((240, 20, 30)), "image/png")}, headers=headers)
    assert r.status_code == 403 and r.json()["error"].startswith("cross-site request refused: ")
    assert calls == []


def test_same_origin_and_script_uploads_pass(client, monkeypatch):
    calls = _counting(client, monkeypatch)
    upload = {"file": ("q.png", png_bytes((240, 20, 30)), "image/png")}
    for headers in ({"origin": BASE, "sec-fetch-site": "same-origin"},  # the page itself, as a browser sends it
                    {"origin": "http://LOCALHOST:8000", "host": "localhost:8000"},  # another loopback name
                    {}):  # curl / a script: no browser headers
        r = client.post("/api/image", params={"k": 1}, files=upload, headers=headers)
        assert r.status_code == 200 and r.json()["results"][0]["file"] == "red.png", headers
    assert len(calls) == 3
    # reading routes change nothing: another origin's GET passes the guard (and cannot read the answer: no CORS)
    r = client.get("/api/info", headers={"origin": "http://evil.example", "sec-fetch-site": "cross-site"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cross_site_upload_refused_by_the_real_server(live):
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + png_bytes((1, 2, 3)) + b"\r\n--b--\r\n")
    for origin, status in (("http://evil.example", 403), (f"http://{live.netloc}", 200)):
        conn = http.client.HTTPConnection(live.hostname, live.port, timeout=10)
        try:
            conn.request("POST", "/api/image", body, {"Content-Type": "multipart/form-data; boundary=b",
                                                      "Origin": origin})
            resp = conn.getresponse()
            assert resp.status == status, (origin, resp.read())
        finally:
            conn.close()


def _get_with_host(url, host: str) -> tuple[int, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("GET", "/api/info", headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_network_bind_refuses_foreign_hosts(client):
    """Bound to every interface (``--host 0.0.0.0``): a DNS-rebound name is refused, the machine's names and
    ``--allow-host`` names are answered."""
    from scripts import serve

    hosts = serve.allowed_hosts_for("0.0.0.0", ["search.lan", "*.corp.example"])
    assert {"127.0.0.1", "localhost", "::1", "search.lan", "*.corp.example"} <= set(hosts)
    with running(create_app(client.app.state.searcher, allowed_hosts=hosts), host="0.0.0.0") as url:
        port = urlsplit(url).port
        status, body = _get_with_host(url, f"evil.example:{port}")
        assert status == 400 and body["error"].startswith("Host 'evil.example' is not a name of this server")
        for name in ("search.lan", "a.corp.example", "localhost", "127.0.0.1", serve.machine_names()[0]):
            assert _get_with_host(url, f"{name}:{port}") == (200, client.get("/api/info").json()), name
    assert serve.allowed_hosts_for("10.1.2.3", []) == ["10.1.2.3"]
    assert serve.allowed_hosts_for("127.0.0.1", []) == list(LOOPBACK_HOSTS)
    assert serve.allowed_hosts_for("myhost.lan", ["Other.Lan"]) == ["myhost.lan", "other.lan"]
    assert serve.allowed_hosts_for("0.0.0.0", ["*"]) is None


def test_serve_wires_allow_host_into_the_app(client, monkeypatch, capsys):
    import search.app
    from scripts import serve

    served = []
    monkeypatch.setattr(serve.Searcher, "open", classmethod(lambda cls, *a, **kw: client.app.state.searcher))
    monkeypatch.setattr(search.app, "serve", lambda app, host, port: served.append((app, host, port)))
    assert serve.main(["--index", "idx", "--host", "10.1.2.3", "--allow-host", "search.lan"]) == 0
    app, host, _ = served[0]
    assert host == "10.1.2.3" and "(requests addressed to 10.1.2.3, search.lan)" in capsys.readouterr().out
    assert TestClient(app, base_url="http://search.lan").get("/api/info").status_code == 200
    assert TestClient(app, base_url="http://10.1.2.3:8000").get("/api/info").status_code == 200
    assert TestClient(app, base_url="http://evil.example:8000").get("/api/info").status_code == 400
    with pytest.raises(SystemExit):
        serve.parse_args(["--index", "idx", "--allow-host", "http://search.lan:8000"])
    assert "give a host name or address without scheme or port" in capsys.readouterr().err


def test_serve_bad_inputs_exit_2(tmp_path, capsys):
    from scripts import serve

    assert serve.main(["--index", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"error: index folder not found: {tmp_path / 'missing'}\n"
    write_index(tmp_path / "idx", ["a.png"], np.ones((1, 3), np.float32), images_root=".", checkpoint_id="x")
    assert serve.main(["--index", str(tmp_path / "idx")]) == 2
    assert "meta.json names no checkpoint; pass --resume" in capsys.readouterr().err
    (tmp_path / "caps.txt").write_text("\n  \n")
    assert serve.main(["--index", str(tmp_path / "idx"), "--captions", str(tmp_path / "caps.txt")]) == 2
    assert capsys.readouterr().err == f"error: no captions in {tmp_path / 'caps.txt'}\n"
    assert [serve.is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.2",
                                           "example.org")] == [True, True, True, True, False, False, False]
