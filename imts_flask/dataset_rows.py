"""Read a dataset file row by row and check every row against a LLaMA Factory format.

Run in a child process (`python -m imts_flask.dataset_rows check FILE [FORMAT]` or `preview FILE N`),
so that parsing a 1 GiB upload, or importing pyarrow for a parquet file, never grows an API worker.
It prints one JSON object. Files are read as a stream: memory stays flat whatever their size.

The formats, as LLaMA Factory's data/converter.py reads them:
- alpaca: instruction, input (optional), output (the training target), system, history
- sharegpt: messages of role/content (OpenAI style) or conversations of from/value (ShareGPT
  style): an optional system turn, then user and assistant turns in turn, ending with assistant
- pairwise: a prompt (alpaca's instruction/input, or messages ending with a user turn) and a
  chosen and a rejected answer
- kto: an alpaca or sharegpt row with a boolean label
- text: a text column (pretraining)
"""

import argparse
import csv
import hashlib
import io
import json
import os
import re
import resource
import sys

EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
FORMATS = ("alpaca", "sharegpt", "pairwise", "kto", "text")
STAGES = {"alpaca": ["sft"], "sharegpt": ["sft"], "pairwise": ["rm", "dpo"], "kto": ["kto"], "text": ["pt"]}
MAX_PROBLEMS = 10
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
# A preview shows each text value up to this many characters, and containers this deep and long.
PREVIEW_CHARS = 1000
PREVIEW_DEPTH = 6
PREVIEW_ITEMS = 50

# The two ways a conversation is written: the key of the list, then its role/content keys and tags.
_STYLES = {
    "messages": {"role": "role", "content": "content", "user": "user", "assistant": "assistant"},
    "conversations": {"role": "from", "content": "value", "user": "human", "assistant": "gpt"},
}
_OBSERVATION, _FUNCTION, _SYSTEM = "observation", "function_call", "system"
_TOO_DEEP = f"nested deeper than {MAX_ROW_DEPTH} levels"
_TOO_LARGE = f"larger than {MAX_ROW_BYTES // MIB} MiB"


class FileProblem(Exception):
    """The file as a whole cannot be read (not JSON, not UTF-8, ...); the message says why."""


class _HashingReader(io.RawIOBase):
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


# -- reading -----------------------------------------------------------------------------------


def kind_of(filename):
    """Return the file type of a name by its extension (json, jsonl, csv, parquet), or None."""
    return EXTENSIONS.get(os.path.splitext(filename.lower())[1])


