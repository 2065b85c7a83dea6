"""Image files Pillow cannot write, built byte by byte for the tests (helpers, not tests)."""
import struct
import zlib

import numpy as np


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png(ihdr: bytes, raw: bytes) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def png_rgb16(path, arr: np.ndarray) -> None:
    """A 16-bit RGB PNG of ``arr`` [H, W, 3] uint16 (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(_png(struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0), raw))


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header declares width x height 8-bit RGB pixels and holds none (only headers are read)."""
    path.write_bytes(_png(struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0), b""))
