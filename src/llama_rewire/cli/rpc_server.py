"""``llama-rewire rpc-server``: this machine's CPU as a device of llama.cpp's RPC backend.

A ``Llama(model, rpc_servers="host:port,...", n_gpu_layers=-1)`` on another machine (or this one) then
runs its offloaded layers here. The server takes one client at a time, and must come from the same
llama-rewire build as its clients.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading

WARNING = ("WARNING: listening on {host}:{port}, not on loopback. The RPC protocol has no authentication "
           "and no encryption, and the server is experimental and not hardened against hostile clients: "
           "never expose it to an open network, only to a private one.")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rewire rpc-server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-H", "--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("-p", "--port", type=int, default=50052, help="port to listen on (50052)")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="CPU threads for the client's graphs (default: every core)")
    p.add_argument("-c", "--cache", action="store_true",
                   help="keep large tensors the clients send in a local cache, so a model loads faster "
                        "the next time (in LLAMA_CACHE, else ~/.cache/llama.cpp/rpc)")
    return p


def cache_dir() -> str:
    base = os.environ.get("LLAMA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llama.cpp")
    path = os.path.join(base, "rpc")
    os.makedirs(path, exist_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.port <= 65535:
        print(f"llama-rewire rpc-server: --port must be from 1 to 65535, got {args.port}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"llama-rewire rpc-server: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    if ":" in args.host or not args.host:
        print(f"llama-rewire rpc-server: --host must be a host name or an IPv4 address, got {args.host!r}",
              file=sys.stderr)
        return 2
    if not _loopback(args.host):
        print(WARNING.format(host=args.host, port=args.port), file=sys.stderr, flush=True)
    from .. import rpc

    failed: list[BaseException] = []

    def run() -> None:
        try:
            cache = cache_dir() if args.cache else None
            rpc.serve(args.host, args.port, threads=args.threads, cache_dir=cache)
        except BaseException as e:  # reported by the main thread
            failed.append(e)

    # ggml's server loop never returns while it serves: it runs in a daemon thread, and the main thread
    # waits for it or for a signal (SIGINT, SIGTERM end the process)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    server = threading.Thread(target=run, name="rpc-server", daemon=True)
    server.start()
    try:
        while server.is_alive():
            server.join(0.5)
    except KeyboardInterrupt:
        return 0
    print(f"llama-rewire rpc-server: {failed[0] if failed else 'the server stopped'}", file=sys.stderr)
    return 1
