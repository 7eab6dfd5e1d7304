"""Real servers for end-to-end tests: gunicorn serving a throw-away home, Nginx in front, the
guide's Java client."""

import os
import shutil
import signal
import subprocess
import sys

import psutil
import requests

from imts_flask.llamafactory.environment import free_port

from conftest import DEMO_DATA, PROJECT, SHARED_DATA, wait_for

VENV_BIN = os.path.dirname(sys.executable)
GUNICORN = os.path.join(VENV_BIN, "gunicorn")


class Api:
    """The API at `root` (http://host:port), through requests."""

    def __init__(self, root):
        self.root = root
        self.base = f"{root}/api/v1/training"

    def create(self, body):
        response = requests.post(f"{self.base}/jobs", json=body, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["job_id"]

    def status(self, job_id):
        response = requests.get(f"{self.base}/jobs/{job_id}", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_done(self, job_id, timeout=300):
        return wait_for(
            lambda: (s := self.status(job_id))["status"] in ("completed", "failed", "stopped") and s,
            timeout=timeout,
            interval=0.5,
        )


class Service(Api):
    """A service home and the gunicorn serving it, restartable."""

    def __init__(self, home, argv_extra=(), workers=3, **settings):
        self.home = home
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        data_dirs = [DEMO_DATA] + ([SHARED_DATA] if os.path.isdir(SHARED_DATA) else [])
        self.env = {
            **os.environ,
            "IMTS_HOME": home,
            "IMTS_DATA_DIR": os.pathsep.join(data_dirs),
            "IMTS_STOP_GRACE_S": "15",
            "IMTS_STOP_WAIT_S": "25",
            "IMTS_EXPORT_WAIT_S": "20",
            **{"IMTS_" + name.upper(): str(value) for name, value in settings.items()},
        }
        self.workers = workers
        self.argv_extra = list(argv_extra)
        self.proc = None

    def start(self, argv=None):
        argv = argv or [
            GUNICORN,
            "-b",
            f"127.0.0.1:{self.port}",
            "-w",
            str(self.workers),
            "--timeout",
            "60",
            *self.argv_extra,
            "wsgi:app",
        ]
        log = open(os.path.join(self.home, "gunicorn.log"), "ab")
        self.proc = subprocess.Popen(
            argv, cwd=PROJECT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self._healthy, timeout=60, interval=0.2)
        return self

    def _healthy(self):
        try:
            return requests.get(f"{self.base}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def kill_hard(self):
        """kill -9 the gunicorn master and every worker, as a crash would; job monitors live on."""
        master = psutil.Process(self.proc.pid)
        doomed = [p for p in [master, *master.children(recursive=True)] if _is_gunicorn(p)]
        for proc in doomed:
            proc.kill()
        self.proc.wait()
        psutil.wait_procs(doomed, timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


def start_nginx(tmp_path, servers):
    """Run Nginx with `servers` (server and upstream blocks) in its http block; return (process, port).

    The caller puts {port} where the server should listen.
    """
    port = free_port()
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    (tmp_path / "nginx.conf").write_text(
        f"user root; daemon off; worker_processes 1; pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{ access_log {tmp_path}/access.log; client_body_temp_path {temp['body']}; "
        f"proxy_temp_path {temp['proxy']}; fastcgi_temp_path {temp['fastcgi']}; "
        f"uwsgi_temp_path {temp['uwsgi']}; scgi_temp_path {temp['scgi']};\n"
        + servers.replace("{port}", str(port))
        + "\n}\n"
    )
    proc = subprocess.Popen(["nginx", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)])

    def up():
        try:
            return (
                requests.get(f"http://127.0.0.1:{port}/api/v1/training/health", timeout=5).status_code == 200
            )
        except requests.RequestException:
            return False

    wait_for(up, timeout=30, interval=0.2)
    return proc, port


# The Spring client's classpath: Debian's libspring-web-java and libjackson2-databind-java.
JARS = [
    "spring3-core",
    "spring3-beans",
    "spring3-web",
    "commons-logging",
    "jackson-databind",
    "jackson-core",
    "jackson-annotations",
]


def java_flow_available():
    jars = [f"/usr/share/java/{name}.jar" for name in JARS]
    return bool(shutil.which("javac")) and all(os.path.exists(j) for j in jars)


def run_java_flow(root, build_dir, timeout=900, flow="SpringClientFlow", args=()):
    """Compile tests/java/<flow>.java and run it against `root` (and `args`); return the finished run."""
    classpath = ":".join(f"/usr/share/java/{name}.jar" for name in JARS)
    source = os.path.join(PROJECT, "tests", "java", f"{flow}.java")
    subprocess.run(["javac", "-d", str(build_dir), "-cp", classpath, source], check=True, timeout=300)
    result = subprocess.run(
        ["java", "-cp", f"{build_dir}:{classpath}", flow, root, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(result.stdout)
    return result


def _is_gunicorn(proc):
    try:
        return GUNICORN in proc.cmdline()
    except psutil.Error:  # gone, or a zombie (a monitor killed a moment ago, not reaped yet)
        return False


def tree_pids(pid):
    try:
        root = psutil.Process(pid)
        return [root.pid] + [c.pid for c in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
