"""A configurable dummy service: its flags choose how it behaves under a supervisor.

Usage: python dummy.py [FLAG ...]. With no flag it sleeps until a signal ends it.

  --exit-after S        exit after S seconds (default: run until signalled)
  --exit-code C         code for --exit-after (default 0) and --crash-at-start (default 1)
  --crash-at-start      print a message to stderr and exit at once with --exit-code
  --ignore-sigterm      ignore SIGTERM (and CTRL_BREAK on Windows): only a kill ends it
  --shutdown-delay S    on SIGTERM/SIGINT print "NAME shutting down", take S s, exit 0
  --grandchildren K     start K helpers (this script, sleeping) in its own process group
  --daemon              start a helper that leaves the group and the session (POSIX: double
                        fork and setsid; Windows: a detached process, out of the job object
                        if the job allows it), its stdio on the null device
  --workers N           like nginx: fork N workers, each of which re-execs this script with
                        an empty environment (like `env -i`); on SIGTERM/SIGINT the master
                        stops its workers, waits for them and exits 0 (POSIX only)
  --worker-setsid       the workers also call setsid first: their own session and group
  --listen HOST:PORT    the master binds and listens on HOST:PORT before anything else (and
                        fails with "NAME bind() to HOST:PORT failed (...)" on stderr and exit
                        1 if the port is taken); the workers inherit the socket and answer
                        each connection with "NAME pid PID master MPID"
  --pids-file PATH      append "ROLE PID" lines to PATH: main, grandchild, daemon, worker
  --alloc-mb-per-s R    allocate and touch R MB of memory per second, holding it, until
  --max-mb M            M MB are held (default 200), then print "NAME allocated M MB"
  --burn-cpu            busy-loop on one core
  --ready-line TEXT     print TEXT once everything above is set up
  --ready-file PATH     create PATH, holding the pid, once set up (before the ready line)
  --heartbeat S         print "NAME heartbeat N" at once and then every S seconds
  --name NAME           first word of its messages (default: dummy)

SIGTERM and SIGINT kill it with their default disposition unless --shutdown-delay or
--ignore-sigterm says otherwise. The helpers follow --ignore-sigterm and nothing else. The
dummy never stops its helpers: they die with the group when a signal is sent to the group,
and otherwise live on as orphans, which is what a supervisor's tree kill must cope with.

Exit status 2 for bad flags (argparse), 64 (sysexits' EX_USAGE) for a flag this platform
cannot honour. Only the standard library is used, and only what the chosen flags need is
imported, so that start-up stays fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

EXIT_UNSUPPORTED = 64
MEGABYTE = 1024 * 1024
NEVER = float("inf")

SCRIPT = os.path.abspath(__file__)
# The helpers need only the standard library. A Windows venv's python.exe is a launcher that
# runs the base interpreter as its own child, so starting that would record the launcher's
# pid instead of the helper's.
HELPER_PYTHON = getattr(sys, "_base_executable", "") or sys.executable

# The signals a supervisor asks a service to stop with: SIGTERM, and CTRL_BREAK on Windows,
# where processes in their own console group get no SIGINT.
TERMINATION_SIGNALS = tuple(
    signum for signum in (signal.SIGTERM, getattr(signal, "SIGBREAK", None)) if signum is not None
)

# On POSIX a signal cuts a sleep short and its Python handler runs at once. On Windows a
# handler only runs when the main thread wakes up (only SIGINT ends a sleep early), so waits
# there are taken in slices short enough for a stop request to feel immediate.
SIGNALS_INTERRUPT_SLEEP = hasattr(signal, "pause")
WAIT_SLICE = 0.1

CAN_FORK_DAEMON = hasattr(os, "fork") and hasattr(os, "setsid")
EXIT_BIND_FAILED = 1


class StopRequested(BaseException):
    """Unwinds the main thread into the --shutdown-delay path.

    A BaseException, so that no ``except Exception`` on the way can swallow it.
    """


class StopOnSignal:
    """Signal handler for --shutdown-delay.

    The first stop signal raises StopRequested; later ones are ignored, so that a repeated
    SIGTERM does not cut the shutdown short.
    """

    def __init__(self) -> None:
        self.triggered = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.triggered:
            self.triggered = True
            raise StopRequested(signal.Signals(signum).name)


class Heartbeat:
    """Prints "NAME heartbeat N" at once and then every ``interval`` seconds."""

    def __init__(self, name: str, interval: float, now: float) -> None:
        self.name = name
        self.interval = interval
        self.count = 0
        self.due = now

    def run(self, now: float) -> None:
        self.count += 1
        say(self.name, f"heartbeat {self.count}")
        self.due += self.interval
        if self.due <= now:
            # After a stall (SIGSTOP, an overloaded machine) start the schedule afresh
            # instead of printing a burst of missed beats.
            self.due = now + self.interval


class MemoryHog:
    """Allocates and touches memory at a steady rate, holding all of it, up to a cap."""

    def __init__(self, name: str, mb_per_s: float, max_mb: int, now: float) -> None:
        self.name = name
        self.mb_per_s = mb_per_s
        self.max_mb = max_mb
        self.started = now
        self.chunks: list[bytes] = []
        self.due = now + 1 / mb_per_s

    def run(self, now: float) -> None:
        if len(self.chunks) < self.max_mb:
            # Repeating a byte writes every page, so the memory is really resident rather
            # than the untouched zero pages a bare allocation would get.
            self.chunks.append(b"\xa5" * MEGABYTE)
        if len(self.chunks) >= self.max_mb:
            say(self.name, f"allocated {self.max_mb} MB")
            self.due = NEVER
        else:
            # Due times count from the start, so a late turn is caught up by the next ones.
            self.due = self.started + (len(self.chunks) + 1) / self.mb_per_s


def say(name: str, message: str, *, error: bool = False) -> None:
    print(f"{name} {message}", file=sys.stderr if error else sys.stdout, flush=True)


def non_negative(text: str) -> float:
    value = _float(text)
    if not value >= 0:  # written so that NaN fails too
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def positive(text: str) -> float:
    value = _float(text)
    if not value > 0:  # written so that NaN fails too
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def host_port(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dummy.py", description="A configurable dummy service for supervisor tests."
    )
    parser.add_argument("--exit-after", type=non_negative, metavar="SECONDS")
    parser.add_argument("--exit-code", type=int, metavar="C")
    parser.add_argument("--crash-at-start", action="store_true")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--shutdown-delay", type=non_negative, metavar="SECONDS")
    parser.add_argument("--grandchildren", type=count, default=0, metavar="K")
    parser.add_argument("--daemon", action="store_true")
    parser.add_argument("--workers", type=count, default=0, metavar="N")
    parser.add_argument("--worker-setsid", action="store_true")
    parser.add_argument("--listen", type=host_port, metavar="HOST:PORT")
    parser.add_argument("--pids-file", metavar="PATH")
    parser.add_argument("--alloc-mb-per-s", type=positive, metavar="RATE")
    parser.add_argument("--max-mb", type=count, default=200, metavar="M")
    parser.add_argument("--burn-cpu", action="store_true")
    parser.add_argument("--ready-line", metavar="TEXT")
    parser.add_argument("--ready-file", metavar="PATH")
    parser.add_argument("--heartbeat", type=positive, metavar="SECONDS")
    parser.add_argument("--name", default="dummy")
    # How a master starts its workers; not for direct use.
    parser.add_argument("--serve-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--master", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pids_file is not None:
        # The POSIX daemon moves to "/" before it records its pid.
        args.pids_file = os.path.abspath(args.pids_file)
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    if args.crash_at_start:
        code = 1 if args.exit_code is None else args.exit_code
        say(args.name, f"crashing at start with exit code {code}", error=True)
        return code
    if args.daemon and not can_start_daemon():
        say(args.name, "--daemon needs os.fork or Windows process creation flags", error=True)
        return EXIT_UNSUPPORTED
    if args.workers and not CAN_FORK_DAEMON:
        say(args.name, "--workers needs os.fork and os.setsid", error=True)
        return EXIT_UNSUPPORTED
    if args.serve_fd is not None:
        return serve(args)
    workers: list[int] = []
    try:
        set_signal_dispositions(args)
        listener = listen(args)
        if args.listen is not None and listener is None:
            return EXIT_BIND_FAILED
        if args.pids_file is not None:
            record_pid(args.pids_file, "main", os.getpid())
        start_workers(args, listener, workers)
        start_grandchildren(args)
        if args.daemon:
            start_daemon(args)
        announce_ready(args)
        return run(args, started)
    except StopRequested:
        say(args.name, "shutting down")
        stop_workers(workers)
        time.sleep(args.shutdown_delay or 0)
        return 0


def set_signal_dispositions(args: argparse.Namespace) -> None:
    if args.ignore_sigterm:
        for signum in TERMINATION_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
    if args.shutdown_delay is not None or args.workers:
        handler = StopOnSignal()
        handled = (signal.SIGINT,)
        if not args.ignore_sigterm:
            handled += TERMINATION_SIGNALS
        for signum in handled:
            signal.signal(signum, handler)
    elif signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        # Die by SIGINT like by any other stop signal, without a KeyboardInterrupt traceback.
        # (A SIGINT the parent chose to ignore stays ignored.)
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def record_pid(path: str, role: str, pid: int) -> None:
    """Append "ROLE PID" to the pids file, durably, in a single write.

    One unbuffered write per line in append mode keeps lines whole when the main process
    and the daemon append at the same time; fsync makes the line durable, not just visible.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{role} {pid}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def listen(args: argparse.Namespace) -> socket.socket | None:
    """The master's listening socket for --listen; None (having said why) if bind fails."""
    if args.listen is None:
        return None
    import socket

    host, port = args.listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    if os.name == "posix":
        # As nginx does: TIME_WAIT left by earlier connections does not block the port, a
        # socket that still listens on it does (Linux refuses a second listener).
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(64)
    except OSError as error:
        listener.close()
        say(
            args.name,
            f"bind() to {host}:{port} failed ({error.errno}: {error.strerror})",
            error=True,
        )
        return None
    return listener


