"""Self-describing checkpoints: safetensors weights plus a JSON file; loading never unpickles.

A checkpoint is a directory holding
- model.safetensors: the model's state dict (of a pretrained-features model: the head's only,
  since the frozen backbone is the ImageNet EfficientNet-Lite0 the package ships);
- optimizer.safetensors (optional, for resume): optimizer tensors and the training RNG states,
  with the optimizer's hyper-parameters as JSON in the file's metadata;
- checkpoint.json: model config (a from-scratch AutoRet: "model"; a head on pretrained features:
  "features" and "head"), train config, metrics, step and loss history.
Files are written to temporary names and renamed, checkpoint.json last, and every file records the
step, so a crash while saving leaves either the old checkpoint or a detectable mismatch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from retrieval.autoret.features import FeatureConfig
from retrieval.autoret.head import HeadConfig, PretrainedAutoRet
from retrieval.autoret.model import AutoRet, ModelConfig

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
INFO_FILE = "checkpoint.json"
FORMAT = "autoret-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or made for another architecture."""


def save_checkpoint(
    directory: Path,
    model: AutoRet,
    *,
    step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    rng_states: dict[str, torch.Tensor] | None = None,
    train_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    loss_history: list[dict[str, float]] | None = None,
    elapsed_s: float = 0.0,
) -> Path:
    """Writes (or overwrites) the checkpoint in `directory` and returns it."""
    meta = _write_weights(directory, model, step)
    if optimizer is not None:
        tensors, groups = _flatten_optimizer(optimizer)
        for name, state in (rng_states or {}).items():
            tensors[f"rng.{name}"] = state.cpu()
        save_file(
            tensors,
            str(directory / f"{OPTIMIZER_FILE}.tmp"),
            metadata={**meta, "param_groups": json.dumps(groups)},
        )
        os.replace(directory / f"{OPTIMIZER_FILE}.tmp", directory / OPTIMIZER_FILE)
    described = {"model": model.config.to_dict()}
    return _write_info(directory, described, step, elapsed_s, train_config, metrics, loss_history)


def _write_weights(directory: Path, model: nn.Module, step: int) -> dict[str, str]:
    """model.safetensors (through a temporary name); returns the metadata it carries."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "step": str(step)}
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / f"{MODEL_FILE}.tmp"), metadata=meta)
    os.replace(directory / f"{MODEL_FILE}.tmp", directory / MODEL_FILE)
    return meta


def _write_info(
    directory: Path,
    described: dict[str, Any],
    step: int,
    elapsed_s: float,
    train_config: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    loss_history: list[dict[str, float]] | None,
) -> Path:
    """checkpoint.json, written last: `described` names the architecture ("model", or
    "features" and "head")."""
    info = {
        "format": FORMAT,
        "step": step,
        "elapsed_s": elapsed_s,
        **described,
        "train": train_config,
        "metrics": metrics or {},
        "loss_history": loss_history or [],
    }
    (directory / f"{INFO_FILE}.tmp").write_text(json.dumps(info, indent=1))
    os.replace(directory / f"{INFO_FILE}.tmp", directory / INFO_FILE)
    return directory


def save_head_checkpoint(
    directory: Path,
    model: PretrainedAutoRet,
    *,
    step: int = 0,
    train_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    loss_history: list[dict[str, float]] | None = None,
    elapsed_s: float = 0.0,
) -> Path:
    """Writes a pretrained-features model: the head's weights (its PCA buffers included) and both
    configs. The backbone is rebuilt from the shipped ImageNet weights when it loads (13 MB less
    per version, and every version of a collection shares one backbone)."""
    _write_weights(directory, model.head, step)
    described = {"features": model.feature_config.to_dict(), "head": model.head.config.to_dict()}
    return _write_info(directory, described, step, elapsed_s, train_config, metrics, loss_history)


def read_info(directory: Path) -> dict[str, Any]:
    """The parsed checkpoint.json of `directory`."""
    path = directory / INFO_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint (no {INFO_FILE})")
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: unreadable ({error})") from None
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {info.get('format')!r}")
    return info


def _load_tensors(path: Path, step: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: unreadable ({error})") from None
    if meta.get("step") != str(step):
        raise CheckpointError(f"{path}: holds step {meta.get('step')} but {INFO_FILE} says {step}")
    return tensors, meta


def load_weights(model: nn.Module, directory: Path) -> dict[str, Any]:
    """Loads the checkpoint's weights into `model` (which must have the same architecture) and
    returns the checkpoint info."""
    info = read_info(directory)
    tensors, _ = _load_tensors(directory / MODEL_FILE, info["step"])
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    reshaped = [k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape]
    if missing or unexpected or reshaped:
        described = info.get("model") or {}
        arch = (
            described.get("backbone", "a head on pretrained features"),
            "patching" if described.get("patching", True) else "no patching",
        )
        raise CheckpointError(
            f"{directory}: the checkpoint holds another architecture ({arch[0]}, {arch[1]}): "
            f"{len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(reshaped)} reshaped tensors"
        )
    model.load_state_dict(tensors)
    return info


def load_model(
    directory: Path | str, device: str | torch.device = "cpu"
) -> AutoRet | PretrainedAutoRet:
    """Rebuilds the model a checkpoint describes and loads its weights, in eval mode."""
    directory = Path(directory)
    info = read_info(directory)
    if "features" in info:
        return load_pretrained_model(directory, info).to(device).eval()
    try:
        # Pretrained weights would be overwritten by the checkpoint's, so none are fetched.
        cfg = ModelConfig.from_dict({**info["model"], "pretrained": False})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory}: bad model config ({error})") from None
    model = AutoRet(cfg)
    load_weights(model, directory)
    return model.to(device).eval()


def load_pretrained_model(directory: Path, info: dict[str, Any] | None = None) -> PretrainedAutoRet:
    """A pretrained-features model: the shipped ImageNet backbone plus the checkpoint's head."""
    info = info if info is not None else read_info(directory)
    try:
        model = PretrainedAutoRet(
            FeatureConfig.from_dict(info["features"]), HeadConfig.from_dict(info["head"])
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{directory}: bad feature or head config ({error})") from None
    load_weights(model.head, directory)
    return model


def load_training_state(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restores model and optimizer for resume; returns the checkpoint info and RNG states."""
    info = load_weights(model, directory)
    tensors, meta = _load_tensors(directory / OPTIMIZER_FILE, info["step"])
    rng = {k.removeprefix("rng."): v for k, v in tensors.items() if k.startswith("rng.")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return info, rng


def _flatten_optimizer(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Optimizer state dict -> flat tensors ("state.<param>.<name>") plus JSON-able groups."""
    state_dict = optimizer.state_dict()
    tensors = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
    return tensors, state_dict["param_groups"]
