"""Throughput of the pretrained-feature configuration on this machine (issue 13, d).

    .venv/bin/python bench/feature_throughput.py

Two tables: feature extraction images/s per input size and patch layout (Fashion-MNIST images,
upsampled), and the loop's cost at 10,000 and 100,000 images: fitting version 1, training the
head for its default 600 steps, and re-embedding every image from the cache. The loop runs on
synthetic cached features (random, of the real shape), since its cost does not depend on the
values. Prints Markdown with the load average beside every row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.autoret.data import load_dataset  # noqa: E402
from retrieval.autoret.features import FeatureConfig, FeatureStage, extract_features  # noqa: E402
from retrieval.autoret.head import FeatureHead, HeadConfig  # noqa: E402
from retrieval.autoret.head_training import (  # noqa: E402
    HeadTrainConfig,
    embed_features,
    train_head,
)


def extraction(images: int, sizes: list[int], layouts: list[str], layers: list[str]) -> list[str]:
    data = load_dataset("fashion-mnist:test").subset(range(images))
    rows = ["| input px | layout | layers | images/s | load |", "|---|---|---|---|---|"]
    for layer in layers:
        for layout in layouts:
            for size in sizes:
                cfg = FeatureConfig(input_size=size, layout=layout, layers=layer)  # type: ignore[arg-type]
                stage = FeatureStage(cfg)
                extract_features(stage, data.subset(range(64)))  # warm-up
                start = time.perf_counter()
                extract_features(stage, data, batch_size=256)
                rate = images / (time.perf_counter() - start)
                load = os.getloadavg()[0]
                rows.append(f"| {size} | {layout} | {layer} | {rate:,.0f} | {load:.1f} |")
                print(rows[-1], file=sys.stderr, flush=True)
    return rows


def loop(sizes: list[int]) -> list[str]:
    rows = [
        "| images | fit version 1 s | train 600 steps s | re-embed s | total s | load |",
        "|---|---|---|---|---|---|",
    ]
    for n in sizes:
        generator = torch.Generator().manual_seed(0)
        cfg = FeatureConfig()
        shape = (n, cfg.steps, cfg.dim)
        features = (torch.rand(shape, generator=generator) * 3).to(torch.float16)
        head = FeatureHead.for_features(HeadConfig(), cfg)
        start = time.perf_counter()
        head.fit(features)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        train_head(head, features, HeadTrainConfig())
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        embed_features(head, features)
        embed_s = time.perf_counter() - start
        total = fit_s + train_s + embed_s
        rows.append(
            f"| {n:,} | {fit_s:.1f} | {train_s:.1f} | {embed_s:.1f} | {total:.1f} "
            f"| {os.getloadavg()[0]:.1f} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1024, help="images per extraction row")
    parser.add_argument("--sizes", default="64,96,128")
    parser.add_argument("--layouts", default="regions,crops")
    parser.add_argument("--layers", default="stages5-7,head")
    parser.add_argument("--loop", default="10000,100000", help="collection sizes for the loop")
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start\n")
    sizes = [int(s) for s in args.sizes.split(",")]
    layouts, layers = args.layouts.split(","), args.layers.split(",")
    print("\n".join(extraction(args.images, sizes, layouts, layers)))
    print()
    print("\n".join(loop([int(s) for s in args.loop.split(",")])))


if __name__ == "__main__":
    main()
