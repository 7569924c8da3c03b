"""Probes: a model's own analysis, run by eval beside the protocol's frame metrics.

A probe takes a model, the run's datamodule (from which it reads or renders its own probe data — eval may import
``datamodules``) and the main evaluation protocol, and returns ``{metric: value}``. It *declares* the metric names
it produces and, for each, whether higher is better (``True`` / ``False``) or neither (``None``: a property of the
data or the model, such as "how much motion there is"). Tables, comparisons and reports read directions from these
declarations (``eval.metrics.higher_is_better`` → :func:`declared_direction`), so eval holds no model's diagnostic
names. A value may carry the ``_STANDIN`` suffix (a stand-in network was involved) under its declared name.

A probe applies to the methods it names (the model's folder ``lit_models/<method>/``: ``mrfa``, ``xnemo``, …).
:func:`run_probes` runs all that apply to a model; the training / evaluation entry point merges the result into
``metrics.json`` (``eval.runner.merge_model_diagnostics``). Models know nothing of probes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

STANDIN_SUFFIX = "_STANDIN"   # = eval.metrics.STANDIN_SUFFIX (not imported: eval.metrics reads this registry)


@dataclass(frozen=True)
class Probe:
    """``run(model, datamodule, protocol) -> {metric: float}`` ({} when the data has nothing to probe with) for the
    models of the methods (``lit_models/<method>/``) in ``methods``; ``directions``: every metric it may return →
    higher is better (True / False) or None (no better direction)."""

    name: str
    methods: tuple[str, ...]
    directions: Mapping[str, Optional[bool]]
    run: Callable[[Any, Any, Any], dict[str, float]] = field(compare=False)

    def declares(self, metric: str) -> bool:
        return _base_name(metric) in {m.lower() for m in self.directions}


PROBES: dict[str, Probe] = {}


def _base_name(metric: str) -> str:
    low = metric.rsplit("/", 1)[-1].lower()          # "<extra protocol>/<metric>" reads as <metric>
    return low[: -len(STANDIN_SUFFIX)] if low.endswith(STANDIN_SUFFIX.lower()) else low


def register_probe(probe: Probe) -> Probe:
    """Add ``probe`` (idempotent for the same probe). A metric name may be declared by several probes only with the
    same direction — a table cannot rank one column two ways."""
    if not probe.methods:
        raise ValueError(f"probe {probe.name!r} names no method (methods=('mrfa', …))")
    old = PROBES.get(probe.name)
    if old is not None and old != probe:
        raise ValueError(f"probe {probe.name!r} registered twice with different declarations")
    for other in PROBES.values():
        if other.name == probe.name:
            continue
        for m, hib in probe.directions.items():
            theirs = {k.lower(): v for k, v in other.directions.items()}
            if m.lower() in theirs and theirs[m.lower()] != hib:
                raise ValueError(f"metric {m!r}: probe {probe.name!r} declares higher_is_better={hib}, probe "
                                 f"{other.name!r} {theirs[m.lower()]}")
    PROBES[probe.name] = probe
    return probe


def declared_direction(metric: str) -> tuple[bool, Optional[bool]]:
    """(declared, higher_is_better) of ``metric`` (``<protocol>/`` prefix and ``_STANDIN`` suffix ignored) from the
    registered probes; (False, None) when no probe declares it."""
    base = _base_name(metric)
    for probe in PROBES.values():
        for m, hib in probe.directions.items():
            if m.lower() == base:
                return True, hib
    return False, None


def method_of(model) -> Optional[str]:
    """The method folder of ``model`` (``mrfa``, ``xnemo``, …): from its config's ``_target_``
    (``lit_models.<method>.…``), else from its class's module; None for anything outside ``lit_models``."""
    cfg = getattr(model, "cfg", None)
    target = cfg.get("_target_") if hasattr(cfg, "get") else getattr(cfg, "_target_", None)
    for path in (target, type(model).__module__):
        parts = str(path or "").split(".")
        if len(parts) > 2 and parts[0] == "lit_models":
            return parts[1]
    return None


def probes_for(model) -> list[Probe]:
    method = method_of(model)
    return [p for p in PROBES.values() if method in p.methods]


def run_probes(model, datamodule, protocol) -> dict[str, float]:
    """Every registered probe that applies to ``model`` (its method, :func:`method_of`), on ``datamodule`` under the
    main evaluation ``protocol``, merged into one ``{metric: float}`` ({} when none applies or none has data). A probe
    that returns a metric it does not declare, or two probes returning the same name, is an error."""
    import torch

    out: dict[str, float] = {}
    for probe in probes_for(model):
        with torch.no_grad():
            values = probe.run(model, datamodule, protocol) or {}
        undeclared = sorted(k for k in values if not probe.declares(k))
        if undeclared:
            raise ValueError(f"probe {probe.name!r} returned {undeclared}, which it does not declare in its "
                             f"directions {sorted(probe.directions)}")
        clash = sorted(set(values) & set(out))
        if clash:
            raise ValueError(f"probe {probe.name!r} returns {clash}, already returned by another probe")
        out.update({k: float(v) for k, v in values.items()})
    return out


def probe_source(model) -> str:
    """Where the probe values come from, for ``metrics.json``'s ``model_diagnostics.source``."""
    return "eval.probes: " + ", ".join(p.name for p in probes_for(model))
