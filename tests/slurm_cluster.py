"""A real, private, single-node SLURM cluster (munged + slurmctld + slurmd) for tests.

Everything lives in one scratch folder: its own MUNGE key and socket, its own
``slurm.conf`` on free TCP ports, state and spool directories, pid and log
files. Nothing under /etc is touched and the system's own daemons, if any, are
left alone, so two clusters (or a site SLURM) can coexist on one machine.
Clients reach this cluster through ``SLURM_CONF``; see :meth:`SlurmCluster.env`.

Use it from pytest through the ``slurm`` fixture in ``test_slurm.py``, or by
hand::

    python tests/slurm_cluster.py start /tmp/evo-slurm   # prints export SLURM_CONF=...
    python tests/slurm_cluster.py stop /tmp/evo-slurm

Needs root (slurmd runs jobs as their submitting user) and Debian's
``slurm-wlm`` and ``munge`` packages (``.ci/install-slurm.sh``).

The module also registers ``slurm_cluster:SlowCartPole-v1``: CartPole whose
every step sleeps :data:`SLOW_STEP_SECONDS`, so that a run lasts a known
wall-clock time on any machine while using little CPU (the requeue test needs
a run longer than a 1-minute time limit).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"

SLURM_CONF = """\
ClusterName=evotest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
# socket: our private munged. cred_expire: a requeued job waits cred_expire
# seconds before it may start again (default 120 s); keep requeue tests short.
AuthInfo=socket={dir}/munge/munge.socket,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd{node_suffix}.pid
SlurmdSpoolDir={dir}/spool{node_suffix}
StateSaveLocation={dir}/state
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd{node_suffix}.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
# Start pending (e.g. requeued) jobs within seconds instead of the default 60 s scheduling pass.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
# Batch jobs may be requeued (the default, stated for the requeue test).
JobRequeue=1
# The time limit is a hard limit; SIGTERM, then SIGKILL KillWait seconds later.
OverTimeLimit=0
KillWait=30
# Keep finished jobs visible to 'scontrol show job' for the tests' polling.
MinJobAge=600
{node_lines}
PartitionName=debug Nodes={node_names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


#: Sleep per env step of ``SlowCartPole-v1``.
SLOW_STEP_SECONDS = 0.005


def make_slow_cartpole(**kwargs):
    """CartPole-v1 whose ``step`` first sleeps :data:`SLOW_STEP_SECONDS` (gymnasium entry point)."""
    import gymnasium
    from gymnasium.envs.classic_control import CartPoleEnv

    class SlowCartPole(gymnasium.Wrapper):
        def step(self, action):
            time.sleep(SLOW_STEP_SECONDS)
            return self.env.step(action)

    return SlowCartPole(CartPoleEnv(**kwargs))


def _register_slow_env() -> None:
    try:
        import gymnasium
    except ImportError:  # the cluster helpers do not need it
        return
    if "SlowCartPole-v1" not in gymnasium.registry:
        gymnasium.register("SlowCartPole-v1", entry_point=make_slow_cartpole, max_episode_steps=500)


_register_slow_env()


class ClusterUnavailable(RuntimeError):
    """SLURM or MUNGE is not installed or would not start; the message says why."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + SBIN)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is one.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


class SlurmCluster:
    """One private single-node cluster rooted at ``directory``."""

    DAEMONS = ("slurmd", "slurmctld", "munged")

    def __init__(self, directory: str | os.PathLike[str], cpus: int = 2):
        self.dir = Path(directory).resolve()
        self.cpus = cpus
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"

    # -- environment for clients --------------------------------------------------
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: os.environ) with SLURM_CONF pointing here and sbin on PATH."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = env.get("PATH", "") + os.pathsep + SBIN
        return env

    def cmd(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command (sbatch, scontrol, ...) against this cluster."""
        proc = self._run(list(args), timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}{self.logs_tail()}")
        return proc

    # -- lifecycle ------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        """Start munged, slurmctld and slurmd and wait until the node is idle.

        Raises:
            ClusterUnavailable: the software is missing, we are not root, or a
                daemon did not come up (the message includes its log).

        """
        missing = [n for n in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol") if _which(n) is None]
        if missing:
            raise ClusterUnavailable(
                f"SLURM/MUNGE not installed (missing {', '.join(missing)}); run .ci/install-slurm.sh as root"
            )
        if os.geteuid() != 0:
            raise ClusterUnavailable("a private SLURM cluster needs root (slurmd runs jobs as their user)")
        (self.dir / "munge").mkdir(parents=True, exist_ok=True)
        (self.dir / "spool").mkdir(exist_ok=True)
        (self.dir / "state").mkdir(exist_ok=True)
        os.chmod(self.dir / "munge", 0o700)
        key = self.dir / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.prepare()
        self.conf.write_text(self.conf_text())
        try:
            self._spawn(
                "munged",
                [
                    _which("munged") or "munged",
                    "--force",
                    f"--socket={self.dir}/munge/munge.socket",
                    f"--key-file={key}",
                    f"--pid-file={self.dir}/munged.pid",
                    f"--log-file={self.dir}/munged.log",
                    f"--seed-file={self.dir}/munge/munged.seed",
                ],
            )
            self._wait_for(lambda: (self.dir / "munge" / "munge.socket").exists(), 10, "munged socket")
            self.start_slurm()
            self._wait_for(self._nodes_idle, timeout, "the node(s) to become idle")
        except ClusterUnavailable:
            self.stop()
            raise

    # -- what a subclass with more nodes changes ------------------------------------------
    #: Client commands (sbatch, scontrol, ...) run behind this prefix (e.g. inside a node's namespaces).
    client_prefix: tuple[str, ...] = ()

    def prepare(self) -> None:
        """Set up what the daemons need before they start (nothing for one node)."""

    def conf_text(self) -> str:
        """slurm.conf: one node, this host, on free ports."""
        return SLURM_CONF.format(
            host=self.host,
            dir=self.dir,
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            node_suffix="",
            node_lines=f"NodeName={self.host} CPUs={self.cpus} RealMemory=20000 State=UNKNOWN",
            node_names=self.host,
        )

    def start_slurm(self) -> None:
        """Start slurmctld and the slurmd(s) (munged runs already)."""
        self._spawn("slurmctld", [_which("slurmctld") or "slurmctld", "-f", str(self.conf)])
        self._spawn("slurmd", [_which("slurmd") or "slurmd", "-f", str(self.conf)])

    def pid_files(self) -> list[Path]:
        """The daemons' pid files, in the order they are stopped."""
        return [self.dir / f"{name}.pid" for name in self.DAEMONS]

    def _run(
        self, argv: list[str], timeout: float, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A client command behind :attr:`client_prefix`, with this cluster's environment."""
        return subprocess.run(
            [*self.client_prefix, *argv], capture_output=True, text=True, timeout=timeout, env=self.env(env)
        )

    def _spawn(self, name: str, argv: list[str], pid_name: str | None = None) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=self.env())
        if proc.returncode != 0:
            raise ClusterUnavailable(
                f"{name} failed to start (exit {proc.returncode}): {proc.stderr.strip()}{self.logs_tail()}"
            )
        pid_file = self.dir / f"{pid_name or name}.pid"
        self._wait_for(lambda: _read_pid(pid_file) is not None, 10, f"{pid_file}")

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.25)
        raise ClusterUnavailable(f"timed out after {timeout:.0f} s waiting for {what}{self.logs_tail()}")

    def _nodes_idle(self) -> bool:
        proc = self._run([_which("sinfo") or "sinfo", "-h", "-N", "-o", "%t"], timeout=15)
        states = proc.stdout.split()
        return proc.returncode == 0 and bool(states) and all(s.startswith("idle") for s in states)

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, then stop the daemons by the pids in their pid files."""
        if self.conf.exists() and _read_pid(self.dir / "slurmctld.pid"):
            try:
                self._run([_which("scancel") or "scancel", "--full", "--user", str(os.geteuid())], timeout=15)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.job_ids():
                    time.sleep(0.5)
            except (OSError, subprocess.SubprocessError):
                pass
        pids = [pid for pid in map(_read_pid, self.pid_files()) if pid is not None and alive(pid)]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def job_ids(self) -> list[str]:
        """Ids of jobs the controller knows that have not finished."""
        proc = self._run([_which("squeue") or "squeue", "-h", "-o", "%i"], timeout=15)
        return proc.stdout.split() if proc.returncode == 0 else []

    # -- jobs -----------------------------------------------------------------------
    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Submit with ``sbatch --parsable``; returns the job id."""
        proc = self._run([_which("sbatch") or "sbatch", "--parsable", *args], timeout=30, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} exited {proc.returncode}: {proc.stderr}{self.logs_tail()}")
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict of its KEY=VALUE fields ({} once the job is forgotten)."""
        proc = self._run([_which("scontrol") or "scontrol", "show", "job", "-o", job_id], timeout=15)
        if proc.returncode != 0:
            return {}
        return dict(re.findall(r"(\S+?)=(\S*)", proc.stdout))

    def wait(self, job_id: str, timeout: float, states: tuple[str, ...] = ("COMPLETED",)) -> dict[str, str]:
        """Poll until the job reaches a final state; returns its last fields.

        Raises:
            TimeoutError: not final within ``timeout`` seconds (the job is cancelled).

        """
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in final | set(states):
                return info
            time.sleep(1)
        self.cmd("scancel", job_id, check=False)
        raise TimeoutError(f"job {job_id} not finished after {timeout:.0f} s: {info}{self.logs_tail()}")

    def logs_tail(self, lines: int = 15) -> str:
        """The last lines of each daemon log, for error messages."""
        out = []
        for path in sorted(self.dir.glob("*.log")):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"\n--- {path} ---\n" + "\n".join(tail))
        return "".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    cluster = SlurmCluster(argv[2])
    if argv[1] == "start":
        try:
            cluster.start()
        except ClusterUnavailable as exc:
            print(f"cannot start SLURM: {exc}", file=sys.stderr)
            return 1
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
