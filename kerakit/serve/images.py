"""Encoded photos in, for image models: a JPEG, PNG or WebP file as a client has it, in every protocol.

A model input that takes photos is uint8, height x width x 3 (what a kerakit image recipe's model takes).
Such an input also accepts the encoded file, one per row, and the server turns it into the pixels training
saw: decoded by the training pipeline's reader (`kerakit.sources.folder.read_image`: Pillow, every mode to RGB)
and fitted to the model's size by its resizing rule (`kerakit.images.fit_image`, letterbox or crop as the run's
recipe says in FIT):

    KServe v2, JSON      {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64 of the file>"]}
    KServe v2, binary    datatype BYTES, the file's bytes as the tensor's one element (what tritonclient sends
                         for np.array([open(f, "rb").read()], dtype=object) with binary_data=True)
    KServe v2, gRPC      datatype BYTES, bytes_contents or raw_input_contents
    TF Serving           {"instances": [{"b64": "<base64 of the file>"}]}  (or {"image": {"b64": ...}} per row,
                         or {"inputs": {"image": [{"b64": ...}]}})

A body that is not an image (corrupt, truncated, not base64) is a 400 naming the input, the element and the
problem; an image over MAX_PIXELS, or more photos than --max-elements' worth of pixels, is a 413.

    photos = photo_input(model, "image")          # Photos(height=64, width=64, fit='letterbox'), or None
    decode([jpeg_bytes], photos, "input 'image'") # uint8 array (1, 64, 64, 3)
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import math
from dataclasses import dataclass
from pathlib import Path
from weakref import WeakKeyDictionary

import numpy as np

from kerakit import runs
from kerakit.errors import KerakitError
from kerakit.serve.models import BadRequest, Model
from kerakit.serve.tensors import check_parameters, raw_elements

# The largest photo decoded (width x height): 40 MP holds any phone or 35 mm camera JPEG at full size; its RGB
# pixels take 120 MB, so a small file that claims a huge size (a decompression bomb) is refused before decoding.
MAX_PIXELS = 40_000_000
FORMATS = "JPEG, PNG, WebP, BMP or GIF"
SIGNATURES = {  # how a file of each format starts: a truncated one is named as what it is
    "JPEG": lambda b: b.startswith(b"\xff\xd8\xff"), "PNG": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
    "WebP": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", "GIF": lambda b: b[:6] in (b"GIF87a", b"GIF89a"),
    "BMP": lambda b: b.startswith(b"BM")}


@dataclass(frozen=True)
class Photos:
    """How an input takes encoded photos: fitted to height x width by `fit` (kerakit.images.FITS)."""

    height: int
    width: int
    fit: str = "letterbox"


_INPUTS: "WeakKeyDictionary[Model, dict[str, Photos]]" = WeakKeyDictionary()


def photo_input(model: Model, name: str) -> Photos | None:
    """How input `name` of `model` takes encoded photos, or None where it does not (not uint8 H x W x 3)."""
    table = _INPUTS.get(model)
    if table is None:
        table = _INPUTS[model] = _photo_inputs(model)
    return table.get(name)


def prepare(models) -> None:
    """At start-up: which inputs take photos, with the fit rule their run's recipe records (a bad FIT fails the
    start, not a request), and TensorFlow's resizing loaded and run once (its import takes seconds)."""
    for model in models:
        for photos in {photo_input(model, name) for name in model.inputs} - {None}:
            _fit(np.zeros((2, 3, 3), np.uint8), photos)


def _photo_inputs(model: Model) -> dict[str, Photos]:
    images = {name: tuple(spec.shape) for name, spec in model.inputs.items()
              if spec.dtype == "uint8" and len(spec.shape) == 4 and spec.shape[3] == 3
              and all(isinstance(d, int) and d > 0 for d in spec.shape[1:3])}
    if not images:
        return {}
    fit = recorded_fit(model.path)
    return {name: Photos(shape[1], shape[2], fit) for name, shape in images.items()}


def recorded_fit(path: "str | Path") -> str:
    """The FIT of the recipe the model at `path` was trained by (the run's copy of it), else "letterbox":
    what a kerakit image recipe does unless it says otherwise. Read, not run: no recipe code runs in a server."""
    from kerakit.images import check_fit

    run = runs.find_run(path)
    node = (run.recipe_assignments(("FIT",)) if run is not None else {}).get("FIT")
    if node is None:
        return "letterbox"
    try:
        return check_fit(ast.literal_eval(node.value))
    except (ValueError, KerakitError) as e:
        raise KerakitError(f"{run.recipe_path}:{node.lineno}: FIT must be a string literal the server "
                           f"can read: {e}") from None


# --------------------------------------------------------------------------- decoding

def decode(files: list[bytes], photos: Photos, where: str) -> np.ndarray:
    """Encoded photos -> uint8 pixels (n, height, width, 3), as the training pipeline makes them."""
    return np.stack([_fit(_read(data, f"{where}, element {i}" if len(files) > 1 else where), photos)
                     for i, data in enumerate(files)])


