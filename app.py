"""Run the IMTS training API: `python app.py --mode api --port 8000`.

This uses Flask's threaded development server, which is enough for a single user and for trying
the service out. In production run gunicorn (see README, `gunicorn -c gunicorn.conf.py wsgi:app`).
"""

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description="IMTS training API")
    parser.add_argument("--mode", choices=["api"], default="api", help="what to run (only the API for now)")
    parser.add_argument("--host", default=os.environ.get("IMTS_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("IMTS_PORT", "8000")))
    args = parser.parse_args(argv)

    from imts_flask import create_app

    app = create_app()
    print(f"IMTS training API on http://{args.host}:{args.port}/api/v1/training/health", file=sys.stderr)
    app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
