"""End to end: datasets uploaded over HTTP to gunicorn, trained on by the real llamafactory-cli.

Every format and layout the service accepts is uploaded and trained on once, so the dataset_info
entries the service writes are proven against LLaMA Factory itself, not against our reading of it.
"""

import csv
import io
import json
import os

import pytest
import requests

from conftest import TINY_MODEL, make_home
from harness import Service

pytestmark = pytest.mark.e2e

if not os.path.exists(os.path.join(TINY_MODEL, "model.safetensors")):
    pytest.skip("the demo model is not built: run `make setup`", allow_module_level=True)

FAST = {"template": "default", "cutoff_len": 64, "logging_steps": 1}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(make_home(tmp_path_factory.mktemp("e2e-datasets") / "home")).start()
    yield svc
    svc.stop()


def _upload(service, name, content, filename, **fields):
    return requests.post(
        f"{service.base}/datasets",
        files={"file": (filename, content)},
        data={"name": name, **fields},
        timeout=120,
    )


def _train(service, dataset, stage="sft"):
    body = {
        "model_name": "tiny-llama",
        "dataset": dataset,
        "stage": stage,
        "epochs": 1.0,
        "custom_config": FAST,
    }
    return requests.post(f"{service.base}/jobs", json=body, timeout=30)


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_an_uploaded_jsonl_file_is_listed_and_trained_on(service):
    rows = [{"instruction": f"Add {i} and {i}.", "input": "", "output": f"{2 * i}"} for i in range(16)]
    response = _upload(service, "e2e_alpaca", _jsonl(rows), "sums.jsonl")
    assert response.status_code == 201, response.text
    assert response.json()["rows"] == 16 and response.json()["stages"] == ["sft"]
    listed = requests.get(f"{service.base}/datasets", timeout=30).json()["datasets"]
    assert "e2e_alpaca" in [d["name"] for d in listed]
    created = _train(service, "e2e_alpaca")
    assert created.status_code == 201, created.text
    final = service.wait_done(created.json()["job_id"], timeout=300)
    assert final["status"] == "completed", (final.get("error"), final.get("log_tail"))
    assert final["total_steps"] == 8  # 16 rows, batch 2, one epoch: LLaMA Factory read every row


def test_a_pairwise_file_trains_dpo_and_is_refused_for_sft(service):
    rows = [
        {"instruction": f"Greet {i}", "input": "", "chosen": "Hello there", "rejected": "No"}
        for i in range(8)
    ]
    assert _upload(service, "e2e_pairs", json.dumps(rows).encode(), "pairs.json").status_code == 201
    refused = _train(service, "e2e_pairs", "sft")
    assert refused.status_code == 400 and "fit for rm/dpo" in refused.json()["message"]
    created = _train(service, "e2e_pairs", "dpo")
    final = service.wait_done(created.json()["job_id"], timeout=300)
    assert final["status"] == "completed", (final.get("error"), final.get("log_tail"))


def test_a_bad_row_3_is_named_and_nothing_registered(service):
    rows = [{"instruction": "a", "output": "b"}] * 2 + [{"instruction": "c", "output": ""}] + [{"text": "x"}]
    response = _upload(service, "e2e_bad", _jsonl(rows), "bad.jsonl")
    assert response.status_code == 400
    assert response.json()["errors"][0] == {"field": "file", "reason": "row 3: output is empty"}
    assert requests.get(f"{service.base}/datasets/e2e_bad", timeout=30).status_code == 404
    assert not os.path.exists(os.path.join(service.home, "data", "uploads", "e2e_bad"))


def _csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def _parquet(rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.getvalue()


CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
SHAREGPT = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
LAYOUTS = {
    # name: (rows, file name, how to write them, the stage to train)
    "alpaca_csv": ([{"instruction": "Hi", "input": "", "output": "Hello"}] * 8, "a.csv", _csv, "sft"),
    "alpaca_parquet": (
        [{"instruction": "Hi", "input": "", "output": "Hello"}] * 8,
        "a.parquet",
        _parquet,
        "sft",
    ),
    "chat_messages": (
        [{"messages": [{"role": "system", "content": "Be kind."}, *CHAT]}] * 8,
        "m.jsonl",
        _jsonl,
        "sft",
    ),
    "chat_sharegpt": ([{"conversations": SHAREGPT, "system": "Be kind."}] * 8, "c.json", None, "sft"),
    "pairs_sharegpt": (
        [
            {
                "conversations": SHAREGPT[:1],
                "chosen": {"from": "gpt", "value": "Hello"},
                "rejected": {"from": "gpt", "value": "Go"},
            }
        ]
        * 8,
        "p.jsonl",
        _jsonl,
        "rm",
    ),
    "kto_messages": ([{"messages": CHAT, "label": i % 2 == 0} for i in range(8)], "k.jsonl", _jsonl, "kto"),
    "kto_alpaca": (
        [{"instruction": "Hi", "output": "Hello", "label": i % 2 == 0} for i in range(8)],
        "k.json",
        None,
        "kto",
    ),
    "plain_text": ([{"text": f"Once upon a time {i}."} for i in range(8)], "t.csv", _csv, "pt"),
}


def test_every_format_and_layout_trains_with_llamafactory(service):
    jobs = {}
    for name, (rows, filename, write, stage) in LAYOUTS.items():
        content = write(rows) if write else json.dumps(rows).encode()
        response = _upload(service, name, content, filename)
        assert response.status_code == 201, (name, response.text)
        assert stage in response.json()["stages"], (name, response.json())
        created = _train(service, name, stage)
        assert created.status_code == 201, (name, created.text)
        jobs[name] = created.json()["job_id"]
    for name, job_id in jobs.items():
        final = service.wait_done(job_id, timeout=300)
        assert final["status"] == "completed", (name, final.get("error"), final.get("log_tail"))
        if LAYOUTS[name][3] != "pt":  # pretraining packs texts into cutoff_len blocks
            assert final["total_steps"] == 4, name  # 8 rows, batch 2: no row was dropped as malformed
