"""Throwaway redis (plain, TLS, replica, Sentinel), memcached and RabbitMQ servers.

Tests (and benchmarks) need real servers they can crash and bring back on the
same port, so fault handling is exercised against the real thing, not mocks.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar

#: How long ``start`` waits for the server to accept connections.
START_TIMEOUT = 10.0

#: How long ``stop``/``kill`` wait for the process and its port to go away.
STOP_TIMEOUT = 5.0

_live: set[ServerProcess] = set()
_live_lock = threading.Lock()
_apt_updated = False


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_binary(binary: str, apt_package: str) -> str:
    """Return the path of ``binary``, installing ``apt_package`` when we can.

    Installing only happens as root with apt-get present, so a developer
    machine is never modified behind the user's back; otherwise the error says
    exactly what to install.
    """
    global _apt_updated
    found = shutil.which(binary) or _in_sbin(binary)
    if found:
        return found
    apt_get = shutil.which("apt-get")
    if os.geteuid() != 0 or apt_get is None:
        raise RuntimeError(
            f"{binary} is not installed; the tests need a real {binary}. "
            f"Install it with: sudo apt-get install {apt_package}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run([apt_get, "update"], check=True, env=env, capture_output=True)
        _apt_updated = True
    result = subprocess.run(
        [apt_get, "install", "-y", apt_package], env=env, capture_output=True, text=True
    )
    found = shutil.which(binary) or _in_sbin(binary)
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"could not install {apt_package} for {binary} "
            f"(apt-get exit {result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    return found


def _in_sbin(binary: str) -> str | None:
    """Debian puts some daemons outside a non-root PATH."""
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(folder) / binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _port_is_free(host: str, port: int) -> bool:
    """True when a new listener could bind the port (what a restart needs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class ServerProcess:
    """A server subprocess bound to one loopback port for its whole life.

    The port stays fixed across ``kill``/``restart`` so clients configured
    with it can be tested for recovery without being rebuilt.
    """

    binary: ClassVar[str]
    apt_package: ClassVar[str]
    #: How long ``start`` waits for the server to accept connections.
    start_timeout: ClassVar[float] = START_TIMEOUT
    #: The server runs helpers of its own (a wrapper script, port programs): it
    #: gets a session of its own, and a kill reaches the whole process group.
    own_session: ClassVar[bool] = False

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def command(self, executable: str) -> list[str]:
        """The argv that runs the server in the foreground on ``self.port``."""
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The server's environment; None inherits ours."""
        return None

    @property
    def workdir(self) -> Path:
        """Scratch directory of the current run (exists only while started)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.binary}-{self.port}-"))
        return self._workdir

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        if self.running:
            return
        self._reap()
        executable = ensure_binary(self.binary, self.apt_package)
        stderr_path = self.workdir / "stderr.log"
        self._stderr = stderr_path.open("w+b")
        self._process = subprocess.Popen(
            self.command(executable),
            stdin=subprocess.DEVNULL,
            stdout=self._stderr if self.own_session else subprocess.DEVNULL,
            stderr=self._stderr,
            cwd=self.workdir,
            env=self.environment(),
            start_new_session=self.own_session,
        )
        with _live_lock:
            _live.add(self)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if _port_accepts(self.host, self.port):
                return
            time.sleep(0.02)
        exit_code = self._process.poll()
        output = self._stderr_text()
        self.kill()
        state = f"exited with code {exit_code}" if exit_code is not None else "never listened"
        raise RuntimeError(
            f"{self.binary} on {self.host}:{self.port} {state} within {self.start_timeout:.0f} s; "
            f"stderr: {output or '(empty)'}"
        )

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM), forcing it (SIGKILL) if it hangs."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Die the way a crash does; returns when the port can be reused."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Come back on the same port, as a supervisor would restart it."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop for good, dropping whatever the server kept between restarts."""
        self.stop()

    def _signal(self, process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        """SIGKILL reaches the whole group of an ``own_session`` server; other
        signals go to its main process, which shuts its helpers down itself.

        Only called while the main process is unreaped, so its pid (the group's
        id) cannot have been reused by another process.
        """
        with contextlib.suppress(ProcessLookupError):
            if self.own_session and sig == signal.SIGKILL:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

    def _end(self, sig: signal.Signals) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            self._signal(process, sig)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal(process, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT)
        self._reap()
        deadline = time.monotonic() + STOP_TIMEOUT
        while not _port_is_free(self.host, self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.port} is still in use after stopping {self}")
            time.sleep(0.02)

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait()
            self._process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        with _live_lock:
            _live.discard(self)

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()[-4000:]

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} running={self.running}>"


class RedisServer(ServerProcess):
    """redis-server without persistence, so a restart starts empty."""

    binary = "redis-server"
    apt_package = "redis-server"

    def command(self, executable: str) -> list[str]:
        return [
            executable,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            # a replica (RedisReplica) syncs at once, not after Redis's 5 s wait for others
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            str(self.workdir),
        ]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def __enter__(self) -> RedisServer:
        self.start()
        return self


class RedisReplica(RedisServer):
    """A redis-server replicating ``master`` (``--replicaof``), for failover tests."""

    def __init__(self, master: RedisServer, port: int | None = None) -> None:
        super().__init__(port, master.host)
        self.master = master

    def command(self, executable: str) -> list[str]:
        return [
            *super().command(executable),
            "--replicaof",
            self.master.host,
            str(self.master.port),
        ]

    def wait_until_synced(self, timeout: float = START_TIMEOUT) -> None:
        """Return once the replica's link to its master is up."""
        import redis

        client = redis.Redis(host=self.host, port=self.port)
        try:
            deadline = time.monotonic() + timeout
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self} never synced with {self.master}")
                time.sleep(0.05)
        finally:
            client.close()


