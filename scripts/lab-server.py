#!/usr/bin/env python3
"""The wlbs lab's HTTP server: answers with "host N" so the client can tell which cluster
host served a request, and counts what it served. scripts/lab.sh starts one per server
namespace, listening on every address (the cluster IP on lo and the dedicated IP on the NIC).

  GET/HEAD /        "host N"; counted: the workload's requests
  GET/HEAD /ready   "host N"; not counted: readiness probes
  GET      /count   the number of requests to / served so far; not counted
  GET      /slow?ms=N
                    a long connection: "host N\n" at once, then one "." every 100 ms until
                    N ms (0..20000) have passed: ceil(N / 100) dots, Content-Length set, so
                    the client tells a complete body from a cut one. Not counted in /count
  GET      /slowcount
                    "STARTED COMPLETED BROKEN": /slow requests begun, whose whole body was
                    sent, and cut short (the peer went away); not counted
  anything else     404; not counted

Usage: lab-server.py --host N [--bind ADDR] [--port 80] [--name TAG]
"""
import argparse
import http.server
import signal
import sys
import threading
import time
import urllib.parse

# /slow: one byte per tick, at most this long.
SLOW_TICK_S = 0.1
SLOW_MAX_MS = 20000


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "wlbs-lab"
    # One request per connection: the lab wants every request to be a new TCP connection
    # (new source port), which is what the filter hashes on.
    protocol_version = "HTTP/1.0"

    def _send(self, status: int, text: str, with_body: bool) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Wlbs-Lab-Host", str(self.server.host_id))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _handle(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            # Counted before the answer goes out: a request the client saw answered is
            # always in the count.
            with self.server.lock:
                self.server.served += 1
            self._send(200, f"host {self.server.host_id}\n", with_body)
        elif path == "/ready":
            self._send(200, f"host {self.server.host_id}\n", with_body)
        elif path == "/count":
            with self.server.lock:
                served = self.server.served
            self._send(200, f"{served}\n", with_body)
        elif path == "/slow" and with_body:
            self._slow()
        elif path == "/slowcount":
            with self.server.lock:
                counts = (self.server.slow_started, self.server.slow_completed,
                          self.server.slow_broken)
            self._send(200, "%d %d %d\n" % counts, with_body)
        else:
            self._send(404, "not found\n", with_body)

    def _slow(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        try:
            ms = int(query.get("ms", ["1000"])[0])
        except ValueError:
            ms = -1
        if not 0 <= ms <= SLOW_MAX_MS:
            self._send(400, f"ms must be 0..{SLOW_MAX_MS}\n", True)
            return
        first = f"host {self.server.host_id}\n".encode()
        ticks = -(-ms // int(SLOW_TICK_S * 1000))
        with self.server.lock:
            self.server.slow_started += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(first) + ticks))
            self.send_header("X-Wlbs-Lab-Host", str(self.server.host_id))
            self.end_headers()
            self.wfile.write(first)
            self.wfile.flush()
            # On schedule from the start, not drifting with each write's cost.
            start = time.monotonic()
            for n in range(1, ticks + 1):
                delay = start + n * SLOW_TICK_S - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.wfile.write(b".")
                self.wfile.flush()
        except OSError as e:  # reset, broken pipe: the connection was cut
            with self.server.lock:
                self.server.slow_broken += 1
            sys.stderr.write(f"{self.client_address[0]}:{self.client_address[1]} /slow cut: {e}\n")
            self.close_connection = True
            return
        with self.server.lock:
            self.server.slow_completed += 1

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle(False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        # One line per request (client address and port, and the address it was sent to)
        # into the server's log.
        local = self.connection.getsockname()[0]
        sys.stderr.write(
            f"{self.client_address[0]}:{self.client_address[1]} -> {local} {format % args}\n"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", type=int, required=True, help="host number to answer with")
    ap.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: all)")
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
    server.served = 0
    server.slow_started = server.slow_completed = server.slow_broken = 0
    server.lock = threading.Lock()
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
