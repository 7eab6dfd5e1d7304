"""Hostile input, second round: memory bombs, compressed amplification, names that collide with the
store's own files, cross-site requests, slow clients, ids that touch files, webhook redirects, an
export racing a symlink, malformed framing, secrets in the access log.

Each class of attack has a test here that failed before its fix. Most run through Flask's test
client; slow clients, framing and the access log need gunicorn as deployed (gunicorn.conf.py).
"""

import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from conftest import (
    ALPACA_ROWS,
    API,
    PROJECT,
    Receiver,
    api_create,
    api_done,
    api_status,
    assert_error,
    jsonl_bytes,
    make_home,
    upload,
    uploads_registry,
    uploads_root,
    wait_for,
)
from harness import Service

MIB = 1024 * 1024
BODY = {"model_name": "tiny-llama", "dataset": "demo_sft"}


def _all_files(root):
    """Every path under `root`, lock files included: a refused request must create none of them."""
    found = set()
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return {p for p in found if not p.startswith("logs")}


# -- 1. memory bombs: the row checker's depth, row size and memory are bounded ----------------------


def _check_peak_mb(path):
    """Run the row checker as the service does and return (its report, its peak RSS in MB).

    The peak is the child's own VmHWM: a forked child's ru_maxrss starts at its parent's size.
    """
    code = (
        "import sys; from imts_flask.datasets.rows import main; main(sys.argv[1:]); "
        "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')), file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "check", str(path)], cwd=PROJECT, capture_output=True, check=True
    )
    return json.loads(result.stdout), int(result.stderr.split()[1]) / 1024


def test_a_deeply_nested_json_file_is_refused_with_flat_memory(tmp_path):
    nested = tmp_path / "nested.json"
    nested.write_text("[" + "[" * 16_000 + "]" * 16_000 + "]")  # 32 KB; took 621 MB before
    report, peak_mb = _check_peak_mb(nested)
    assert report["problems"] and "row 1" in report["problems"][0] and "32 levels" in report["problems"][0]
    assert peak_mb < 150, f"the check of a 32 KB file took {peak_mb:.0f} MB"


@pytest.mark.parametrize(
    ("filename", "content", "words"),
    [
        ("bomb.json", b"[" * 100_000 + b"]" * 100_000, "nested deeper than 32 levels"),
        ("bomb.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested deeper than 32 levels"),
        (
            "deep.jsonl",
            jsonl_bytes([{**ALPACA_ROWS[0], "meta": json.loads("[" * 40 + "]" * 40)}]),
            "nested deeper than 32 levels",
        ),
        ("long.jsonl", b'{"text": "' + b"x" * (17 * MIB) + b'"}\n', "larger than 16 MiB"),
        ("long.json", b'[{"text": "' + b"x" * (17 * MIB) + b'"}]', "larger than 16 MiB"),
        ("long.csv", b"text\n" + b"x" * (17 * MIB) + b"\n", "larger than 16 MiB"),
    ],
)
def test_a_row_that_costs_too_much_is_a_400_naming_the_row_and_the_limit(make_app, filename, content, words):
    client = make_app().test_client()
    body = assert_error(upload(client, "bomb", content, filename=filename), 400, "file")
    assert body["errors"][0]["reason"].startswith("row 1") and words in body["errors"][0]["reason"]
    assert uploads_registry(client) == {}


def test_a_long_csv_field_within_the_row_limit_is_fine(make_app):
    client = make_app().test_client()
    text = "word " * 60_000  # 300 KB: over the csv module's default field limit of 128 KB
    response = upload(client, "long_text", f"text\n{text}\n".encode(), filename="d.csv")
    assert response.status_code == 201, response.get_json()


# -- 2. compressed input: decoded rows, uploads and previews are bounded -----------------------------


def _parquet(rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, compression="zstd")
    return buffer.getvalue()