def rows(path, kind, reader=None):
    """Yield (row number, where, row) for every row of a file; raise FileProblem if it cannot be read.

    No row is held whole before its size is known: text formats are read a bounded line or value at
    a time, and a parquet row group whose rows are too large on average is refused undecoded.
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

    _SPACE = re.compile(r"[ \t\n\r]*")

    def __init__(self, source):
        self.text = io.TextIOWrapper(io.BufferedReader(source, _CHUNK), encoding="utf-8")
        self.buffer, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _fill(self, at_least=_CHUNK):
        self.buffer, self.pos = self.buffer[self.pos :], 0
        more = self.text.read(max(_CHUNK, at_least))
        self.eof = not more
        self.buffer += more

    def next_char(self):
        """Skip white space; return the next character (not consumed), or None at the end."""
        while True:
            self.pos = self._SPACE.match(self.buffer, self.pos).end()
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if self.eof:
                return None
            self._fill()

    def value(self, where):
        """Decode the value at the current position; refuse one past MAX_ROW_BYTES or MAX_ROW_DEPTH."""
        while True:
            pending = len(self.buffer) - self.pos
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
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
                    self.pos = end
                    return value
                error = None  # a number or word at the very end of the chunk may go on
            if pending > MAX_ROW_BYTES:
                raise FileProblem(
                    f"{where}: {_TOO_LARGE}" + (f", or not valid JSON ({error})" if error else "")
                )
            self._fill(at_least=pending)  # at least doubles what is held: each row is decoded a few times


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
        number = 0
        while True:
            char = text.next_char()
            if char == "]":
                text.pos += 1
                break
            if number:
                if char != ",":
                    raise FileProblem(f"not valid JSON after row {number} (',' or ']' expected)")
                text.pos += 1
                if text.next_char() is None:
                    break
            if char is None:
                raise FileProblem("not valid JSON (the array is not closed)")
            number += 1
            yield number, f"row {number}", text.value(f"row {number}")
        if text.next_char() is not None:
            raise FileProblem("not valid JSON (something follows the array)")
    except UnicodeDecodeError:
        raise FileProblem("not UTF-8 text") from None


def _jsonl_rows(source):
    buffered = io.BufferedReader(source, _CHUNK)
    number = line_number = 0
    while True:
        line = buffered.readline(MAX_ROW_BYTES + 1)
        if not line:
            return
        line_number += 1
        if not line.strip():
            continue
        number += 1
        where = f"row {number}" if number == line_number else f"row {number} (line {line_number})"
        if len(line.rstrip(b"\r\n")) > MAX_ROW_BYTES:
            raise FileProblem(f"{where}: {_TOO_LARGE}")  # the rest of the line is not read
        try:
            yield number, where, json.loads(line)
        except UnicodeDecodeError:
            raise FileProblem(f"{where}: not UTF-8 text") from None
        except RecursionError:
            yield number, where, _Unparseable(_TOO_DEEP)
        except ValueError as exc:
            yield number, where, _Unparseable(f"not valid JSON ({exc.msg} at column {exc.colno})")


class _RecordTooLarge(Exception):
    pass


class _CsvLines:
    """The lines of a CSV file as text for csv.reader, counting what the current record has taken."""

    def __init__(self, source):
        self.buffered = io.BufferedReader(source, _CHUNK)
        self.record_bytes = 0
        self.encoding = "utf-8-sig"  # the first line may start with a byte-order mark

    def __iter__(self):
        return self

    def __next__(self):
        line = self.buffered.readline(MAX_ROW_BYTES + 1)
        if not line:
            raise StopIteration
        self.record_bytes += len(line)
        if self.record_bytes > MAX_ROW_BYTES + 2:  # a line, or a record's quoted lines, past the limit
            raise _RecordTooLarge
        text, self.encoding = line.decode(self.encoding), "utf-8"
        return text


def _csv_rows(source):
    csv.field_size_limit(MAX_ROW_BYTES)  # this process checks one file: the default is 128 KB a field
    lines = _CsvLines(source)
    number = 0
    try:
        for number, row in enumerate(csv.DictReader(lines), 1):  # noqa: B007 (number is read below)
            lines.record_bytes = 0
            if None in row:
                yield number, f"row {number}", _Unparseable("has more values than the header has columns")
            else:
                yield number, f"row {number}", row
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
        for batch in parquet.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                number += 1
                yield number, f"row {number}", row
    except ImportError:
        raise FileProblem("parquet files need pyarrow, which is not installed") from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise FileProblem(f"not a valid parquet file ({exc})") from None


class _Unparseable:
    def __init__(self, reason):
        self.reason = reason


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


def _shown(value, limit=60):
    """A value as a problem message quotes it: cut, so that a crafted row cannot grow the answer."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def detect(row):
    """Tell the format a row is written in from its columns, or None."""
    if not isinstance(row, dict):
        return None
    if "chosen" in row and "rejected" in row:
        return "pairwise"
    if isinstance(row.get("label", row.get("kto_tag")), bool):
        return "kto"
    if "messages" in row or "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    return None


def layout_of(fmt, row):
    """How a row of `fmt` is laid out: 'alpaca' (instruction/...) or a conversation key."""
    if fmt in ("sharegpt", "pairwise", "kto") and isinstance(row, dict):
        for key in _STYLES:
            if key in row:
                return key
    return "alpaca" if fmt in ("alpaca", "pairwise", "kto") else fmt


