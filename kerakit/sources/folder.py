"""Folders of the user's files, one subfolder per class: images (PNG, JPEG, BMP, GIF, WebP, any letter case,
any mode, any size) or text files. Already split when the top level is `train/`, `val/` (or `validation/`)
and `test/`, each with the class subfolders inside.

    folder = scan_folder("photos/")
    folder.kind, folder.classes, len(folder.files)   # 'image', ['cat', 'dog'], 412
    folder.skipped                                   # [('photos/cat/.DS_Store', 'hidden file'), ...]

Images are read with Pillow and converted by one rule: every mode becomes RGB
(grey and palette expanded, an alpha channel dropped), at the file's own size;
a recipe resizes. An image Pillow cannot decode is skipped and counted, never
a traceback.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from kerakit.errors import KerakitError
from kerakit.sources.splits import RATIOS, assign_splits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TEXT_SUFFIXES = (".txt", ".text", ".md")
HIDDEN = ("Thumbs.db", "desktop.ini")
SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


@dataclass
class FolderFile:
    path: Path
    label: str
    split: str | None  # from the folder layout; None: kerakit splits


@dataclass
class Folder:
    root: Path
    kind: str  # "image" or "text"
    classes: list[str]
    files: list[FolderFile]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    presplit: bool = False

    def describe(self) -> str:
        layout = "split into train/validation/test folders" if self.presplit else "one folder per class"
        return f"{self.root.name}/ ({len(self.files)} {self.kind} files, {len(self.classes)} classes, {layout})"


def is_folder(path: Path) -> bool:
    return path.is_dir()


def scan_folder(root: "str | Path") -> Folder:
    """The class folders under `root` (or under its train/val/test folders) and their data files."""
    root = Path(root)
    top = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p))
    if not top:
        raise KerakitError(f"{str(root)!r} has no subfolders: expected one folder per class (photos/cat/, "
                           "photos/dog/), or train/, val/, test/ folders with the class folders inside.")
    names = {p.name.lower() for p in top}
    presplit = "train" in names and names <= set(SPLIT_FOLDERS)
    parts = [(p, SPLIT_FOLDERS[p.name.lower()]) for p in top] if presplit else [(root, None)]
    files, skipped, classes = [], [], set()
    for base, split in parts:
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not _hidden(p)):
            found = _class_files(class_dir, skipped)
            if not found:
                raise KerakitError(f"Class folder {str(class_dir)!r} has no data files: add files or remove it.")
            classes.add(class_dir.name)
            files += [FolderFile(f, class_dir.name, split) for f in found]
    kind = _kind(files, root)
    keep = IMAGE_SUFFIXES if kind == "image" else TEXT_SUFFIXES
    skipped += [(str(f.path), f"not a{'n image' if kind == 'image' else ' text file'}")
                for f in files if f.path.suffix.lower() not in keep]
    files = [f for f in files if f.path.suffix.lower() in keep]
    return Folder(root, kind, sorted(classes), files, skipped, presplit)


def _hidden(path: Path) -> bool:
    return path.name.startswith((".", "._", "__")) or path.name in HIDDEN


def _class_files(class_dir: Path, skipped: list) -> list[Path]:
    found = []
    for path in sorted(class_dir.rglob("*")):
        if not path.is_file():
            continue
        if _hidden(path) or any(_hidden(p) for p in path.relative_to(class_dir).parents if p.name):
            skipped.append((str(path), "hidden file"))
        else:
            found.append(path)
    return found


def _kind(files: list[FolderFile], root: Path) -> str:
    images = sum(f.path.suffix.lower() in IMAGE_SUFFIXES for f in files)
    texts = sum(f.path.suffix.lower() in TEXT_SUFFIXES for f in files)
    if not images and not texts:
        raise KerakitError(f"{str(root)!r} has no images ({', '.join(IMAGE_SUFFIXES)}) or text files "
                           f"({', '.join(TEXT_SUFFIXES)}) in its class folders.")
    return "image" if images >= texts else "text"


def folder_splits(folder: Folder, seed: int = 0, ratios=RATIOS) -> tuple:
    """(the split of each of `folder.files`, the rule): the folders' own, with a missing validation folder
    carved from train (10 %, stratified, seeded); else stratified by class. The data report and the prepared
    dataset both use it, so a duplicate the report finds across splits is across the prepared ones."""
    import numpy as np
    import pandas as pd

    labels = np.array([f.label for f in folder.files])
    if not folder.presplit:
        return assign_splits(pd.DataFrame({"label": labels}), "label", seed=seed, ratios=ratios)
    split_of = np.array([f.split for f in folder.files], dtype=object)
    if "test" not in set(split_of):
        raise KerakitError(f"{str(folder.root)!r} has train/ but no test/ folder: add one, or put the class "
                           "folders at the top level and kerakit splits them.")
    if "validation" in set(split_of):
        return split_of.astype(str), "as the folders are (train/, val/, test/)"
    train = np.flatnonzero(split_of == "train")
    carved, _ = assign_splits(pd.DataFrame({"label": labels[train]}), "label", seed=seed, ratios=(0.9, 0.1, 0.0))
    split_of[train] = carved
    return split_of.astype(str), f"as the folders are (train/, test/); validation: 10 % of train/, stratified, " \
                                 f"seed {seed}"


def read_image(path: Path):
    """(RGB uint8 array, original mode) or None where Pillow cannot decode the file."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = image.mode
            image.load()
            rgb = image.convert("RGB")  # palette, grey, CMYK expanded; alpha dropped
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    return np.asarray(rgb, dtype=np.uint8), mode


def read_text(path: Path) -> str | None:
    """A text file as UTF-8 (latin-1 where it is not UTF-8); None where it holds a NUL byte (binary)."""
    raw = path.read_bytes()
    if b"\0" in raw:
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
