"""The native floor of a served request (issue 14), measured in the same run.

The floor is the CPU a request spends inside usearch (with its ``numkong`` distance
kernels) and ONNX Runtime: what no Python, gRPC or glue work can go below. ``bench load
--native-floor`` samples the server's processes with Linux ``perf`` over the measured
window (``perf record -e cpu-clock``, no call graphs), attributes each sample to the
shared object it ran in, and reports the floor's share of the server's CPU, the floor in
ms per request (that share of the measured server CPU per request) and the server's CPU
as a multiple of it: the ratio issue 14 asks to bring to 1.5 ×.

The libraries are the shared objects the ``usearch``, ``numkong`` and ``onnxruntime``
(or ``onnxruntime-gpu``) distributions install, found from their installed file lists,
so nothing here depends on where the environment lives. Needs ``perf`` (Debian:
``linux-perf``) and the right to profile the server (root, or
``kernel.perf_event_paranoid`` at most 1 for one's own processes).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["FLOOR_DISTRIBUTIONS", "NativeProfile", "floor_libraries", "floor_summary"]

#: Distributions whose shared objects are the floor (label: distribution names).
FLOOR_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "usearch": ("usearch", "numkong"),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
}
SAMPLE_HZ = 499
_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S.*?)\s*$")


def floor_libraries() -> dict[str, str]:
    """Basename of every shared object of the floor's distributions -> its label."""
    out: dict[str, str] = {}
    for label, dists in FLOOR_DISTRIBUTIONS.items():
        for dist in dists:
            try:
                files = importlib.metadata.files(dist) or []
            except importlib.metadata.PackageNotFoundError:
                continue
            for f in files:
                name = Path(str(f)).name
                if name.endswith(".so") or ".so." in name:
                    out[name] = label
    return out


class NativeProfile:
    """``perf record`` of a process tree over a window: :meth:`start` with the PIDs when
    the window opens, :meth:`stop` when it closes, then :meth:`shares`."""

    def __init__(self) -> None:
        perf = shutil.which("perf")
        if perf is None:
            raise SystemExit(
                "--native-floor samples the server with Linux perf, which is not installed "
                "(Debian: apt-get install linux-perf)"
            )
        self._perf = perf
        self._dir = tempfile.TemporaryDirectory(prefix="native-floor-")
        self.data = Path(self._dir.name) / "perf.data"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, pids: Sequence[int]) -> None:
        if not pids:
            raise SystemExit("--native-floor needs the server's PID (--server-pid or --serve)")
        cmd = [self._perf, "record", "-q", "-e", "cpu-clock", "-F", str(SAMPLE_HZ)]
        cmd += ["-p", ",".join(map(str, pids)), "-o", str(self.data)]
        self._proc = subprocess.Popen(  # noqa: S603 - a fixed argument list
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # perf writes its file and exits
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not self.data.exists() or not self.data.stat().st_size:
            raise SystemExit(
                f"--native-floor: perf recorded nothing ({err.decode(errors='replace').strip()})"
                "; is kernel.perf_event_paranoid too strict for this user?"
            )

    def shares(self) -> dict[str, float]:
        """Share of the samples (0..1) per shared object, by basename."""
        cmd = [self._perf, "report", "-i", str(self.data), "--stdio", "--sort", "dso"]
        cmd += ["--no-children", "-q"]
        text = subprocess.run(  # noqa: S603 - a fixed argument list
            cmd, capture_output=True, text=True, check=True, env={**os.environ, "PAGER": "cat"}
        ).stdout
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = _LINE.match(line)
            if m:
                name = Path(m.group(2).strip("[]")).name if "/" in m.group(2) else m.group(2)
                out[name] = out.get(name, 0.0) + float(m.group(1)) / 100.0
        return out

    def close(self) -> None:
        self._dir.cleanup()


def floor_summary(shares: dict[str, float], server_ms_per_request: float | None) -> dict:
    """The floor's share of the server's CPU (total and per label), the floor in ms per
    request and the server's CPU per request as a multiple of it."""
    libs = floor_libraries()
    by_label = {label: 0.0 for label in FLOOR_DISTRIBUTIONS}
    for name, share in shares.items():
        label = libs.get(name)
        if label is not None:
            by_label[label] += share
    total = sum(by_label.values())
    out: dict = {
        "share": round(total, 4),
        "by_library": {label: round(v, 4) for label, v in by_label.items()},
        "samples_top": {n: round(v, 4) for n, v in sorted(shares.items(), key=lambda x: -x[1])[:8]},
    }
    if server_ms_per_request and total > 0:
        out["ms_per_request"] = round(total * server_ms_per_request, 3)
        out["server_to_floor"] = round(1.0 / total, 2)
    return out
