"""Optuna's matplotlib figures of a study, as PNG files in the tune job's artifacts.

``history`` (optimisation history), ``importances`` (parameter importances, fANOVA) and
``intermediate`` (the metric per epoch of every trial, pruned ones included). The names
are fixed: a caller picks one, never a path.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from dcsched.tuning.study import Study

PLOTS = ("history", "importances", "intermediate")
_LOCK = threading.Lock()  # pyplot keeps global state


class PlotError(RuntimeError):
    """A plot that cannot be drawn yet (too few finished trials)."""


def render(study: Study | None, name: str, folder: Path) -> Path:
    """Draw plot ``name`` of ``study`` into ``folder/NAME.png``; return its path."""
    if study is None or name not in PLOTS:
        raise PlotError(f"no plot {name!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    finished = [t for t in study.trials() if t.state is TrialState.COMPLETE]
    if not finished:
        raise PlotError("no trial has completed yet; plots need at least one")
    if name == "importances" and len(finished) < 2:
        raise PlotError("parameter importances need at least two completed trials")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    with _LOCK, study.lock:
        draw: dict[str, Any] = {
            "history": views.plot_optimization_history,
            "importances": views.plot_param_importances,
            "intermediate": views.plot_intermediate_values,
        }
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib views experimental
                warnings.simplefilter("ignore", ExperimentalWarning)
                axes = draw[name](study.study)
        except (ValueError, RuntimeError) as exc:
            raise PlotError(f"cannot draw {name}: {exc}") from None
        figure = axes.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        tmp = path.with_name(path.name + ".tmp.png")
        figure.savefig(tmp, dpi=100)
        plt.close(figure)
        tmp.replace(path)
    return path
