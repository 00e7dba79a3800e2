"""Tables from the user's files: CSV/TSV (separator, decimal mark, quoting and encoding detected), Parquet,
JSON Lines. Read as text first, so the data checks see what the file really says ("NA", ".", "1,5").

    table = read_table("exports/penguins.csv")        # Table(frame, path, sep=';', encoding='latin-1', decimal=',')
    types = infer_types(table.frame, label="species")  # {'bill_mm': 'number', 'island': 'category', ...}

Type inference (overridable per column): a column whose non-missing values all
parse as numbers (with the file's decimal mark) is `number`; two distinct values
such as yes/no, true/false, 0/1 `boolean`; dates in ISO or common day-first
forms `date`; text with a distinct value in (nearly) every row: `identifier`
when it is short and has no spaces, `text` when it reads as sentences; the rest
`category`.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerakit.errors import KerakitError

SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".ndjson": "jsonl"}
SEPARATORS = ",;\t|"
# Values that mean "missing" in real exports (SAS/Stata ".", R's "NA", spreadsheets' "-", "?"): checked
# case-insensitively after stripping spaces. The empty string is missing too.
MISSING_TOKENS = ("", ".", "na", "n/a", "nan", "null", "none", "?", "-", "--", "missing")
TYPES = ("number", "category", "boolean", "text", "date", "identifier")
BOOLEAN_PAIRS = ({"yes", "no"}, {"true", "false"}, {"y", "n"}, {"t", "f"}, {"0", "1"})
SNIFF_BYTES = 64 * 1024
# A CSV larger than this is streamed: types, checks and the report come from its first SAMPLE_ROWS rows, and
# preparation reads it in CHUNK_ROWS-row chunks, so memory stays flat in the file's size (bench: BENCH=data).
STREAM_ABOVE = 64 * 1024 * 1024
SAMPLE_ROWS = 100_000
CHUNK_ROWS = 50_000


@dataclass
class Table:
    """A table read as text (every cell a str, missing cells as read), and how it was read."""

    frame: "object"  # pandas.DataFrame of str
    path: Path
    sep: str | None = None
    encoding: str | None = None
    decimal: str = "."
    streamed: bool = False  # frame holds the first SAMPLE_ROWS rows of a larger file (see `chunks`)

    def describe(self) -> str:
        rows = (f"first {len(self.frame):,} rows of {self.path.stat().st_size / 2**20:,.0f} MiB" if self.streamed
                else f"{len(self.frame)} rows")
        if self.sep is None:
            return f"{self.path.name} ({rows})"
        sep = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}[self.sep]
        return f"{self.path.name} ({rows}; {sep}-separated, {self.encoding}, decimal mark {self.decimal!r})"

    def chunks(self):
        """(first row number, text frame) over the whole table: the frame itself, or a streamed file's chunks."""
        if not self.streamed:
            yield 0, self.frame
            return
        import pandas as pd

        start = 0
        try:
            for chunk in pd.read_csv(self.path, sep=self.sep, encoding=self.encoding, dtype=str,
                                     keep_default_na=False, na_filter=False, chunksize=CHUNK_ROWS):
                chunk.columns = [str(c).strip() for c in chunk.columns]
                yield start, chunk
                start += len(chunk)
        except UnicodeDecodeError as e:
            raise KerakitError(f"{str(self.path)!r} cannot be decoded as {self.encoding} after row {start:,}: "
                               f"{e.reason}. Pass its encoding, e.g. latin-1 (`kerakit data` and `kerakit new` take "
                               "--encoding; a recipe's SOURCE takes encoding=).") from None
        except pd.errors.ParserError as e:
            raise KerakitError(f"{str(self.path)!r}: {_parser_message(e)}.") from None


