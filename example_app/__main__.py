"""``python -m example_app [--host 127.0.0.1] [--port 5000]``: run the demo.

Flask's development server, threaded and without the reloader, so the
embedded Celery worker thread lives in this same process.
"""

from __future__ import annotations

import argparse
import os

from . import create_app, embedded_mode


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; the port defaults to ``$PORT``, else 5000."""
    parser = argparse.ArgumentParser(
        prog="python -m example_app", description="Run the flask-jobtastic demo app."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT") or 5000), help="port to listen on"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build the app and serve it until interrupted."""
    args = parse_args(argv)
    app = create_app()
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    if embedded_mode(app):
        how = "jobs run on a worker thread in this process (no servers needed)"
    else:
        how = "jobs run on `celery -A example_app.worker worker`"
    print(f"flask-jobtastic demo: http://{shown_host}:{args.port}/  ({how})", flush=True)
    app.run(host=args.host, port=args.port, threaded=True, use_reloader=False, debug=False)


if __name__ == "__main__":
    main()
