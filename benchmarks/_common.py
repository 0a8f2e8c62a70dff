"""Shared bits of the benchmark scripts: a header naming the hardware, and table printing."""

from __future__ import annotations

import os
import platform


def hardware_header() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"hardware: {cpu}, {os.cpu_count()} CPU threads visible, torch threads "
        f"{torch.get_num_threads()}, GPU: {gpu}\ntorch {torch.__version__}, python "
        f"{platform.python_version()}"
    )


def print_table(rows: list[dict], floatfmt: str = "{:.3f}") -> None:
    if not rows:
        return
    cols = list(dict.fromkeys(c for r in rows for c in r))  # every row's columns, in order seen
    cells = [[floatfmt.format(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
