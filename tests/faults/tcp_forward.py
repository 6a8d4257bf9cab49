"""A plain TCP relay for the partition test: `python -m tests.faults.tcp_forward LISTEN=TARGET ...`.

Each argument is `host:port=host:port`. The partition test runs one in the root namespace on the
veth address (relaying to the services on 127.0.0.1) and one inside each worker's namespace on
127.0.0.1 (relaying over the veth), so a worker sees the same URLs as everyone else and all its
traffic crosses the link the test cuts. Runs until killed; prints `ready` once listening.
"""

from __future__ import annotations

import socket
import sys
import threading


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until EOF, then pass the EOF on; a reset on either side ends both directions."""
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _accept(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            client.close()  # the peer sees a refused service, as it would without the relay
            continue
        upstream.settimeout(None)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def serve(pairs: list[tuple[tuple[str, int], tuple[str, int]]]) -> list[threading.Thread]:
    """Listen on every address at once (so `ready` means all are up), relay each in its own thread."""
    threads = []
    for listen, target in pairs:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(listen)
        listener.listen(128)
        thread = threading.Thread(target=_accept, args=(listener, target), daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def main(argv: list[str]) -> None:
    pairs = [(_address(listen), _address(target)) for listen, target in (arg.split("=", 1) for arg in argv)]
    threads = serve(pairs)
    print("ready", flush=True)
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(sys.argv[1:])
