"""Pod networking on host-0: a bridge on the host and one network namespace per pod."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

BRIDGE = "slm0"
POD_CIDR = ipaddress.IPv4Network("10.244.0.0/24")
GATEWAY = str(POD_CIDR.network_address + 1)
"""The host's address on the pod bridge: pods reach host services here."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


# Docker Engine sets the FORWARD policy to DROP and loads br_netfilter, which sends traffic
# between two ports of a bridge through FORWARD: accept it for the pod bridge explicitly.
_FORWARD_RULE = ("FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")


def _iptables(action: str, check: bool = True) -> bool:
    result = subprocess.run(
        ["iptables", action, *_FORWARD_RULE], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"iptables {action} {' '.join(_FORWARD_RULE)}: {result.stderr.strip()}")
    return result.returncode == 0


def netns_name(uid: str) -> str:
    """The network namespace of the pod with this uid."""
    return f"slm-{uid[:13]}"


class Network:
    """Allocates pod IPs from POD_CIDR and wires each pod's namespace to the bridge."""

    def __init__(self, state_dir: Path) -> None:
        self._ips = state_dir / "ips"
        self._ips.mkdir(parents=True, exist_ok=True)

    def ensure_bridge(self) -> None:
        """Create the bridge with the gateway address, once."""
        if _ip("link", "show", BRIDGE, check=False).returncode != 0:
            _ip("link", "add", BRIDGE, "type", "bridge")
            _ip("addr", "add", f"{GATEWAY}/{POD_CIDR.prefixlen}", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        if not _iptables("-C", check=False):
            _iptables("-I")

    def _allocate(self, uid: str) -> str:
        for host in POD_CIDR.hosts():
            addr = str(host)
            if addr == GATEWAY:
                continue
            try:
                with (self._ips / addr).open("x") as f:
                    f.write(uid)
            except FileExistsError:
                continue
            return addr
        raise RuntimeError(f"no free pod IP left in {POD_CIDR}")

    def create(self, uid: str) -> tuple[str, str]:
        """Create the pod's namespace and veth; return (netns path, pod IP)."""
        ns = netns_name(uid)
        addr = self._allocate(uid)
        host_if = f"vs{uid[:8]}"
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", host_if, "master", BRIDGE, "up")
        _ip("-n", ns, "addr", "add", f"{addr}/{POD_CIDR.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "route", "add", "default", "via", GATEWAY)
        log.info("pod %s: netns %s ip %s", uid, ns, addr)
        return f"/run/netns/{ns}", addr

    def delete(self, uid: str) -> None:
        """Remove the pod's namespace (its veth goes with it) and free its IP."""
        _ip("netns", "del", netns_name(uid), check=False)
        for f in self._ips.iterdir():
            if f.read_text() == uid:
                f.unlink()

    def teardown(self) -> None:
        """Remove every pod namespace and the bridge."""
        for f in list(self._ips.iterdir()):
            self.delete(f.read_text())
        _ip("link", "del", BRIDGE, check=False)
        while _iptables("-D", check=False):
            pass
