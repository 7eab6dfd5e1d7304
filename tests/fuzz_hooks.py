"""Schemathesis hooks for tests/http/test_fuzz.py (SCHEMATHESIS_HOOKS=fuzz_hooks).

A positive case is one the OpenAPI document calls valid; the service must accept it (2xx), or
refuse it only for a reason the document gives a status for (401, 403, 404, 409, 429, ...). Some
rules no JSON Schema can state, and the document says them in words instead: that a model, a
dataset, a checkpoint or a run a request names exists on this server (and fits the job's stage),
that a chat's turns take turns and stay under a total, that /usage spans at most 366 days, that an
export's body names the job of its path, that an upload's rows are rows. These hooks make the
positive cases obey those, and only those, by drawing such names from what the test seeded
(IMTS_FUZZ_SEEDS, a JSON file) and from values the schema itself admits. Negative cases are left
as generated: each must be refused.
"""

import datetime
import json
import os
import random

import schemathesis
from schemathesis.transport.serialization import Binary

SEEDS = json.load(open(os.environ["IMTS_FUZZ_SEEDS"]))
_rng = random.Random(int(os.environ.get("IMTS_FUZZ_SEED", "1")))
# The datasets fit for each stage (GET /datasets says which stages each can train).
_BY_STAGE = SEEDS["datasets_by_stage"]
# A DELETE takes a spare (it must not remove what every other operation reads), or names nothing.
_SPARES = {"job_id": "spare_jobs", "name": "spare_datasets", "alias": "spare_aliases"}


def _positive(case):
    meta = case.meta
    return meta is not None and meta.generation.mode.is_positive


def _pick(options):
    return _rng.choice(options) if options else None


@schemathesis.hook
def map_case(context, case):
    """An upload's rows, where the case is made: changed later, schemathesis would take a file's new
    bytes for a schema violation (it cannot read bytes against a schema) and the case for a negative one."""
    if _positive(case) and case.operation.path == f"{API}/datasets" and isinstance(case.body, dict):
        _upload(case, case.body)
    return case


@schemathesis.hook
def before_call(context, case, **kwargs):
    """Every call, the examples' too (a document's example names no resource of this server)."""
    if not _positive(case):
        return
    method = case.operation.method.upper()
    path = case.operation.path
    _path_parameters(case, method, path)
    body = case.body if isinstance(case.body, dict) else None
    if body is not None:
        _BODIES.get((method, path), lambda case, body: None)(case, body)
    if path.endswith("/usage") and isinstance(case.query, dict):
        _usage_span(case.query)
    if path.endswith("/upstream") and _rng.random() < 0.5:  # Nginx passes the client's key
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {SEEDS['deployment_key']}"}


def _path_parameters(case, method, path):
    if case.meta.phase.name.value == "stateful":
        return  # its ids come from the answers it follows (links)
    params = case.path_parameters or {}
    if method == "DELETE":
        for name, pool in _SPARES.items():
            if name in params and _rng.random() < 0.6 and SEEDS[pool]:
                params[name] = SEEDS[pool].pop()
        if "version" in params and _rng.random() < 0.6 and SEEDS["spare_versions"]:
            params["model"], params["version"] = SEEDS["model"], SEEDS["spare_versions"].pop()
        return
    if _rng.random() < 0.8:  # else as generated: mostly a run that does not exist (404)
        if "job_id" in params:
            params["job_id"] = SEEDS["evaluated_job"] if "evaluation_id" in params else _pick(SEEDS["jobs"])
        if "evaluation_id" in params:
            params["evaluation_id"] = SEEDS["evaluation"]
        if "deployment_id" in params:
            params["deployment_id"] = SEEDS["deployment"]
        if "model" in params:
            params["model"] = SEEDS["model"]
        if "version" in params:
            params["version"] = 1
        if "name" in params:
            params["name"] = _pick(SEEDS["datasets"])