def _read(data: bytes, where: str) -> np.ndarray:
    """One encoded photo as RGB uint8 at its own size, by the training pipeline's reader."""
    from PIL import Image, UnidentifiedImageError

    from kerakit.sources.folder import read_image

    if not data:
        raise BadRequest(f"{where}: empty; send the bytes of a {FORMATS} file.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            (width, height), kind = image.size, image.format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        kind = next((name for name, test in SIGNATURES.items() if test(data)), None)
        if kind is None:
            raise BadRequest(f"{where}: not an image ({len(data)} bytes starting {data[:8]!r}); send the bytes "
                             f"of a {FORMATS} file.") from None
        width = height = 0  # a known format's header, unreadable: said below
    if width * height > MAX_PIXELS:
        raise BadRequest(f"{where}: a {width} x {height} {kind} is over the server's {MAX_PIXELS:,} pixels; "
                         "send it smaller.", 413)
    decoded = read_image(io.BytesIO(data)) if width else None
    if decoded is None:
        raise BadRequest(f"{where}: a {kind} file that cannot be decoded (truncated or corrupt, "
                         f"{len(data)} bytes).")
    return decoded[0]


def _fit(pixels: np.ndarray, photos: Photos) -> np.ndarray:
    from kerakit.images import fit_image

    return fit_image(pixels, (photos.height, photos.width), photos.fit).numpy()


def photos_array(files: list[bytes], shape, photos: Photos, where: str, max_elements: int) -> np.ndarray:
    """A BYTES tensor of encoded photos (shape [n] or [n, 1]) as the pixels the model takes."""
    if not (isinstance(shape, list) and len(shape) in (1, 2) and shape[1:] in ([], [1])
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise BadRequest(f"{where}: encoded photos take shape [n] or [n, 1] (one file per row), got "
                         f"{str(shape)[:60]}.")
    if len(files) != math.prod(shape):
        raise BadRequest(f"{where}: {len(files)} files, but shape {shape} needs {math.prod(shape)}.")
    pixels = len(files) * photos.height * photos.width * 3
    if pixels > max_elements:
        raise BadRequest(f"{where}: {len(files)} photos are {pixels} numbers at the model's {photos.height} x "
                         f"{photos.width} x 3; the limit is {max_elements} (--max-elements).", 413)
    if not files:
        raise BadRequest(f"{where}: no photos (shape {shape}); send at least one.")
    return decode(files, photos, where)


def from_base64(values, where: str) -> list[bytes]:
    """JSON strings of base64 (the standard alphabet or the URL-safe one, padded or not) as bytes."""
    flat = list(np.array(values, dtype=object).flat) if isinstance(values, list) else [values]
    files = []
    for i, value in enumerate(flat):
        if not isinstance(value, str):
            raise BadRequest(f"{where}: element {i} is {type(value).__name__}; an encoded photo is sent as a "
                             "base64 string.")
        text = value.strip().replace("-", "+").replace("_", "/")
        try:
            files.append(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}: element {i} is not base64 ({value[:20]!r}...); send the file's bytes "
                             "base64-encoded.") from None
    return files


# --------------------------------------------------------------------------- the protocols' hooks

def v2_tensor(item: dict, photos: Photos, where: str, binary, offset: int,
              max_elements: int) -> tuple[np.ndarray, int]:
    """A KServe v2 REST input of datatype BYTES for a photo input: base64 strings in JSON `data`, or the
    files' bytes in the binary data; (pixels, the binary data offset after it)."""
    params = check_parameters(item.get("parameters", {}), where, {"binary_data_size": int})
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if offset + size > len(binary):
            raise BadRequest(f"{where}: binary_data_size {size} runs past the {len(binary)} bytes of binary data.")
        files, offset = raw_elements(binary[offset:offset + size], where), offset + size
    elif "data" in item:
        files = from_base64(item["data"], where)
    else:
        raise BadRequest(f"{where}: missing 'data' (or parameters.binary_data_size with binary data).")
    return photos_array(files, item.get("shape"), photos, where, max_elements), offset


def grpc_tensor(tensor, raw: "bytes | None", photos: Photos, where: str, max_elements: int) -> np.ndarray:
    """A KServe v2 gRPC input of datatype BYTES for a photo input: bytes_contents, or its raw_input_contents."""
    given = [f.name for f, _ in tensor.contents.ListFields()]
    if given and (raw is not None or given != ["bytes_contents"]):
        raise BadRequest(f"{where}: send encoded photos in bytes_contents or raw_input_contents, once; got "
                         f"{', '.join(given + (['raw_input_contents'] if raw is not None else []))}.")
    files = raw_elements(raw, where) if raw is not None else list(tensor.contents.bytes_contents)
    return photos_array(files, list(tensor.shape), photos, where, max_elements)


def b64_column(model: Model, name: str, column, max_elements: int) -> np.ndarray | None:
    """TF Serving's {"b64": ...} objects of input `name`, one per row, as pixels; None where the column holds
    none (the ordinary decoder reads it)."""
    where = f"input {name!r}"
    if isinstance(column, dict):
        column = [column]  # one row's value in the row format of a one-input model
    if not isinstance(column, list) or not any(isinstance(v, dict) for v in column):
        return None
    photos = photo_input(model, name)
    if photos is None:
        spec = model.inputs[name]
        raise BadRequest(f"{where}: {{\"b64\": ...}} is an encoded photo, which only an image input (uint8, "
                         f"height x width x 3) takes; this one is {spec.dtype} {list(spec.shape)[1:]}.")
    bad = next((i for i, v in enumerate(column) if not isinstance(v, dict) or set(v) != {"b64"}), None)
    if bad is not None:
        raise BadRequest(f"{where}: row {bad} is not {{\"b64\": \"...\"}}; send every row of an input the same way.")
    return photos_array(from_base64([v["b64"] for v in column], where), [len(column)], photos, where, max_elements)


def b64_rows(instances: list) -> bool:
    """Whether TF Serving rows are each one {"b64": ...} object: a one-input model's encoded values."""
    return all(isinstance(row, dict) and set(row) == {"b64"} for row in instances)
