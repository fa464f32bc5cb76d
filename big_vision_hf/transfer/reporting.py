"""What a transfer reports: loggers (``--report-to``), the training curves, and where its model card's metadata comes
from (the base model's Hub id and license).

- :func:`check_report_to`: transformers' ``report_to`` integrations (TensorBoard, Weights & Biases, MLflow) checked
  before anything runs, with a one-line error naming the package to install;
- :func:`plot_curves`: ``training_curves.png``: training and evaluation loss, the learning rate, and one panel per
  task for its metric before / after (CIDEr and accuracies live on different scales);
- :func:`base_model_info`: the Hub id and license of a converted folder the transfer started from (its card).
"""

from __future__ import annotations

import os

__all__ = ["REPORTERS", "base_model_info", "check_report_to", "eval_loss_rows", "headline", "plot_curves"]

#: ``--report-to`` name -> (transformers' availability check, the package to install).
REPORTERS = {
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "wandb": ("is_wandb_available", "wandb"),
    "mlflow": ("is_mlflow_available", "mlflow"),
}


def check_report_to(report_to) -> list[str]:
    """``--report-to`` values -> transformers' ``report_to`` list (``["none"]`` for nothing). An unknown name or a
    logger whose package is missing is a one-line ``ValueError``."""
    import transformers.integrations as integrations

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if not names or names == ["none"]:
        return ["none"]
    for name in names:
        if name not in REPORTERS:
            raise ValueError(f"--report-to {name}: unknown; choose from {', '.join(REPORTERS)} (or none)")
        available, package = REPORTERS[name]
        if not getattr(integrations, available)():
            raise ValueError(f"--report-to {name}: the {package} package is not installed (pip install {package})")
    return names


def eval_loss_rows(rows, limit: int = 64) -> list[dict]:
    """Up to ``limit`` evaluation rows for the evaluation loss during training (``image``, ``prefix``, ``suffix``:
    the first ground truth where there are several)."""
    out = []
    for row in rows:
        if len(out) >= limit:
            break
        suffix = row.get("suffix")
        suffix = suffix[0] if isinstance(suffix, (list, tuple)) and suffix else suffix
        if isinstance(suffix, str) and row.get("image") is not None:
            out.append({"image": row["image"], "prefix": row["prefix"], "suffix": suffix})
    return out


def headline(metrics: dict) -> tuple[str, float]:
    """The metric a reader looks at first (mIoU, box accuracy, CIDEr, accuracy, ...)."""
    for key in ("miou", "boxacc/0.5", "cider", "accuracy", "acc", "anls", "relaxed_accuracy", "exact_match"):
        if key in metrics:
            return key, metrics[key]
    key = next((k for k in metrics if k not in ("total", "invalid", "num_examples", "num")), next(iter(metrics)))
    return key, metrics[key]


def _series(log_history, key: str) -> tuple[list[int], list[float]]:
    points = [(int(h["step"]), float(h[key])) for h in log_history if key in h and "step" in h]
    return ([s for s, _ in points], [v for _, v in points]) if points else ([], [])


def plot_curves(path: str, log_history: list[dict], before: dict, after: dict) -> None:
    """``training_curves.png``: loss (training, and evaluation where measured), learning rate, and each task's
    headline metric before / after training on its own axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(after)
    fig, axes = plt.subplots(1, 2 + len(tasks), figsize=(3.4 * (2 + len(tasks)), 3.4), squeeze=False)
    axes = axes[0]
    steps, loss = _series(log_history, "loss")
    axes[0].plot(steps, loss, lw=1.2, label="training")
    steps, eval_loss = _series(log_history, "eval_loss")
    if eval_loss:
        axes[0].plot(steps, eval_loss, "o-", lw=1.2, ms=3, label="evaluation")
    axes[0].set(xlabel="step", ylabel="loss (per-example mean)", title="loss")
    axes[0].legend(fontsize=8)
    steps, lr = _series(log_history, "learning_rate")
    axes[1].plot(steps, lr, lw=1.2, color="tab:green")
    axes[1].set(xlabel="step", title="learning rate")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
    for ax, name in zip(axes[2:], tasks):
        key, value = headline(after[name])
        old = before.get(name, {}).get(key, 0.0)
        ax.bar([0, 1], [old, value], color=["tab:gray", "tab:blue"])
        ax.set_xticks([0, 1], ["before", "after"])
        ax.set(title=f"{name}\n{key}")
        for x, v in ((0, old), (1, value)):
            ax.annotate(f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def base_model_info(model_dir: str | None) -> tuple[str | None, str | None]:
    """``(Hub id, license)`` of the folder a transfer started from, from its model card: its ``base_model``, else
    the Hub repository of its ``source_checkpoint`` when known (``model_card.known_hub_id``); ``(None, None)`` for
    the tiny model built from scratch or a folder without a card."""
    from ..conversion.model_card import hub_id, known_hub_id

    card = os.path.join(model_dir, "README.md") if model_dir and os.path.isdir(model_dir) else None
    if card is None or not os.path.isfile(card):
        return None, None
    import yaml

    text = open(card, encoding="utf-8").read()
    front = text.split("---", 2)[1] if text.startswith("---") and text.count("---") >= 2 else ""
    try:
        meta = yaml.safe_load(front) or {}
    except yaml.YAMLError:
        return None, None
    base = hub_id(meta.get("base_model")) or known_hub_id(meta.get("source_checkpoint"))
    return base, meta.get("license")
