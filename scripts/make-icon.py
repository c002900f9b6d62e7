#!/usr/bin/env python3
"""Draws assets/icon.png (256x256): three linked nodes on a dark rounded square.

Pure standard library, so it runs anywhere: python3 scripts/make-icon.py
"""
import math, struct, zlib, pathlib

N = 256
BG = (0x1b, 0x22, 0x2c)
EDGE = (0x58, 0x9c, 0xf5)
NODES = [((128, 70), (0x3f, 0xb9, 0x50)), ((66, 178), (0xe3, 0xb3, 0x41)), ((190, 178), (0x58, 0x9c, 0xf5))]

def inside_rounded(x, y, r=48):
    cx = min(max(x, r), N - 1 - r)
    cy = min(max(y, r), N - 1 - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r

def seg_dist(px, py, a, b):
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = max(0, min(1, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))

rows = []
for y in range(N):
    row = bytearray([0])
    for x in range(N):
        if not inside_rounded(x, y):
            row += bytes((0, 0, 0, 0))
            continue
        c = BG
        for i in range(3):
            if seg_dist(x, y, NODES[i][0], NODES[(i + 1) % 3][0]) < 7:
                c = EDGE
        for (nx, ny), col in NODES:
            d = math.hypot(x - nx, y - ny)
            if d < 34:
                c = col if d < 28 else (0xf0, 0xf3, 0xf6)
        row += bytes((*c, 255))
    rows.append(bytes(row))

def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", N, N, 8, 6, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b"")
out = pathlib.Path(__file__).resolve().parent.parent / "assets" / "icon.png"
out.write_bytes(png)
print(f"wrote {out} ({len(png)} bytes)")