def is_table(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


def read_table(path: "str | Path", *, sep: str | None = None, encoding: str | None = None,
               decimal: str | None = None) -> Table:
    """Read a CSV/TSV, Parquet or JSON Lines file as text; CSV dialect and encoding detected unless given."""
    path = Path(path)
    if not path.exists():
        raise KerakitError(f"{str(path)!r} does not exist.")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise KerakitError(f"{str(path)!r} is not a table kerakit reads: expected one of "
                           f"{', '.join(sorted(SUFFIXES))}.")
    if kind == "parquet":
        return Table(_as_text(_read_parquet(path)), path)
    if kind == "jsonl":
        return Table(_as_text(_read_jsonl(path)), path)
    streamed = path.stat().st_size > STREAM_ABOVE
    raw = _head(path) if streamed else path.read_bytes()
    encoding = encoding or detect_encoding(raw, path)
    try:
        text = raw.decode(encoding)
    except (UnicodeDecodeError, LookupError) as e:
        raise KerakitError(f"{str(path)!r} cannot be decoded as {encoding}: {e}. Pass its encoding, e.g. latin-1, "
                           "cp1252, utf-16 (`kerakit data` and `kerakit new` take --encoding; a recipe's SOURCE takes "
                           "encoding=).") from None
    sep = sep or detect_separator(text, path)
    frame = _read_csv(text, sep, path)
    decimal = decimal or detect_decimal(frame, sep)
    return Table(frame, path, sep=sep, encoding=encoding, decimal=decimal, streamed=streamed)


def _head(path: Path) -> bytes:
    """The header and the first SAMPLE_ROWS lines of a large file."""
    lines = []
    with open(path, "rb") as f:
        for line in f:
            lines.append(line)
            if len(lines) > SAMPLE_ROWS:
                break
    return b"".join(lines)


def detect_encoding(raw: bytes, path: Path) -> str:
    """UTF-8 (with or without BOM) when it decodes; otherwise charset-normalizer's best guess."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)  # a sniffed prefix may end mid-character
        return "utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8"
    except UnicodeDecodeError:
        pass
    if _western(raw):
        return "cp1252"
    from charset_normalizer import from_bytes

    best = from_bytes(raw[: 4 * SNIFF_BYTES]).best()
    if best is None:
        raise KerakitError(f"{str(path)!r} is not text in any encoding kerakit recognises: pass --encoding, "
                           "or check that it is a CSV file.")
    return best.encoding


def _western(raw: bytes) -> bool:
    """Whether a non-UTF-8 file reads as cp1252 (latin-1's superset) with letters only beyond ASCII.

    charset-normalizer ranks cp1250 first for a latin-1 file of French names (both give "é" for 0xE9), but
    cp1250 reads Spanish "ñ" as "ń"; a Polish cp1250 file has bytes that are symbols in cp1252 ("¹" for "ą")."""
    try:
        text = raw[: 4 * SNIFF_BYTES].decode("cp1252")
    except UnicodeDecodeError:
        return False
    return all(c.isalpha() for c in text if ord(c) > 127)


def detect_separator(text: str, path: Path) -> str:
    """The dialect sniffer's separator; failing that, the candidate the header line splits on most."""
    sample = "\n".join(text[:SNIFF_BYTES].splitlines()[:50])
    if not sample.strip():
        raise KerakitError(f"{str(path)!r} is empty: expected a header row and data rows.")
    try:
        return csv.Sniffer().sniff(sample, delimiters=SEPARATORS).delimiter
    except csv.Error:
        pass
    header = next(line for line in sample.splitlines() if line.strip())
    counts = {s: header.count(s) for s in SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","  # no separator in the header: one column


def _read_csv(text: str, sep: str, path: Path):
    import pandas as pd

    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                            skipinitialspace=False, on_bad_lines="error", engine="c")
    except pd.errors.ParserError as e:
        raise KerakitError(f"{str(path)!r}: {_parser_message(e)}. Every row needs as many fields as the header "
                           "(quote fields that contain the separator).") from None
    except pd.errors.EmptyDataError:
        raise KerakitError(f"{str(path)!r} is empty: expected a header row and data rows.") from None
    if len(frame) == 0:
        raise KerakitError(f"{str(path)!r} has a header but no rows.")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _parser_message(e: Exception) -> str:
    """pandas' "Error tokenizing data. C error: Expected 4 fields in line 7, saw 5" -> its last part, as a file line."""
    text = str(e).strip().splitlines()[0]
    return text.split("C error: ")[-1].rstrip(".") if "C error: " in text else text


def detect_decimal(frame, sep: str) -> str:
    """',' where the separator is not a comma and number-like cells use a decimal comma ("3,5")."""
    if sep == ",":
        return "."
    sample = frame.head(500)
    comma = dot = 0
    for column in sample.columns:
        values = sample[column].str.strip()
        comma += int(values.str.fullmatch(r"-?\d+,\d+").sum())
        dot += int(values.str.fullmatch(r"-?\d+\.\d+").sum())
    return "," if comma > dot else "."


def _read_parquet(path: Path):
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow's errors have no common base a user can act on
        raise KerakitError(f"{str(path)!r} is not a readable Parquet file: {str(e).splitlines()[0][:200]}") from None


def _read_jsonl(path: Path):
    import json

    import pandas as pd

    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise KerakitError(f"{str(path)!r} line {number}: not JSON ({e.msg}). Expected one JSON object "
                                   "per line.") from None
            if not isinstance(row, dict):
                raise KerakitError(f"{str(path)!r} line {number}: expected a JSON object, got "
                                   f"{type(row).__name__}.")
            rows.append(row)
    if not rows:
        raise KerakitError(f"{str(path)!r} has no rows.")
    return pd.DataFrame(rows)


def _as_text(frame):
    """Typed columns (Parquet, JSON) as the text a CSV would hold: missing as "", numbers as written."""
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        out[column] = ["" if _is_missing_value(v) else str(v) for v in values]
    out.columns = [str(c) for c in out.columns]
    return out


def _is_missing_value(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


# --------------------------------------------------------------------------- types

def missing_mask(values) -> np.ndarray:
    """Which cells of a text column are missing, disguised ones ("NA", ".", "?", "-") included."""
    return values.str.strip().str.lower().isin(MISSING_TOKENS).to_numpy()


# A decimal that only one mark can write: a comma or a dot followed by other than three digits, which no
# thousands separator is ("15,3", "48.28"; "1,234" and "1.234" could be either).
ONLY_DECIMAL = {",": r"-?\d+,(?:\d{1,2}|\d{4,})", ".": r"-?\d+\.(?:\d{1,2}|\d{4,})"}


def column_decimal(values, decimal: str = ".") -> str:
    """The decimal mark of one text column: the file's (`decimal`), unless the column writes decimals only the
    other mark can write and none with the file's. A ';' file exported by hand may hold "15,3" in one column
    and "48.28" in another: read with the file's ',' the second would lose its dot as a thousands separator and
    become 4828; with the file's '.' the first would not be a number at all.

    >>> import pandas as pd
    >>> column_decimal(pd.Series(["15,3", "7", "NA"]), "."), column_decimal(pd.Series(["48.28", "3"]), ",")
    (',', '.')
    >>> column_decimal(pd.Series(["1.234", "2,5"]), ","), column_decimal(pd.Series(["1,234"]), ".")
    (',', '.')
    """
    other = "," if decimal == "." else "."
    cleaned = values.str.strip()
    if not cleaned.str.contains(other, regex=False).any() or not cleaned.str.fullmatch(ONLY_DECIMAL[other]).any():
        return decimal
    return decimal if cleaned.str.fullmatch(rf"-?\d+{re.escape(decimal)}\d+").any() else other


def as_numbers(values, decimal: str = "."):
    """A text column as floats: NaN where a cell is missing or not a number; decimals read with the column's
    own mark (`column_decimal`), the file's `decimal` unless the column shows it writes the other one."""
    import pandas as pd

    cleaned = values.str.strip()
    if column_decimal(cleaned, decimal) == ",":
        cleaned = cleaned.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    return pd.to_numeric(cleaned, errors="coerce").to_numpy(dtype=np.float64)


def infer_types(frame, decimal: str = ".", overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Each column's type (see TYPES), with `overrides` (column -> type) taking precedence."""
    overrides = dict(overrides or {})
    for column, kind in overrides.items():
        if column not in frame.columns:
            raise KerakitError(f"Unknown column {column!r} in a type override. Columns: {', '.join(frame.columns)}.")
        if kind not in TYPES:
            raise KerakitError(f"Invalid type {kind!r} for column {column!r}. Expected one of {', '.join(TYPES)}.")
    return {c: overrides.get(c) or infer_type(frame[c], decimal) for c in frame.columns}


def infer_type(values, decimal: str = ".") -> str:
    present = values[~missing_mask(values)].str.strip()
    if len(present) == 0:
        return "category"
    distinct = set(present.str.lower().unique())
    if len(distinct) == 2 and any(distinct == pair for pair in BOOLEAN_PAIRS):
        return "boolean"
    numbers = as_numbers(present, decimal)
    if np.isfinite(numbers).mean() >= 0.95:  # a few strings in a number column stay a number (flagged)
        return "number"
    if present.head(200).str.contains(r"\d[-/.]\d").mean() >= 0.5 and _dates(present).mean() >= 0.95:
        return "date"
    unique_share = len(distinct) / len(present)
    if unique_share >= 0.9 and len(present) >= 20:
        words = present.str.split().str.len().mean()
        return "text" if words >= 3 else "identifier"
    return "category"


def _dates(values) -> np.ndarray:
    import warnings

    import pandas as pd

    iso = values.str.fullmatch(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?")
    if iso.mean() >= 0.95:
        return iso.to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(values, errors="coerce", dayfirst=True, format="mixed")
    return (parsed.notna() & values.str.contains(r"[-/.]")).to_numpy()


def feature_names(columns: list[str], taken=()) -> dict[str, str]:
    """Column -> a TFDS/Keras-safe feature name ("Bill length (mm)" -> "bill_length_mm"), unique, never "label"
    nor one of `taken`."""
    names, used = {}, {"label", *taken}
    for column in columns:
        base = re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_") or "column"
        base = f"c_{base}" if base[0].isdigit() else base
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        names[column] = name
    return names


# Input names of `kerakit new`'s table recipes: a label's feature is its model output's name, and a Keras model's
# layers need distinct names.
RECIPE_INPUTS = ("features", "tokens")


def label_keys(labels: list[str], features: dict[str, str]) -> dict[str, str]:
    """Label column -> its feature in the prepared dataset: "label" for a table's one label; with several, each
    label's own safe name, distinct from the feature columns' (`features`: column -> name) and the recipe's inputs.

    >>> label_keys(["Species", "Body mass (g)"], {"island": "island"})
    {'Species': 'species', 'Body mass (g)': 'body_mass_g'}
    """
    if len(labels) == 1:
        return {labels[0]: "label"}
    return feature_names(labels, taken={*features.values(), *RECIPE_INPUTS})
