"""Where processes on the allocation's nodes reach this host."""

from __future__ import annotations

import socket

from .errors import ClusterError

LOOPBACK = "127.0.0.1"


def address_for(nodes: tuple[str, ...] | list[str]) -> str:
    """Where processes on ``nodes`` reach this host: loopback when all run here, else this host's
    address towards the others."""
    here = {socket.gethostname(), socket.gethostname().split(".")[0]}
    remote = [node for node in nodes if node not in here]
    return address_towards(remote) if remote else LOOPBACK


def address_towards(hosts: list[str]) -> str:
    """This host's IPv4 address on the interface that routes to ``hosts`` (no packet is sent)."""
    for host in hosts:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((socket.gethostbyname(host), 9))  # UDP connect: only picks the route
                return probe.getsockname()[0]
        except OSError:
            continue
    raise ClusterError(
        f"Cannot find this host's address towards the allocation's other nodes ({', '.join(hosts)}); "
        "set it with c.IPCluster.controller_ip in ipython_config.py."
    )
