"""search/app.py refuses what it must: path traversal, oversized and non-image uploads, empty or bad queries.

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
    app = create_app(Searcher(load_index(out), loaded), max_upload=LIMIT)
    return TestClient(app, raise_server_exceptions=False)


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
    local = TestClient(create_app(client.app.state.searcher, allowed_hosts=LOOPBACK_HOSTS),
                       base_url="http://127.0.0.1:8000")
    assert local.get("/api/info").json()["images"] == 4
    assert local.get("/api/info", headers={"host": "evil.example:8000"}).status_code == 400
    assert client.get("/api/info").json()["kind"] == "flat"


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