class TlsRedisServer(RedisServer):
    """redis-server on a TLS port only, with a self-signed certificate for 127.0.0.1.

    ``ca_file`` (the certificate itself) is what a client verifies it with;
    it is made by ``openssl`` in the run's scratch directory at each start.
    """

    def command(self, executable: str) -> list[str]:
        openssl = ensure_binary("openssl", "openssl")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
            + ["-keyout", str(self.key_file), "-out", str(self.ca_file)]
            + ["-subj", f"/CN={self.host}", "-addext", f"subjectAltName=IP:{self.host}"],
            check=True,
            capture_output=True,
        )
        tls = ["--tls-cert-file", str(self.ca_file), "--tls-key-file", str(self.key_file)]
        tls += ["--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no"]
        argv = super().command(executable)
        argv[argv.index("--port") + 1] = "0"  # no plain port
        return [*argv, "--tls-port", str(self.port), *tls]

    @property
    def ca_file(self) -> Path:
        return self.workdir / "cert.pem"

    @property
    def key_file(self) -> Path:
        return self.workdir / "key.pem"

    @property
    def url(self) -> str:
        return f"rediss://{self.host}:{self.port}/0"

    def __enter__(self) -> TlsRedisServer:
        self.start()
        return self


class SentinelServer(ServerProcess):
    """A Redis Sentinel watching ``master`` as ``master_name``: quorum 1, quick failover.

    The master counts as down after ``down_after_ms`` without an answer; with
    quorum 1 this lone Sentinel then promotes a replica (``RedisReplica``) at
    once. Its config file (which Sentinel rewrites) lives in the run's scratch
    directory, so a restart starts from ``master`` again.
    """

    binary = "redis-sentinel"
    apt_package = "redis-sentinel"

    def __init__(
        self,
        master: RedisServer,
        *,
        master_name: str = "mymaster",
        down_after_ms: int = 500,
        port: int | None = None,
    ) -> None:
        super().__init__(port, master.host)
        self.master = master
        self.master_name = master_name
        self.down_after_ms = down_after_ms

    def command(self, executable: str) -> list[str]:
        name = self.master_name
        config = self.workdir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind {self.host}\ndaemonize no\ndir {self.workdir}\n"
            f"sentinel monitor {name} {self.master.host} {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {max(1000, 4 * self.down_after_ms)}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        return [executable, str(config)]

    @property
    def url(self) -> str:
        """Celery's result backend URL for db 0 (add the master name as a transport option)."""
        return f"sentinel://{self.host}:{self.port}/0"

    def master_address(self) -> tuple[str, int] | None:
        """The master's address in ``SENTINEL MASTER``, which clients ask (redis-py's
        ``discover_master``): during a failover it still names the old master."""
        import redis

        client = redis.Redis(host=self.host, port=self.port, decode_responses=True)
        try:
            fields = client.sentinel_master(self.master_name)  # parsed into a dict
        finally:
            client.close()
        return (str(fields["ip"]), int(fields["port"])) if "ip" in fields else None

    def wait_for_replicas(self, count: int = 1, timeout: float = 30.0) -> None:
        """Return once this Sentinel knows ``count`` replicas it could promote."""
        import redis

        client = redis.Redis(host=self.host, port=self.port, decode_responses=True)
        try:
            deadline = time.monotonic() + timeout
            while len(client.sentinel_slaves(self.master_name)) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self} found fewer than {count} replicas")
                time.sleep(0.05)
        finally:
            client.close()

    def wait_for_master(self, port: int, timeout: float = 30.0) -> None:
        """Return once this Sentinel names the server on ``port`` as the master."""
        deadline = time.monotonic() + timeout
        while (address := self.master_address()) is None or address[1] != port:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self} still names {address} as master, not port {port}")
            time.sleep(0.1)

    def __enter__(self) -> SentinelServer:
        self.start()
        return self


