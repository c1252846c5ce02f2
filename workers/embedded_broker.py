"""The local default Kafka: the Kafka-protocol broker binary shipped in the ``noida-db`` PyPI package.

Why the binary itself and not the package's console wrapper: the wrapper is a Python process that runs the
binary as a child; killing the wrapper orphans the broker. We start the binary directly (its path from
``importlib.resources``), in its own session so it outlives the CLI that started it, with only the Kafka
service enabled, and stop it with SIGTERM (it saves its data then), falling back to SIGKILL.

Ready means the broker *answered* a Kafka Metadata request, not just that the port accepts: under load the
port accepts ~0.5 s before the broker answers.

The binary prints a harmless ``GLIBC_2.39 not found`` line on older glibc (Debian 12); that line is hidden,
any other stderr is surfaced (``EmbeddedBroker.stderr_lines()`` and in start errors).

Nothing outside this module and the ``broker`` CLI command knows the broker is not a real Kafka: the data path
only ever takes ``bootstrap_servers``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

PACKAGE = "noida_db"
BINARY_NAME = "noida-db"
PID_FILE = "rnnstream-broker.json"
STDERR_FILE = "broker.stderr.log"
STDOUT_FILE = "broker.stdout.log"
HARMLESS_STDERR = ("GLIBC_2.39",)
DEFAULT_PORT = 9092
DEFAULT_DATA_DIR = ".rnnstream/broker"


class BrokerError(RuntimeError):
    """The embedded broker could not be started, reached or stopped; the message says why."""


def broker_binary() -> Path:
    """Path of the broker executable inside the installed ``noida_db`` package (made executable if needed)."""
    path = Path(str(files(PACKAGE).joinpath(BINARY_NAME)))
    if not path.is_file():
        raise BrokerError(f"broker binary not found at {path} (pip install noida-db==0.2.3)")
    if not os.access(path, os.X_OK):
        try:
            path.chmod(0o755)
        except OSError as exc:
            raise BrokerError(f"broker binary {path} is not executable and chmod failed: {exc}") from exc
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for tests: one broker per session on its own port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def metadata_answered(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when a Kafka broker at host:port answers a Metadata (v0) request within ``timeout_s``.

    A bare protocol exchange (no kafka-python bootstrap, which waits up to 30 s): request header
    ``api_key=3, api_version=0, correlation_id, client_id`` and an empty topic array (all topics); the answer
    must carry our correlation id.
    """
    correlation_id = 0x52_4E_4E_53  # "RNNS"
    client_id = b"rnnstream-probe"
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    request = struct.pack(">i", len(body)) + body
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(request)
            head = _recv_exact(s, 8)
    except OSError:
        return False
    if head is None:
        return False
    size, corr = struct.unpack(">ii", head)
    return corr == correlation_id and size >= 4


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists"; treat it as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def filter_stderr(text: str) -> list[str]:
    """The stderr lines worth showing: everything but the known harmless glibc warning and blank lines."""
    return [ln for ln in text.splitlines() if ln.strip() and not any(h in ln for h in HARMLESS_STDERR)]


@dataclass(frozen=True)
class BrokerInfo:
    """What the pid file says about a running broker."""

    pid: int
    host: str
    port: int
    data_dir: str

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"


class EmbeddedBroker:
    """One embedded broker process bound to ``host:port``, keeping its data in ``data_dir``.

    ``start()`` launches it in the background and returns once it answers a Metadata request; ``stop()``
    sends SIGTERM, waits, then SIGKILLs. A pid file in ``data_dir`` lets another process (``rnnstream broker
    stop``) find and stop it. Usable as a context manager. ``die_with_parent`` (Linux; for tests) makes the
    broker get SIGTERM when the process that started it dies, e.g. a killed pytest.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        die_with_parent: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.die_with_parent = die_with_parent
        self.port = int(port)
        self.host = host
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        info = read_pid_file(self.data_dir)
        return info.pid if info else None

    def start(self, timeout_s: float = 30.0) -> BrokerInfo:
        """Start the broker in the background and wait until it answers; raise BrokerError if it cannot."""
        running = read_pid_file(self.data_dir)
        if running is not None and _pid_alive(running.pid):
            raise BrokerError(
                f"a broker (pid {running.pid}) already runs on {running.bootstrap_servers} with data dir "
                f"{self.data_dir} (stop it with `rnnstream broker stop`)"
            )
        if metadata_answered(self.host, self.port, timeout_s=0.5):
            raise BrokerError(f"port {self.port} already serves a Kafka broker; pick another --port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(broker_binary()),
            "start",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.host,
            "--only",
            "kafka",
            "--kafka-port",
            str(self.port),
        ]
        with (
            open(self.data_dir / STDOUT_FILE, "wb") as out,
            open(self.data_dir / STDERR_FILE, "wb") as err,
        ):
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=_sigterm_when_parent_dies if self.die_with_parent else None,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise BrokerError(
                    f"broker exited with code {code} before it was ready{self._stderr_suffix()}"
                )
            if metadata_answered(self.host, self.port, timeout_s=0.5):
                break
            if time.monotonic() > deadline:
                self._terminate(self._proc.pid, wait_s=5.0)
                self._proc = None
                raise BrokerError(
                    f"broker did not answer on {self.bootstrap_servers} within {timeout_s:.0f} s"
                    f"{self._stderr_suffix()}"
                )
            time.sleep(0.05)
        info = BrokerInfo(self._proc.pid, self.host, self.port, str(self.data_dir))
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info.__dict__))
        os.replace(tmp, self.pid_file)
        return info

    def stop(self, timeout_s: float = 10.0) -> bool:
        """SIGTERM the broker (started here or found via the pid file), wait, SIGKILL if needed.

        Returns True if a broker was running.
        """
        pid = self.pid
        was_running = pid is not None and _pid_alive(pid)
        if pid is not None:
            self._terminate(pid, wait_s=timeout_s)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)
        return was_running

    def is_running(self) -> bool:
        pid = self.pid
        return pid is not None and _pid_alive(pid)

    def stderr_lines(self) -> list[str]:
        """The broker's stderr so far, without the known harmless warning."""
        try:
            return filter_stderr((self.data_dir / STDERR_FILE).read_text(errors="replace"))
        except OSError:
            return []

    def _stderr_suffix(self) -> str:
        lines = self.stderr_lines()
        return (": " + " | ".join(lines[-10:])) if lines else ""

    def _terminate(self, pid: int, wait_s: float) -> None:
        proc = self._proc if self._proc is not None and self._proc.pid == pid else None
        for sig, wait in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if proc is not None:
                try:
                    proc.wait(timeout=wait)
                    return
                except subprocess.TimeoutExpired:
                    continue
            deadline = time.monotonic() + wait
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _pid_alive(pid):
                return

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sigterm_when_parent_dies() -> None:
    """In the child before exec (Linux): get SIGTERM when the starting process dies (no orphan brokers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def read_pid_file(data_dir: str | os.PathLike[str]) -> BrokerInfo | None:
    """The broker recorded in ``data_dir``'s pid file, or None (no file or unreadable)."""
    path = Path(data_dir).resolve() / PID_FILE
    try:
        d = json.loads(path.read_text())
        return BrokerInfo(int(d["pid"]), str(d["host"]), int(d["port"]), str(d["data_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
