"""OpenAI's preference format (a DPO file) as LLaMA Factory's pairwise conversations.

    {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}
    ->
    {"messages": [...], "chosen": {"role": "assistant", "content": "..."}, "rejected": {...}}

Read and written a line at a time (a line is at most MAX_LINE bytes): memory stays flat whatever the
file's size. What the rows then hold is checked by the datasets' row checker as every upload is.
"""

import json

from ..errors import ValidationFailed

MAX_LINE = 16 * 1024 * 1024
KEYS = ("input", "preferred_output", "non_preferred_output")


def is_preference(path):
    """Whether a JSONL file's first row is in OpenAI's preference format."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(MAX_LINE)
        row = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(row, dict) and "preferred_output" in row and "input" in row


def _answer(row, key, number):
    turns = row.get(key)
    if not isinstance(turns, list) or len(turns) != 1 or not isinstance(turns[0], dict):
        raise ValidationFailed(f"line {number}: {key} must hold one assistant message", field="file")
    return turns[0]


def convert(source, target):
    """Write `source`'s preference rows to `target` as pairwise conversations; a 400 naming the line."""
    with open(source, "rb") as rows, open(target, "wb") as out:
        for number, line in enumerate(iter(lambda: rows.readline(MAX_LINE + 1), b""), start=1):
            if len(line) > MAX_LINE:
                raise ValidationFailed(f"line {number} is longer than {MAX_LINE} bytes", field="file")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValidationFailed(f"line {number} is not JSON: {exc}", field="file") from None
            if not isinstance(row, dict) or set(KEYS) - set(row):
                raise ValidationFailed(
                    f"line {number}: a preference row holds input, preferred_output and non_preferred_output",
                    field="file",
                )
            messages = (row["input"] or {}).get("messages") if isinstance(row["input"], dict) else None
            if not isinstance(messages, list):
                raise ValidationFailed(f"line {number}: input.messages must be a list", field="file")
            pair = {
                "messages": messages,
                "chosen": _answer(row, "preferred_output", number),
                "rejected": _answer(row, "non_preferred_output", number),
            }
            out.write(json.dumps(pair, ensure_ascii=False).encode() + b"\n")
