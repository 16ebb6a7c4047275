"""PNG plots of an evaluation: predicted vs true fields, and error vs horizon."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # headless workers have no display: the file backend, chosen before pyplot loads one
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def _png(fig: Figure) -> bytes:
    """Encode and close: figures are kept alive by pyplot until closed, and evaluations make many."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def fields_png(truth: np.ndarray, pred: np.ndarray, initial_step: int, samples: int = 3) -> bytes:
    """Space-time (1D) or last-frame (2D) images of truth, prediction and error for a few samples."""
    n = min(samples, len(truth))
    fig, axes = plt.subplots(n, 3, figsize=(11, 2.6 * n), squeeze=False)
    for i in range(n):
        t, p = truth[i, ..., 0], pred[i, ..., 0]  # (T, X) or (T, X, Y): first channel
        if t.ndim == 3:
            t, p = t[-1], p[-1]
        lo, hi = t.min(), t.max()
        for ax, img, title in zip(axes[i], (t, p, p - t), ("truth", "prediction", "error")):
            im = ax.imshow(
                img.T if img.ndim == 2 and truth.ndim == 4 else img,
                aspect="auto",
                origin="lower",
                cmap="RdBu_r" if title == "error" else "viridis",
                vmin=None if title == "error" else lo,
                vmax=None if title == "error" else hi,
            )
            ax.set_title(f"sample {i}: {title}", fontsize=9)
            if truth.ndim == 4:
                ax.axvline(initial_step - 0.5, color="w", lw=0.8, ls="--")
                ax.set_xlabel("frame")
            fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def horizon_png(curves: dict[str, list[float]], initial_step: int) -> bytes:
    """nRMSE per frame for each predictor, on a log axis: errors often span orders of magnitude over a rollout."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, values in curves.items():
        ax.plot(np.arange(initial_step, initial_step + len(values)), values, marker=".", label=name)
    ax.set_xlabel("frame")
    ax.set_ylabel("nRMSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)
