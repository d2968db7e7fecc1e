"""A real two-node SLURM cluster on one machine: two network namespaces with their own hosts.

``node1`` and ``node2`` are Linux network namespaces joined by a veth pair
(10.217.0.1 and 10.217.0.2 on a private /24 that exists only inside them).
Every process of a node runs in that node's network namespace, in its own UTS
namespace (``hostname`` says ``node1``/``node2``) and in a private mount
namespace where ``/etc/hosts`` names both nodes and ``/sys`` is the node's own
(so ``/sys/class/net`` lists its veth, as UCX and libfabric expect; the
host's cgroup tree is bound back under it for slurmd). The controller and
node1's slurmd run on node1, node2's slurmd on node2; one ``munged`` with a
private key and socket serves both (its UNIX socket is a file both see).
Client commands (sbatch, scontrol, ...) run on node1 through the ``on``
script this module writes: ``DIR/on node2 hostname`` runs ``hostname`` on
node2.

Traffic between the nodes crosses the veth pair; :meth:`TwoNodeCluster.link_bytes`
reads its byte counters. One caveat of emulating two hosts on one kernel: UCX
(MPICH's default network module here) sees that both "hosts" share a kernel
and would move inter-node messages through shared memory (CMA) instead of
the network. :data:`NETWORK_ENV` (``UCX_TLS=tcp,self``) makes it use TCP, as
it must between real hosts; the tests export it into their jobs. MPICH's own
shared memory between ranks of one node is not affected (it follows the
node ids that the launcher reports).

Namespace and interface names carry a random tag, so clusters of two test
sessions do not collide; :meth:`TwoNodeCluster.stop` stops the daemons by the
pids in their pid files and deletes both namespaces (which removes the veth
pair). Nothing outside the cluster's folder and its namespaces is changed.

    python tests/two_node_cluster.py start /tmp/evo-2n   # prints how to submit
    python tests/two_node_cluster.py stop /tmp/evo-2n

Needs root, iproute2 (``ip netns``), util-linux (``nsenter``, ``unshare``),
and Debian's ``slurm-wlm`` and ``munge`` (``.ci/install-slurm.sh``).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from slurm_cluster import SLURM_CONF, ClusterUnavailable, SlurmCluster, _read_pid, _which, alive

#: The nodes and their addresses on the private link.
NODES = {"node1": "10.217.0.1", "node2": "10.217.0.2"}

#: Environment for MPI jobs on this cluster: inter-node messages over TCP, as between real hosts.
NETWORK_ENV = {"UCX_TLS": "tcp,self"}

#: Runs a command on one node: its network, UTS and a private mount namespace (hosts file, own /sys).
ON_SCRIPT = """\
#!/bin/sh
# usage: {dir}/on NODE COMMAND [ARGS...]   (run COMMAND on NODE of the two-node test cluster)
case "$1" in
{cases}
    *) echo "on: unknown node '$1' (nodes: {names})" >&2; exit 2 ;;
esac
node=$1; shift
mkdir -p {dir}/cgroup-$node
exec nsenter --net=/run/netns/$netns unshare --uts --mount sh -c '
    mount --rbind /sys/fs/cgroup "$1" && mount -t sysfs sysfs /sys && mount --rbind "$1" /sys/fs/cgroup &&
    mount --bind {dir}/hosts /etc/hosts && hostname "$2" && shift 2 && exec "$@"' sh {dir}/cgroup-$node "$node" "$@"
