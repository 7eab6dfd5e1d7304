"""The HTTP layer: a blueprint per resource with its schemas beside it, the helpers every view
shares (requests.py), the one error shape and its table of statuses (errors.py), auth, the browser
guard, the request metrics, the OpenAPI document, the dashboard, and what gunicorn needs (server.py).

Views reach the service through get_service() alone; each concern registers itself on the app.
Flask is imported inside the functions: gunicorn's master imports server.py from here, and loads
no app (nothing is preloaded).
"""


def get_service():
    """The app's TrainingService: the one way a view reaches what the service does."""
    from flask import current_app

    return current_app.extensions["imts"]


# The API's blueprints, one a resource, each with its schemas beside it (<resource>_schemas.py).
RESOURCES = ("jobs", "evaluations", "datasets", "models", "deployments", "servers", "sharing", "meta")


def init_app(app, service):
    """Register the service and every part of the HTTP layer on `app`, in the order they run."""
    import importlib

    from . import auth, dashboard, errors, guard, metrics, openai, openai_finetuning, requests

    settings = service.settings
    app.extensions["imts"] = service
    app.request_class = requests.UploadRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.before_request(_forget_caller)  # first: a request refused before auth is nobody's
    app.before_request(service.housekeeper.ensure_started)
    metrics.init_app(app)  # times every request, the refused ones too
    guard.init_app(app, settings)  # 421 / 403 before anything else looks at a request
    auth.init_app(app, settings)  # 401 without a token, where tokens are configured
    for name in RESOURCES:
        app.register_blueprint(importlib.import_module(f"{__name__}.{name}").bp)
    app.after_request(requests.conditional)  # ETags on the API's JSON reads
    app.register_blueprint(openai.bp)  # OpenAI's face (/v1): its shapes; the document's x-openai maps it
    app.register_blueprint(openai_finetuning.bp)
    app.register_blueprint(dashboard.bp)
    errors.register_error_handlers(app)


def _forget_caller():
    """The caller of the previous request on this connection is not this one's (audit, records)."""
    from ..tenancy import principals

    principals.use(None)
