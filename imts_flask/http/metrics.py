"""Prometheus over HTTP: every request counted and timed, and GET /metrics at the root, where
Prometheus looks by default. The job figures are computed at scrape time (figures.py)."""

import time

from flask import Blueprint, Response, g, request

from . import get_service
from .openapi import doc

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@doc(
    "Prometheus metrics of every worker: requests, jobs by state, queue, slots, GPUs, disk, durations",
    responses={200: "text/plain"},
)
def prometheus_metrics():
    """Prometheus text format: requests by endpoint and status, jobs by state, queue, slots, disk."""
    from . import figures as metrics

    return Response(metrics.render(get_service()), mimetype=metrics.CONTENT_TYPE)


def _observe_completion(*figures):
    from . import figures as metrics

    metrics.observe_completion(*figures)


def init_app(app):
    """Time and count every request (by endpoint rule and status), and each completion relayed
    through /v1 (its tokens, its time to first token), and serve /metrics."""
    app.extensions["imts"].serving.observe = _observe_completion

    @app.before_request
    def _start_timer():
        g.imts_started = time.perf_counter()

    @app.after_request
    def _count_request(response):
        from . import figures as metrics

        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        started = g.get("imts_started", time.perf_counter())
        metrics.observe_request(request.method, endpoint, response.status_code, time.perf_counter() - started)
        return response

    app.register_blueprint(bp)
