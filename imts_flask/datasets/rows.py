"""Read a dataset file row by row and check every row against a LLaMA Factory format.

Run in a child process (`python -m imts_flask.datasets.rows check FILE [FORMAT]` or `preview FILE N`),
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
import hashlib
import json
import os
import resource
import sys

from .readers import (
    DEFAULT_MAX_DECODED,
    MIB,
    FileProblem,
    HashingReader,
    Unparseable,
    kind_of,
    rows,
    where,
)

FORMATS = ("alpaca", "sharegpt", "pairwise", "kto", "text")

STAGES_BY_FORMAT = {
    "alpaca": ["sft"],
    "sharegpt": ["sft"],
    "pairwise": ["rm", "dpo"],
    "kto": ["kto"],
    "text": ["pt"],
}

MAX_PROBLEMS = 10

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
    if isinstance(row, Unparseable):
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
    if not value or value.isspace():
        return [f"{name} is empty"]
    return []


_SFT_TARGETS, _PAIRWISE_TARGETS = ("output",), ("chosen", "rejected")


def _filled(value):
    return type(value) is str and value and not value.isspace()


def _alpaca(row, fmt):
    targets = _PAIRWISE_TARGETS if fmt == "pairwise" else _SFT_TARGETS
    instruction, query = row.get("instruction"), row.get("input")
    if (  # the common row, checked at once: text where text belongs, a prompt and targets, no extras
        type(instruction) is str
        and (query is None or type(query) is str)
        and row.get("system") is None
        and row.get("history") is None
        and ((instruction and not instruction.isspace()) or (query and not query.isspace()))
        and _filled(row.get(targets[0]))
        and (len(targets) == 1 or _filled(row.get(targets[1])))
    ):
        return []
    found = []
    for key in ("instruction", "input", "system"):
        if row.get(key) is not None and not isinstance(row[key], str):
            found.append(f"{key} must be a string")
    if "instruction" not in row:
        found.append("instruction is missing")
    elif not any(isinstance(row.get(k), str) and row[k].strip() for k in ("instruction", "input")):
        found.append("instruction and input are both empty")
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
        handle["r"] = HashingReader(raw)
        return handle["r"]

    try:
        for number, line, row, size in rows(path, kind, reader):
            decoded += size or 0
            if decoded > max_decoded:
                report["problems"].append(
                    f"{where(number, line)}: the rows decode to more than {max_decoded // MIB} MiB "
                    "(max_decoded_mb)"
                )
                break
            if number == 1:
                if isinstance(row, Unparseable):
                    report["problems"].append(f"{where(number, line)}: {row.reason}")
                    break
                if report["format"] is None:
                    report["format"] = detect(row)
                    if report["format"] is None:
                        keys = (
                            ", ".join(sorted(map(str, row))) if isinstance(row, dict) else type(row).__name__
                        )
                        report["problems"].append(
                            f"{where(number, line)}: its columns ({_shown(keys, 200)}) fit none of "
                            f"{', '.join(FORMATS)}; "
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
                report["problems"].append(f"{where(number, line)}: {problem}")
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
    report["stages"] = STAGES_BY_FORMAT.get(report["format"], [])
    return report


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def preview(path, count):
    """Return {"rows": the first `count` rows, their long values cut, "truncated": whether any was}."""
    found, truncated = [], False
    for _number, _line, row, _size in rows(path, kind_of(path)):
        shown, cut = clip(row if not isinstance(row, Unparseable) else {"_unparseable": row.reason})
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
    parser = argparse.ArgumentParser(prog="python -m imts_flask.datasets.rows")
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
