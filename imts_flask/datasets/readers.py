"""Read a dataset file row by row, in bounded memory: JSON (an array), JSON lines, CSV and parquet.

No row is held whole before its size is known: the text formats are read a bounded line or value at
a time, and a parquet row group whose rows are too large on average is refused undecoded. A row
nested past MAX_ROW_DEPTH, or larger than MAX_ROW_BYTES decoded, comes as an Unparseable with the
reason. The row checker (rows.py) reads files through `rows()`.
"""

import csv
import hashlib
import io
import json
import os
import re

EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}

_CHUNK = 1024 * 1024

MIB = 1024 * 1024

# What one row may cost, whatever the file: its text (as written, or decoded for parquet) and how
# deep its values nest. A LLaMA Factory row nests three levels (row, messages, turn); the bounds keep
# a crafted row from taking the checker's memory or time (a 32 KB file of nested brackets took 621 MB
# with a streaming parser that keeps each level's path).
MAX_ROW_BYTES = 16 * MIB

MAX_ROW_DEPTH = 32

# The decoded size of a whole file, unless the service passes its max_decoded_mb.
DEFAULT_MAX_DECODED = 2048 * MIB

_TOO_DEEP = f"nested deeper than {MAX_ROW_DEPTH} levels"

_TOO_LARGE = f"larger than {MAX_ROW_BYTES // MIB} MiB"


class FileProblem(Exception):
    """The file as a whole cannot be read (not JSON, not UTF-8, ...); the message says why."""


class HashingReader(io.RawIOBase):
    """A binary reader that hashes and counts what passes through it."""

    def __init__(self, handle):
        self.handle, self.sha256, self.bytes = handle, hashlib.sha256(), 0

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.handle.read(len(buffer))
        self.sha256.update(data)
        self.bytes += len(data)
        buffer[: len(data)] = data
        return len(data)


def kind_of(filename):
    """Return the file type of a name by its extension (json, jsonl, csv, parquet), or None."""
    return EXTENSIONS.get(os.path.splitext(filename.lower())[1])


def rows(path, kind, reader=None):
    """Yield (row number, line, row, size) for every row of a file; raise FileProblem if it cannot be read.

    `line` is the row's line in a .jsonl file (blank lines are skipped), else the row number:
    where(number, line) names it in a message.
    `size` is what the row takes decoded (its text, as written, for the text formats). No row is held
    whole before its size is known: text formats are read a bounded line or value at a time, and a
    parquet row group whose rows are too large on average is refused undecoded. A row past
    MAX_ROW_DEPTH (or, decoded, MAX_ROW_BYTES) comes as an Unparseable with the reason.
    """
    if kind == "parquet":
        yield from _parquet_rows(path)
        return
    with open(path, "rb") as raw:
        source = reader(raw) if reader else raw
        if kind == "json":
            yield from _json_rows(source)
        elif kind == "jsonl":
            yield from _jsonl_rows(source)
        else:
            yield from _csv_rows(source)
        while reader and source.read(_CHUNK):  # what a parser left unread passes the reader too
            pass