def _datasets(stage, count=1):
    fit = _BY_STAGE.get(stage or "sft") or _BY_STAGE["sft"]
    return _rng.sample(fit, k=min(len(fit), max(1, count)))


def _job(case, body):
    body["model_name"] = SEEDS["base_model"]
    names = body.get("dataset")
    count = len(names) if isinstance(names, list) else len(str(names).split(","))
    body["dataset"] = _datasets(body.get("stage"), count)
    validation = body.get("validation")
    if isinstance(validation, dict) and validation.get("dataset") is not None:
        validation["dataset"] = _datasets(body.get("stage"))
    body["webhook_url"] = None  # a job would POST its events to whatever host was drawn


def _resume(case, body):
    body["checkpoint"] = None  # its newest complete checkpoint


def _export(case, body):
    body["job_id"] = case.path_parameters["job_id"] if body.get("job_id") is not None else None
    body["export_dir"] = f"fuzz/{_rng.randrange(10**9)}"
    body["checkpoint"] = "final"


def _evaluation(case, body):
    names = body.get("dataset")
    count = len(names) if isinstance(names, list) else len(str(names).split(","))
    body["dataset"] = _datasets("sft", count)
    body["checkpoint"] = "final"


def _deployment(case, body):
    if body.get("model") is not None:
        body["model"] = f"{SEEDS['model']}:1"  # served by a deployment: it cannot be deleted meanwhile
    else:
        body["job_id"] = SEEDS["completed_job"]
        body["checkpoint"] = _pick(["final", "best", SEEDS["checkpoint"], None])


def _register(case, body):
    body["job_id"] = SEEDS["completed_job"]
    body["checkpoint"] = "final"


def _chat(case, body):
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    turns = messages[: len(messages) - (len(messages) + 1) % 2] or messages[:1]
    total = 0
    for number, message in enumerate(turns):
        message["role"] = "user" if number % 2 == 0 else "assistant"
        message["content"] = str(message.get("content") or "x")[: max(1, 30_000 // max(1, len(turns)))]
        total += len(message["content"])
    body["messages"] = turns


def _upload(case, body):
    rows = SEEDS["upload_rows"].get(body.get("format") or "alpaca") or SEEDS["upload_rows"]["alpaca"]
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    # As generated, a Binary: schemathesis then still counts the case as the positive one it is.
    body["file"] = Binary(content) if isinstance(body.get("file"), Binary) else content


def _usage_span(query):
    start = query.get("from")
    end = query.get("to")
    try:
        first = datetime.date.fromisoformat(start) if start else None
        last = datetime.date.fromisoformat(end) if end else None
    except ValueError:
        return
    today = datetime.datetime.now(datetime.UTC).date()
    first_of_month = today.replace(day=1)
    first = first or first_of_month
    last = last or today
    if last < first or (last - first).days > 365:
        query["to"] = (first + datetime.timedelta(days=_rng.randrange(0, 366))).isoformat()
        if start is None and query["to"] < first_of_month.isoformat():
            query["from"] = query["to"]


API = "/api/v1/training"
_BODIES = {
    ("POST", f"{API}/jobs"): _job,
    ("POST", f"{API}/jobs/{{job_id}}/resume"): _resume,
    ("POST", f"{API}/jobs/{{job_id}}/export"): _export,
    ("POST", f"{API}/jobs/{{job_id}}/evaluations"): _evaluation,
    ("POST", f"{API}/deployments"): _deployment,
    ("POST", f"{API}/models"): _register,
    ("POST", f"{API}/deployments/{{deployment_id}}/chat"): _chat,
}


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """DELETE /deployments/{id} stops a deployment and keeps its record, readable as stopped (its
    error and log tail with it), as the document says: the use-after-free check assumes a DELETE
    makes a resource gone. Only that answer is excused."""
    if (
        type(failure).__name__ == "UseAfterFree"
        and case.operation.path == f"{API}/deployments/{{deployment_id}}"
    ):
        try:
            return response.json().get("status") != "stopped"
        except ValueError:
            return True
    return True
