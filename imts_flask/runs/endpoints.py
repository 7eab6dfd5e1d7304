"""The OpenAI-compatible servers some kinds of run keep (deployments, shared base-model servers):
the ports they take, the address to reach one at, whether it answers, what a client reads of one,
and the event that ends a stream that broke off."""

import json
import socket
import urllib.error
import urllib.request

from ..errors import Conflict
from ..state import JobStatus

PORTS_LOCK = "_deployment_ports"  # held while a run of any serving kind takes its port


def parse_ports(text):
    """ "18100-18199" -> range(18100, 18200)."""
    first, _, last = str(text).partition("-")
    first, last = int(first), int(last or first)
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"deploy_ports {text!r} is not a range of ports like 18100-18199")
    return range(first, last + 1)


def port_free(host, port):
    """Whether nothing listens on host:port. SO_REUSEADDR, as the servers bind: a port whose last
    connections wait in TIME-WAIT (a server that just closed them) is free, not taken for a minute."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(settings, store, run_id):
    """The lowest port of deploy_ports that no live run holds (a deployment's, a shared server's) and
    nothing listens on. The caller holds PORTS_LOCK."""
    taken = set()
    for state in store.active_states(min_age_s=3600):
        port = getattr(state, "port", None)
        if port and state.job_id != run_id:
            taken.add(port)
    for port in parse_ports(settings.deploy_ports):
        if port not in taken and port_free(settings.deploy_host or "127.0.0.1", port):
            return port
    raise Conflict(
        f"every port of deploy_ports ({settings.deploy_ports}) is taken; stop a deployment first",
        field="deploy_ports",
    )


def probe_host(host):
    """The address to reach a server at that listens on `host` (a wildcard is reached locally)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)


def answers(host, port, api_key, timeout=2.0):
    """Whether the server's /v1/models answers 200 with this key."""
    request = urllib.request.Request(
        f"http://{probe_host(host)}:{port}/v1/models", headers={"Authorization": f"Bearer {api_key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


STARTING, READY = "starting", "ready"


def shown_status(state):
    """What a client reads of a server's run: running becomes starting or ready."""
    if state.status == JobStatus.RUNNING.value:
        return READY if state.ready_at else STARTING
    if state.status == JobStatus.COMPLETED.value:  # a server never completes; a record settled so stopped
        return JobStatus.STOPPED.value
    return state.status


def server_view(state, shown):
    """A server's run as its API shows it: the fields `shown`, its status, its GPUs."""
    view = {name: getattr(state, name) for name in shown}
    view["status"] = shown_status(state)
    if state.log_tail:
        view["log_tail"] = state.log_tail
    view["gpu_ids"] = list((state.launch or {}).get("gpus") or [])
    return view


def error_event(message):
    """The last event of a stream that broke off once it had started, as OpenAI's streams carry one."""
    body = {"error": {"message": message, "type": "server_error", "code": "stream_failed"}}
    return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"
