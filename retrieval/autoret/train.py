"""One readable training loop for AutoRet with the AutoEmbedder pairwise loss (sections 1-3).

Each step draws B index pairs (half can-link, half cannot-link; some known, the rest
self-supervised), gathers the 2B images from the in-memory uint8 tensor, augments them as one
batch, runs them through the shared network in one forward pass and applies the clamped-distance
loss. Data and augmentation stay on the training device.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from retrieval.autoret.checkpoint import INFO_FILE, load_training_state, save_checkpoint
from retrieval.autoret.constants import DEFAULT_ALPHA
from retrieval.autoret.data import DataError, ImageSet, resize
from retrieval.autoret.losses import autoembedder_loss, batch_all_autoembedder_loss, nt_xent_loss
from retrieval.autoret.model import AutoRet
from retrieval.autoret.pairs import (
    AUGMENT_PRESETS,
    AugmentConfig,
    KnownPairs,
    PairSampler,
    augment,
    pixel_neighbors,
)

# Our recipe (docs/autoret.md): the ModelConfig and TrainConfig overrides that together beat raw
# pixels and the SimCLR-style peer on the CPU benchmark (docs/benchmarks.md). Not the defaults.
RECIPE_MODEL: dict[str, Any] = {"sphere_radius": 5.0}
RECIPE_TRAIN: dict[str, Any] = {"pairing": "batch-all", "augment": AUGMENT_PRESETS["light"]}


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. An epoch is N pairs (N images), i.e. 2N images through the network.

    alpha: the cannot-link target distance. The reference code uses 100; 10 retrieved about 0.06
    mAP better in the reference prototype (docs/benchmark-anchors.md) and is the default.
    batch_size: pairs per step. The budget is `epochs`, `minutes` or both (whichever ends first);
    with neither, one epoch. augment_both: augment every image of every pair (ours); False is the
    paper's literal reading, where only the copy in a self-supervised can-link pair is augmented.
    pairing: "sampled" (faithful) draws B index pairs per step, half can-link, half cannot-link;
    "batch-all" (ours) draws B images, augments each twice and applies the loss to every pair of
    the 2B views (B can-link, about 2B^2 cannot-link, the two halves weighted 50/50; images of one
    known component are can-link too). Both put 2B images through the network per step.
    loss: "autoembedder" (the method) or "nt-xent" (the SimCLR-style peer, with `temperature`;
    needs batch-all pairing and no known pairs).
    neighbor_pairs (ours): the fraction of self-supervised can-link pairs that pair an image with
    one of its `neighbor_k` nearest neighbours in pixel space (centred grey thumbnails, cosine)
    instead of with an augmented copy of itself; 0 is the paper's pairing. Sampled pairing only.
    lr_schedule (ours): "constant" keeps lr (the reference code); "cosine" decays it to 0 over the
    budget (steps, or seconds with --minutes), after a linear warmup over the first `warmup`
    fraction of it.
    init_scale (ours): before the first step, centre and scale the final projection on a seeded
    sample of the training images so that their median pairwise distance, in training mode, is
    alpha/2. A fresh narrow network puts them about 0.77 apart there (alpha/13 at alpha 10), so
    the AutoEmbedder loss first has to grow that scale. The AutoEmbedder loss only (the nt-xent
    loss is scale-free).
    """

    alpha: float = DEFAULT_ALPHA
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: float | None = None
    minutes: float | None = None
    labels_fraction: float = 0.0
    known_fraction: float = 0.5
    max_known_repeats: float = 10.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    augment_both: bool = True
    pairing: Literal["sampled", "batch-all"] = "sampled"
    loss: Literal["autoembedder", "nt-xent"] = "autoembedder"
    temperature: float = 0.2
    neighbor_pairs: float = 0.0
    neighbor_k: int = 5
    init_scale: bool = False
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup: float = 0.0
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    channels_last: bool = True
    checkpoint_every_s: float = 300.0
    log_every: int = 10
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.pairing not in ("sampled", "batch-all"):
            raise ValueError(f"pairing must be sampled or batch-all, got {self.pairing!r}")
        if self.loss not in ("autoembedder", "nt-xent"):
            raise ValueError(f"loss must be autoembedder or nt-xent, got {self.loss!r}")
        if self.loss == "nt-xent" and self.pairing != "batch-all":
            raise ValueError("the nt-xent loss contrasts two views of each image: use batch-all")
        if not 0.0 <= self.neighbor_pairs <= 1.0:
            raise ValueError(f"neighbor_pairs must be in [0, 1], got {self.neighbor_pairs}")
        if self.neighbor_pairs > 0 and self.pairing != "sampled":
            raise ValueError("neighbor pairs replace sampled can-link pairs: use sampled pairing")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.neighbor_k < 1:
            raise ValueError(f"neighbor_k must be at least 1, got {self.neighbor_k}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Progress:
    """What the callback sees every `log_every` steps; loss is the mean over those steps."""

    step: int
    epoch: float
    images_seen: int
    loss: float
    images_per_s: float
    elapsed_s: float
    eta_s: float | None
    fraction_done: float


@dataclass
class TrainResult:
    steps: int
    epochs: float
    images_seen: int
    elapsed_s: float
    images_per_s: float
    final_loss: float
    loss_history: list[dict[str, float]]
    stopped: str  # "finished" (budget reached) or "cancelled" (callback returned False)
    known_pairs: dict[str, int] | None
    checkpoint: Path | None


@torch.no_grad()
def scale_projection(model: AutoRet, images: torch.Tensor, target: float, seed: int) -> float:
    """Rescales `model.projection` in place so that a seeded sample of `images` (uint8, N x C x H
    x W, on the model's device), seen in training mode, is centred on 0 with median pairwise
    distance `target`; returns the factor. The projection is linear, so e' = s * (e - mean) is
    W' = s W, b' = s (b - mean)."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(images.shape[0], generator=generator)[:256].to(images.device)
    # Measured as the loss will see the images: in training mode, where batch norm uses the
    # batch's statistics (at initialization far from its running ones), which stay untouched.
    kept = {name: buffer.clone() for name, buffer in model.named_buffers()}
    was_training = model.training
    model.train()
    e = model(images[index].float().div(255.0)).float()
    model.train(was_training)
    for name, buffer in model.named_buffers():
        buffer.copy_(kept[name])
    median = torch.pdist(e).median().item() if e.shape[0] > 1 else 0.0
    if not median > 0.0:
        return 1.0  # every image maps to one point: nothing to scale
    factor = target / median
    projection = model.projection
    projection.weight.mul_(factor)
    if projection.bias is not None:
        projection.bias.sub_(e.mean(0).to(projection.bias.dtype)).mul_(factor)
    return factor


def _lr_factor(cfg: TrainConfig, done: float) -> float:
    """The learning rate's multiplier when `done` (0..1) of the budget is spent."""
    if done < cfg.warmup:
        return (done + 1e-3) / cfg.warmup
    if cfg.lr_schedule == "cosine":
        rest = (done - cfg.warmup) / (1.0 - cfg.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(rest, 1.0)))
    return 1.0


