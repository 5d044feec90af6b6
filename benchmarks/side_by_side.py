"""What the benchmarks share to run every measure once per engine and print one table with
a column per engine (and valkey / redis where both ran)."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

from components.engines import ENGINES, format_version
from sandbox.engine_binaries import EngineBinaries, find_binaries

# The ratio column: the second engine's figure over the first's.
RATIO_OVER = ("valkey", "redis")


def add_engines_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=list(ENGINES),
        default=list(ENGINES),
        help="the engines to run, in this order (default: %(default)s); each runs its own "
        "server and CLI from .engines/ (sandbox.engine_binaries.find_binaries)",
    )


def engine_binaries(names: Iterable[str]) -> dict[str, EngineBinaries]:
    """Each named engine's binaries, in the order given (a name given twice runs once)."""
    return {name: find_binaries(name) for name in dict.fromkeys(names)}


def column_title(binaries: EngineBinaries) -> str:
    return f"{binaries.engine.name} {format_version(binaries.version)}"


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def runs(values: Sequence[Optional[float]]) -> str:
    return ", ".join("-" if v is None else f"{v:.2f}" for v in values)


def seconds_with_runs(values: Sequence[Optional[float]]) -> str:
    """`6.05 s (median of 6.01, 6.05, 6.40)`, or the one run; `-` for a run that never got there."""
    done = [v for v in values if v is not None]
    if not done:
        return f"- (never; runs {runs(values)})" if values else "-"
    middle = statistics.median(done)
    if len(values) == 1:
        return f"{middle:.2f} s"
    return f"{middle:.2f} s (median of {runs(values)})"


@dataclass
class Row:
    measure: str
    cells: dict[str, str]  # engine -> text
    # engine -> the figure the ratio column divides (None or absent: no ratio)
    figures: dict[str, Optional[float]] = field(default_factory=dict)
    # Below this denominator the ratio means nothing (a gap of 0.00 s, say).
    ratio_floor: float = 1e-9


def ratio_text(row: Row) -> str:
    top, bottom = (row.figures.get(name) for name in RATIO_OVER)
    if top is None or bottom is None or bottom < row.ratio_floor:
        return "-"
    return f"{top / bottom:.2f}x"


def markdown_table(binaries: Mapping[str, EngineBinaries], rows: Sequence[Row]) -> list[str]:
    """One row per measure, one column per engine, and valkey / redis when both ran."""
    engines = list(binaries)
    with_ratio = all(name in engines for name in RATIO_OVER)
    titles = ["measure", *(column_title(binaries[name]) for name in engines)]
    if with_ratio:
        titles.append(f"{RATIO_OVER[0]} / {RATIO_OVER[1]}")
    lines = ["| " + " | ".join(titles) + " |", "|" + " --- |" * len(titles)]
    for row in rows:
        cells = [row.measure, *(row.cells.get(name, "-") for name in engines)]
        if with_ratio:
            cells.append(ratio_text(row))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def print_results(title: str, binaries: Mapping[str, EngineBinaries], rows: Sequence[Row]) -> None:
    """The run's table under its title, then the load average: other work on the machine
    shows there, beside the figures it may have slowed."""
    from benchmarks.machine_info import load_average

    print(f"\n{title}:\n")
    print("\n".join(markdown_table(binaries, rows)))
    print(f"\nload average at the end: {load_average()} (other work on this machine shows here)")
