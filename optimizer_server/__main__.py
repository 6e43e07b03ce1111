"""optimizer-server: the fanotify trace server the nri-optimizer plugin starts and talks to.

It inherits one end of an AF_UNIX SOCK_SEQPACKET socketpair (--fd) and serves trace sessions over it
(optimizer_server.protocol) until the plugin closes its end. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import socket
import sys

# Everything the server will ever run is imported here, before the first request.
from optimizer_server import privileges
from optimizer_server.server import Server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="optimizer-server", description="fanotify trace server for the nri-optimizer plugin"
    )
    parser.add_argument("--fd", type=int, default=3, help="inherited SOCK_SEQPACKET socket (default: 3)")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO"
    )
    parser.add_argument(
        "--bounded-queue",
        action="store_true",
        help="keep the kernel's event queue limit (fs.fanotify.max_queued_events); events beyond it are "
        "lost and reported as an overflow. Default: unlimited (kernel memory grows only while we lag).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format="optimizer-server: %(levelname)s %(message)s")
    try:
        control = socket.socket(fileno=args.fd)
    except OSError as e:
        parser.error(f"--fd {args.fd}: {e.strerror}")
    if control.family != socket.AF_UNIX or control.type != socket.SOCK_SEQPACKET:
        parser.error(f"--fd {args.fd}: not an AF_UNIX SOCK_SEQPACKET socket")
    nofile = _raise_nofile_limit()
    try:
        privileges.drop()
    except OSError as e:
        logging.getLogger("optimizer_server").warning("keeping every capability: %s", e.strerror)
    server = Server(control, nofile=nofile, unlimited_queue=not args.bounded_queue)
    # The start-up's objects live as long as we do: out of the collector's sight, so that the per-event
    # garbage (records, ints, bytes; no cycles) does not make each collection walk every module too.
    gc.freeze()
    return server.run()


def _raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard one: every event in a read holds an fd until it is sent."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


if __name__ == "__main__":
    sys.exit(main())