class _JsonText:
    """A window on a JSON text read a chunk at a time, from which values are decoded one by one."""

    SPACE = re.compile(r"[ \t\n\r]*")

    def __init__(self, source):
        self.text = io.TextIOWrapper(io.BufferedReader(source, _CHUNK), encoding="utf-8")
        self.buffer, self.pos, self.eof = "", 0, False
        self.decode = json.JSONDecoder().raw_decode

    def fill(self, at_least=_CHUNK):
        """Drop what was read, read at least `at_least` more characters (or to the end)."""
        self.buffer, self.pos = self.buffer[self.pos :], 0
        more = self.text.read(max(_CHUNK, at_least))
        self.eof = not more
        self.buffer += more

    def next_char(self):
        """Skip white space; return the next character (not consumed), or None at the end."""
        while True:
            self.pos = self.SPACE.match(self.buffer, self.pos).end()
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if self.eof:
                return None
            self.fill()

    def value(self, where):
        """Decode the value at the current position, reading on as far as MAX_ROW_BYTES to find its end.

        Returns (value, where it starts in self.buffer); reading on moves it.
        """
        while True:
            pending = len(self.buffer) - self.pos
            try:
                value, end = self.decode(self.buffer, self.pos)
            except json.JSONDecodeError as exc:
                if self.eof:
                    raise FileProblem(f"{where}: not valid JSON ({exc.msg})") from None
                error = exc.msg  # maybe only cut short by the chunk: read on
            except RecursionError:
                raise FileProblem(f"{where}: {_TOO_DEEP}") from None
            else:
                if end - self.pos > MAX_ROW_BYTES:
                    raise FileProblem(f"{where}: {_TOO_LARGE}")
                if end < len(self.buffer) or self.eof or isinstance(value, (dict, list)):
                    start, self.pos = self.pos, end
                    return value, start
                error = None  # a number or word at the very end of the chunk may go on
            if pending > MAX_ROW_BYTES:
                invalid = f", or not valid JSON ({error})" if error else ""
                raise FileProblem(f"{where}: {_TOO_LARGE}{invalid}")
            self.fill(at_least=pending)  # at least doubles what is held: each row is decoded a few times

    def after_row(self, number):
        """Consume the white space and comma after a row; False once the array's ']' is consumed."""
        char = self.next_char()
        if char not in (",", "]"):
            raise FileProblem(f"not valid JSON after row {number} (',' or ']' expected)")
        self.pos += 1
        if char == "]":
            return False
        if self.next_char() is None:
            raise FileProblem("not valid JSON (the array is not closed)")
        return True


# After a row of the array: white space and a comma, then the white space before the next row.
_AFTER_ROW = re.compile(r"[ \t\n\r]*,[ \t\n\r]*")


def _json_rows(source):
    text = _JsonText(source)
    try:
        first = text.next_char()
        if first == "{":
            raise FileProblem(
                "a .json file must hold a JSON array of rows (a file of one object a line is .jsonl)"
            )
        if first != "[":
            raise FileProblem("not valid JSON (a .json file holds an array of rows: [{...}, {...}])")
        text.pos += 1
        if text.next_char() == "]":
            text.pos += 1
        else:
            yield from _json_array_rows(text)
        if text.next_char() is not None:
            raise FileProblem("not valid JSON (something follows the array)")
    except UnicodeDecodeError:
        raise FileProblem("not UTF-8 text") from None


def _json_array_rows(text):
    """The rows of an array whose first row starts at text.pos.

    The common row, whole in the buffer and followed by a comma and the next row, is decoded
    inline; anything else (a row across the chunk's end, the last row, an error) goes through
    _JsonText, which reads on or says what is wrong.
    """
    after, decode, number = _AFTER_ROW.match, text.decode, 0
    while True:
        number += 1
        buffer, start = text.buffer, text.pos
        try:
            row, end = decode(buffer, start)
            if buffer.startswith(", {", end):  # json.dumps writes rows so: no regex needed
                following = end + 2
            elif buffer.startswith(",{", end):
                following = end + 1
            else:
                found = after(buffer, end)
                following = found.end() if found is not None else len(buffer)
            fast = following < len(buffer) and end - start <= MAX_ROW_BYTES
        except (ValueError, RecursionError):
            fast = False
        if fast:
            yield (
                number,
                number,
                row
                if end - start <= _SHORT_ROW
                or buffer.count("{", start, end) + buffer.count("[", start, end) <= MAX_ROW_DEPTH
                else _bounded(row, buffer, start, end),
                end - start,
            )
            text.pos = following
            continue
        row, start = text.value(f"row {number}")
        end, buffer = text.pos, text.buffer
        yield number, number, _bounded(row, buffer, start, end), end - start
        if not text.after_row(number):
            return


