#!/usr/bin/env python3
"""The wlbs lab's HTTP server: answers every GET/HEAD with "host N" so the client can tell
which cluster host served a request. scripts/lab.sh starts one per server namespace.

Usage: lab-server.py --host N --bind ADDR [--port 80] [--name TAG]
"""
import argparse
import http.server
import signal
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "wlbs-lab"
    # One request per connection: the lab wants every request to be a new TCP connection
    # (new source port), which is what the filter later hashes on.
    protocol_version = "HTTP/1.0"

    def _reply(self, with_body: bool) -> None:
        body = f"host {self.server.host_id}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Wlbs-Lab-Host", str(self.server.host_id))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._reply(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        # One line per request (client address and port included) into the server's log.
        sys.stderr.write(f"{self.client_address[0]}:{self.client_address[1]} {format % args}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", type=int, required=True, help="host number to answer with")
    ap.add_argument("--bind", required=True, help="address to listen on")
    ap.add_argument("--port", type=int, default=80)
    # Only shows in the command line, so `pgrep -f wlbs-lab` finds the lab's servers too.
    ap.add_argument("--name", default="lab-server", help="tag for logs and pgrep")
    args = ap.parse_args()

    # Exit quietly on SIGTERM/SIGINT (lab.sh stops servers with SIGTERM).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))

    server = http.server.ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    server.host_id = args.host
    print(f"{args.name}: host {args.host} listening on {args.bind}:{args.port}", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except SystemExit:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
