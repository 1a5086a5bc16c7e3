"""The heatmap PNG: x = context tokens, y = depth %, a fixed 0–1 colour scale (pitfall 24), n per
cell annotated, OOM / skipped cells hatched. matplotlib is imported here only (Agg, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HEATMAP_PNG = "heatmap.png"


def render_heatmap(summary: dict[str, Any], path: Path, title: str = "Needle in a haystack") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    lengths, depths = summary["lengths"], summary["depths"]
    by_cell = {(c["context_tokens"], c["depth_percent"]): c for c in summary["cells"]}
    grid = np.full((max(1, len(depths)), max(1, len(lengths))), np.nan)
    for (length, depth), cell in by_cell.items():
        if cell["accuracy"] is not None:
            grid[depths.index(depth), lengths.index(length)] = cell["accuracy"]
    width = max(5.0, 1.1 * len(lengths) + 2.5)
    height = max(3.5, 0.55 * len(depths) + 2.0)
    fig, ax = plt.subplots(figsize=(width, height), dpi=120)
    cmap = matplotlib.colormaps["RdYlGn"].copy()
    cmap.set_bad("#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
    for (length, depth), cell in by_cell.items():
        x, y = lengths.index(length), depths.index(depth)
        if cell["n"] == 0:
            label = "OOM" if cell["oom"] else ("skipped" if cell["skipped"] else "error")
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#555555",
                                   linewidth=0))
        else:
            label = f"{cell['accuracy']:.2f}\nn={cell['n']}"
            if cell["oom"] or cell["skipped"]:
                label += "\n+OOM" if cell["oom"] else "\n+skip"
        dark = cell["accuracy"] is not None and not 0.2 <= cell["accuracy"] <= 0.8  # deep red/green
        ax.text(x, y, label, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(lengths)), [f"{n:,}" for n in lengths], rotation=30 if len(lengths) > 6 else 0)
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context tokens (exact, model tokenizer)")
    ax.set_ylabel("needle depth %")
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("strict accuracy")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
