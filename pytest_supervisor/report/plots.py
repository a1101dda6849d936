"""The report's plots, drawn with matplotlib as SVG text to inline into report.html.

matplotlib is optional (the ``report`` extra): a plugin that pytest loads into every
run should not pull in numpy and friends for whoever only wants the fixtures.
:func:`load` returns None when it is missing, and the report says so where the
plots would be.

Figures are made with ``matplotlib.figure.Figure`` directly, never ``pyplot``: no
global figure registry, no GUI backend, nothing left open between reports.
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

from pytest_supervisor.report.metrics import percentile

# A long soak samples for hours; more points than this only slow the browser down.
MAX_PLOTTED_POINTS = 2000
HISTOGRAM_BINS = 30
LOG_SCALE_SPAN = 10  # max / min beyond which a histogram's axis is logarithmic


class SvgPlots:
    """Draws each plot the report shows; every method returns one ``<svg>`` element."""

    def __init__(self) -> None:
        import matplotlib
        from matplotlib.figure import Figure

        self._matplotlib = matplotlib
        self._figure_class = Figure
        self._drawn = 0

    def respawn_latencies(
        self, latencies: Sequence[float], overheads: Sequence[float], overhead_limit: float | None
    ) -> str:
        """Histogram of kill-to-respawn latency; beside it, the part beyond the restart delay.

        The second panel, which the ``respawn_overhead_p95`` target judges, is left out
        when no restart had a delay: it would be the first one again.
        """
        delayed = any(abs(total - beyond) > 1e-9 for total, beyond in zip(latencies, overheads))
        figure = self._figure_class(figsize=(10 if delayed else 6, 3.4), layout="constrained")
        axes = figure.subplots(1, 2 if delayed else 1, squeeze=False)[0]
        _histogram(axes[0], [value * 1000 for value in latencies], "kill → new process (ms)")
        axes[0].set_title(f"Respawn latency ({len(latencies)} respawns)")
        if delayed:
            _histogram(
                axes[1],
                [value * 1000 for value in overheads],
                "latency minus the scheduled restart delay (ms)",
            )
            axes[1].set_title("Beyond the restart delay")
        judged = axes[-1]
        values_ms = [value * 1000 for value in overheads]
        p95 = percentile(values_ms, 95)
        judged.axvline(p95, color="#333333", linestyle="--", label=f"p95 {p95:.1f} ms")
        if overhead_limit is not None:
            limit_ms = overhead_limit * 1000
            if limit_ms <= 2 * max(values_ms):
                judged.axvline(limit_ms, color="#c0392b", label=f"target p95 {limit_ms:g} ms")
            else:  # drawing it would squash the histogram into one corner
                judged.plot([], [], " ", label=f"target p95 {limit_ms:g} ms (off the scale)")
        judged.legend(loc="best", fontsize="small")
        return self._svg(figure)

    def resources(self, series: Sequence[Mapping[str, Any]]) -> str:
        """RSS and CPU over time for each resource-sampling run of one test."""
        figure = self._figure_class(figsize=(10, 4.6), layout="constrained")
        memory, cpu = figure.subplots(2, 1, sharex=True)
        named = len(series) > 1
        for index, run in enumerate(series):
            samples = _thinned(run["samples"])
            elapsed = [sample["elapsed"] for sample in samples]
            label = f"{run['supervisor']} #{index + 1} " if named else ""
            color = f"C{index % 10}"
            memory.plot(
                elapsed, [s["rss_mb"] for s in samples], color=color, label=f"{label}supervisor"
            )
            memory.plot(
                elapsed,
                [s["tree_rss_mb"] for s in samples],
                color=color,
                linestyle="--",
                label=f"{label}with services",
            )
            cpu.plot(
                elapsed,
                [s["cpu_percent"] for s in samples],
                color=color,
                label=f"{label}supervisor",
            )
            cpu.plot(
                elapsed,
                [s["tree_cpu_percent"] for s in samples],
                color=color,
                linestyle="--",
                label=f"{label}with services",
            )
        memory.set_ylabel("RSS (MB)")
        memory.set_ylim(bottom=0)
        memory.legend(loc="upper left", fontsize="small")
        cpu.set_ylabel("CPU (% of one core)")
        cpu.set_ylim(bottom=0)
        cpu.set_xlabel("seconds since sampling began")
        return self._svg(figure)

    def _svg(self, figure: Any) -> str:
        buffer = io.StringIO()
        self._drawn += 1
        # Text stays text (small, searchable); a salt per figure keeps the element ids
        # of several inlined SVGs apart.
        with self._matplotlib.rc_context(
            {"svg.fonttype": "none", "svg.hashsalt": f"plot{self._drawn}"}
        ):
            figure.savefig(buffer, format="svg", metadata={"Date": None})
        text = buffer.getvalue()
        return text[text.index("<svg") :]  # inline SVG takes no XML prolog or doctype


def load() -> SvgPlots | None:
    """The plotter, or None when matplotlib is not installed."""
    try:
        return SvgPlots()
    except ImportError:
        return None


def _histogram(axes: Any, values: Sequence[float], label: str) -> None:
    """Linear bins, or logarithmic ones when the values span more than a decade."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    low, high = min(values), max(values)
    if low > 0 and high / low > LOG_SCALE_SPAN:
        step = math.log(high / low) / HISTOGRAM_BINS
        bins: Any = [low * math.exp(step * index) for index in range(HISTOGRAM_BINS + 1)]
        axes.set_xscale("log")
        # Plain numbers on the decades; the default 2x10^0-style minor labels collide.
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
        label += ", log scale"
    else:
        bins = HISTOGRAM_BINS
    axes.hist(values, bins=bins, color="#4878a8")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel(label)
    axes.set_ylabel("respawns")


def _thinned(samples: Sequence[Mapping[str, float]]) -> Sequence[Mapping[str, float]]:
    stride = math.ceil(len(samples) / MAX_PLOTTED_POINTS)
    return samples[::stride] if stride > 1 else samples
