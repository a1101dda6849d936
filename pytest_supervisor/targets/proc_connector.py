"""The Linux kernel's process events connector: a message for every fork, exec and exit of
any process, stamped by the kernel on CLOCK_MONOTONIC (what ``time.monotonic()`` reads).

Listening needs CAP_NET_ADMIN (root). Shared by the black-box observer and the benchmark
(benchmarks/bench_observe.py), which both need exact stamps that no polling can give.
"""

from __future__ import annotations

import socket
import struct
from typing import Iterator, NamedTuple

# Numbers from <linux/connector.h> and <linux/cn_proc.h>.
NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
FORK = 0x00000001
EXEC = 0x00000002
EXIT = 0x80000000
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port
CN_MSG_HEADER = struct.Struct("=IIIIHH")  # idx, val, sequence, ack, length, flags
PROC_EVENT_HEADER = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
# fork: parent pid, parent tgid, child pid, child tgid; exec: pid, tgid;
# exit: pid, tgid, exit_code (a wait status), exit_signal
PROC_EVENT_IDS = struct.Struct("=IIII")
EVENT_OFFSET = NLMSG_HEADER.size + CN_MSG_HEADER.size
SO_RCVBUFFORCE = 33
# Crash storms make thousands of events a second: a large buffer keeps a busy moment of
# the reader from losing any.
RECEIVE_BUFFER = 32 * 1024 * 1024


class ProcEvent(NamedTuple):
    what: int  # FORK, EXEC or EXIT
    ts_ns: int  # CLOCK_MONOTONIC
    first: int  # fork: parent pid; exec/exit: pid
    second: int  # fork: parent tgid; exec/exit: tgid
    third: int  # fork: child pid; exit: wait status
    fourth: int  # fork: child tgid; exit: exit signal


def open_socket() -> socket.socket:
    """A netlink socket subscribed to process events; OSError without CAP_NET_ADMIN."""
    family = getattr(socket, "AF_NETLINK", None)  # Linux only
    if family is None:
        raise OSError("no netlink sockets on this OS")
    sock = socket.socket(family, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        sock.bind((0, CN_IDX_PROC))
        listen = struct.pack("=I", PROC_CN_MCAST_LISTEN)
        message = CN_MSG_HEADER.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(listen), 0) + listen
        header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(message), NLMSG_DONE, 0, 0, 0)
        sock.send(header + message)
    except OSError:
        sock.close()
        raise
    return sock


def parse(data: bytes) -> Iterator[ProcEvent]:
    """The process events in one datagram."""
    offset = 0
    while offset + EVENT_OFFSET + PROC_EVENT_HEADER.size + PROC_EVENT_IDS.size <= len(data):
        length = NLMSG_HEADER.unpack_from(data, offset)[0]
        if length == 0:
            return
        at = offset + EVENT_OFFSET
        what, _cpu, ts = PROC_EVENT_HEADER.unpack_from(data, at)
        yield ProcEvent(what, ts, *PROC_EVENT_IDS.unpack_from(data, at + PROC_EVENT_HEADER.size))
        offset += (length + 3) & ~3
