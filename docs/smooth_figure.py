"""Builds docs/classic-vs-smooth.png: the sample photos dreamed with two presets, one row each.

    dreamfleet dream data/samples -o /tmp/classic --preset classic --max-side 320 --threads 1
    dreamfleet dream data/samples -o /tmp/smooth --preset smooth --max-side 320 --threads 1
    python docs/smooth_figure.py /tmp/classic /tmp/smooth docs/classic-vs-smooth.png
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

NAMES = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "rocket.jpg")
TILE_H, GAP, LABEL_W = 160, 4, 64


def row(folder: Path) -> list[Image.Image]:
    tiles = []
    for name in NAMES:
        with Image.open(folder / name) as im:
            w, h = im.size
            tiles.append(im.convert("RGB").resize((round(w * TILE_H / h), TILE_H), Image.LANCZOS))
    return tiles


def main(folders: list[str], out: str) -> None:
    rows = [(Path(f).name, row(Path(f))) for f in folders]
    width = LABEL_W + sum(t.width + GAP for t in rows[0][1])
    sheet = Image.new("RGB", (width, len(rows) * (TILE_H + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, tiles) in enumerate(rows):
        y, x = r * (TILE_H + GAP), LABEL_W
        draw.text((6, y + TILE_H // 2 - 6), label, fill="black")
        for t in tiles:
            sheet.paste(t, (x, y))
            x += t.width + GAP
    sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)  # palette PNG: a few 100 kB


if __name__ == "__main__":
    main(sys.argv[1:-1], sys.argv[-1])
