"""Training with a regulariser: checkpoints every epoch (fragile checkpoint format), resumable.

``state.pt`` in the output folder holds the weights, optimizer state and epoch (tensors and numbers
only, read with ``torch.load(weights_only=True)``); a rerun with the same folder resumes after the last
finished epoch. Shuffling is seeded per epoch, so an interrupted-and-resumed run equals a straight one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from fragile.defenses.regularizers import create as create_regularizer
from fragile.devices import model_device
from fragile.errors import FragileError
from fragile.models.checkpoint import save_checkpoint
from fragile.models.outputs import model_output


def to_softplus(model: nn.Module, beta: float) -> nn.Module:
    """Permanently replace every nn.ReLU by nn.Softplus(beta) (Ghorbani App. A: softplus retraining)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                parent._modules[name] = nn.Softplus(beta=beta)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, in batches of ``batch_size`` on the model's device."""
    model.eval()
    device = model_device(model)
    correct = sum(int((model_output(model, xb.to(device)).argmax(1) == yb.to(device)).sum())
                  for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return correct / len(x)


def train(model: nn.Module, *, arch: str, train_data, test_data, out: str | Path, epochs: int = 1,
          batch_size: int = 64, lr: float = 1e-3, regularizer: str = "ce", regularizer_params: dict | None = None,
          softplus_beta: float | None = None, seed: int = 0, progress: Callable | None = None, log=print) -> dict:
    """Train ``model`` (a Preprocessed registry model) on (x, y) tensors; returns the history."""
    x, y = train_data
    xt, yt = test_data
    if len(x) != len(y) or len(x) == 0:
        raise FragileError(f"training data: {len(x)} images but {len(y)} labels")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if softplus_beta is not None:
        to_softplus(model, softplus_beta)
    loss_fn = create_regularizer(regularizer, **(regularizer_params or {}))
    device = model_device(model)  # batches move to the model; the data set may stay on the CPU
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    config = {"arch": arch, "epochs": epochs, "batch_size": batch_size, "lr": lr, "regularizer": regularizer,
              "regularizer_params": regularizer_params or {}, "softplus_beta": softplus_beta, "seed": seed,
              "train_images": len(x)}
    history, start = [], 0
    state_path = out / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        same = {k: v for k, v in config.items() if k != "epochs"}
        if {k: v for k, v in json.loads(state["config"]).items() if k != "epochs"} != same:
            raise FragileError(f"{out} holds a run with other settings; use a new output folder")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["epoch"]), json.loads(state["history"])
        log(f"resuming after epoch {start}")
    for epoch in range(start, epochs):
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))
        t0, sums, batches = time.perf_counter(), {}, 0
        n_batches = (len(x) + batch_size - 1) // batch_size
        for b, idx in enumerate(order.split(batch_size)):
            opt.zero_grad()
            loss, logs = loss_fn(model, x[idx].to(device), y[idx].to(device))
            loss.backward()
            opt.step()
            batches += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            if progress:
                progress(b + 1, n_batches)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "seconds": seconds, "test_accuracy": accuracy(model, xt, yt),
                  **{k: v / batches for k, v in sums.items()}}
        history.append(record)
        model.eval()
        save_checkpoint(model, out / f"epoch_{epoch + 1}.pt", arch=arch, training=config, metrics=record)
        save_checkpoint(model, out / "last.pt", arch=arch, training=config, metrics=record)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                    "config": json.dumps(config, sort_keys=True), "history": json.dumps(history)}, state_path)
        log(json.dumps(record))
    model.eval()
    return {"config": config, "history": history}