def test_a_small_parquet_that_decodes_to_a_huge_row_is_refused(make_app):
    client = make_app().test_client()
    content = _parquet([{"text": "x" * (20 * MIB)}])
    assert len(content) < 64 * 1024  # zstd: a few KB on the wire
    body = assert_error(upload(client, "zip_bomb", content, filename="d.parquet"), 400, "file")
    assert body["errors"][0]["reason"].startswith("row 1") and "16 MiB" in body["errors"][0]["reason"]


def test_an_upload_that_decodes_past_max_decoded_mb_is_refused(make_app):
    client = make_app(max_decoded_mb=1).test_client()
    content = _parquet([{"text": f"{i} " + "y" * 1000} for i in range(3000)])  # 3 MB decoded
    body = assert_error(upload(client, "amplified", content, filename="d.parquet"), 400, "file")
    assert "max_decoded_mb" in body["message"] and "1 MiB" in body["message"]
    assert uploads_registry(client) == {}


def test_a_preview_cuts_long_values_and_says_so(make_app):
    client = make_app().test_client()
    rows = [{"text": "z" * MIB}, {"text": "short"}]
    assert upload(client, "long_rows", jsonl_bytes(rows)).status_code == 201
    response = client.get(f"{API}/datasets/long_rows?preview=2")
    assert response.status_code == 200 and len(response.get_data()) < 64 * 1024
    shown = response.get_json()
    assert shown["preview_truncated"] is True
    assert shown["preview"][0]["text"].startswith("zzz") and len(shown["preview"][0]["text"]) <= 1001
    assert shown["preview"][1] == {"text": "short"}
    assert client.get(f"{API}/datasets/demo_sft?preview=1").get_json()["preview_truncated"] is False


# -- 3. names never collide with the store's own files; a damaged registry is repaired --------------


@pytest.mark.parametrize("name", ["dataset_info.json", "dataset_info", "dataset_info.json.bak"])
def test_a_dataset_name_of_the_registrys_own_file_is_refused(make_app, name):
    client = make_app().test_client()
    body = assert_error(upload(client, name, jsonl_bytes(ALPACA_ROWS)), 400, "name")
    assert "reserved" in body["message"]
    assert client.post(f"{API}/jobs", json=BODY).status_code == 201
    assert client.get(f"{API}/datasets").status_code == 200
    assert upload(client, "after", jsonl_bytes(ALPACA_ROWS)).status_code == 201


def test_a_damaged_registry_is_rebuilt_from_the_versions_and_never_takes_jobs_down(make_app):
    client = make_app().test_client()
    kept = upload(client, "kept", jsonl_bytes(ALPACA_ROWS)).get_json()
    registry = os.path.join(uploads_root(client), "dataset_info.json")
    os.remove(registry)
    os.mkdir(registry)  # what an upload named dataset_info.json used to leave behind
    assert client.post(f"{API}/jobs", json=BODY).status_code == 201
    assert client.post(f"{API}/jobs", json={**BODY, "dataset": "kept"}).status_code == 201
    listed = {d["name"]: d for d in client.get(f"{API}/datasets").get_json()["datasets"]}
    assert listed["kept"]["file"] == kept["file"] and listed["kept"]["rows"] == kept["rows"]
    assert os.path.isfile(registry) and uploads_registry(client)["kept"]["file_name"].startswith("kept/")
    aside = [n for n in os.listdir(uploads_root(client)) if n.startswith("dataset_info.json.damaged-")]
    assert len(aside) == 1  # the damaged one is kept for a person to look at, never deleted
    assert client.get(f"{API}/health").get_json()["checks"]["uploads_registry"]["ok"] is True


