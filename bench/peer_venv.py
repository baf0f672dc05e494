"""The peers of `make bench-compare`: their own virtualenvs, their processes and ports.

Each peer server (MXNet Model Server, TorchServe, BentoML, Ray Serve) lives in
its own virtualenv, ``bench/.work/NAME-venv``, created here on first use and
reinstalled when its package list changes. The handler's packages (MXNet,
numpy, OpenCV, pylibjpeg) are installed with the project's
`constraints.txt`, so every peer runs the same numerical stack as predictor
(MXNet 1.9.1 needs numpy < 1.24). The peers stay out of the project's venv:
they bring Java launchers, Ray, Starlette apps and their pins, which the
server and its runtime image do not need.

Each server runs as a child process in a session of its own (`PeerProcess`),
so that stopping it reaches every process it started (Java frontends and
their Python workers, BentoML's workers, Ray's raylet, GCS and replicas),
and nothing of a peer is left to share the CPU with the next contender.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO

from bench.peer_handler import CONFIG_FILE, HandlerConfig
from predictor.checkpoint import Checkpoint

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
# What every handler needs, at the project's pins (-c constraints.txt).
HANDLER_PACKAGES = ("mxnet", "numpy", "opencv-python-headless", "pylibjpeg-libjpeg")
# The Java servers refuse ports from the kernel's ephemeral range (MMS: "Invalid
# port number" for 58797): pick below it.
PORT_RANGE = (20000, 32000)


@dataclass(frozen=True)
class PeerVenv:
    """A peer's virtualenv: ``bench/.work/NAME-venv`` with ``packages`` and the handler's."""

    name: str
    packages: tuple[str, ...]  # pinned, e.g. "torchserve==0.12.0"

    @property
    def path(self) -> Path:
        """Its folder."""
        return WORK / f"{self.name}-venv"

    @property
    def bin(self) -> Path:
        """Its ``bin`` folder (the peer's command-line tools, its python)."""
        return self.path / "bin"

    def ensure(self) -> Path:
        """Create and install it unless it already holds these packages; returns `bin`."""
        stamp = self.path / ".installed"
        wanted = "\n".join((*self.packages, *HANDLER_PACKAGES))
        if stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted:
            return self.bin
        if not (self.bin / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(self.path)], check=True)
        pip = [str(self.bin / "python"), "-m", "pip", "install", "--quiet"]
        constraints = ["-c", str(ROOT / "constraints.txt")]
        subprocess.run([*pip, *constraints, "pip"], check=True)
        subprocess.run([*pip, *constraints, *self.packages, *HANDLER_PACKAGES], check=True)
        stamp.write_text(wanted, encoding="utf-8")
        return self.bin

    def environment(self, **extra: str) -> dict[str, str]:
        """This process's environment with the venv first on ``PATH``, plus ``extra``."""
        return {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(self.path),
            **extra,
        }


def free_port(exclude: Collection[int] = ()) -> int:
    """A loopback port in `PORT_RANGE` free right now (the peers take fixed ports)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        if port in exclude:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def wait_for_http(
    url: str,
    timeout_s: float,
    alive: Callable[[], bool],
    describe: Callable[[], str],
    accept: Callable[[bytes], bool] = lambda body: True,
) -> None:
    """Poll ``url`` until it answers 200 with a body ``accept`` takes; raise with
    ``describe()`` on time-out or as soon as the server is no longer ``alive()``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200 and accept(response.read()):
                    return
        except (urllib.error.URLError, OSError):
            pass
        if not alive():
            raise RuntimeError(f"the server exited before {url} answered: {describe()}")
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:g} s: {describe()}")