class MemcachedServer(ServerProcess):
    """memcached with 64 MB of memory and UDP off."""

    binary = "memcached"
    apt_package = "memcached"

    def command(self, executable: str) -> list[str]:
        argv = [executable, "-l", self.host, "-p", str(self.port), "-U", "0", "-m", "64"]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        return argv

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> MemcachedServer:
        self.start()
        return self


#: Debian's ``rabbitmq-server`` on the PATH is a wrapper that switches to the
#: ``rabbitmq`` user and its system node; the script it wraps runs any node.
RABBITMQ_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)


class RabbitMQServer(ServerProcess):
    """A RabbitMQ node of its own: name, ports, cookie, data and logs in temp dirs.

    Nothing is read from /etc/rabbitmq and no plugin is enabled, so it never
    meets the machine's own node. It registers with an epmd of its own on a
    free port, started and stopped with it. Unlike Redis here, its data (durable
    queues, persistent messages) survives ``kill`` and ``restart``, as a real
    broker's does; ``close`` (or leaving the ``with`` block) drops it. Booting
    takes about 10 s on a small machine, so share a node where you can.
    """

    binary = "rabbitmq-server"
    apt_package = "rabbitmq-server"
    start_timeout = 90.0
    own_session = True

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(port, host)
        self.dist_port = self._another_port()
        self.epmd_port = self._another_port()
        self.nodename = f"jobtastic-{self.port}@localhost"
        self._data: Path | None = None
        self._epmd: subprocess.Popen[bytes] | None = None

    def _another_port(self) -> int:
        taken = {self.port, getattr(self, "dist_port", None)}
        while (port := free_port(self.host)) in taken:
            pass
        return port

    @property
    def url(self) -> str:
        """The broker URL Celery takes (the default ``guest`` user, loopback only)."""
        return f"amqp://guest:guest@{self.host}:{self.port}//"

    @property
    def data_dir(self) -> Path:
        """Home (with the Erlang cookie) and Mnesia database, kept across restarts."""
        if self._data is None:
            self._data = Path(tempfile.mkdtemp(prefix=f"rabbitmq-data-{self.port}-"))
        return self._data

    def command(self, executable: str) -> list[str]:
        script = next((path for path in RABBITMQ_SCRIPTS if os.access(path, os.X_OK)), None)
        return [script or executable]

    def environment(self) -> dict[str, str]:
        config = self.workdir / "rabbitmq.conf"
        config.write_text("log.console = true\nlog.console.level = warning\n")
        plugins = self.workdir / "enabled_plugins"
        plugins.write_text("[].\n")
        env_file = self.workdir / "rabbitmq-env.conf"
        env_file.write_text("")
        interface = "{" + ",".join(self.host.split(".")) + "}"
        # the developer's own RABBITMQ_*/ERL_* settings must not leak in
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        env.update(
            HOME=str(self.data_dir),
            ERL_EPMD_ADDRESS=self.host,
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(env_file),
            RABBITMQ_CONFIG_FILE=str(config),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            RABBITMQ_MNESIA_BASE=str(self.data_dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.workdir / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_PID_FILE=str(self.workdir / "rabbitmq.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=f"-kernel inet_dist_use_interface {interface}",
        )
        return env

    def start(self) -> None:
        if self.running:
            return
        self._start_epmd()
        try:
            super().start()
        except BaseException:
            self._stop_epmd()
            raise

    def _start_epmd(self) -> None:
        """The node's own port mapper; erl would otherwise daemonize one that outlives it."""
        if self._epmd is not None and self._epmd.poll() is None:
            return
        epmd = ensure_binary("epmd", "erlang-base")
        self._epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", self.host],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _port_accepts(self.host, self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                self._stop_epmd()
                raise RuntimeError(f"epmd did not listen on {self.host}:{self.epmd_port}")
            time.sleep(0.02)

    def _stop_epmd(self) -> None:
        if self._epmd is not None:
            if self._epmd.poll() is None:
                self._epmd.kill()
            self._epmd.wait()
            self._epmd = None

    def _end(self, sig: signal.Signals) -> None:
        try:
            super()._end(sig)
        finally:
            self._stop_epmd()

    def close(self) -> None:
        self.stop()
        if self._data is not None:
            shutil.rmtree(self._data, ignore_errors=True)
            self._data = None

    def __enter__(self) -> RabbitMQServer:
        self.start()
        return self


@atexit.register
def _kill_leftovers() -> None:
    """Never leave servers behind when a session ends without teardown."""
    with _live_lock:
        leftovers = list(_live)
    for server in leftovers:
        with contextlib.suppress(Exception):
            server.kill()
            server.close()