def test_a_registry_that_cannot_be_repaired_shows_in_health_and_jobs_still_start(make_app, monkeypatch):
    client = make_app().test_client()
    registry = os.path.join(uploads_root(client), "dataset_info.json")
    os.mkdir(registry)
    real_rename = os.rename

    def refuse(src, dst, *args, **kwargs):
        if str(src) == registry:
            raise PermissionError(13, "Permission denied")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", refuse)
    health = client.get(f"{API}/health")
    assert health.status_code == 200  # shared by every instance: reported, not a reason to drain them
    check = health.get_json()["checks"]["uploads_registry"]
    assert check["ok"] is False and "dataset_info.json" in check["problem"]
    assert health.get_json()["degraded"] == ["uploads_registry"]
    assert client.post(f"{API}/jobs", json=BODY).status_code == 201
    refused = upload(client, "new_one", jsonl_bytes(ALPACA_ROWS))
    assert refused.status_code == 503 and "registry" in refused.get_json()["message"]


# -- 4. cross-site requests: JSON only, same origin for changes, known Host names -------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_json_endpoint_takes_only_application_json(client, home, content_type):
    before = _all_files(home)
    response = client.post(f"{API}/jobs", data=json.dumps(BODY), content_type=content_type)
    assert_error(response, 415, "Content-Type")
    assert _all_files(home) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Host": "localhost:8000", "Origin": "http://localhost:9999"},  # another port: another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://sub.localhost"},
    ],
)
def test_a_cross_site_form_cannot_stop_a_job(make_app, headers):
    client = make_app("--steps", "400", "--interval", "0.05").test_client()
    job_id = api_create(client)
    wait_for(lambda: api_status(client, job_id)["status"] == "running")
    response = client.post(
        f"{API}/jobs/{job_id}/stop",
        data="x=1",
        content_type="application/x-www-form-urlencoded",
        headers=headers,
    )
    assert_error(response, 403, "Origin")
    assert api_status(client, job_id)["status"] == "running"
    assert client.post(f"{API}/jobs/{job_id}/stop").status_code in (200, 202)  # curl and Spring: no Origin


def test_a_no_cors_fetch_cannot_replace_a_dataset(make_app):
    client = make_app().test_client()
    first = upload(client, "mine", jsonl_bytes(ALPACA_ROWS)).get_json()
    data = {"name": "mine", "file": (io.BytesIO(jsonl_bytes(ALPACA_ROWS[:2])), "x.jsonl")}
    response = client.post(
        f"{API}/datasets?overwrite=true",
        data=data,
        content_type="multipart/form-data",
        headers={
            "Origin": "http://evil.example",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "no-cors",
        },
    )
    assert_error(response, 403, "Origin")
    assert client.get(f"{API}/datasets/mine").get_json()["sha256"] == first["sha256"]


def test_the_dashboards_own_requests_pass(make_app):
    client = make_app("--steps", "1").test_client()
    same = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert client.post(f"{API}/jobs", json=BODY, headers=same).status_code == 201
    assert client.post(f"{API}/jobs", json=BODY, headers={"Origin": "http://localhost"}).status_code == 201


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "rebind.attacker.test"])
def test_an_unknown_host_name_is_421(client, host):
    response = client.get(f"{API}/jobs", headers={"Host": host})
    assert_error(response, 421, "Host")


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "10.1.2.3", "192.168.0.7:80"]
)
def test_addresses_and_local_names_are_allowed_hosts(client, host):
    assert client.get(f"{API}/jobs", headers={"Host": host}).status_code == 200


def test_allowed_hosts_names_the_public_names(make_app):
    client = make_app(allowed_hosts="api.example.com,.corp.example").test_client()
    for host in ("api.example.com", "gpu1.corp.example:8000", "localhost"):
        assert client.get(f"{API}/jobs", headers={"Host": host}).status_code == 200, host
    assert_error(client.get(f"{API}/jobs", headers={"Host": "example.com"}), 421, "Host")
    anything = make_app(allowed_hosts="*").test_client()
    assert anything.get(f"{API}/jobs", headers={"Host": "whatever.test"}).status_code == 200


# -- 6. ids are validated before any file is touched -----------------------------------------------

