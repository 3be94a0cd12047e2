"""A quick ablation anyone can run offline: B0 with dcc, conv or none in stages 3-4, same budget, several seeds.

    python -m benchmarks.ablation                 # 3 ops x 2 seeds x 30 steps: about 12 minutes on 2 CPU cores
    python -m benchmarks.ablation --seeds 0 1 2 --train-per-class 600 --epochs 3   # a longer, firmer run

Data: a class-balanced subset of the embedded Fashion-MNIST (`--train-per-class` training images per class,
`--eval-per-class` test images per class), written once as an image folder. Resolution 96 px: stage 3 then
holds 6x6 = 36 tokens, so a cluster of K = 12 is a third of the map, neither the whole map (global mixing, as
at 56 px where stage 3 has 16 tokens) nor a fixed window; stage 4 (3x3 tokens) is global for any K >= 9.
Every run trains the same number of steps with the quickstart's optimiser settings; only the spatial op of
stages 3-4 and the seed (initialisation and data order) change. The result is evidence, not a test: on a
small grey data set at low resolution the ops may well tie.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from dccnext_cli.classification.recipe import load_recipe
from dccnext_cli.classification.train import train
from dccnext_cli.common.files import atomic_write_text
from dccnext_cli.data.builtin import open_builtin

OPS = ("dcc", "conv", "none")
RESULTS = Path(__file__).resolve().parent / "results"


def write_subset(root: Path, train_per_class: int, eval_per_class: int) -> Path:
    """An image folder (train/ and validation/, one folder per class) of the first images of each class."""
    for split, folder, per_class in (("train", "train", train_per_class), ("test", "validation", eval_per_class)):
        images = open_builtin("fashion-mnist", split)
        counts: dict[int, int] = {}
        for index in range(len(images)):
            label = int(images.labels[index])
            if counts.get(label, 0) >= per_class:
                continue
            counts[label] = counts.get(label, 0) + 1
            target = root / folder / f"class_{label}"
            target.mkdir(parents=True, exist_ok=True)
            images[index]["image"].save(target / f"{index:05d}.png")
    return root


def run_one(data: Path, op: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    recipe = load_recipe("quickstart", {
        "data": f"imagefolder:{data}", "eval_split": "validation", "input_size": [args.res, args.res],
        "epochs": args.epochs, "batch_size": args.batch_size, "warmup_epochs": 0.1, "workers": 0, "seed": seed,
        "amp": "no", "log_every": 1000,
        # the spatial op alone differs: `none` would otherwise drop the ConvFFN too (Table 6's first row)
        "model": {"global_op": op, "conv_ffn": True},
    })
    start = time.time()
    result = train(recipe, out / f"{op}-seed{seed}")
    return {"op": op, "seed": seed, "top1": result.metrics["top1"], "steps": result.steps,
            "wall_s": round(time.time() - start, 1)}


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for op in OPS:
        top1 = [r["top1"] for r in runs if r["op"] == op]
        spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
        rows.append({"op": op, "runs": len(top1), "mean_top1": statistics.mean(top1), "std_top1": spread,
                     "min_top1": min(top1), "max_top1": max(top1)})
    return rows


def markdown(rows: list[dict], args: argparse.Namespace, runs: list[dict]) -> str:
    lines = [
        f"B0 at {args.res} px, {args.train_per_class * 10} training images x {args.epochs} epoch(s) "
        f"(batch {args.batch_size}, {runs[0]['steps']} steps), top-1 on {args.eval_per_class * 10} test images, "
        f"seeds {', '.join(map(str, args.seeds))}",
        "",
        "| stages 3-4 | runs | top-1 mean | std | min | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['op']} | {r['runs']} | {r['mean_top1']:.2f} % | {r['std_top1']:.2f} | {r['min_top1']:.2f} | "
              f"{r['max_top1']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--res", type=int, default=96)
    parser.add_argument("--train-per-class", type=int, default=60)
    parser.add_argument("--eval-per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "ablation")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_subset(Path(tmp) / "data", args.train_per_class, args.eval_per_class)
        for seed in args.seeds:  # seeds outermost: the ops see the same drift of a shared machine
            for op in OPS:
                runs.append(run_one(data, op, seed, args, Path(tmp) / "runs"))
                print(json.dumps(runs[-1]), flush=True)
    rows = summarise(runs)
    table = markdown(rows, args, runs)
    atomic_write_text(args.out.with_suffix(".json"),
                 json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "summary": rows},
                            indent=2))
    atomic_write_text(args.out.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