def _jsonl_rows(source):
    """Rows of a .jsonl file. Each 1 MiB chunk is decoded once and its lines parsed with raw_decode
    (json.loads would detect the encoding and wrap each line again: a third of the check's time)."""
    buffered = io.BufferedReader(source, _CHUNK)
    decode, space = json.JSONDecoder().raw_decode, _JsonText.SPACE.match
    number = line_number = 0
    tail = b""
    while True:
        chunk = buffered.read(_CHUNK)
        data = tail + chunk
        cut = data.rfind(b"\n") + 1 if chunk else len(data)
        data, tail = data[:cut], data[cut:]
        for line in _text_lines(data):
            line_number += 1
            if line is None:
                raise FileProblem(f"{where(number + 1, line_number)}: not UTF-8 text")
            if not line or line.isspace():
                continue
            number += 1
            try:
                row, end = decode(line, space(line).end())
                if end < len(line) and not line[end:].isspace():
                    raise json.JSONDecodeError("Extra data", line, end)
                if len(line) > _SHORT_ROW and line.count("{") + line.count("[") > MAX_ROW_DEPTH:
                    row = _bounded(row, line, 0, len(line))
            except RecursionError:
                row = Unparseable(_TOO_DEEP)
            except ValueError as exc:
                row = Unparseable(f"not valid JSON ({exc.msg} at column {exc.colno})")
            yield number, line_number, row, len(line)
        if len(tail) > MAX_ROW_BYTES:  # a line going on past the limit: the rest of it is never read
            raise FileProblem(f"{where(number + 1, line_number + 1)}: {_TOO_LARGE}")
        if not chunk:
            return


def _text_lines(data):
    """The lines of whole lines of UTF-8 as text; a line that is no UTF-8 comes as None."""
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = [_utf8(piece) for piece in data.split(b"\n")]
    if lines and lines[-1] == "":  # the data ends with a newline
        lines.pop()
    return lines


def _utf8(data):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class _RecordTooLarge(Exception):
    pass


# A line as newline="" reads it: ended by \r\n, \r or \n, or the text's end.
_CSV_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


class _CsvText:
    """The lines of a CSV file as text for csv.reader, decoded a chunk at a time. Reading on while
    one record is pending (a line, or quoted newlines) past MAX_ROW_BYTES raises _RecordTooLarge."""

    def __init__(self, source):
        self.buffered = io.BufferedReader(source, _CHUNK)
        self.read = self.record_start = 0  # bytes read in all; when the last record was complete

    def __iter__(self):
        tail, encoding = b"", "utf-8-sig"  # the first line may start with a byte-order mark
        while True:
            if self.read - self.record_start > MAX_ROW_BYTES:
                raise _RecordTooLarge
            chunk = self.buffered.read(_CHUNK)
            self.read += len(chunk)
            data = tail + chunk
            cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1 if chunk else len(data)
            data, tail = data[:cut], data[cut:]
            if len(tail) > MAX_ROW_BYTES:
                raise _RecordTooLarge
            if data:
                text, encoding = data.decode(encoding), "utf-8"
                yield from _CSV_LINE.findall(text)
            if not chunk:
                return


def _csv_rows(source):
    csv.field_size_limit(MAX_ROW_BYTES)  # this process checks one file: the default is 128 KB a field
    text, counted, number = _CsvText(source), 0, 0
    try:
        for number, row in enumerate(csv.DictReader(text), 1):  # noqa: B007 (number is read below)
            size, counted = text.read - counted, text.read  # every value is text: one level deep
            text.record_start = text.read
            if None in row:
                row = Unparseable("has more values than the header has columns")
            yield number, number, row, size
    except _RecordTooLarge:
        raise FileProblem(f"row {number + 1}: {_TOO_LARGE}") from None
    except UnicodeDecodeError:
        raise FileProblem("not UTF-8 text") from None
    except csv.Error as exc:
        raise FileProblem(f"not valid CSV ({exc})") from None


