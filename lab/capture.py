"""A packet capture of everything that crosses the lab switch, complete when it is read.

How this works
--------------
A Linux bridge hands a unicast frame from one member port straight to another: a capture on
``br0`` sees only frames flooded or addressed to the bridge itself, so once the switch has
learnt two devices' MACs their frames vanish from it (the demo's pcap lost every ``PeerData``
that way, at random, depending on when learning happened). This capture listens on the
switch namespace's ``any`` device (Linux cooked v2 framing, which records the interface and
the direction of each frame) and keeps each frame exactly once:

- frames arriving on a member port or the uplink (``inbound and not ifindex BR``) -- every
  frame that enters the switch from a device or the RADIUS side;
- frames the switch itself sends (``outbound and ifindex BR``): hostapd's RADIUS requests,
  the DAS answers, ARP from the switch's management address.

Copies the bridge forwards out of other ports, and frames delivered up to ``br0``, are left
out (they would count a frame twice).

``start()`` returns only when tcpdump says it is listening (nothing sent after it is missed);
``--immediate-mode -U`` writes each frame as it arrives; ``stop()`` ends tcpdump by PID
(SIGTERM: it flushes and reports its counters) and returns those counters, so a reader of
the file after ``stop()`` sees every frame, and ``dropped`` says if the kernel lost any.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from tessera.lab.netns import Lab, Proc, sh

LISTENING = "listening on"
# In immediate mode libpcap hands over one ring block per frame, and a block is at least the
# snapshot length: with tcpdump's defaults (262144 bytes, a 2 MiB ring) eight frames in a burst
# fill the ring and the ninth is dropped (seen: 7 of 108 frames of the demo's link-up burst).
# Jumbo-sized snapshots in a 32 MiB ring hold thousands; frames here are <= 1518 bytes.
SNAPLEN = 9216
BUFFER_KIB = 32768


def switch_filter(bridge_ifindex: int) -> str:
    """The BPF filter that keeps each frame crossing the switch once (see the module doc)."""
    return (f"(inbound and not ifindex {bridge_ifindex}) or "
            f"(outbound and ifindex {bridge_ifindex})")


@dataclass
class CaptureStats:
    captured: int
    received: int
    dropped: int


def parse_stats(text: str) -> CaptureStats | None:
    """tcpdump's closing counters ("N packets captured" ...), or None if it printed none."""
    got = {}
    for key in ("captured", "received by filter", "dropped by kernel"):
        m = re.findall(rf"^(\d+) packets? {key}$", text, re.M)
        if not m:
            return None
        got[key] = int(m[-1])
    return CaptureStats(got["captured"], got["received by filter"], got["dropped by kernel"])


class SwitchCapture:
    """tcpdump in the switch namespace writing ``path``; ``start()``, then always ``stop()``."""

    def __init__(self, lab: Lab, ns: str, path: Path, bridge: str = "br0"):
        self.lab, self.ns, self.path, self.bridge = lab, ns, Path(path), bridge
        self.proc: Proc | None = None
        self.stats: CaptureStats | None = None

    def _ifindex(self) -> int:
        return int(sh(["cat", f"/sys/class/net/{self.bridge}/ifindex"], ns=self.ns).stdout)

    def start(self, timeout: float = 10.0) -> "SwitchCapture":
        self.proc = self.lab.spawn("tcpdump", self.ns, [
            "tcpdump", "-q", "-n", "-U", "--immediate-mode", "-s", str(SNAPLEN), "-B", str(BUFFER_KIB),
            "-i", "any", "-w", str(self.path),
            switch_filter(self._ifindex())])
        deadline = time.monotonic() + timeout
        while LISTENING not in self._log():
            if not self.proc.alive():
                raise RuntimeError(f"tcpdump exited before listening: {self._log()[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tcpdump did not start listening within {timeout}s")
            time.sleep(0.01)
        return self

    def _log(self) -> str:
        try:
            return Path(self.proc.log_path).read_text(errors="replace")
        except (FileNotFoundError, TypeError):
            return ""

    def stop(self) -> CaptureStats | None:
        """End tcpdump (it flushes the file) and return its counters. Idempotent."""
        if self.proc is not None:
            self.lab.stop(self.proc)
            self.stats = parse_stats(self._log())
            self.proc = None
        return self.stats