BAD_IDS = ["train_abcdefg\n", "train_\u202eabcdefg", "train_abcd%00ef", "train_" + "a" * 300, "x" * 300]


def _job_routes(app):
    for rule in app.url_map.iter_rules():
        if "<job_id>" in rule.rule:
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield method, rule.rule


@pytest.mark.parametrize("job_id", BAD_IDS)
def test_a_malformed_id_touches_no_file_on_any_route(client, home, job_id):
    before = _all_files(home)
    for method, rule in _job_routes(client.application):
        path = rule.replace("<job_id>", job_id)
        response = client.open(path, method=method, json={"export_dir": "x"})
        assert response.status_code in (400, 404), (method, path, response.status_code)
        assert response.is_json, (method, path)
        if path.startswith("/v1/"):  # OpenAI's face answers in OpenAI's error shape
            assert response.get_json()["error"]["message"], (method, path)
        else:
            assert response.get_json()["status"] == response.status_code, (method, path)
    assert _all_files(home) == before


# -- 7. webhooks follow no redirect ------------------------------------------------------------------


def test_a_webhook_redirect_to_another_scheme_is_not_followed(make_app):
    ftp = socket.socket()
    ftp.bind(("127.0.0.1", 0))
    ftp.listen(8)
    ftp.settimeout(0.2)
    redirect = Receiver(script=[302] * 20)
    location = f"ftp://127.0.0.1:{ftp.getsockname()[1]}/loot"
    redirect.server.RequestHandlerClass.do_POST = _answer_redirect(location)
    client = make_app("--steps", "1", webhook_attempts=1).test_client()
    job_id = api_create(client, {**BODY, "webhook_url": redirect.url})
    api_done(client, job_id)
    log_path = os.path.join(os.path.dirname(api_status(client, job_id)["config_path"]), "webhooks.log")

    def logged():
        lines = open(log_path).readlines() if os.path.exists(log_path) else []
        return len(lines) >= 3 and lines

    outcomes = [json.loads(line) for line in wait_for(logged)]
    assert all(not o["delivered"] and "redirect" in o["error"] for o in outcomes), outcomes
    with pytest.raises(socket.timeout):
        ftp.accept()  # nothing ever connected to the FTP address
    redirect.close()
    ftp.close()


def _answer_redirect(location):
    def do_post(handler):
        handler.rfile.read(int(handler.headers["Content-Length"]))
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.end_headers()

    return do_post


# -- 8. an export cannot be redirected by a symlink swapped in while it runs -------------------------


def test_an_export_swapped_for_a_symlink_while_it_runs_writes_nothing_outside(make_app, home, tmp_path):
    client = make_app("--steps", "1", "--export-delay", "1.5", export_wait_s=0.2).test_client()
    job_id = api_create(client)
    assert api_done(client, job_id)["status"] == "completed"
    exports = os.path.join(home, "models", "exports")
    os.makedirs(os.path.join(exports, "team"))
    outside = tmp_path / "outside"
    outside.mkdir()
    started = client.post(f"{API}/jobs/{job_id}/export", json={"export_dir": "team/model"})
    assert started.status_code == 202, started.get_json()
    time.sleep(0.3)
    os.rename(os.path.join(exports, "team"), os.path.join(exports, "team-moved"))
    os.symlink(outside, os.path.join(exports, "team"))
    export = wait_for(
        lambda: (e := api_status(client, job_id)["export"])["status"] != "running" and e, timeout=60
    )
    assert os.listdir(outside) == [], "the export was written outside the exports root"
    assert export["status"] == "failed" and "symlink" in export["error"], export
    assert os.listdir(os.path.join(exports, "team-moved")) == []


# -- 5, 9, 10: gunicorn as deployed ------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    home = make_home(tmp_path_factory.mktemp("hostile") / "home")
    service = Service(home, access_log=os.path.join(home, "access.log"))
    service.start()
    yield service
    service.stop()


