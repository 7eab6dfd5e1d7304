"""dataset_rows: every row of every format checked, as LLaMA Factory's converters read them. No Flask."""

import csv
import json

import pytest

from imts_flask.datasets.readers import rows as read_rows
from imts_flask.datasets.rows import check, preview
from imts_flask.datasets.uploads import entry_for

ALPACA = {"instruction": "Add two and three.", "input": "", "output": "five"}
MESSAGES = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
}
CONVERSATIONS = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
PAIRWISE = {"instruction": "Say hi", "input": "", "chosen": "Hello", "rejected": "Go away"}
PAIRWISE_SHAREGPT = {
    "conversations": [{"from": "human", "value": "Say hi"}],
    "chosen": {"from": "gpt", "value": "Hello"},
    "rejected": {"from": "gpt", "value": "Go away"},
}
KTO = {
    "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    "label": True,
}
TEXT = {"text": "Once upon a time."}


def _write(path, rows, kind):
    if kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "csv":
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.mark.parametrize(
    ("row", "fmt", "layout", "stages"),
    [
        (ALPACA, "alpaca", "alpaca", ["sft"]),
        (MESSAGES, "sharegpt", "messages", ["sft"]),
        (CONVERSATIONS, "sharegpt", "conversations", ["sft"]),
        (PAIRWISE, "pairwise", "alpaca", ["rm", "dpo"]),
        (PAIRWISE_SHAREGPT, "pairwise", "conversations", ["rm", "dpo"]),
        (KTO, "kto", "messages", ["kto"]),
        ({**ALPACA, "label": False}, "kto", "alpaca", ["kto"]),
        (TEXT, "text", "text", ["pt"]),
    ],
)
@pytest.mark.parametrize("kind", ["json", "jsonl", "parquet"])
def test_each_format_is_detected_and_passes(tmp_path, row, fmt, layout, stages, kind):
    path = _write(tmp_path / f"data.{kind}", [row] * 3, kind)
    report = check(path)
    assert report["problems"] == [] and report["rows"] == 3
    assert (report["format"], report["layout"], report["stages"]) == (fmt, layout, stages)
    assert report["columns"] == sorted(row) and len(report["sha256"]) == 64


def test_csv_holds_alpaca_pairwise_and_text_but_not_lists_or_booleans(tmp_path):
    for row, fmt in ((ALPACA, "alpaca"), (PAIRWISE, "pairwise"), (TEXT, "text")):
        report = check(_write(tmp_path / "d.csv", [row, row], "csv"))
        assert report["problems"] == [] and report["format"] == fmt
    report = check(_write(tmp_path / "d.csv", [ALPACA], "csv"), "kto")
    assert "CSV cannot hold" in report["problems"][0]


@pytest.mark.parametrize("kind", ["json", "jsonl"])
def test_rows_across_chunk_boundaries_are_read_whole(tmp_path, kind):
    rows = [{"text": f"{i} " + "w" * (i * 997 % 5000)} for i in range(2500)]  # ~6 MB: chunks of 1 MiB
    rows.insert(1234, {"text": "big " + "b" * (2 * 1024 * 1024)})  # a row longer than a chunk
    path = tmp_path / f"d.{kind}"
    if kind == "json":
        path.write_text("[\n" + ",\n  ".join(json.dumps(r) for r in rows) + "\n]\n")
    else:
        path.write_text("".join(json.dumps(r) + "\r\n" for r in rows))
    read = list(read_rows(str(path), kind))
    assert [row for _n, _w, row, _s in read] == rows
    assert [n for n, _w, _r, _s in read] == list(range(1, len(rows) + 1))
    assert read[1234][3] >= 2 * 1024 * 1024  # its size, as the decoded total counts it


def test_csv_rows_across_chunk_boundaries_keep_quoted_newlines(tmp_path):
    rows = [{"instruction": f"line one {i}\nline two", "output": "x" * (i * 389 % 3000)} for i in range(3000)]
    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as handle:  # a BOM, \r\n line ends
        writer = csv.DictWriter(handle, fieldnames=["instruction", "output"])
        writer.writeheader()
        writer.writerows(rows)
    assert path.stat().st_size > 4 * 1024 * 1024
    read = [row for _n, _l, row, _s in read_rows(str(path), "csv")]
    assert read == rows
    assert check(str(path))["problems"] == ["row 1: output is empty"]  # i = 0: an empty output


