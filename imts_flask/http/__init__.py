"""The HTTP layer: the API blueprint and its schemas, the one error shape, auth, the browser guard,
the request metrics, the OpenAPI document, the dashboard, and what gunicorn needs (server.py).

Views reach the service through get_service() alone; each concern registers itself on the app.
Flask is imported inside the functions: gunicorn's master imports server.py from here, and loads
no app (nothing is preloaded).
"""


def get_service():
    """The app's TrainingService: the one way a view reaches what the service does."""
    from flask import current_app

    return current_app.extensions["imts"]


def init_app(app, service):
    """Register the service and every part of the HTTP layer on `app`, in the order they run."""
    from . import api, auth, dashboard, errors, guard, metrics, serving, sharing  # noqa: F401 (routes on api.bp)

    settings = service.settings
    app.extensions["imts"] = service
    app.request_class = api.UploadRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.before_request(_forget_caller)  # first: a request refused before auth is nobody's
    app.before_request(service.ensure_housekeeper)
    metrics.init_app(app)  # times every request, the refused ones too
    guard.init_app(app, settings)  # 421 / 403 before anything else looks at a request
    auth.init_app(app, settings)  # 401 without a token, where tokens are configured
    app.register_blueprint(api.bp)
    app.register_blueprint(dashboard.bp)
    errors.register_error_handlers(app)


def _forget_caller():
    """The caller of the previous request on this connection is not this one's (audit, records)."""
    from ..tenancy import principals

    principals.use(None)