def start_workers(
    args: argparse.Namespace, listener: socket.socket | None, workers: list[int]
) -> None:
    """Fork the workers, adding their pids to ``workers`` as they come (so that a stop
    arriving halfway stops those already started); each re-execs this script with an empty
    environment. The master records their pids itself, right after each fork (the pid
    survives the exec), so the pids file lists every worker even if the master dies a
    moment later.
    """
    for index in range(1, args.workers + 1):
        command = helper_command(args, f"{args.name}-worker-{index}")
        command += ["--master", str(os.getpid())]
        if listener is not None:
            command += ["--serve-fd", str(listener.fileno())]
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across the fork: a stop signal that reached the child while it still had
        # the master's Python handler would be lost when the child resets its disposition.
        signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATION_SIGNALS + (signal.SIGINT,))
        pid = os.fork()
        if pid == 0:
            become_worker(args, listener, command)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINATION_SIGNALS + (signal.SIGINT,))
        workers.append(pid)
        if args.pids_file is not None:
            record_pid(args.pids_file, "worker", pid)


def become_worker(
    args: argparse.Namespace, listener: socket.socket | None, command: list[str]
) -> None:
    """In the forked child: exec the worker with nothing of the environment. Never returns."""
    try:
        # The master's Python handler must not run in the child before the exec.
        signal.signal(signal.SIGTERM, signal.SIG_IGN if args.ignore_sigterm else signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # A stop signal already sent to the master's workers ends this one here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINATION_SIGNALS + (signal.SIGINT,))
        if args.worker_setsid:
            os.setsid()
        if listener is not None:
            os.set_inheritable(listener.fileno(), True)
        os.execve(command[0], command, {})
    finally:
        os._exit(127)  # the exec failed: a forked copy must never return into the master


def stop_workers(workers: list[int]) -> None:
    """As nginx's master does on SIGTERM: pass it on to each worker and wait for them."""
    for pid in workers:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in workers:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def serve(args: argparse.Namespace) -> int:
    """Run as a worker of a --listen master: answer connections on the inherited socket."""
    set_signal_dispositions(args)
    import socket

    listener = socket.socket(fileno=args.serve_fd)
    answer = f"{args.name} pid {os.getpid()} master {args.master}\n".encode()
    while True:
        connection, _ = listener.accept()
        with connection:
            try:
                connection.sendall(answer)
            except OSError:
                pass  # the client left before the answer (a readiness probe does)


def helper_command(args: argparse.Namespace, name: str) -> list[str]:
    """A helper's command line: this script with its name and the dummy's --ignore-sigterm.

    No other flag, so the helper only sleeps until a signal ends it.
    """
    command = [HELPER_PYTHON, SCRIPT, "--name", name]
    if args.ignore_sigterm:
        command.append("--ignore-sigterm")
    return command


def start_grandchildren(args: argparse.Namespace) -> None:
    if not args.grandchildren:
        return
    import subprocess

    for index in range(1, args.grandchildren + 1):
        # Started before the ready line, with the dummy's dispositions: an ignored SIGTERM
        # is inherited through exec, so a helper ignores it even before its Python is up.
        helper = subprocess.Popen(
            helper_command(args, f"{args.name}-grandchild-{index}"), stdin=subprocess.DEVNULL
        )
        if args.pids_file is not None:
            record_pid(args.pids_file, "grandchild", helper.pid)


def can_start_daemon() -> bool:
    if CAN_FORK_DAEMON:
        return True
    import subprocess

    return hasattr(subprocess, "DETACHED_PROCESS")


def start_daemon(args: argparse.Namespace) -> None:
    if CAN_FORK_DAEMON:
        fork_daemon(args)
    else:
        spawn_detached_daemon(args)


def fork_daemon(args: argparse.Namespace) -> None:
    """Double-fork a daemon in a new session; return once it has recorded its pid.

    The middle process calls setsid and exits, so the daemon is neither in the dummy's
    process group nor a session leader that could get a controlling terminal back, and its
    parent becomes init (or the nearest subreaper). A pipe tells the dummy when the daemon
    has written its pid: reading it returns once the daemon has reported or died.
    """
    # Forked copies would print whatever is still buffered a second time.
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() == 0:
                become_daemon(args, write_end)
        finally:
            # A forked copy must never return into the dummy's own code.
            os._exit(0)
    os.close(write_end)
    os.waitpid(middle, 0)
    with os.fdopen(read_end, "rb") as pipe:
        reported = pipe.read()
    if not reported:
        raise RuntimeError("the daemon exited before it reported its pid")


def become_daemon(args: argparse.Namespace, report_fd: int) -> None:
    """Run as the daemon: let go of the caller's stdio and directory, then sleep. Never returns."""
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        # Holding the parent's stdout or stderr would keep a supervisor's log pipe open.
        os.dup2(devnull, fd)
    os.close(devnull)
    # The fork kept the dummy's Python handlers; a daemon has only the helpers' dispositions.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if args.ignore_sigterm else signal.SIG_DFL)
    if args.pids_file is not None:
        record_pid(args.pids_file, "daemon", os.getpid())
    os.write(report_fd, str(os.getpid()).encode())
    os.close(report_fd)
    while True:
        signal.pause()


def spawn_detached_daemon(args: argparse.Namespace) -> None:
    """Windows' nearest thing to a daemon: a detached process in a new process group.

    It also breaks away from the job object a supervisor may have put the dummy in, when the
    job allows that, so only a search by pid can still find it.
    """
    import subprocess

    command = helper_command(args, f"{args.name}-daemon")
    flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP

    def launch(creationflags: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command,
            creationflags=creationflags,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    try:
        daemon = launch(flags | subprocess.CREATE_BREAKAWAY_FROM_JOB)
    except PermissionError:
        say(args.name, "the job object forbids breakaway; the daemon stays in it", error=True)
        daemon = launch(flags)
    if args.pids_file is not None:
        record_pid(args.pids_file, "daemon", daemon.pid)


def announce_ready(args: argparse.Namespace) -> None:
    if args.ready_file is not None:
        # Written aside and renamed, so whoever sees the file sees it whole.
        partial = f"{args.ready_file}.partial"
        with open(partial, "w") as ready_file:
            ready_file.write(f"{os.getpid()}\n")
        os.replace(partial, args.ready_file)
    if args.ready_line is not None:
        print(args.ready_line, flush=True)


def run(args: argparse.Namespace, started: float) -> int:
    """The main loop: run what is due, then sleep until the next thing is (or spin)."""
    now = time.monotonic()
    tasks: list[Heartbeat | MemoryHog] = []
    if args.heartbeat is not None:
        tasks.append(Heartbeat(args.name, args.heartbeat, now))
    if args.alloc_mb_per_s is not None:
        tasks.append(MemoryHog(args.name, args.alloc_mb_per_s, args.max_mb, now))
    deadline = NEVER if args.exit_after is None else started + args.exit_after
    while True:
        now = time.monotonic()
        if now >= deadline:
            code = 0 if args.exit_code is None else args.exit_code
            say(args.name, f"exiting with code {code}")
            return code
        for task in tasks:
            if now >= task.due:
                task.run(now)
        if not args.burn_cpu:
            wait(min([deadline] + [task.due for task in tasks]) - time.monotonic())


def wait(seconds: float) -> None:
    if not SIGNALS_INTERRUPT_SLEEP:
        time.sleep(max(0.0, min(seconds, WAIT_SLICE)))
    elif seconds == NEVER:
        signal.pause()
    elif seconds > 0:
        time.sleep(seconds)


if __name__ == "__main__":
    sys.exit(main())