def problems_of(fmt, layout, row):
    """Return what is wrong with one row of `fmt` (laid out as `layout`), as short phrases."""
    if isinstance(row, _Unparseable):
        return [row.reason]
    if not isinstance(row, dict):
        return ["is not an object of columns"]
    if fmt == "text":
        return _text(row, "text", "text")
    label = None
    if fmt == "kto":
        key = "label" if "label" in row else "kto_tag"
        label = [] if isinstance(row.get(key), bool) else [f"{key} must be true or false (the kto label)"]
    if layout == "alpaca":
        found = _alpaca(row, fmt)
    elif layout not in row:
        other = next((k for k in _STYLES if k in row), None)
        found = [f"{layout} is missing" + (f" (this row has {other}; one file uses one)" if other else "")]
    else:
        found = _conversation(row, layout, fmt)
    return found + (label or [])


def _text(row, key, name):
    value = row.get(key)
    if value is None:
        return [f"{name} is missing"]
    if not isinstance(value, str):
        return [f"{name} must be a string"]
    if not value.strip():
        return [f"{name} is empty"]
    return []


def _alpaca(row, fmt):
    found = []
    for key in ("instruction", "input", "system"):
        if row.get(key) is not None and not isinstance(row[key], str):
            found.append(f"{key} must be a string")
    if "instruction" not in row:
        found.append("instruction is missing")
    elif not any(isinstance(row.get(k), str) and row[k].strip() for k in ("instruction", "input")):
        found.append("instruction and input are both empty")
    targets = ("chosen", "rejected") if fmt == "pairwise" else ("output",)
    for key in targets:
        found += _text(row, key, key)
    history = row.get("history")
    if history is not None and not (
        isinstance(history, list)
        and all(isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in history)
    ):
        found.append("history must be a list of [question, answer] pairs of strings")
    return found


def _conversation(row, layout, fmt):
    style = _STYLES[layout]
    turns = row[layout]
    if not isinstance(turns, list) or not turns:
        return [f"{layout} must be a non-empty list of turns"]
    found = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get(style["content"]), str):
            return [f"{layout}[{index}] must be an object with a string {style['content']}"]
    if turns[0].get(style["role"]) == _SYSTEM:
        turns = turns[1:]
        offset = 1
    else:
        offset = 0
    expected = ((style["user"], _OBSERVATION), (style["assistant"], _FUNCTION))
    for index, turn in enumerate(turns):
        role = turn.get(style["role"])
        if role not in expected[index % 2]:
            want = expected[index % 2][0]
            return [
                f"{layout}[{index + offset}].{style['role']} is {_shown(repr(role))} where {want!r} belongs"
            ]
    ranking = fmt == "pairwise"
    if not ranking and len(turns) % 2:
        found.append(f"{layout} must end with an {style['assistant']!r} turn (the training target)")
    elif ranking and not len(turns) % 2:
        found.append(f"{layout} must end with a {style['user']!r} turn (chosen and rejected answer it)")
    elif not ranking and not turns[-1][style["content"]].strip():
        found.append(f"the last {style['assistant']!r} turn is empty")
    if ranking:
        for key in ("chosen", "rejected"):
            answer = row.get(key)
            if not isinstance(answer, dict) or answer.get(style["role"]) not in expected[1]:
                found.append(
                    f"{key} must be an {style['assistant']!r} turn with {style['role']}/{style['content']}"
                )
            elif not isinstance(answer.get(style["content"]), str) or not answer[style["content"]].strip():
                found.append(f"{key} is empty")
    return found


