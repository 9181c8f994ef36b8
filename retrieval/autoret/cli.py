"""Command line: python -m retrieval.autoret train | embed | evaluate.

`train` with no --model trains what the platform trains by default: the head on frozen ImageNet
EfficientNet-Lite0 patch features (FeatureConfig, HeadConfig and HeadTrainConfig defaults). The
from-scratch networks are the other --model presets. PATH arguments accept a folder of images,
an .npz, fashion-mnist:train|test or cifar10:DIR:train|test. Unusable data or checkpoints end
with one "error: ..." line and status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from retrieval.autoret.checkpoint import (
    INFO_FILE,
    CheckpointError,
    load_model,
    save_head_checkpoint,
)
from retrieval.autoret.data import DataError, ImageSet, load_dataset
from retrieval.autoret.embed import embed_images
from retrieval.autoret.evaluate import evaluate_retrieval
from retrieval.autoret.features import FeatureConfig, FeatureStage, extract_features
from retrieval.autoret.head import HeadConfig, PretrainedAutoRet
from retrieval.autoret.head_training import HeadTrainConfig, train_head, version_one
from retrieval.autoret.model import PRESETS, AutoRet, create_model
from retrieval.autoret.pairs import AUGMENT_PRESETS, KnownPairs
from retrieval.autoret.train import TrainConfig, train

BACKBONES = {
    "small": "small",
    "resnet18": "resnet18",
    "efficientnet-lite0": "efficientnet_lite0",
    "efficientnet_lite0": "efficientnet_lite0",
}


PRETRAINED = "pretrained"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retrieval.autoret", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    t = commands.add_parser("train", help="train a model and write a checkpoint directory")
    t.add_argument("--data", required=True, help="training images (PATH)")
    t.add_argument("--out", required=True, type=Path, help="checkpoint directory")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="wall-clock budget")
    budget.add_argument("--epochs", type=float, help="epochs (an epoch is one pair per image)")
    t.add_argument(
        "--model",
        default=PRETRAINED,
        choices=[PRETRAINED, *sorted(PRESETS)],
        help=f"{PRETRAINED} (the platform's default): a head on frozen ImageNet features; the "
        "others are from-scratch presets, which the options marked (scratch) tune",
    )
    t.add_argument(
        "--steps",
        type=int,
        default=HeadTrainConfig.steps,
        help=f"training steps of the {PRETRAINED} head",
    )
    t.add_argument("--backbone", choices=sorted(BACKBONES), help="override the preset's backbone")
    t.add_argument(
        "--labels-fraction",
        type=float,
        default=0.0,
        help="use the labels of this fraction of the images as known pairs",
    )
    t.add_argument("--alpha", type=float, default=TrainConfig.alpha)
    t.add_argument(
        "--pairing",
        choices=["sampled", "batch-all"],
        default=TrainConfig.pairing,
        help="sampled: the paper's B pairs per step; batch-all: every pair of 2B views (ours)",
    )
    t.add_argument(
        "--neighbor-pairs",
        type=float,
        default=TrainConfig.neighbor_pairs,
        help="fraction of self-supervised can-link pairs made of an image and a pixel-space "
        "nearest neighbour instead of its own copy (ours; sampled pairing)",
    )
    t.add_argument(
        "--init-scale",
        action=argparse.BooleanOptionalAction,
        default=TrainConfig.init_scale,
        help="scale the final projection at the start so that training images lie alpha/2 apart "
        "(ours)",
    )
    t.add_argument(
        "--sphere-radius",
        type=float,
        help="put every embedding on the sphere of this radius (ours; alpha 10 with radius 5 "
        "asks cannot-link pairs to be opposite)",
    )
    t.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default=TrainConfig.lr_schedule,
        help="constant (the reference code) or cosine decay to 0 over the budget (ours)",
    )
    t.add_argument(
        "--warmup",
        type=float,
        default=TrainConfig.warmup,
        help="fraction of the budget over which the learning rate rises linearly from 0",
    )
    t.add_argument(
        "--augment",
        choices=sorted(AUGMENT_PRESETS),
        default="default",
        help="augmentation strength: default (the spec's parameters) or light (ours)",
    )
    t.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="pairs per step")
    t.add_argument("--lr", type=float, default=TrainConfig.lr)
    t.add_argument("--seed", type=int, default=TrainConfig.seed)
    t.add_argument("--image-size", type=int, help="resize images to this square size")
    t.add_argument("--embed-from", choices=["projection", "features"])
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = commands.add_parser("embed", help="embed images with a checkpoint into a .npy file")
    e.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="checkpoint directory, or a model zip downloaded from the platform",
    )
    e.add_argument("--data", required=True)
    e.add_argument("--out", required=True, type=Path, help="FILE.npy, float32 N x D")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])

    v = commands.add_parser("evaluate", help="print mAP@k and precision@k as one JSON object")
    v.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="checkpoint directory, or a model zip downloaded from the platform",
    )
    v.add_argument("--queries", required=True)
    v.add_argument("--database", required=True)
    v.add_argument("--k", type=int, default=1000)
    v.add_argument("--precision-k", type=int, default=100)
    v.add_argument("--batch-size", type=int, default=256)
    v.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return parser


def _load_at(spec: str, size: int | None) -> ImageSet:
    """Arrays stay at their size (embedding resizes each batch); folders of mixed sizes need one."""
    return load_dataset(spec, size if Path(spec).is_dir() else None)


def _train_pretrained(args: argparse.Namespace) -> None:
    """Extracts the frozen features once, fits version 1 on them and trains the head."""
    features_cfg = FeatureConfig()
    data = _load_at(args.data, features_cfg.input_size)
    stage = FeatureStage(features_cfg).to(args.device)
    features = extract_features(stage, data, device=args.device, progress=not args.no_progress)
    model = version_one(features, features_cfg, HeadConfig(), seed=args.seed)
    known = None
    if args.labels_fraction > 0:
        if data.labels is None:
            raise DataError(f"{args.data}: --labels-fraction needs labels")
        known = KnownPairs.from_labels(data.labels, args.labels_fraction, seed=args.seed)
    cfg = HeadTrainConfig(
        steps=args.steps,
        seconds=args.minutes * 60 if args.minutes is not None else None,
        seed=args.seed,
        device=args.device,
    )
    result = train_head(model.head, features, cfg, known)
    save_head_checkpoint(
        args.out,
        model,
        step=result.steps,
        train_config=cfg.to_dict(),
        metrics={
            "final_loss": result.final_loss,
            "neighbor_images": result.neighbor_images,
            "group_images": result.group_images,
            "pseudo_images": result.pseudo_images,
            "known_share": result.known_share,
            "fit": model.head.fit_report,
            "neighbors": result.neighbors,
        },
        loss_history=result.loss_history,
        elapsed_s=result.elapsed_s,
    )
    summary = dataclasses.asdict(result)
    summary.pop("loss_history")
    summary["checkpoint"] = str(args.out)
    print(json.dumps(summary))


def _train(args: argparse.Namespace) -> None:
    if args.model == PRETRAINED:
        if args.resume or args.epochs is not None:
            raise DataError(
                "--resume and --epochs apply to the from-scratch presets; the pretrained head "
                "trains for HeadTrainConfig.steps, capped by --minutes"
            )
        _train_pretrained(args)
        return
    overrides: dict[str, object] = {}
    if args.backbone:
        overrides["backbone"] = BACKBONES[args.backbone]
    if args.embed_from:
        overrides["embed_from"] = args.embed_from
    if args.image_size:
        overrides["image_size"] = args.image_size
    if args.sphere_radius is not None:
        overrides["sphere_radius"] = args.sphere_radius
    preset_size = PRESETS[args.model].get("image_size")
    data = load_dataset(args.data, args.image_size or preset_size)
    # The model records the size it was trained at, so embedding other data resizes to match.
    height, width = data.image_size
    if "image_size" not in overrides and preset_size is None and height == width:
        overrides["image_size"] = height
    model = create_model(args.model, in_channels=data.channels, **overrides)
    cfg = TrainConfig(
        alpha=args.alpha,
        pairing=args.pairing,
        neighbor_pairs=args.neighbor_pairs,
        init_scale=args.init_scale,
        augment=AUGMENT_PRESETS[args.augment],
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        warmup=args.warmup,
        epochs=args.epochs,
        minutes=args.minutes,
        labels_fraction=args.labels_fraction,
        seed=args.seed,
        device=args.device,
        progress_bar=not args.no_progress,
    )
    result = train(model, data, cfg, out_dir=args.out, resume=args.resume)
    summary = dataclasses.asdict(result)
    summary.pop("loss_history")
    summary["checkpoint"] = str(result.checkpoint)
    print(json.dumps(summary))


def _load(checkpoint: Path, device: str) -> AutoRet | PretrainedAutoRet:
    if checkpoint.is_file() and zipfile.is_zipfile(checkpoint):
        # A model downloaded from the platform, used without unzipping it first: the weights are
        # in memory once loaded, so the unpacked copy can go.
        with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(checkpoint) as archive:
            archive.extractall(folder)
            found = sorted(path.parent for path in Path(folder).rglob(INFO_FILE))
            if len(found) != 1:
                raise CheckpointError(f"{checkpoint}: holds {len(found)} checkpoints, not one")
            return load_model(found[0], device)
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint}: no such checkpoint directory")
    return load_model(checkpoint, device)


def _embed(args: argparse.Namespace) -> None:
    model = _load(args.checkpoint, args.device)
    data = _load_at(args.data, model.image_size)
    vectors = embed_images(model, data, args.batch_size, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, vectors)
    print(json.dumps({"out": str(args.out), "images": len(data), "dim": int(vectors.shape[1])}))


def _evaluate(args: argparse.Namespace) -> None:
    model = _load(args.checkpoint, args.device)
    queries = _load_at(args.queries, model.image_size)
    database = _load_at(args.database, model.image_size)
    for name, data in (("queries", queries), ("database", database)):
        if data.labels is None:
            raise DataError(
                f"{name}: evaluation needs labels (class subfolders or an npz 'labels')"
            )
    q = embed_images(model, queries, args.batch_size, args.device)
    db = embed_images(model, database, args.batch_size, args.device)
    assert queries.labels is not None and database.labels is not None
    print(
        json.dumps(
            evaluate_retrieval(
                q, queries.labels, db, database.labels, args.k, args.precision_k, device=args.device
            )
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was asked for but no CUDA GPU is available", file=sys.stderr)
        return 2
    try:
        {"train": _train, "embed": _embed, "evaluate": _evaluate}[args.command](args)
    except (DataError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
