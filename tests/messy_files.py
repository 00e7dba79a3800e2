"""Folders of files as people have them, generated. photos(): two classes (bright circles, bright squares on noise) in
every format and mode (PNG, upper-case JPG, grey JPEG, BMP, palette GIF, RGBA WebP and PNG, grey PNG), any
size, and the junk real folders hold: a corrupt JPEG, .DS_Store, AppleDouble ._ files, Thumbs.db, a text
note, the same photo saved twice and once misfiled under the other class."""

import numpy as np
from pathlib import Path
from PIL import Image

def photos(root, per_class=30, seed=0):
    rng = np.random.default_rng(seed)
    root = Path(root)
    formats = [("png", "RGB"), ("JPG", "RGB"), ("jpeg", "L"), ("bmp", "RGB"), ("gif", "P"), ("webp", "RGBA"), ("png", "RGBA"), ("png", "L")]
    for label in ("circle", "square"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            h, w = int(rng.integers(24, 80)), int(rng.integers(24, 80))
            yy, xx = np.mgrid[:h, :w]
            if label == "circle":
                mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
            else:
                mask = (abs(yy - h / 2) < h / 3) & (abs(xx - w / 2) < w / 3)
            pixels = (rng.random((h, w, 3)) * 60).astype(np.uint8)
            pixels[mask] = (200 + rng.random(3) * 55).astype(np.uint8)
            suffix, mode = formats[i % len(formats)]
            image = Image.fromarray(pixels, "RGB")
            image = image.convert(mode) if mode != "P" else image.convert("P", palette=Image.ADAPTIVE)
            image.save(root / label / f"{label}_{i:03d}.{suffix}")
    (root / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "square" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "square" / "._square_000.png").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "circle" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "circle" / "notes.txt").write_text("taken on the beach")
    for i in range(3):  # the same photo saved twice, once misfiled
        (root / "circle" / f"copy_{i}.png").write_bytes((root / "circle" / f"circle_{i * 8:03d}.png").read_bytes())
    (root / "square" / "misfiled.png").write_bytes((root / "circle" / "circle_016.png").read_bytes())
    return root


def notes(root, per_class=60, seed=0):
    """Two classes of short texts (praise, complaints), some in latin-1 rather than UTF-8, a hidden file and an
    image that strayed into a text folder."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    filler = "the a of and to in it was is this that with".split()
    for label, words in (("praise", "great lovely superb fine wonderful happy".split()),
                         ("complaint", "awful bad terrible sad poor broken".split())):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            text = " ".join(rng.choice(filler + words * 2, 30)) + (" café" if i % 7 == 0 else "")
            (root / label / f"{label}_{i:03d}.txt").write_bytes(text.encode("latin-1" if i % 7 == 0 else "utf-8"))
    (root / "praise" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "complaint" / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root
