"""The physical floor: the least any supervisor must do to keep commands running (Linux).

Usage: python floor_respawner.py COMMANDS.json   (a JSON list of argv lists, absolute paths)

Starts each command in a session of its own, waits on one pidfd per child with a selector,
and starts a replacement the moment a child exits. SIGTERM: SIGTERM to every child's
session, wait for them all, exit 0. No config, policies or logging: what remains is the
cost of noticing an exit and starting a process from Python, the reference every figure of
the benchmark is divided by.
"""
import json
import os
import selectors
import signal
import socket
import sys


def main(commands_path: str) -> int:
    with open(commands_path) as commands_file:
        commands = json.load(commands_file)
    selector = selectors.DefaultSelector()
    wake_reader, wake_writer = socket.socketpair()
    wake_reader.setblocking(False)
    wake_writer.setblocking(False)
    signal.set_wakeup_fd(wake_writer.fileno(), warn_on_full_buffer=False)
    # The handler does nothing: the byte the wake-up fd receives is the notice.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    selector.register(wake_reader, selectors.EVENT_READ, None)
    children = {}

    def start(argv):
        # posix_spawn uses vfork: the cost does not grow with the size of this process
        pid = os.posix_spawn(argv[0], argv, os.environ, setsid=True)
        children[pid] = argv
        selector.register(os.pidfd_open(pid), selectors.EVENT_READ, pid)

    for argv in commands:
        start(argv)
    while True:
        for key, _ in selector.select():
            if key.data is None:  # SIGTERM
                for pid in children:
                    os.killpg(pid, signal.SIGTERM)
                for pid in children:
                    os.waitpid(pid, 0)
                return 0
            selector.unregister(key.fd)
            os.close(key.fd)
            os.waitpid(key.data, 0)
            start(children.pop(key.data))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
