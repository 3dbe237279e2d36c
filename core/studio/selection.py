"""Selections of synthetic samples: plot selection events -> sample ids.

Conventions: a sample's id is its index in the run's DistilledSet (0..N-1). Plots put it first in each
synthetic point's ``customdata``; points without customdata (real latents, prototypes) are ignored. The
browser sends a point's customdata as a list, a scalar, or (lasso / box selections) an object keyed by
position (``{"0": 50, "1": 5}``).
"""
from __future__ import annotations

from typing import Mapping


def ids_from_plot_selection(event: Mapping | None, num_samples: int) -> list[int]:
    """Sorted unique sample ids in a Plotly selection event (``st.plotly_chart(on_select=...)``'s return
    value, or its ``selection`` part). Ids outside [0, num_samples) are dropped (a stale selection from an
    earlier, larger run)."""
    if not event:
        return []
    selection = event.get("selection", event)
    ids = set()
    for point in selection.get("points", []) or []:
        custom = point.get("customdata")
        if custom is None:
            continue
        if isinstance(custom, Mapping):
            custom = [custom[k] for k in sorted(custom, key=lambda k: int(k) if str(k).isdigit() else 1 << 30)]
        value = (custom[0] if custom else None) if isinstance(custom, (list, tuple)) else custom
        try:
            sample = int(value)
        except (TypeError, ValueError):
            continue
        if 0 <= sample < num_samples:
            ids.add(sample)
    return sorted(ids)

