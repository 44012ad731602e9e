"""How many engine registrations per second ipcmagic's controller absorbs: a flood of N simulated
engines, all registering at once from a few processes, each answering the controller's
heartbeats as a real engine's heart does (registration completes on the first heartbeat).

    .venv/bin/python benchmarks/registrations.py [--engines 256 1024 4096] [--processes 4]
Prints, per N: seconds until the notebook's Client sees all N engines, the rate, the longest wait
of an engine for its registration reply (an engine gives up after IPEngine.timeout), and what
ipyparallel's default pacing (rank x 20 ms from rank 100 on) would add on top of the start.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
import uuid
from typing import Any

import ipyparallel as ipp
import zmq
from jupyter_client.session import Session

from ipcmagic.cluster.ipcluster import IPCluster

#: ipyparallel's IPEngine.mpi_registration_delay, for ranks from 100 on
PACING = 0.02


def fake_engines(info: dict, count: int, ready: Any, stop: Any, out: Any) -> None:
    """Register ``count`` engines at once, answer heartbeats until ``stop``; put the longest wait
    for a registration reply."""
    ctx = zmq.Context()
    ctx.MAX_SOCKETS = 3 * count + 100
    session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
    url = info["interface"]
    idents = [str(uuid.uuid4()) for _ in range(count)]
    registrars = []
    for ident in idents:
        reg = ctx.socket(zmq.DEALER)
        reg.IDENTITY = ident.encode()
        reg.connect(f"{url}:{info['registration']}")
        registrars.append(reg)
    hearts = []
    for ident in idents:
        ping, pong = ctx.socket(zmq.SUB), ctx.socket(zmq.DEALER)
        ping.subscribe(b"")
        pong.IDENTITY = ident.encode()
        ping.connect(f"{url}:{info['hb_ping']}")
        pong.connect(f"{url}:{info['hb_pong']}")
        hearts.append((ping, pong))
    poller = zmq.Poller()
    for ping, _ in hearts:
        poller.register(ping, zmq.POLLIN)
    for reg in registrars:
        poller.register(reg, zmq.POLLIN)
    pong_of = {ping: pong for ping, pong in hearts}
    ready.wait()
    sent = time.perf_counter()
    for reg, ident in zip(registrars, idents, strict=True):
        session.send(reg, "registration_request", content={"uuid": ident})
    replied, longest = 0, 0.0
    while not stop.is_set():
        for sock, _ in poller.poll(100):
            frames = sock.recv_multipart()
            if sock in pong_of:
                pong_of[sock].send_multipart(frames)  # the heart echoes the ping
            else:
                replied += 1
                longest = time.perf_counter() - sent
    out.put((replied, longest))
    ctx.destroy(linger=0)


def flood(n: int, processes: int, heartbeat_ms: int) -> tuple[float, float, int]:
    """Seconds until a Client sees n engines, the longest reply wait, how many got a reply."""
    cluster = IPCluster(timeout=600, heartbeat_ms=heartbeat_ms)
    ipc = ipp.Cluster(
        n=0,
        controller_args=cluster._controller_args(),
        controller_launcher_class="ipcmagic.cluster.launchers.LocalControllerLauncher",
        log_level=40,
    )
    ipc.start_controller_sync()
    path = f"{ipc.profile_dir}/security/ipcontroller-{ipc.cluster_id}-engine.json"
    for _ in range(600):
        try:
            with open(path) as f:
                info = json.load(f)
            break
        except (OSError, ValueError):
            time.sleep(0.05)
    client = ipc.connect_client_sync()
    ready, stop, out = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Queue()
    share = [n // processes + (i < n % processes) for i in range(processes)]
    workers = [multiprocessing.Process(target=fake_engines, args=(info, k, ready, stop, out)) for k in share]
    for w in workers:
        w.start()
    time.sleep(1 + n / 1000)  # sockets connected
    tic = time.perf_counter()
    ready.set()
    client.wait_for_engines(n, timeout=600)
    took = time.perf_counter() - tic
    stop.set()
    replies = [out.get() for _ in workers]
    for w in workers:
        w.join()
    client.close()
    ipc.stop_cluster_sync()
    return took, max(r[1] for r in replies), sum(r[0] for r in replies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument(
        "--heartbeat-ms", type=int, default=IPCluster().heartbeat_ms, help="ipcmagic's default"
    )
    args = parser.parse_args()
    print(
        f"{'N':>5} {'all registered s':>17} {'per s':>7} {'longest reply wait s':>21} {'pacing adds s':>14}"
    )
    for n in args.engines:
        took, longest, replied = flood(n, args.processes, args.heartbeat_ms)
        assert replied == n, f"{n - replied} engines got no registration reply"
        pacing = (n - 1) * PACING if n > 100 else 0.0
        print(f"{n:>5} {took:>17.2f} {n / took:>7.0f} {longest:>21.2f} {pacing:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
