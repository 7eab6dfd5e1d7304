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

import csv
import hashlib
import io
import json
import os
import sys

EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
FORMATS = ("alpaca", "sharegpt", "pairwise", "kto", "text")
STAGES = {"alpaca": ["sft"], "sharegpt": ["sft"], "pairwise": ["rm", "dpo"], "kto": ["kto"], "text": ["pt"]}
MAX_PROBLEMS = 10
_CHUNK = 1024 * 1024

# The two ways a conversation is written: the key of the list, then its role/content keys and tags.
_STYLES = {
    "messages": {"role": "role", "content": "content", "user": "user", "assistant": "assistant"},
    "conversations": {"role": "from", "content": "value", "user": "human", "assistant": "gpt"},
}
_OBSERVATION, _FUNCTION, _SYSTEM = "observation", "function_call", "system"


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
    """Yield (row number, where, row) for every row of a file; raise FileProblem if it cannot be read."""
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


def _json_rows(source):
    import ijson

    buffered = io.BufferedReader(source, _CHUNK)
    if buffered.peek(64).lstrip()[:1] == b"{":
        raise FileProblem(
            "a .json file must hold a JSON array of rows (a file of one object a line is .jsonl)"
        )
    try:
        for number, row in enumerate(ijson.items(buffered, "item", use_float=True), 1):
            yield number, f"row {number}", row
    except ijson.JSONError as exc:
        raise FileProblem(f"not valid JSON ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise FileProblem("not UTF-8 text") from None


def _jsonl_rows(source):
    number = 0
    for line_number, line in enumerate(io.BufferedReader(source, _CHUNK), 1):
        if not line.strip():
            continue
        number += 1
        where = f"row {number}" if number == line_number else f"row {number} (line {line_number})"
        try:
            yield number, where, json.loads(line)
        except UnicodeDecodeError:
            raise FileProblem(f"{where}: not UTF-8 text") from None
        except ValueError as exc:
            yield number, where, _Unparseable(f"not valid JSON ({exc.msg} at column {exc.colno})")


def _csv_rows(source):
    text = io.TextIOWrapper(io.BufferedReader(source, _CHUNK), encoding="utf-8-sig", newline="")
    try:
        for number, row in enumerate(csv.DictReader(text), 1):
            if None in row:
                yield number, f"row {number}", _Unparseable("has more values than the header has columns")
            else:
                yield number, f"row {number}", row
    except UnicodeDecodeError:
        raise FileProblem("not UTF-8 text") from None
    except csv.Error as exc:
        raise FileProblem(f"not valid CSV ({exc})") from None


def _parquet_rows(path):
    try:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        number = 0
        for batch in parquet.iter_batches(batch_size=1024):
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


# -- checking ----------------------------------------------------------------------------------


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
            return [f"{layout}[{index + offset}].{style['role']} is {role!r} where {want!r} belongs"]
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


def check(path, fmt=None):
    """Check every row of a dataset file; return a report (format, rows, sha256, problems, ...)."""
    kind = kind_of(path)
    report = {"format": fmt, "layout": None, "rows": 0, "columns": [], "problems": []}
    handle = {}

    def reader(raw):
        handle["r"] = _HashingReader(raw)
        return handle["r"]

    try:
        for number, where, row in rows(path, kind, reader):
            if number == 1:
                if isinstance(row, _Unparseable):
                    report["problems"].append(f"{where}: {row.reason}")
                    break
                if report["format"] is None:
                    report["format"] = detect(row)
                    if report["format"] is None:
                        keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                        report["problems"].append(
                            f"{where}: its columns ({keys}) fit none of {', '.join(FORMATS)}; name the format"
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
    """Return the first `count` rows of a dataset file."""
    found = []
    for _number, _where, row in rows(path, kind_of(path)):
        found.append(row if not isinstance(row, _Unparseable) else {"_unparseable": row.reason})
        if len(found) >= count:
            break
    return found


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["check"] and len(argv) in (2, 3):
            result = check(argv[1], argv[2] if len(argv) == 3 else None)
        elif argv[:1] == ["preview"] and len(argv) == 3:
            result = {"rows": preview(argv[1], int(argv[2]))}
        else:
            print(
                "usage: python -m imts_flask.dataset_rows check FILE [FORMAT] | preview FILE N",
                file=sys.stderr,
            )
            return 2
    except FileProblem as exc:
        result = {"problems": [str(exc)]}
    json.dump(result, sys.stdout, ensure_ascii=False, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
