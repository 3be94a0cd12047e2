"""DCCNeXt-B2's eager CPU inference on each DCConv backend, beside its control and convformer_s18, in one process.

    python -m benchmarks.dcconv_backends [--batch 1] [--rounds 80] [--threads 2]

The ratio `deploy --quick` checks (B2 against its control, eager), measured with more rounds and with every CPU
backend of the same model interleaved with the peers (warm-up, then rounds in a rotating order, medians): a quick
deploy run's three repeats at batch 32 vary more than the backends differ. Prints one line per case: the median
and the control's median over it (> 1: faster than the control).
"""

from __future__ import annotations

import argparse
import functools

import torch

from dccnext_cli import optimize_for_inference
from dccnext_cli.models.settings import use_operator_settings

from . import cases
from .timing import measure_interleaved

BACKENDS = ("cpu", "inductor", "reference")


def on_backend(step, backend: str) -> None:
    with use_operator_settings(backend=backend):
        step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS[:2]), choices=BACKENDS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = {}
    for name in ("dccnext_b2", "control_b2", "convformer_s18"):
        torch.manual_seed(0)
        model = cases.build_model(name).eval()
        step = cases.inference_step(model if name == "convformer_s18" else optimize_for_inference(model), args.batch,
                                    (224, 224))
        if name == "dccnext_b2":
            steps.update({f"dccnext_b2 ({b})": functools.partial(on_backend, step, b) for b in args.backends})
        else:
            steps[name] = step
    timings = measure_interleaved(steps, 2, args.rounds)
    control = timings["control_b2"].median_s
    for name, timing in timings.items():
        ratio = control / timing.median_s
        print(f"batch {args.batch}  {name:24s} {timing.median_s * 1000:9.1f} ms   vs control {ratio:.3f}x")


if __name__ == "__main__":
    main()
