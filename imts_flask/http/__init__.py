"""The HTTP layer: the API blueprint and its schemas, the one error shape, auth, the browser guard,
the OpenAPI document, the dashboard, and what gunicorn needs (server.py). It talks to the service."""
