"""Eval-side probes (see ``eval.probes.base``): a model's own analysis, with its metric names and directions
declared by the probe. Importing this package registers the built-in probes (``eval.probes.mrfa``,
``eval.probes.xnemo``); ``run_probes(model, datamodule, protocol)`` runs those that apply to a model."""
from eval.probes.base import (PROBES, Probe, declared_direction, probe_source, probes_for, register_probe,  # noqa: F401
                              run_probes)
from eval.probes import mrfa as _mrfa, xnemo as _xnemo  # noqa: E402,F401  (registration)
