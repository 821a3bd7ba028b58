"""Plots as PNG bytes (matplotlib, Agg backend): embedded in reports, or written next to an adapter."""

from __future__ import annotations

import io


def _figure(width=7.0, height=4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def loss_curve_png(history: list[dict], held_out: tuple[str, ...] = ()) -> bytes:
    """Train and validation loss against optimizer step, from train_log.jsonl rows."""
    plt, fig, ax = _figure()
    train = [(h["step"], h["train_loss"]) for h in history if h.get("train_loss") is not None]
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="#1f77b4", linewidth=1.2)
    if val:
        label = "validation loss"
        if held_out:
            label += " (held-out: " + ", ".join(held_out) + ", ...)"
        ax.plot(*zip(*val, strict=True), label=label, color="#d62728", marker="o", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (answer tokens)")
    if train or val:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_title("QLoRA training: train vs held-out validation loss")
    ax.grid(True, alpha=0.3)
    return _png(plt, fig)


def metrics_bar_png(metrics: dict[str, dict[str, float]], names: list[str]) -> bytes:
    """Grouped bars: one group per metric, one bar per model role."""
    plt, fig, ax = _figure(9, 3.8)
    roles = list(metrics)
    width = 0.8 / max(1, len(roles))
    colors = {"base": "#9e9e9e", "tuned": "#2e7d32"}
    for k, role in enumerate(roles):
        xs = [i + k * width for i in range(len(names))]
        ax.bar(xs, [metrics[role].get(n, 0.0) for n in names], width, label=role, color=colors.get(role))
    ax.set_xticks([i + width * (len(roles) - 1) / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate / F1")
    ax.set_title("Headline metrics, base vs tuned")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _png(plt, fig)


def trend_png(runs: list[dict], names: list[str]) -> bytes:
    """The tuned model's headline metrics across runs, oldest first."""
    plt, fig, ax = _figure(9, 3.5)
    labels = [r["run_id"] for r in runs]
    for name in names:
        ax.plot(range(len(runs)), [r["metrics"].get(name) for r in runs], marker="o", label=name)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title("Tuned model across runs")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(True, alpha=0.3)
    return _png(plt, fig)

