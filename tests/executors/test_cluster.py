"""Several IMTS instances behind a real Nginx (deploy/nginx-ha.conf) over a real Ray cluster.

One machine plays the cluster: a Ray head (no CPUs of its own, so it runs no job) and two worker
nodes with one CPU each, each started by `ray start --block` so that the test owns its processes
and can kill a node the way a dead machine goes. Two gunicorn instances share one IMTS_HOME with
`executor: ray`. Jobs run the real llamafactory-cli on tiny-llama.
"""

import json
import os
import shutil
import subprocess
import sys

import psutil
import pytest
import requests

from conftest import PROJECT, TINY_MODEL, make_home, require, wait_for
from harness import Api, Service, free_port, java_flow_available, run_java_flow, start_nginx

pytestmark = pytest.mark.e2e

VENV_BIN = os.path.dirname(sys.executable)
RAY = os.path.join(VENV_BIN, "ray")
FAST = {"template": "default", "cutoff_len": 64, "logging_steps": 1, "save_steps": 20}
BODY = {"model_name": "tiny-llama", "dataset": "demo_sft", "custom_config": FAST}


class RayCluster:
    """A head and worker nodes on this machine, each a `ray start --block` process we own."""

    def __init__(self, root):
        self.root = root
        self.port = free_port()
        self.dashboard = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard}"
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": VENV_BIN + os.pathsep + os.environ["PATH"],
            # A dead node is noticed in a few seconds, not fifteen.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self.nodes = {}

    def _start(self, name, *args):
        log = open(os.path.join(self.root, f"ray-{name}.log"), "ab")
        self.nodes[name] = subprocess.Popen(
            [
                RAY,
                "start",
                "--block",
                "--disable-usage-stats",
                "--object-store-memory",
                str(80 * 2**20),
                "--resources",
                json.dumps({name: 1}),
                *args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self):
        self._start(
            "head",
            "--head",
            f"--port={self.port}",
            "--num-cpus=0",  # the head runs no job: killing a worker node never kills the cluster
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard}",
        )
        try:
            wait_for(self._up, timeout=120, interval=0.5)
            for count, name in enumerate(("node_a", "node_b"), start=2):  # one at a time: they share a host
                self._start(name, f"--address=127.0.0.1:{self.port}", "--num-cpus=1")
                wait_for(lambda n=count: len(self.alive_nodes()) == n, timeout=120, interval=0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def _up(self):
        try:
            return requests.get(f"{self.address}/api/version", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def alive_nodes(self):
        """{node id: our name for it} of the nodes Ray sees alive."""
        reply = requests.get(f"{self.address}/api/v0/nodes", timeout=10).json()
        found = {}
        for node in reply["data"]["result"]["result"]:
            names = [n for n in ("head", "node_a", "node_b") if n in (node.get("resources_total") or {})]
            if node["state"] == "ALIVE" and names:
                found[node["node_id"]] = names[0]
        return found

    def job(self, submission_id):
        return requests.get(f"{self.address}/api/jobs/{submission_id}", timeout=10).json()

    def kill_node(self, name):
        """kill -9 of a node's every process at once, its jobs' monitors and trainers included."""
        try:
            root = psutil.Process(self.nodes[name].pid)
            doomed = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return  # killed already
        for proc in doomed:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(doomed, timeout=30)

    def stop(self):
        for name in reversed(list(self.nodes)):
            self.kill_node(name)
        subprocess.run([RAY, "stop", "--force"], env=self.env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not os.path.exists(RAY):
        require(False, "ray (pip install 'ray[default]')")
    if not os.path.exists(os.path.join(TINY_MODEL, "model.safetensors")):
        pytest.skip("the demo model is not built: run `make setup`")
    ray = RayCluster(str(tmp_path_factory.mktemp("ray"))).start()
    yield ray
    ray.stop()


@pytest.fixture(scope="module")
def instances(cluster, tmp_path_factory):
    home = make_home(tmp_path_factory.mktemp("cluster") / "home")
    settings = {
        "executor": "ray",
        "ray_address": cluster.address,
        "heartbeat_timeout_s": 20,
        "housekeeping_s": 1,
        "launch_timeout_s": 30,
    }
    svcs = [Service(home, workers=2, **settings).start() for _ in range(2)]
    yield svcs
    for svc in svcs:
        svc.stop()


@pytest.fixture(scope="module")
def nginx(instances, tmp_path_factory):
    require(shutil.which("nginx"), "nginx")
    ha = open(os.path.join(PROJECT, "deploy", "nginx-ha.conf")).read()
    ha = ha.replace("10.0.0.11:8000", f"127.0.0.1:{instances[0].port}")
    ha = ha.replace("10.0.0.12:8000", f"127.0.0.1:{instances[1].port}")
    ha = ha.replace("listen 80;", "listen 127.0.0.1:{port};")
    proc, port = start_nginx(tmp_path_factory.mktemp("nginx-ha"), ha)
    yield Api(f"http://127.0.0.1:{port}")
    proc.terminate()
    proc.wait(timeout=30)


def _get(url):
    try:
        return requests.get(url, timeout=10).status_code
    except requests.RequestException:
        return None


def test_the_guides_java_flow_through_nginx_on_ray(nginx, tmp_path):
    require(java_flow_available(), "javac with Spring and Jackson")
    result = run_java_flow(nginx.root, tmp_path, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "JAVA FLOW OK" in result.stdout


def test_a_job_created_through_one_instance_is_stopped_through_the_other(instances, cluster):
    first, second = instances
    job_id = first.create({**BODY, "epochs": 200.0})
    wait_for(lambda: (s := second.status(job_id))["status"] == "running" and s["current_step"], 300, 0.5)
    response = requests.post(f"{second.base}/jobs/{job_id}/stop", timeout=60)
    assert response.status_code in (200, 202), response.text
    final = first.wait_done(job_id, timeout=120)
    assert final["status"] == "stopped"
    # The monitor recorded the stop, then exited: Ray agrees a moment later.
    wait_for(lambda: cluster.job(job_id)["status"] in ("SUCCEEDED", "STOPPED"), timeout=60)


def test_kill9_of_the_instance_that_created_a_running_job(instances, nginx):
    doomed = instances[0]
    job_id = doomed.create({**BODY, "epochs": 4.0})
    wait_for(lambda: nginx.status(job_id)["status"] == "running", timeout=300, interval=0.5)
    doomed.kill_hard()
    answered = [_get(f"{nginx.base}/jobs/{job_id}") for _ in range(20)]
    assert answered == [200] * 20  # Nginx leaves the dead instance out; nothing is refused
    final = nginx.wait_done(job_id, timeout=600)
    assert final["status"] == "completed" and final["attempt"] == 1, final.get("error")
    doomed.start()


def test_killing_the_ray_node_that_runs_a_job_resumes_it_on_the_other(instances, cluster, nginx):
    job_id = nginx.create({**BODY, "epochs": 6.0})  # 360 steps
    output = os.path.join(instances[0].home, "jobs", job_id, "output")
    wait_for(lambda: os.path.exists(os.path.join(output, "checkpoint-40", "trainer_state.json")), 300, 0.2)
    first = cluster.job(job_id)
    node = cluster.alive_nodes()[first["driver_node_id"]]
    assert node in ("node_a", "node_b") and first["status"] == "RUNNING"
    cluster.kill_node(node)
    final = nginx.wait_done(job_id, timeout=900)
    assert final["status"] == "completed", (final.get("error"), final.get("log_tail"))
    assert final["attempt"] >= 2 and final["total_steps"] == final["current_step"] == 360
    state = json.load(open(os.path.join(instances[0].home, "jobs", job_id, "state.json")))
    # The monitor recorded the outcome, then exited: Ray says so a moment later.
    second = wait_for(
        lambda: (j := cluster.job(state["launch"]["submission_id"]))["status"] == "SUCCEEDED" and j
    )
    assert second["submission_id"] != job_id
    assert cluster.alive_nodes()[second["driver_node_id"]] != node  # it ran on the other node
    events = requests.get(f"{nginx.base}/jobs/{job_id}/events", timeout=30).json()["events"]
    resumed = [e for e in events if e["status"] == "running" and e["attempt"] == final["attempt"]]
    assert resumed and resumed[0]["resumed_from"].startswith("checkpoint-")
    series = requests.get(f"{nginx.base}/jobs/{job_id}/metrics?limit=10000", timeout=30).json()
    assert [p["step"] for p in series["points"]] == list(range(1, 361))


def test_rays_job_list_shows_every_imts_job(cluster, nginx):
    ours = requests.get(f"{nginx.base}/jobs?limit=1000", timeout=30).json()["jobs"]
    started = {j["job_id"] for j in ours if j["started_at"]}
    ray_jobs = requests.get(f"{cluster.address}/api/jobs/", timeout=30).json()
    assert started and started <= {j["submission_id"] for j in ray_jobs}
    assert started <= {(j.get("metadata") or {}).get("imts_job_id") for j in ray_jobs}