def train(
    model: AutoRet,
    data: ImageSet,
    cfg: TrainConfig,
    out_dir: Path | None = None,
    known: KnownPairs | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
    *,
    resume: bool = False,
) -> TrainResult:
    """Trains `model` in place on `data` and returns a summary.

    known: known pairs; when None and cfg.labels_fraction > 0 they come from the labels of that
    fraction of `data`. callback: called every cfg.log_every steps; returning False stops training
    cleanly (a checkpoint is still written). out_dir: where checkpoints go (periodic and final);
    resume=True continues from the checkpoint there (model, optimizer, step, RNG states, loss
    history) when one exists.
    """
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for but no CUDA GPU is available")
    on_cuda = device.type == "cuda"
    if known is None and cfg.labels_fraction > 0:
        if data.labels is None:
            raise DataError("a labels fraction needs a data set with labels")
        known = KnownPairs.from_labels(data.labels, cfg.labels_fraction, seed=cfg.seed)
    if known is not None and cfg.loss == "nt-xent":
        raise ValueError("the nt-xent loss has no use for known pairs")

    images = data.images
    if model.config.image_size is not None:
        images = resize(images, model.config.image_size)
    images = images.to(device)
    model.to(device)
    memory_format = torch.channels_last if on_cuda and cfg.channels_last else torch.preserve_format
    if on_cuda and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    neighbors = None
    if cfg.neighbor_pairs > 0:
        neighbors = pixel_neighbors(images, min(cfg.neighbor_k, len(data) - 1))
    sampler = PairSampler(
        len(data),
        cfg.batch_size,
        known,
        cfg.known_fraction,
        cfg.max_known_repeats,
        cfg.seed,
        neighbors=neighbors,
        neighbor_fraction=cfg.neighbor_pairs,
    )
    augment_rng = torch.Generator(device=device).manual_seed(cfg.seed + 1)

    step, elapsed_before, history = 0, 0.0, []
    if resume and out_dir is not None and (out_dir / INFO_FILE).is_file():
        info, rng = load_training_state(out_dir, model, optimizer)
        step, elapsed_before, history = info["step"], info["elapsed_s"], info["loss_history"]
        sampler.generator.set_state(rng["sampler"])
        augment_rng.set_state(rng["augment"])

    if step == 0 and cfg.init_scale and cfg.loss == "autoembedder":
        scale_projection(model, images, cfg.alpha / 2, cfg.seed)

    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    epochs = cfg.epochs if cfg.epochs is not None or cfg.minutes is not None else 1.0
    total_steps = math.ceil(epochs * steps_per_epoch) if epochs is not None else None
    budget_s = cfg.minutes * 60.0 if cfg.minutes is not None else None
    images_per_step = 2 * cfg.batch_size
    pairs = cfg.batch_size

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start

    def save(metrics: dict[str, Any]) -> None:
        if out_dir is not None:
            save_checkpoint(
                out_dir,
                model,
                step=step,
                optimizer=optimizer,
                rng_states={
                    "sampler": sampler.generator.get_state(),
                    "augment": augment_rng.get_state(),
                },
                train_config=cfg.to_dict(),
                metrics=metrics,
                loss_history=history,
                elapsed_s=elapsed(),
            )

    model.train()
    bar = tqdm(total=total_steps, initial=step, unit="step", disable=not cfg.progress_bar)
    start = time.perf_counter()
    session_start_step, last_save = step, start
    window_loss = torch.zeros((), device=device)
    window_steps = 0
    stopped = "finished"
    while (total_steps is None or step < total_steps) and (
        budget_s is None or elapsed() < budget_s
    ):
        same: torch.Tensor | None = None
        if cfg.pairing == "batch-all":
            image_batch = sampler.sample_images()
            first = second = image_batch.index
            same = image_batch.same().to(device, non_blocking=True)
        else:
            batch = sampler.sample()
            first, second, is_cannot = batch.first, batch.second, batch.is_cannot
        index = torch.cat([first, second]).to(device, non_blocking=True)
        x = images[index].float().div_(255.0)
        if cfg.augment_both:
            x = augment(x, augment_rng, cfg.augment)
        else:
            # Paper-literal: only the second image of each pair is altered.
            x = torch.cat([x[:pairs], augment(x[pairs:], augment_rng, cfg.augment)])
        x = x.contiguous(memory_format=memory_format)
        if cfg.lr_schedule != "constant" or cfg.warmup > 0:
            done = step / total_steps if total_steps is not None else 0.0
            if budget_s is not None:
                done = max(done, elapsed() / budget_s)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * _lr_factor(cfg, done)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda and cfg.amp):
            e = model(x)
        if cfg.loss == "nt-xent":
            loss = nt_xent_loss(e[:pairs], e[pairs:], cfg.temperature)
        elif same is not None:
            loss = batch_all_autoembedder_loss(e, same, cfg.alpha)
        else:
            loss = autoembedder_loss(e[:pairs], e[pairs:], is_cannot.to(device), cfg.alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        window_loss += loss.detach()
        window_steps += 1
        bar.update(1)

        finished = (total_steps is not None and step >= total_steps) or (
            budget_s is not None and elapsed() >= budget_s
        )
        if window_steps < cfg.log_every and not finished:
            continue
        # Synchronizing with the device only every log_every steps keeps the GPU queue full.
        mean_loss = window_loss.item() / window_steps
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"the loss became {mean_loss} at step {step}")
        window_loss.zero_()
        window_steps = 0
        now = elapsed()
        session_s = time.perf_counter() - start
        rate = (step - session_start_step) * images_per_step / max(session_s, 1e-9)
        history.append(
            {"step": step, "epoch": step / steps_per_epoch, "elapsed_s": now, "loss": mean_loss}
        )
        progress = _progress(
            step, steps_per_epoch, images_per_step, mean_loss, rate, now, total_steps, budget_s
        )
        bar.set_postfix(loss=f"{mean_loss:.4g}", img_s=f"{rate:.0f}")
        if callback is not None and callback(progress) is False:
            stopped = "cancelled"
            break
        if not finished and time.perf_counter() - last_save >= cfg.checkpoint_every_s:
            save({"loss": mean_loss, "images_per_s": rate})
            last_save = time.perf_counter()
    bar.close()

    session_s = time.perf_counter() - start
    rate = (step - session_start_step) * images_per_step / max(session_s, 1e-9)
    final_loss = history[-1]["loss"] if history else float("nan")
    metrics = {"loss": final_loss, "images_per_s": rate, "stopped": stopped}
    if known is not None:
        metrics["known_pairs"] = known.counts()
    save(metrics)
    return TrainResult(
        steps=step,
        epochs=step / steps_per_epoch,
        images_seen=step * images_per_step,
        elapsed_s=elapsed(),
        images_per_s=rate,
        final_loss=final_loss,
        loss_history=history,
        stopped=stopped,
        known_pairs=None if known is None else known.counts(),
        checkpoint=out_dir,
    )


def _progress(
    step: int,
    steps_per_epoch: int,
    images_per_step: int,
    loss: float,
    rate: float,
    elapsed_s: float,
    total_steps: int | None,
    budget_s: float | None,
) -> Progress:
    """Progress towards whichever budget (steps or time) ends first."""
    fractions, etas = [], []
    if total_steps is not None:
        fractions.append(step / total_steps)
        etas.append((total_steps - step) * images_per_step / rate if rate > 0 else math.inf)
    if budget_s is not None:
        fractions.append(elapsed_s / budget_s)
        etas.append(max(budget_s - elapsed_s, 0.0))
    eta = min(etas) if etas else None
    return Progress(
        step=step,
        epoch=step / steps_per_epoch,
        images_seen=step * images_per_step,
        loss=loss,
        images_per_s=rate,
        elapsed_s=elapsed_s,
        eta_s=None if eta is None or math.isinf(eta) else eta,
        fraction_done=min(max(fractions, default=0.0), 1.0),
    )