def test_slow_clients_do_not_stall_health(deployed):
    port = deployed.port
    slow = []
    for _ in range(40):  # a header line every second, never finishing the request head
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /api/v1/training/health HTTP/1.1\r\n")
        slow.append((sock, b"X-Slow: 1\r\n"))
    for _ in range(20):  # a body one byte a second
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /api/v1/training/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        slow.append((sock, b" "))
    latencies = []
    try:
        for _ in range(12):
            for sock, dribble in slow:
                try:
                    sock.sendall(dribble)
                except OSError:
                    pass
            started = time.monotonic()
            assert requests.get(f"{deployed.base}/health", timeout=1).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.5)
    finally:
        for sock, _ in slow:
            sock.close()
    assert max(latencies) < 1.0, latencies


def _raw(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode("latin-1"), body


def _json_error(head, body, status):
    assert "application/json" in head.lower(), head
    error = json.loads(body)
    assert error["status"] == status and error["message"] and "errors" in error and "path" in error
    return error


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST /api/v1/training/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            400,
        ),
        (
            b"GET /api/v1/training/health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            431,
        ),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
        (b"GARBAGE\r\n\r\n", 400),
    ],
)
def test_malformed_framing_gets_the_json_error_shape(deployed, request_bytes, status):
    got, head, body = _raw(deployed.port, request_bytes)
    assert got == status, (head, body[:300])
    _json_error(head, body, status)


def test_a_chunked_body_over_the_limit_is_413(deployed):
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(32)) + b"0\r\n\r\n"  # 2 MiB
    request = (
        b"POST /api/v1/training/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body
    )
    status, head, raw = _raw(deployed.port, request)
    assert status == 413
    _json_error(head, raw, 413)


def test_too_many_form_parts_is_413_naming_the_parts_limit(client):
    fields = {f"f{i}": "x" for i in range(1500)}
    fields["file"] = (io.BytesIO(jsonl_bytes(ALPACA_ROWS)), "d.jsonl")
    response = client.post(f"{API}/datasets", data=fields, content_type="multipart/form-data")
    body = assert_error(response, 413)
    assert "parts" in body["message"] and "bytes" not in body["message"]


def test_tokens_in_the_query_string_stay_out_of_the_access_log(deployed):
    secret = "s3cr3t-" + os.urandom(6).hex()
    requests.get(f"{deployed.base}/jobs?access_token={secret}&limit=5", timeout=10)
    requests.get(f"{deployed.base}/health?token={secret}", timeout=10)
    requests.get(
        f"{deployed.base}/jobs?api_key={secret}", headers={"Referer": f"http://x/?key={secret}"}, timeout=10
    )
    log_path = os.path.join(deployed.home, "access.log")
    text = wait_for(lambda: (t := open(log_path).read()).count("/jobs") >= 2 and t, timeout=10)
    assert secret not in text
    assert "limit=5" in text  # other parameters stay, for whoever reads the log


def test_a_lone_surrogate_in_a_text_value_is_a_400_not_a_500(client, home):
    before = _all_files(home)
    body = (
        '{"model_name": "tiny-llama", "dataset": "demo_sft", "custom_config": {"default_system": "\\ud800"}}'
    )
    assert_error(client.post(f"{API}/jobs", data=body, content_type="application/json"), 400)
    assert _all_files(home) == before


# -- deployments and the registry: the same rules on their routes -------------------------------------

EVIL = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}