def wait_for_lines(
    log: Path,
    pattern: str,
    count: int,
    timeout_s: float,
    alive: Callable[[], bool],
    describe: Callable[[], str],
) -> None:
    """Wait until ``log`` holds ``count`` distinct matches of ``pattern`` (its first group, or
    the whole match): every worker of a peer saying it is ready, where the peer's own
    readiness check answers as soon as the first one is."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
        found = {m.group(1) if regex.groups else m.group(0) for m in regex.finditer(text)}
        if len(found) >= count:
            return
        if not alive():
            raise RuntimeError(f"the server exited before {count} x {pattern!r}: {describe()}")
        time.sleep(0.5)
    raise RuntimeError(f"no {count} x {pattern!r} within {timeout_s:g} s: {describe()}")


def stage_model(prefix: Path, folder: Path, config: HandlerConfig) -> Path:
    """Copy the checkpoint and the handler's configuration into ``folder``; returns the copy.

    The configuration names the copy relative to itself, so that a server that
    moves the folder (the Java servers' model store) still finds it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    source, packed = Checkpoint(prefix), Checkpoint(folder / prefix.name)
    pairs = [(source.symbol_path, packed.symbol_path), (source.params_path, packed.params_path)]
    pairs.append((source.synset_path, packed.synset_path))
    if source.preprocess_path.is_file():
        pairs.append((source.preprocess_path, packed.preprocess_path))
    for original, copy in pairs:
        shutil.copyfile(original, copy)
    replace(config, prefix=prefix.name).write(folder / CONFIG_FILE)
    return folder / prefix.name


def fresh_folder(path: Path) -> Path:
    """``path`` emptied (a peer's home under ``bench/.work``: logs, staging, scratch)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


class PeerProcess:
    """A server's command in a session of its own, its output in ``log``; `stop` ends all of it."""

    def __init__(self, command: list[str], *, cwd: Path, env: Mapping[str, str], log: Path) -> None:
        self.log = log
        self._log_file: IO[bytes] = log.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.session = self.process.pid

    def alive(self) -> bool:
        """True while the command itself runs."""
        return self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        """The end of its output, for error messages."""
        if not self.log.is_file():
            return "(no output)"
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def members(self) -> set[int]:
        """Every live process of its session, and every descendant of the command."""
        return session_members(self.session) | descendants(self.process.pid)

    def stop(
        self,
        first: signal.Signals = signal.SIGTERM,
        *,
        group: bool = True,
        grace_s: float = 60.0,
        term_s: float = 10.0,
    ) -> list[int]:
        """Stop it as its documentation does, then make sure: ``first`` (SIGINT is Ctrl-C) to its
        process group (``group``) or to the command alone and ``grace_s`` for all of it to
        exit; then SIGTERM (``term_s`` to exit) and finally SIGKILL to whatever is left of it,
        by process id.

        Returns the ids still alive at the end (none, unless the kernel refused).
        """
        known = self.members()
        if self.alive():
            if group:
                os.killpg(self.session, first)
            else:
                self.process.send_signal(first)
            self._wait_gone(known, grace_s)
        for sig, wait_s in ((signal.SIGTERM, term_s), (signal.SIGKILL, 5.0)):
            known |= self.members()
            left = _alive(known)
            if not left:
                break
            _signal_all(left, sig)
            self._wait_gone(left, wait_s)
        self.process.wait()
        self._log_file.close()
        return sorted(_alive(known | self.members()))

    def _wait_gone(self, pids: set[int], seconds: float) -> None:
        """Until none of ``pids`` runs (the command reaped), or ``seconds`` have passed."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.process.poll()  # reap the command itself: a zombie does not count
            if not _alive(pids):
                return
            time.sleep(0.2)


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent id, session id) of a live process from ``/proc``; None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie: its parent reaps it, nothing runs
        return None
    return int(fields[1]), int(fields[3])


def _all_pids() -> Iterable[int]:
    return (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())


def session_members(session: int) -> set[int]:
    """Live processes of session ``session``."""
    members = set()
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if stat is not None and stat[1] == session:
            members.add(pid)
    return members


def descendants(pid: int) -> set[int]:
    """Live descendants of ``pid`` (children, their children, ...), whatever their session."""
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        stat = _proc_stat(other)
        if stat is not None:
            children.setdefault(stat[0], []).append(other)
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _alive(pids: Iterable[int]) -> set[int]:
    return {pid for pid in pids if _proc_stat(pid) is not None}


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class PeerServer:
    """A peer serving one checkpoint; a context manager that always stops it.

    Entering it installs the venv, empties the peer's folder ``bench/.work/NAME``,
    stages the checkpoint and the handler's configuration in `model_dir` and
    picks `port`; subclasses set `venv`, `decoder`, `endpoint_path` and
    `form_field`, and implement `_start` (which starts `process` with `_spawn`
    and waits until it serves). `url` is then the endpoint that
    `bench.loadgen` posts JPEGs to.
    """

    venv: PeerVenv
    # How this peer's own object-detection example decodes (bench.peer_handler.DECODERS).
    decoder: str
    endpoint_path = "/predict"
    # The multipart field the JPEG goes in, for a peer that takes uploads, not raw bodies.
    form_field: str | None = None
    # How the peer's documentation stops it: a signal, to its process group or to its command.
    stop_signal = signal.SIGTERM
    stop_group = True

    def __init__(
        self,
        prefix: Path,
        edge: int,
        batch_size: int,
        max_batch_delay_ms: int,
        *,
        view: str = "same_handler",
        model_code: str = "plain",
        workers: int | None = None,
    ) -> None:
        """``prefix`` at ``edge``, batched by the peer up to ``batch_size`` waiting at most
        ``max_batch_delay_ms`` (where the peer has such a setting), in ``view``
        (`bench.peer_handler.VIEWS`), with ``workers`` model replicas (default: one per core).
        """
        self.config = HandlerConfig(
            repo_root=str(ROOT),
            prefix=str(prefix),
            edge=edge,
            batch_size=batch_size,
            model_code=model_code,
            view=view,
            decoder=self.decoder,
        )
        self.prefix = prefix
        self.max_batch_delay_ms = max_batch_delay_ms
        self.workers = workers or os.cpu_count() or 1
        self.home = WORK / self.venv.name
        self.process: PeerProcess | None = None
        self.port = 0
        self.leftovers: list[int] = []

    @property
    def url(self) -> str:
        """The detection endpoint."""
        return f"http://127.0.0.1:{self.port}{self.endpoint_path}"

    @property
    def model_dir(self) -> Path:
        """Where the checkpoint and the handler's configuration are staged."""
        return self.home / "model"

    def __enter__(self) -> PeerServer:
        self.venv.ensure()
        fresh_folder(self.home)
        stage_model(self.prefix, self.model_dir, self.config)
        self.port = free_port()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        raise NotImplementedError

    def _spawn(self, command: list[str], env: Mapping[str, str]) -> PeerProcess:
        """Start the server's command in ``home`` with its output in ``home/server.log``."""
        self.process = PeerProcess(command, cwd=self.home, env=env, log=self.home / "server.log")
        return self.process

    def logs(self) -> str:
        """The end of the server's output, for error messages."""
        return self.process.tail() if self.process is not None else "(not started)"

    def stop(self) -> None:
        """Stop the server and everything it started; `leftovers` lists what would not die."""
        if self.process is not None:
            self.leftovers = self.process.stop(self.stop_signal, group=self.stop_group)
            self.process = None
