"""The OpenAI-compatible servers some kinds of run keep (deployments, shared base-model servers):
the address to reach one at, and whether it answers."""

import urllib.error
import urllib.request


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
