"""A CPU memory probe: one model's step in a fresh process, whose resident-set high-water mark is the answer.

    python -m dccnext_cli.benchmark.probe '{"model": {...}, "setting": {...}, "threads": 2}'

In the measuring process the high-water mark holds every model built before, and freed memory stays with
the allocator, so a step's memory on the CPU is read here: the peak resident size while the model is built and
stepped, above the resident size after imports (Linux /proc; the probe needs it).
"""

from __future__ import annotations

import json
import sys


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_high_water_mark() -> None:
    """Linux: writing 5 to clear_refs sets the peak resident size (VmHWM) to the current one."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def main(argv: list[str]) -> None:
    request = json.loads(argv[1])
    import torch

    from .measure import Setting, make_step
    from .models import resolve_model

    if request.get("threads"):
        torch.set_num_threads(request["threads"])
    setting = Setting(**{**request["setting"], "resolution": tuple(request["setting"]["resolution"])})
    spec = resolve_model(request["model"]["name"], request["model"]["changes"])
    base = _status_mib("VmRSS")
    _reset_high_water_mark()  # imports peak above what they leave resident: not the model's
    step = make_step(spec.build(), setting, torch.device("cpu"))
    for _ in range(2):
        step.run()
    print(json.dumps({"peak_mib": _status_mib("VmHWM") - base}))


if __name__ == "__main__":
    main(sys.argv)
