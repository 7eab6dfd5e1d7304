"""The dashboard's blueprint: its pages and their static files, over the API's own endpoints.

The pages carry no data and no secret: their scripts fetch everything from the JSON API (so auth,
errors and idempotency are the API's) and put job text on the page as text, never as markup. They
are served without a token; every data call needs one when auth is on. A strict Content-Security-
Policy allows only this origin's scripts and styles, none inline.
"""

from flask import Blueprint, abort, redirect, render_template

from ..runs.ids import JOB_ID_PATTERN

bp = Blueprint(
    "dashboard",
    __name__,
    static_folder="static",
    static_url_path="/dashboard/static",
    template_folder="templates",
)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@bp.after_request
def _protect(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


@bp.get("/")
def root():
    return redirect("/dashboard", code=302)


@bp.get("/dashboard")
def jobs_page():
    return render_template("dashboard/jobs.html")


@bp.get("/dashboard/deployments")
def deployments_page():
    return render_template("dashboard/deployments.html")


@bp.get("/dashboard/serving")
def serving_page():
    return render_template("dashboard/serving.html")


@bp.get("/dashboard/new")
def new_job_page():
    return render_template("dashboard/new.html")  # ?clone=<job_id> is read by its script


@bp.get("/dashboard/datasets")
def datasets_page():
    return render_template("dashboard/datasets.html")


@bp.get("/dashboard/models")
def models_page():
    return render_template("dashboard/models.html")


@bp.get("/dashboard/compare")
def compare_page():
    return render_template("dashboard/compare.html")  # ?jobs=a,b,... is read by its script


@bp.get("/dashboard/jobs/<job_id>")
def job_page(job_id):
    # The job id is read by the page's script from its own address; nothing of it is rendered here.
    if not JOB_ID_PATTERN.fullmatch(job_id):
        abort(404)
    return render_template("dashboard/job.html")