"""


class TwoNodeCluster(SlurmCluster):
    """node1 + node2, each a network namespace with its own slurmd; the controller on node1."""

    def __init__(self, directory: str | os.PathLike[str], cpus: int = 2):
        super().__init__(directory, cpus)
        tag = f"evo{secrets.token_hex(3)}"
        self.netns = {name: f"{tag}-{name}" for name in NODES}
        self.veth = {name: f"{tag}-v{i}" for i, name in enumerate(NODES, start=1)}
        self.host = "node1"  # the controller's host
        self.client_prefix = (str(self.dir / "on"), "node1")

    # -- namespaces -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create both namespaces, the veth pair between them, the hosts file and the ``on`` script."""
        missing = [n for n in ("ip", "nsenter", "unshare", "mount") if _which(n) is None]
        if missing:
            raise ClusterUnavailable(f"cannot build network namespaces: {', '.join(missing)} not installed")
        first, second = NODES
        steps = [
            ["ip", "netns", "add", self.netns[first]],
            ["ip", "netns", "add", self.netns[second]],
            ["ip", "link", "add", self.veth[first], "type", "veth", "peer", "name", self.veth[second]],
        ]
        for name, address in NODES.items():
            steps += [
                ["ip", "link", "set", self.veth[name], "netns", self.netns[name]],
                ["ip", "-n", self.netns[name], "addr", "add", f"{address}/24", "dev", self.veth[name]],
                ["ip", "-n", self.netns[name], "link", "set", "lo", "up"],
                ["ip", "-n", self.netns[name], "link", "set", self.veth[name], "up"],
            ]
        for argv in steps:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                self.delete_namespaces()
                raise ClusterUnavailable(
                    f"network namespaces cannot be created here: {' '.join(argv)}: {proc.stderr.strip()}"
                )
        hosts = "127.0.0.1 localhost\n" + "".join(f"{address} {name}\n" for name, address in NODES.items())
        (self.dir / "hosts").write_text(hosts)
        cases = "\n".join(f"    {name}) netns={self.netns[name]} ;;" for name in NODES)
        on = self.dir / "on"
        on.write_text(ON_SCRIPT.format(dir=self.dir, cases=cases, names=", ".join(NODES)))
        on.chmod(0o755)
        for name in NODES:
            (self.dir / f"spool-{name}").mkdir(exist_ok=True)

    def delete_namespaces(self) -> None:
        """Delete both namespaces (and so the veth pair); missing ones are fine."""
        for ns in self.netns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    # -- SLURM ------------------------------------------------------------------------------
    def conf_text(self) -> str:
        """slurm.conf: the controller on node1, one slurmd per node (pid, spool and log per node)."""
        return SLURM_CONF.format(
            host="node1",
            dir=self.dir,
            ctld_port=6817,  # free: the namespaces are ours alone
            slurmd_port=6818,
            node_suffix="-%n",
            node_lines="\n".join(
                f"NodeName={name} NodeAddr={address} CPUs={self.cpus} RealMemory=10000 State=UNKNOWN"
                for name, address in NODES.items()
            ),
            node_names=",".join(NODES),
        )

    def start_slurm(self) -> None:
        """slurmctld and slurmd on node1, slurmd on node2."""
        on = str(self.dir / "on")
        self._spawn("slurmctld", [on, "node1", _which("slurmctld") or "slurmctld", "-f", str(self.conf)])
        for name in NODES:
            self._spawn(
                "slurmd", [on, name, _which("slurmd") or "slurmd", "-f", str(self.conf), "-N", name], f"slurmd-{name}"
            )

    def pid_files(self) -> list[Path]:
        """slurmd of each node, slurmctld, munged."""
        return [
            *(self.dir / f"slurmd-{name}.pid" for name in NODES),
            self.dir / "slurmctld.pid",
            self.dir / "munged.pid",
        ]

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, stop the daemons by their pids, delete the namespaces."""
        try:
            super().stop(timeout)
        finally:
            self.delete_namespaces()

    def running(self) -> list[int]:
        """Pids from the pid files that are still alive (empty after :meth:`stop`)."""
        pids = [_read_pid(p) for p in self.pid_files()]
        return [pid for pid in pids if pid is not None and alive(pid)]

    def namespaces_left(self) -> list[str]:
        """This cluster's namespaces that still exist."""
        proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
        listed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
        return sorted(ns for ns in self.netns.values() if ns in listed)

    # -- the link -----------------------------------------------------------------------------
    def link_bytes(self) -> int:
        """Bytes sent plus received by node1's end of the link since it was created."""
        proc = subprocess.run(
            ["ip", "-j", "-s", "-n", self.netns["node1"], "link", "show", "dev", self.veth["node1"]],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        stats = json.loads(proc.stdout)[0]["stats64"]
        return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    directory = Path(argv[2]).resolve()
    cluster = TwoNodeCluster(directory)
    state = directory / "namespaces.json"
    if argv[1] == "start":
        try:
            cluster.start()
        except ClusterUnavailable as exc:
            print(f"cannot start the two-node cluster: {exc}", file=sys.stderr)
            return 1
        state.write_text(json.dumps({"netns": cluster.netns, "veth": cluster.veth}))
        print(f"export SLURM_CONF={cluster.conf}")
        print(f"# then e.g.: {directory}/on node1 srun -N 2 hostname")
    else:
        if state.exists():
            saved = json.loads(state.read_text())
            cluster.netns, cluster.veth = saved["netns"], saved["veth"]
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
