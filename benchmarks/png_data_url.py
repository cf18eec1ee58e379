"""A synthetic RGB PNG as a data URL, standard library only (for the multi-turn benchmarks)."""
import base64, struct, zlib


def png(seed, w=640, h=480):
    """A w x h image whose pixels depend on `seed` (different seeds, different images)."""
    rows = b"".join(b"\0" + bytes(((x * seed) % 256, (y * 3 + seed) % 256, (x + y) % 256)[c]
                                   for x in range(w) for c in range(3)) for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(raw).decode()
