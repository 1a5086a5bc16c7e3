"""The heatmap PNG: x = context tokens, y = depth %, a fixed 0–1 colour scale, n per cell annotated.

Readable by everyone and on its own: a colour-blind-safe, perceptually uniform map (cividis), white
cell borders, a glyph per failure class in cells with misses (legend under the plot), OOM / skipped
cells hatched, the depth actually tested printed where the needle could not be placed at the
requested one, and a title with the model, its quantization/dtype and the run's date.
matplotlib is imported here only (Agg, no display)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from niah_run.summary import GridCell, Summary

HEATMAP_PNG = "heatmap.png"
COLORMAP = "cividis"  # blue → yellow, uniform lightness steps, safe for the common colour-vision deficiencies
# One glyph per failure class (all in matplotlib's bundled DejaVu Sans). Order = legend order.
FAILURE_GLYPHS: dict[str, str] = {
    "oom": "▲",
    "skipped_too_long": "⊘",
    "empty": "□",
    "truncated": "…",
    "echo": "≡",
    "refusal": "∅",
    "distractor": "◆",
    "hallucinated": "✱",
    "extra_values": "+",
    "wrong_order": "⇄",
    "wrong_count": "#",
    "other": "?",
}


def _glyphs(cell: GridCell) -> str:
    classes = cell.get("failure_classes") or {}
    parts = [
        f"{FAILURE_GLYPHS.get(name, '?')}{count}"
        for name, count in sorted(
            classes.items(),
            key=lambda kv: (
                list(FAILURE_GLYPHS).index(kv[0]) if kv[0] in FAILURE_GLYPHS else len(FAILURE_GLYPHS)
            ),
        )
    ]
    return " ".join(parts)


def heatmap_title(summary: Summary, fallback: str) -> str:
    """Line 1: model · needle kind; line 2: quantization/dtype · backend · date of the run."""
    run = summary.get("run") or {}
    if not run.get("model"):
        first = fallback
    else:
        first = " · ".join(str(p) for p in (run.get("model"), run.get("needle_kind")) if p)
    quant = run.get("quant")
    dtype = run.get("dtype_loaded") or run.get("dtype")
    created = str(run.get("created_at") or "")[:10] or f"rendered {_dt.date.today().isoformat()}"
    second = " · ".join(
        p
        for p in (
            f"quant {quant or 'none'}",
            f"dtype {dtype}" if dtype else "",
            str(run.get("backend") or ""),
            created,
        )
        if p
    )
    from doctor.report.redact import Redactor  # a model path or URL in the title must not leak a token

    return Redactor().scrub(f"{first}\n{second}")


def render_heatmap(summary: Summary, path: Path, title: str = "Needle in a haystack") -> Path:
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
    width = max(5.5, 1.25 * len(lengths) + 2.8)
    height = max(4.0, 0.7 * len(depths) + 2.6)
    fig, ax = plt.subplots(figsize=(width, height), dpi=120)
    cmap = matplotlib.colormaps[COLORMAP].with_extremes(bad="#d9d9d9")
    image = ax.imshow(
        np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", origin="upper"
    )
    used: set[str] = set()
    snapped_any = False
    for (length, depth), cell in by_cell.items():
        x, y = lengths.index(length), depths.index(depth)
        if cell["n"] == 0:
            label = "OOM" if cell["oom"] else ("skipped" if cell["skipped"] else "error")
            ax.add_patch(
                Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#555555", linewidth=0)
            )
        else:
            label = f"{cell['accuracy']:.2f}  n={cell['n']}"
        glyphs = _glyphs(cell)
        if glyphs:
            label += "\n" + glyphs
            used.update(cell.get("failure_classes") or {})
        if cell.get("depth_snapped") and cell.get("actual_depth_percent") is not None:
            label += f"\n† at {cell['actual_depth_percent']:g}%"
            snapped_any = True
        # cividis is dark at 0 and light at 1: white text on the dark half
        dark = cell["accuracy"] is not None and cell["accuracy"] < 0.5
        ax.text(x, y, label, ha="center", va="center", fontsize=7.5, color="white" if dark else "black")
    # cell borders: white lines on the minor ticks between cells
    ax.set_xticks(np.arange(-0.5, len(lengths), 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(depths), 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    ax.set_xticks(range(len(lengths)), [f"{n:,}" for n in lengths], rotation=30 if len(lengths) > 6 else 0)
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context tokens (exact, model tokenizer)")
    ax.set_ylabel("requested needle depth %")
    ax.set_title(heatmap_title(summary, title), fontsize=9.5)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("strict accuracy")
    legend = [f"{FAILURE_GLYPHS[name]} {name}" for name in FAILURE_GLYPHS if name in used]
    notes = []
    if legend:
        notes.append("misses: " + "   ".join(legend))
    if snapped_any:
        notes.append(
            "† needle could not be placed near the requested depth; the depth actually tested is shown"
        )
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.03 * (len(notes) + 1) if notes else 0, 1, 1))
    # Rendered in memory, then written in one step that never follows a planted symlink: a reader (or a
    # crash) sees the old picture or the new one, never half a PNG.
    import io

    from run_plan.safe_files import write_atomic

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path
