"""Plotly figures of the app (arrays in, ``go.Figure`` out; no Streamlit).

Conventions: 2-D coordinates are (N, 2) arrays from ``core.studio.projection``; synthetic points carry their
sample id first in ``customdata`` so plot selections map back to samples (``core.studio.selection``); colours
are per class and stable across figures.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Alphabet


def class_colour(class_id: int) -> str:
    return PALETTE[int(class_id) % len(PALETTE)]


def _layout(fig: go.Figure, title: str, height: int = 520, **kwargs) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(itemsizing="constant"), **kwargs)
    return fig


def _projection_axes(axis_titles: tuple[str, str]) -> dict:
    """Projected axes: titled (e.g. 'PC 1 (23% of variance)'), no tick labels (their units mean nothing)."""
    return dict(xaxis=dict(title=axis_titles[0], showticklabels=False, zeroline=False),
                yaxis=dict(title=axis_titles[1], showticklabels=False, zeroline=False))


def latent_scatter(real_xy: np.ndarray, real_labels: np.ndarray, class_names: Sequence[str],
                   synth_xy: np.ndarray | None = None, synth_labels: np.ndarray | None = None,
                   proto_xy: np.ndarray | None = None, proto_weights: np.ndarray | None = None,
                   selected: Sequence[int] = (), title: str = "Latent space",
                   axis_titles: tuple[str, str] = ("component 1", "component 2")) -> go.Figure:
    """Real latents (small, faint, by class), prototypes (diamonds, area ∝ weight, aligned with the
    synthetic samples) and synthetic samples (circles; id i = row i of synth_xy; selected ones ringed)."""
    fig = go.Figure()
    for c in np.unique(real_labels):
        m = real_labels == c
        fig.add_trace(go.Scattergl(x=real_xy[m, 0], y=real_xy[m, 1], mode="markers", name=class_names[c],
                                   legendgroup=str(c), marker=dict(size=4, color=class_colour(c), opacity=0.25),
                                   hoverinfo="name"))
    if proto_xy is not None and synth_labels is not None:
        w = np.ones(len(proto_xy)) if proto_weights is None else np.asarray(proto_weights, dtype=float)
        size = 8 + 10 * np.sqrt(w / max(w.max(), 1e-12))
        fig.add_trace(go.Scatter(x=proto_xy[:, 0], y=proto_xy[:, 1], mode="markers", name="prototypes",
                                 marker=dict(symbol="diamond", size=size, color=[class_colour(c) for c in synth_labels],
                                             line=dict(width=1, color="black")),
                                 text=[f"prototype of sample {i}, weight {wi:.2f}" for i, wi in enumerate(w)],
                                 hoverinfo="text"))
    if synth_xy is not None and synth_labels is not None:
        ids = np.arange(len(synth_xy))
        chosen = np.isin(ids, np.asarray(list(selected), dtype=int))
        fig.add_trace(go.Scatter(x=synth_xy[:, 0], y=synth_xy[:, 1], mode="markers", name="synthetic",
                                 customdata=np.stack([ids, synth_labels], 1),
                                 marker=dict(size=np.where(chosen, 13, 9), color=[class_colour(c) for c in synth_labels],
                                             line=dict(width=np.where(chosen, 3, 1), color="black")),
                                 hovertemplate="sample %{customdata[0]} (class %{customdata[1]})<extra></extra>"))
    return _layout(fig, title, dragmode="lasso", **_projection_axes(axis_titles))


def trajectory_figure(paths_xy: np.ndarray, labels: np.ndarray, ids: Sequence[int], class_names: Sequence[str],
                      proto_xy: np.ndarray | None = None, title: str = "Trajectories",
                      axis_titles: tuple[str, str] = ("component 1", "component 2")) -> go.Figure:
    """paths_xy (S+1, B, 2): sample b's path from noise (first row, open circle) to its endpoint (last row,
    filled circle); one colour per sample (not per class, so that samples of a class are told apart); its
    prototype a ✕ of the same colour."""
    fig = go.Figure()
    steps = len(paths_xy)
    symbols = ["circle-open"] + ["circle"] * (steps - 2) + ["circle"]
    sizes = [11] + [4] * (steps - 2) + [12]
    for b, sample_id in enumerate(ids):
        colour = PALETTE[b % len(PALETTE)]
        group = f"sample {sample_id}"
        fig.add_trace(go.Scatter(x=paths_xy[:, b, 0], y=paths_xy[:, b, 1], mode="lines+markers", legendgroup=group,
                                 name=f"#{sample_id} {class_names[labels[b]]}", line=dict(color=colour, width=2),
                                 marker=dict(size=sizes, symbol=symbols, color=colour, line=dict(width=2, color=colour)),
                                 customdata=np.full((steps, 1), sample_id),
                                 hovertemplate=f"sample {sample_id}, step %{{pointNumber}} of {steps - 1}<extra></extra>"))
        if proto_xy is not None:
            fig.add_trace(go.Scatter(x=[proto_xy[b, 0]], y=[proto_xy[b, 1]], mode="markers", legendgroup=group,
                                     showlegend=False, marker=dict(symbol="x", size=13, color=colour,
                                                                   line=dict(width=1, color="black")),
                                     hovertext=f"prototype of sample {sample_id}", hoverinfo="text"))
    # marker legend: what the symbols mean (entries without data)
    legend = [("start (noise, t = 0)", "circle-open"), ("end (t = 1)", "circle")] + (
        [("prototype", "x")] if proto_xy is not None else [])
    for name, symbol in legend:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, legendgroup="symbols",
                                 marker=dict(symbol=symbol, size=11, color="grey", line=dict(width=2, color="grey"))))
    return _layout(fig, title, **_projection_axes(axis_titles))


def distance_to_prototype(times: np.ndarray, distance: np.ndarray, labels: np.ndarray,
                          class_names: Sequence[str], title: str = "Distance of x̂₁ to the prototype",
                          window: tuple[float, float] | None = None) -> go.Figure:
    """distance (S, B): RMS latent distance of the predicted endpoint x̂₁ at the start of each step,
    plotted against that step's time t (0 = noise, 1 = data); faint line per sample, bold class mean;
    ``window`` (t_start, t_stop): the guidance window, shaded."""
    fig = go.Figure()
    if window is not None:
        fig.add_vrect(x0=window[0], x1=window[1], fillcolor="gold", opacity=0.18, line_width=0,
                      annotation_text="guidance window", annotation_position="top left")
    for c in np.unique(labels):
        m = labels == c
        # the class's samples as one trace, each line broken from the next by a gap (NaN): a trace per sample
        # made this figure 8x slower to build and send (110 traces at 10 classes x IPC 10)
        rows = distance[:, m].T
        gaps = np.full((len(rows), 1), np.nan)
        fig.add_trace(go.Scatter(x=np.tile(np.r_[times, np.nan], len(rows)), y=np.hstack([rows, gaps]).ravel(),
                                 mode="lines", line=dict(color=class_colour(c), width=1), opacity=0.25,
                                 showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=times, y=distance[:, m].mean(1), mode="lines+markers", name=class_names[c],
                                 line=dict(color=class_colour(c), width=3)))
    return _layout(fig, title, height=420, xaxis_title="t (0 = noise, 1 = data)",
                   yaxis_title="RMS distance (latent units)")


def coverage_bars(per_class: dict[str, Sequence[float]], class_names: Sequence[str],
                  title: str = "Mode coverage per class") -> go.Figure:
    """per_class: series name (e.g. 'run 3') -> coverage in [0, 1] per class in ``class_names`` order."""
    fig = go.Figure([go.Bar(x=list(class_names), y=[100 * v for v in values], name=name)
                     for name, values in per_class.items()])
    return _layout(fig, title, height=380, barmode="group", yaxis=dict(title="modes covered (%)", range=[0, 100]))


def mode_grid(covered: dict[int, np.ndarray], counts: dict[int, np.ndarray], class_names: Sequence[str],
              title: str = "Modes covered (rows: classes, columns: modes)") -> go.Figure:
    """A class × mode grid: green = covered; the number is how many synthetic samples cover the mode."""
    classes = sorted(covered)
    width = max(len(covered[c]) for c in classes)
    z = np.full((len(classes), width), np.nan)
    text = np.full((len(classes), width), "", dtype=object)
    for r, c in enumerate(classes):
        z[r, :len(covered[c])] = covered[c].astype(float)
        text[r, :len(covered[c])] = [str(int(n)) if n else "" for n in counts[c]]
    fig = go.Figure(go.Heatmap(z=z, x=[f"mode {m}" for m in range(width)], y=[class_names[c] for c in classes],
                               text=text, texttemplate="%{text}", zmin=0, zmax=1, showscale=False, xgap=2, ygap=2,
                               colorscale=[[0, "#f1d4d4"], [1, "#3aa655"]],
                               hovertemplate="%{y}, %{x}: %{text} covering samples<extra></extra>"))
    return _layout(fig, title, height=60 + 34 * len(classes), yaxis=dict(autorange="reversed"))


def sweep_lines(rows: Sequence[dict], x: str, metrics: Sequence[str], group: str | None = None,
                labels: dict[str, str] | None = None, markers_only: bool = False) -> go.Figure:
    """One panel per metric of a sweep's rows against knob ``x`` (a line per value of knob ``group``);
    a categorical ``x`` (a solver) is drawn in the order given. ``labels``: axis titles by name;
    ``markers_only``: points without lines (a search's trials against one of its knobs)."""
    from plotly.subplots import make_subplots

    labels = labels or {}
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[labels.get(m, m) for m in metrics])
    groups = sorted({row[group] for row in rows}, key=str) if group else [None]
    for g_i, g in enumerate(groups):
        members = [row for row in rows if group is None or row[group] == g]
        members = sorted(members, key=lambda row: row[x]) if all(isinstance(r[x], (int, float)) for r in members) else members
        for m_i, metric in enumerate(metrics):
            points = [(row[x], row.get(metric)) for row in members if row.get(metric) is not None]
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points],
                                     mode="markers" if markers_only else "lines+markers",
                                     name=f"{group} = {g}" if group else metric, legendgroup=str(g),
                                     showlegend=m_i == 0 and group is not None,
                                     line=dict(color=PALETTE[g_i % len(PALETTE)])), row=1, col=m_i + 1)
            fig.update_xaxes(title_text=labels.get(x, x), row=1, col=m_i + 1)
    return _layout(fig, "", height=340)


def sweep_heatmap(rows: Sequence[dict], x: str, y: str, metric: str, labels: dict[str, str] | None = None) -> go.Figure:
    """``metric`` over the grid of knobs ``x`` and ``y`` (cells without a value stay empty), annotated."""
    labels = labels or {}
    xs = sorted({row[x] for row in rows}, key=lambda v: (isinstance(v, str), v))
    ys = sorted({row[y] for row in rows}, key=lambda v: (isinstance(v, str), v))
    grid = np.full((len(ys), len(xs)), np.nan)
    for row in rows:
        if row.get(metric) is not None:
            grid[ys.index(row[y]), xs.index(row[x])] = row[metric]
    fig = go.Figure(go.Heatmap(z=grid, x=[str(v) for v in xs], y=[str(v) for v in ys], colorscale="Viridis",
                               text=[[("" if np.isnan(v) else f"{v:.3g}") for v in r] for r in grid],
                               texttemplate="%{text}", colorbar=dict(title=labels.get(metric, metric))))
    return _layout(fig, labels.get(metric, metric), height=420,
                   xaxis=dict(title=labels.get(x, x), type="category"), yaxis=dict(title=labels.get(y, y), type="category"))
