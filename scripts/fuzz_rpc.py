"""Random RPC messages from both ends (``tests/fuzz/rpc_peer.py``), more of them than the tests send.

    python scripts/fuzz_rpc.py server -n 2000 --seed 1     # random messages to a llama-rewire rpc-server
    python scripts/fuzz_rpc.py client -n 50 --seed 1       # random answers to Llama(rpc_servers=...)

``server``: connections of random and mutated messages (sizes, tensors, graphs, handles) to an
``llama-rewire rpc-server`` child process; the server must close each one and serve a well-behaved
client every 10 connections. A server that dies is reported with the seed and case, and restarted.
``client``: a fake server whose answers are now and then random (sizes, values, extremes), against a
``Llama`` and a decode in a child process; the child must succeed or raise a ValueError / RuntimeError,
not die or hang. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import rpc_peer as rp
import tiny_models

from llama_rewire import rpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fuzz_server(n: int, seed: int, per_seed: int) -> int:
    failures = 0
    done = 0
    while done < n:
        port = free_port()
        endpoint = f"127.0.0.1:{port}"
        proc = rpc.spawn(port, timeout=2)
        try:
            rpc.wait_ready(endpoint, proc)
            count = min(per_seed, n - done)
            try:
                sent = rp.fuzz_server(endpoint, seed, count, alive=lambda p=proc: p.poll() is None)
                print(f"seed {seed}: {count} connections, {sent} messages: served")
            except (AssertionError, OSError) as e:
                failures += 1
                print(f"seed {seed}: FAILED: {e}")
            done += count
            seed += 1
        finally:
            rpc.stop(proc)
    return failures


def fuzz_client(n: int, seed: int) -> int:
    outcomes: Counter[str] = Counter()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "llama.gguf")
        tiny_models.WRITERS["llama"](Path(model))
        for s in range(seed, seed + n):
            with rp.FakeServer(rp.random_answers(s)) as fake:
                try:
                    out = rp.run_client(model, fake.endpoint)
                except AssertionError as e:
                    failures += 1
                    print(f"seed {s}: FAILED: {e}")
                    continue
            ok = out["outcome"] == "ok" or bool({"ValueError", "RuntimeError"} & set(out["mro"]))
            outcomes[out["outcome"]] += 1
            if not ok:
                failures += 1
                print(f"seed {s}: FAILED: {out}")
    print(dict(outcomes))
    return failures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("end", choices=["server", "client"], help="which end gets the random messages")
    p.add_argument("-n", type=int, default=500, help="connections (server) or client runs (client)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-seed", type=int, default=100, help="server: connections per seed")
    args = p.parse_args()
    if args.end == "server":
        failures = fuzz_server(args.n, args.seed, args.per_seed)
    else:
        failures = fuzz_client(args.n, args.seed)
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
