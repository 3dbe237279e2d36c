"""Knobs: the settings of a ``DistillConfig`` that sweeps and searches vary, and how their values are typed.

A knob names one setting (λ, the guidance window's ends, t0, the trust radius, steps, solver, CFG, ...);
``parse_values`` reads the values a researcher types ("0.3,0.6,0.9" or "0:1.2:5", five evenly spaced).
No torch here: the CLI's --help lists the knobs at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from core.config import FLOW_METHODS, SCHEDULES, SOLVERS, DistillConfig, check_int


@dataclass(frozen=True)
class Knob:
    """One tunable setting: ``path`` is its attribute path in a DistillConfig; ``kind`` float, int or
    'choice' (one of ``choices``); ``low`` / ``high`` the range a search may use; ``limit``: the
    ``core.config.LIMITS`` bounds an int knob's values must keep (a config would refuse the rest)."""

    name: str
    label: str
    path: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("pgfm",)   # the methods whose sets the setting changes
    limit: str | None = None

    def get(self, config: DistillConfig) -> Any:
        value: Any = config
        for part in self.path.split("."):
            value = getattr(value, part)
        if self.name == "trust_radius":   # no trust region reads as 0, as on the sidebar
            value = value or 0.0
        return value

    def set(self, config: DistillConfig, value: Any) -> DistillConfig:
        if self.name == "trust_radius":
            value = float(value) or None
        return _replace_path(config, self.path.split("."), value)

    def cast(self, text: str) -> Any:
        text = text.strip()
        if self.kind == "choice":
            if text not in self.choices:
                raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, got {text!r}")
            return text
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{self.name}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{self.name}: {text!r} is not a finite number")
        if self.kind == "int":
            if value != int(value):
                raise ValueError(f"{self.name} takes whole numbers, got {text!r}")
            if self.limit:
                check_int(self.name, int(value), self.limit)
            return int(value)
        return value


def _replace_path(obj: Any, parts: list[str], value: Any) -> Any:
    head, rest = parts[0], parts[1:]
    return replace(obj, **{head: _replace_path(getattr(obj, head), rest, value) if rest else value})


KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("guidance", "guidance strength λ", "sampler.guidance.strength", "float", 0.0, 2.0),
    Knob("t_start", "guidance window start", "sampler.guidance.t_start", "float", 0.0, 1.0),
    Knob("t_stop", "guidance window stop", "sampler.guidance.t_stop", "float", 0.0, 1.0),
    Knob("schedule", "guidance schedule", "sampler.guidance.schedule", "choice", choices=SCHEDULES),
    Knob("trust_radius", "trust radius r (0: none)", "sampler.guidance.trust_radius", "float", 0.0, 3.0),
    Knob("t0", "warm start t0", "sampler.t0", "float", 0.0, 0.9),
    Knob("steps", "ODE steps", "sampler.steps", "int", 2, 32, methods=FLOW_METHODS, limit="steps"),
    Knob("solver", "ODE solver", "sampler.solver", "choice", choices=SOLVERS, methods=FLOW_METHODS),
    Knob("cfg_scale", "CFG scale", "sampler.cfg_scale", "float", 1.0, 4.0, methods=FLOW_METHODS),
    Knob("cell_offset", "cell offset", "cell_offset", "float", 0.0, 1.0),
)}


def knob(name: str) -> Knob:
    if name not in KNOBS:
        raise ValueError(f"unknown knob {name!r}; choose from {', '.join(KNOBS)}")
    return KNOBS[name]


def parse_values(name: str, text: str) -> tuple:
    """The values of knob ``name`` in ``text``: a comma-separated list ("0.3,0.6,0.9", "euler,heun") or, for a
    number, ``start:stop:count`` (``count`` evenly spaced values, ends included; whole numbers for an int knob)."""
    k = knob(name)
    text = text.strip()
    if not text:
        raise ValueError(f"{name}: give at least one value")
    if ":" in text and k.kind != "choice":
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"{name}: a range is start:stop:count, got {text!r}")
        start, stop = k.cast(parts[0]), k.cast(parts[1])
        count = knob_count(name, parts[2])
        values = np.linspace(float(start), float(stop), count)
        if k.kind == "int":
            return tuple(dict.fromkeys(round(v) for v in values.tolist()))
        return tuple(round(float(v), 6) for v in values)
    values = tuple(dict.fromkeys(k.cast(part) for part in text.split(",") if part.strip()))
    if not values:
        raise ValueError(f"{name}: give at least one value")
    return values


def knob_count(name: str, text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"{name}: the count of a range must be a whole number, got {text!r}") from None
    if not 1 <= count <= 50:
        raise ValueError(f"{name}: a range takes 1 to 50 values, got {count}")
    return count


def parse_knob(text: str) -> tuple[str, tuple]:
    """``NAME=VALUES`` (the CLI's --knob) -> (name, values)."""
    name, sep, values = text.partition("=")
    if not sep:
        raise ValueError(f"a knob is NAME=VALUES (e.g. guidance=0.3,0.6,0.9 or t_stop=0.4:1:4), got {text!r}")
    return name.strip(), parse_values(name.strip(), values)
