"""A tiny HTTP server that answers every request with one status, for the client's error
tests (taskyard itself has no rate limit yet and never answers 500 on purpose).

    python tests/sdk/status_server.py --port N --status 429 --header Retry-After=7 \
        --body '{"error": "slow down"}'

`GET /__ready` always answers 200, so a test can tell when it listens.
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=int, required=True)
    parser.add_argument("--header", action="append", default=[], help="Name=value")
    parser.add_argument("--body", default="")
    parser.add_argument("--content-type", default="application/json")
    args = parser.parse_args()
    headers = [tuple(h.split("=", 1)) for h in args.header]
    body = args.body.encode()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            ready = self.path == "/__ready"
            self.send_response(200 if ready else args.status)
            for name, value in [] if ready else headers:
                self.send_header(name, value)
            self.send_header("Content-Type", args.content_type)
            self.send_header("Content-Length", str(0 if ready else len(body)))
            self.end_headers()
            if not ready:
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
