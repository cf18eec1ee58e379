"""Images and request bodies for the reliability suite, built from bytes at test time.

Nothing here needs an imaging library: PNGs are written with zlib and struct, the JPEG is a
hand-assembled baseline JPEG of one flat grey colour (each 8×8 block has a zero DC difference and
an immediate end-of-block, so the whole entropy-coded segment is a few zero bits).
"""

from __future__ import annotations

import base64
import functools
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    if not crc_ok:
        crc ^= 0x1
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_ihdr(width: int, height: int, colour: int = 2) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))


def png(width: int = 48, height: int = 32, crc_ok: bool = True) -> bytes:
    """An RGB gradient PNG; `crc_ok=False` corrupts the IDAT checksum."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 5 % 256, y * 7 % 256, (x + y) % 256))
        for y in range(height)
    )
    return (
        PNG_SIGNATURE
        + png_ihdr(width, height)
        + png_chunk(b"IDAT", zlib.compress(rows), crc_ok)
        + png_chunk(b"IEND", b"")
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width`×`height` but whose pixel data is a single empty row."""
    return (
        PNG_SIGNATURE
        + png_ihdr(width, height)
        + png_chunk(b"IDAT", zlib.compress(b"\x00"))
        + png_chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=None)
def png_bomb(side: int = 12_000) -> bytes:
    """A real decompression bomb: a complete, valid `side`×`side` RGB PNG of black pixels.

    12k×12k RGB inflates to 432 MB of pixel rows but compresses to about 0.4 MB. Compressing
    432 MB takes seconds, so one slice of rows is deflated once, ending in a full flush (which
    makes the next block independent of earlier data), and that block is repeated; the zlib
    wrapper's Adler-32 is computed over the real rows.
    """
    row = b"\x00" * (1 + 3 * side)
    rows_per_slice = 250
    slices, remainder = divmod(side, rows_per_slice)
    blocks = []
    adler = 1
    for count, rows in ((slices, rows_per_slice), (1 if remainder else 0, remainder)):
        if count == 0:
            continue
        data = row * rows
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        blocks.append((comp.compress(data) + comp.flush(zlib.Z_FULL_FLUSH)) * count)
        for _ in range(count):
            adler = zlib.adler32(data, adler)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # empty last block
    stream = b"\x78\xda" + b"".join(blocks) + final + struct.pack(">I", adler)
    return PNG_SIGNATURE + png_ihdr(side, side) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg(width: int = 16, height: int = 16) -> bytes:
    """A valid baseline greyscale JPEG, flat mid-grey, `width` and `height` multiples of 8."""
    assert width % 8 == 0 and height % 8 == 0
    dqt = _jpeg_segment(0xDB, b"\x00" + bytes([1] * 64))
    sof = _jpeg_segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    # One code of length 1 in each table: DC category 0, AC end-of-block.
    dht_dc = _jpeg_segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")
    dht_ac = _jpeg_segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\x00")
    sos = _jpeg_segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    blocks = (width // 8) * (height // 8)
    bits = "00" * blocks
    bits += "1" * (-len(bits) % 8)  # pad with ones, as the standard says
    scan = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    scan = scan.replace(b"\xff", b"\xff\x00")
    return b"\xff\xd8" + dqt + sof + dht_dc + dht_ac + sos + scan + b"\xff\xd9"


# A structured-outputs schema (json_schema) with an enum, a nullable number, a recursive list and a
# free string, for the traffic and the soak.
CAT_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "lives": {"type": "integer"},
        "mood": {"enum": ["calm", "playful"]},
        "weight": {"type": ["number", "null"]},
        "kittens": {"type": "array", "items": {"$ref": "#"}, "maxItems": 2},
    },
    "required": ["name", "lives", "mood"],
    "additionalProperties": False,
}

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
# A 2×2 24-bit BMP (decodable by many libraries, but not a format the API accepts).
BMP = (
    b"BM" + struct.pack("<IHHI", 70, 0, 0, 54)
    + struct.pack("<IiiHHIIiiII", 40, 2, 2, 1, 24, 0, 16, 2835, 2835, 0, 0)
    + b"\x00\x00\xff\xff\xff\xff\x00\x00" + b"\xff\x00\x00\x00\xff\x00\x00\x00"
)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(url: str, detail: str | None = None) -> dict:
    image_url = {"url": url}
    if detail is not None:
        image_url["detail"] = detail
    return {"type": "image_url", "image_url": image_url}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def chat(content, model: str = "grain-tiny", max_tokens: int | None = 4, **fields) -> dict:
    """A chat request with one user message; `fields` are added at the top level."""
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body.update(fields)
    return body


def with_images(*urls: str, text: str = "Describe the images.", **fields) -> dict:
    return chat([text_part(text), *(image_part(u, "low") for u in urls)], **fields)
