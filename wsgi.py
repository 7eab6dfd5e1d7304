"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""

from imts_flask import create_app

app = create_app()