def check(path, fmt=None, max_decoded=DEFAULT_MAX_DECODED):
    """Check every row of a dataset file; return a report (format, rows, sha256, problems, ...)."""
    kind = kind_of(path)
    report = {"format": fmt, "layout": None, "rows": 0, "columns": [], "problems": []}
    handle = {}
    decoded = 0

    def reader(raw):
        handle["r"] = _HashingReader(raw)
        return handle["r"]

    try:
        for number, where, row in rows(path, kind, reader):
            if not isinstance(row, _Unparseable):
                size, too_much = cost(row)
                if too_much:
                    row = _Unparseable(too_much)
                else:
                    decoded += size
                    if decoded > max_decoded:
                        report["problems"].append(
                            f"{where}: the rows decode to more than {max_decoded // MIB} MiB (max_decoded_mb)"
                        )
                        break
            if number == 1:
                if isinstance(row, _Unparseable):
                    report["problems"].append(f"{where}: {row.reason}")
                    break
                if report["format"] is None:
                    report["format"] = detect(row)
                    if report["format"] is None:
                        keys = (
                            ", ".join(sorted(map(str, row))) if isinstance(row, dict) else type(row).__name__
                        )
                        report["problems"].append(
                            f"{where}: its columns ({_shown(keys, 200)}) fit none of {', '.join(FORMATS)}; "
                            "name the format"
                        )
                        break
                if kind == "csv" and report["format"] in ("sharegpt", "kto"):
                    report["problems"].append(
                        f"{report['format']} rows need lists or booleans, which CSV cannot hold: "
                        "use .json, .jsonl or .parquet"
                    )
                    break
                report["layout"] = layout_of(report["format"], row)
                report["columns"] = sorted(row) if isinstance(row, dict) else []
            report["rows"] = number
            for problem in problems_of(report["format"], report["layout"], row):
                report["problems"].append(f"{where}: {problem}")
            if len(report["problems"]) >= MAX_PROBLEMS:
                break
    except FileProblem as exc:
        report["problems"].append(str(exc))
    if not report["rows"] and not report["problems"]:
        report["problems"].append("the file holds no rows")
    report["bytes"] = os.path.getsize(path)
    report["sha256"] = None
    if not report["problems"]:
        report["sha256"] = handle["r"].sha256.hexdigest() if "r" in handle else _sha256(path)
    report["stages"] = STAGES.get(report["format"], [])
    return report


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def preview(path, count):
    """Return {"rows": the first `count` rows, their long values cut, "truncated": whether any was}."""
    found, truncated = [], False
    for _number, _where, row in rows(path, kind_of(path)):
        shown, cut = clip(row if not isinstance(row, _Unparseable) else {"_unparseable": row.reason})
        found.append(shown)
        truncated = truncated or cut
        if len(found) >= count:
            break
    return {"rows": found, "truncated": truncated}


def clip(value, depth=0):
    """Return (value as a preview shows it, whether anything was cut): long texts, deep or long containers."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return (value, False) if len(value) <= PREVIEW_CHARS else (value[:PREVIEW_CHARS] + "\u2026", True)
    if not isinstance(value, (dict, list)):
        return value, False
    if depth >= PREVIEW_DEPTH:
        return "\u2026", True
    cut = len(value) > PREVIEW_ITEMS
    if isinstance(value, dict):
        shown = {}
        for key, item in list(value.items())[:PREVIEW_ITEMS]:
            shown[str(key)[:PREVIEW_CHARS]], item_cut = clip(item, depth + 1)
            cut = cut or item_cut or len(str(key)) > PREVIEW_CHARS
        return shown, cut
    shown = []
    for item in value[:PREVIEW_ITEMS]:
        item, item_cut = clip(item, depth + 1)
        shown.append(item)
        cut = cut or item_cut
    return shown, cut


def _limit(memory_mb, cpu_s):
    """Bound this process: address space (a MemoryError past it) and CPU seconds (SIGXCPU past them)."""
    if memory_mb:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * MIB, memory_mb * MIB))
    if cpu_s:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m imts_flask.dataset_rows")
    parser.add_argument("--memory-mb", type=int, default=0, help="address space limit (0: none)")
    parser.add_argument("--cpu-s", type=int, default=0, help="CPU seconds limit (0: none)")
    parser.add_argument("--max-decoded-mb", type=int, default=DEFAULT_MAX_DECODED // MIB)
    parser.add_argument("action", choices=("check", "preview"))
    parser.add_argument("file")
    parser.add_argument("format_or_count", nargs="?", help="check: the format; preview: how many rows")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    _limit(args.memory_mb, args.cpu_s)
    try:
        if args.action == "check":
            result = check(args.file, args.format_or_count, args.max_decoded_mb * MIB)
        else:
            result = preview(args.file, int(args.format_or_count or 1))
    except FileProblem as exc:
        result = {"format": None, "rows": 0, "problems": [str(exc)]}
    except MemoryError:
        result = {
            "format": None,
            "rows": 0,
            "problems": [
                f"checking the file needs more than {args.memory_mb} MB of memory (check_memory_mb)"
            ],
        }
    json.dump(result, sys.stdout, ensure_ascii=False, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