def test_parquet_rows_past_the_bounds_are_found_in_their_batch(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    deep = tmp_path / "deep.parquet"
    nested = json.loads("[" * 40 + "1" + "]" * 40)
    pq.write_table(pa.Table.from_pylist([{**ALPACA, "meta": nested}]), deep)
    assert check(str(deep))["problems"] == ["row 1: nested deeper than 32 levels"]
    big = tmp_path / "big.parquet"  # one row group: its average row is small, one row is not
    rows = [ALPACA, {**ALPACA, "output": "o" * (20 * 1024 * 1024)}, ALPACA]
    pq.write_table(pa.Table.from_pylist(rows), big, compression="zstd")
    assert check(str(big))["problems"] == ["row 2: larger than 16 MiB"]


def test_the_sha256_is_of_the_whole_file(tmp_path):
    import hashlib

    path = _write(tmp_path / "d.json", [ALPACA] * 1000, "json")
    with open(path, "a") as handle:
        handle.write("\n\n")  # whitespace after the array, which a parser may leave unread
    assert check(path)["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize(
    ("rows", "fmt", "problem"),
    [
        ([ALPACA, ALPACA, {"instruction": "x"}], None, "row 3: output is missing"),
        ([ALPACA, {**ALPACA, "output": "  "}], None, "row 2: output is empty"),
        ([ALPACA, {**ALPACA, "output": 5}], None, "row 2: output must be a string"),
        ([{**ALPACA, "instruction": "", "input": ""}], None, "row 1: instruction and input are both empty"),
        ([{**ALPACA, "history": [["q"]]}], None, "history must be a list of [question, answer] pairs"),
        (
            [{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}],
            None,
            "row 1: messages[0].role is 'assistant' where 'user' belongs",
        ),
        ([{"messages": [{"role": "user", "content": "Hi"}]}], None, "must end with an 'assistant' turn"),
        ([{"messages": []}], None, "messages must be a non-empty list of turns"),
        ([MESSAGES, CONVERSATIONS], None, "row 2: messages is missing (this row has conversations"),
        ([{**PAIRWISE, "rejected": None}], None, "row 1: rejected is missing"),
        (
            [{**PAIRWISE_SHAREGPT, "chosen": {"from": "human", "value": "x"}}],
            None,
            "chosen must be an 'gpt' turn",
        ),
        ([{**KTO, "label": "yes"}], "kto", "label must be true or false"),
        ([{"text": ""}], None, "row 1: text is empty"),
        ([ALPACA], "pairwise", "row 1: chosen is missing"),  # a file claiming one format, holding another
        ([ALPACA], "text", "row 1: text is missing"),
        ([{"question": "?", "answer": "!"}], None, "fit none of alpaca, sharegpt, pairwise, kto, text"),
    ],
)
def test_bad_rows_are_named_with_their_number(tmp_path, rows, fmt, problem):
    report = check(_write(tmp_path / "d.json", rows, "json"), fmt)
    assert any(problem in p for p in report["problems"]), report["problems"]
    assert report["sha256"] is None


@pytest.mark.parametrize(
    ("content", "name", "problem"),
    [
        (b"", "d.json", "not valid JSON"),
        (b"[]", "d.json", "the file holds no rows"),
        (b"", "d.jsonl", "the file holds no rows"),
        (b'{"instruction": "a", "output": "b"}', "d.json", "must hold a JSON array"),
        (b'[{"instruction": "a", "output": "b"}] trailing', "d.json", "not valid JSON"),
        (b'{"instruction": "a", "output": "b"}\n{oops\n', "d.jsonl", "row 2: not valid JSON"),
        (b"\xff\xfe[]", "d.json", "not UTF-8 text"),
        (b"not parquet at all", "d.parquet", "not a valid parquet file"),
        (b"instruction,output\na,b,c\n", "d.csv", "row 1: has more values than the header"),
    ],
)
def test_unreadable_files_are_refused(tmp_path, content, name, problem):
    path = tmp_path / name
    path.write_bytes(content)
    report = check(str(path))
    assert any(problem in p for p in report["problems"]), report["problems"]


def test_at_most_ten_problems_are_reported(tmp_path):
    report = check(_write(tmp_path / "d.jsonl", [ALPACA] + [{"instruction": "x"}] * 50, "jsonl"))
    assert len(report["problems"]) == 10 and report["problems"][0] == "row 2: output is missing"


def test_jsonl_blank_lines_are_skipped_and_named_by_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ALPACA) + "\n\n" + json.dumps({"instruction": "x"}) + "\n")
    assert check(str(path))["problems"] == ["row 2 (line 3): output is missing"]


def test_preview_reads_only_the_first_rows(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{**ALPACA, "output": str(i)} for i in range(100)], "jsonl")
    shown = preview(path, 3)
    assert [r["output"] for r in shown["rows"]] == ["0", "1", "2"] and shown["truncated"] is False


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            ALPACA,
            {"columns": {"prompt": "instruction", "query": "input", "response": "output"}},
        ),
        (
            MESSAGES,
            {
                "formatting": "sharegpt",
                "columns": {"messages": "messages"},
                "tags": {
                    "role_tag": "role",
                    "content_tag": "content",
                    "user_tag": "user",
                    "assistant_tag": "assistant",
                    "system_tag": "system",
                },
            },
        ),
        (CONVERSATIONS, {"formatting": "sharegpt", "columns": {"messages": "conversations"}}),
        (
            PAIRWISE,
            {
                "ranking": True,
                "columns": {
                    "prompt": "instruction",
                    "query": "input",
                    "chosen": "chosen",
                    "rejected": "rejected",
                },
            },
        ),
        (
            {**ALPACA, "label": True},
            {
                "columns": {
                    "prompt": "instruction",
                    "query": "input",
                    "response": "output",
                    "kto_tag": "label",
                }
            },
        ),
        (TEXT, {"columns": {"prompt": "text"}}),
    ],
)
def test_the_dataset_info_entry_is_what_llamafactory_reads(tmp_path, row, expected):
    report = check(_write(tmp_path / "d.json", [row], "json"))
    assert entry_for(report, "x/v1/data.json") == {"file_name": "x/v1/data.json", **expected}