def _parquet_rows(path):
    try:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        number = 0
        for index in range(parquet.metadata.num_row_groups):
            group = parquet.metadata.row_group(index)
            # Plain-encoded data says its size before it is decoded: refuse a group of huge rows unread.
            if group.num_rows and group.total_byte_size / group.num_rows > MAX_ROW_BYTES:
                raise FileProblem(f"row {number + 1}: {_TOO_LARGE} once decoded")
            number += group.num_rows
        number = 0
        deep = _type_depth(parquet.schema_arrow) > MAX_ROW_DEPTH
        for batch in parquet.iter_batches(batch_size=256):
            # The batch's decoded bytes bound each of its rows, and the schema their depth: rows are
            # walked one by one only where either could pass its limit.
            walk, share = deep or batch.nbytes > MAX_ROW_BYTES, batch.nbytes / max(1, batch.num_rows)
            for row in batch.to_pylist():
                number += 1
                size, too_much = cost(row) if walk else (share, None)
                yield number, number, Unparseable(too_much) if too_much else row, size
    except ImportError:
        raise FileProblem("parquet files need pyarrow, which is not installed") from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise FileProblem(f"not a valid parquet file ({exc})") from None


def _type_depth(arrow_type):
    """How deep a row of this Arrow type (a schema is a struct of its columns) nests, as cost() counts."""
    import pyarrow as pa

    if isinstance(arrow_type, pa.Schema):
        return 1 + max((_type_depth(field.type) for field in arrow_type), default=0)
    if pa.types.is_struct(arrow_type):
        return 1 + max(
            (_type_depth(arrow_type.field(i).type) for i in range(arrow_type.num_fields)), default=0
        )
    if pa.types.is_map(arrow_type):
        return 2 + max(_type_depth(arrow_type.key_type), _type_depth(arrow_type.item_type))
    if (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    ):
        return 1 + _type_depth(arrow_type.value_type)
    return 0


class Unparseable:
    def __init__(self, reason):
        self.reason = reason


def where(number, line):
    """Name a row in a message: "row 3", or "row 3 (line 5)" where blank lines came before it."""
    return f"row {number}" if number == line else f"row {number} (line {line})"


# Each bracket opened is closed: a row's text this short cannot nest deeper than MAX_ROW_DEPTH.
_SHORT_ROW = 2 * MAX_ROW_DEPTH


def _bounded(row, text, start, end):
    """The row, or an Unparseable if it nests past MAX_ROW_DEPTH. Its text (text[start:end]) is
    within MAX_ROW_BYTES already; a row with no more opening brackets than the limit cannot nest
    deeper, so only the rare row with many is walked."""
    opened = text.count("{" if isinstance(text, str) else b"{", start, end)
    opened += text.count("[" if isinstance(text, str) else b"[", start, end)
    if opened <= MAX_ROW_DEPTH:
        return row
    _size, too_much = cost(row)
    return Unparseable(too_much) if too_much else row


def cost(value):
    """Return (decoded size, None) of a row, or (None, reason) once it passes MAX_ROW_BYTES or MAX_ROW_DEPTH.

    Text counts its characters, anything else 8; the walk stops as soon as a bound is passed.
    """
    if not isinstance(value, (dict, list)):
        return (len(value) if isinstance(value, (str, bytes)) else 8), None
    size, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > MAX_ROW_DEPTH:
            return None, _TOO_DEEP
        if isinstance(item, dict):
            size += sum(len(key) if isinstance(key, str) else 8 for key in item)
            item = item.values()
        for child in item:
            if isinstance(child, (str, bytes)):
                size += len(child)
            elif isinstance(child, (dict, list)):
                stack.append((child, level + 1))
            else:
                size += 8
        if size > MAX_ROW_BYTES:
            return None, _TOO_LARGE
    return size, None
