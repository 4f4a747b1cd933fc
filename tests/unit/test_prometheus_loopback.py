"""The metrics endpoint has no authentication: from Python, as from ``--metrics-host``, it binds
loopback unless another address is asked for (the dashboard refuses a non-loopback address
without a token; the CLI default and the API default agree)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SERVE_AND_REPORT = textwrap.dedent(
    """
    import socket, sys
    from pgflow.otel import serve_prometheus

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    serve_prometheus(port, **({"addr": sys.argv[1]} if len(sys.argv) > 1 else {}))
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                print(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    """
)


def listening_address(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_REPORT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_serve_prometheus_binds_loopback_by_default() -> None:
    assert listening_address() == "127.0.0.1"


def test_serve_prometheus_binds_the_address_asked_for() -> None:
    assert listening_address("0.0.0.0") == "0.0.0.0"  # noqa: S104 - the point of the test