def test_cross_site_requests_cannot_deploy_stop_chat_or_move_an_alias(make_app, home):
    client = make_app().test_client()
    for method, path, body in (
        ("POST", f"{API}/deployments", {"job_id": "train_00000000"}),
        ("DELETE", f"{API}/deployments/deploy_00000000", None),
        ("POST", f"{API}/deployments/deploy_00000000/chat", {"messages": [{"role": "user", "content": "x"}]}),
        ("POST", f"{API}/models", {"name": "bot", "job_id": "train_00000000"}),
        ("PUT", f"{API}/models/bot/aliases/prod", {"version": 1}),
        ("DELETE", f"{API}/models/bot/versions/1", None),
    ):
        assert_error(client.open(path, method=method, json=body, headers=EVIL), 403, "Origin")
    assert not os.path.exists(os.path.join(home, "deployments"))
    assert not os.path.exists(os.path.join(home, "models", "registry"))


BAD_NAMES = [
    "..",
    ".trash",
    ".staging",
    "aliases.json",
    "Bot",
    "bot\n",
    "b" * 64,
    "bot%2F..%2Fjobs",
    "\u202ebot",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_malformed_deployment_or_model_name_touches_no_file(client, home, name):
    before = _all_files(home)
    for method, path, body in (
        ("GET", f"{API}/deployments/{name}", None),
        ("DELETE", f"{API}/deployments/{name}", None),
        ("GET", f"{API}/deployments/{name}/upstream", None),
        ("GET", f"{API}/models/{name}", None),
        ("GET", f"{API}/models/{name}/versions/1", None),
        ("DELETE", f"{API}/models/{name}/versions/1", None),
        ("PUT", f"{API}/models/bot/aliases/{name}", {"version": 1}),
        ("PUT", f"{API}/models/{name}/aliases/prod", {"version": 1}),
        ("POST", f"{API}/models", {"name": name, "job_id": "train_00000000"}),
        ("POST", f"{API}/deployments", {"job_id": "train_00000000", "name": name}),
    ):
        response = client.open(path, method=method, json=body)
        assert response.status_code in (400, 401, 404, 405), (method, path, response.status_code)
        assert response.is_json and response.get_json()["status"] == response.status_code
    assert _all_files(home) == before


def test_deployment_listing_pages_are_bounded(client):
    for query in ("limit=0", "limit=1001", "offset=-1", "status=running", "limit=x"):
        assert client.get(f"{API}/deployments?{query}").status_code == 400, query
    assert client.get(f"{API}/deployments?limit=1000").get_json()["deployments"] == []


@pytest.mark.parametrize(
    "method, path, body, field",
    [
        ("POST", "/deployments", {"job_id": "train_00000000", "name": "nlbot\n"}, "name"),
        ("POST", "/deployments", {"job_id": "train_00000000", "template": "default\n"}, "template"),
        ("POST", "/deployments", {"job_id": "train_00000000", "checkpoint": "best\n"}, "checkpoint"),
        ("POST", "/models", {"name": "bot\n", "job_id": "train_00000000"}, "name"),
        (
            "POST",
            "/models",
            {"name": "bot", "job_id": "train_00000000", "checkpoint": "final\n"},
            "checkpoint",
        ),
        ("POST", "/jobs/train_00000000/resume", {"checkpoint": "checkpoint-5\n"}, "checkpoint"),
        ("POST", "/jobs/train_00000000/export", {"export_dir": "x", "checkpoint": "best\n"}, "checkpoint"),
        (
            "POST",
            "/jobs/train_00000000/evaluations",
            {"dataset": "demo_sft", "checkpoint": "best\n"},
            "checkpoint",
        ),
    ],
)
def test_a_name_with_a_trailing_newline_is_refused_and_nothing_written(
    client, home, method, path, body, field
):
    before = _all_files(home)
    response = client.open(f"{API}{path}", method=method, json=body)
    assert_error(response, 400, field)
    assert _all_files(home) == before


def test_an_upload_named_with_a_trailing_newline_is_refused(client, home):
    before = _all_files(home)
    response = client.post(
        f"{API}/datasets",
        data={"name": "mine\n", "file": (io.BytesIO(b'{"instruction": "q", "output": "a"}\n'), "d.jsonl")},
    )
    assert_error(response, 400, "name")
    assert _all_files(home) == before
