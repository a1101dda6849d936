#!/usr/bin/env python3
"""Clients that pipeline control requests and never read an answer (a benchmark and a test).

    python control_flood.py SOCKET CLIENTS [REQUEST]

Connects CLIENTS clients to the control socket, prints ``connected CLIENTS``, then keeps
writing REQUEST (default: ``status``) on every connection for as long as the supervisor reads
any, until killed. A connection the supervisor drops is opened again.
"""
import selectors
import socket
import sys
import time


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)  # blocking: waits its turn in the listen backlog
    sock.setblocking(False)
    return sock


def main() -> None:
    path, count = sys.argv[1], int(sys.argv[2])
    request = sys.argv[3].encode() if len(sys.argv) > 3 else b'{"v": 1, "cmd": "status"}'
    burst = (request + b"\n") * 200
    selector = selectors.DefaultSelector()
    for _ in range(count):
        selector.register(connect(path), selectors.EVENT_WRITE)
    print("connected", count, flush=True)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            try:
                sock.send(burst)
            except BlockingIOError:
                continue
            except OSError:  # dropped by the supervisor: come back
                selector.unregister(sock)
                sock.close()
                while True:
                    try:
                        selector.register(connect(path), selectors.EVENT_WRITE)
                        break
                    except OSError:
                        time.sleep(0.1)  # turned away (too many clients): try again later


if __name__ == "__main__":
    main()
