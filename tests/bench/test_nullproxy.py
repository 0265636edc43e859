"""The null proxy forwards bytes both ways unread and passes a close on."""

from __future__ import annotations

import socket
import subprocess
import threading

from bench.stack import free_port, start_null_proxy, stop_process


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    """Upper-cases what it gets; the thread ends when a connection that sent data closes
    (``start_null_proxy``'s readiness probe connects and closes without sending)."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            seen = False
            with conn:
                while data := conn.recv(65536):
                    seen = True
                    conn.sendall(data.upper())
            if seen:
                return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def test_bytes_pass_both_ways_and_close_is_passed_on() -> None:
    srv, t = _echo_server()
    proc, url = start_null_proxy(srv.getsockname()[1])
    try:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            payload = b"hello through the floor " * 5000  # several reads, early bytes included
            c.sendall(payload)
            got = b""
            while len(got) < len(payload):
                piece = c.recv(65536)
                assert piece, "the proxy closed early"
                got += piece
            assert got == payload.upper()
            c.shutdown(socket.SHUT_WR)
        t.join(timeout=10)
        assert not t.is_alive()  # the target saw the client's close through the proxy
    finally:
        stop_process(proc)
        srv.close()


def test_a_target_that_refuses_closes_the_client() -> None:
    proc, url = start_null_proxy(free_port())  # nothing listens there
    try:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.settimeout(10)
            assert c.recv(10) == b""
    finally:
        stop_process(proc)


def test_usage_error_is_one_line() -> None:
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "bench.nullproxy", "x"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode != 0
    assert "usage: python -m bench.nullproxy LISTEN_PORT TARGET_PORT" in r.stderr
