"""Read ladder runs back: per (rung, control) mean and spread over seeds, steps to 90%, the curves PNG, and
a before/after table of two output folders."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from sphinx_x.fileio import save_figure

THRESHOLD = 0.9


def steps_to(curve: list[dict[str, Any]], threshold: float = THRESHOLD) -> int | None:
    """The first evaluated step whose held-out accuracy is at least `threshold` (None: never)."""
    return next((p["step"] for p in curve if p["acc"] >= threshold), None)


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def load_runs(folder: str | Path) -> list[dict[str, Any]]:
    runs_dir = Path(folder) / "runs"
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{folder}: no runs/ folder (not a ladder output directory)")
    runs = []
    for f in sorted(runs_dir.glob("*.json")):
        try:
            runs.append(json.loads(f.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not valid JSON ({e})") from e
    return runs


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (rung, control), seeds pooled."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["rung"], r["control"]), []).append(r)
    rows = []
    for (rung, control), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["seed"])
        finals = [r["curve"][-1]["acc"] for r in rs]
        best = [max(p["acc"] for p in r["curve"]) for r in rs]
        hits = [steps_to(r["curve"]) for r in rs]
        reached = [h for h in hits if h is not None]
        row = {"rung": rung, "task": rs[0]["task"], "control": control, "seeds": [r["seed"] for r in rs],
               "steps": rs[0]["steps"], "batch": rs[0]["batch"], "final": spread(finals), "best": spread(best),
               "steps_to_90": hits, "reached": f"{len(reached)}/{len(rs)}",
               "median_steps_to_90": statistics.median(reached) if reached else None,
               "wall_s": statistics.fmean(r["wall_s"] for r in rs), "recipe": rs[0].get("recipe", {})}
        if all("binding" in r for r in rs):
            row["binding"] = spread([r["binding"]["changes"] for r in rs])
            row["probe_acc"] = spread([r["binding"]["probe_acc"] for r in rs])
        rows.append(row)
    return rows


def _pct(s: dict[str, float]) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}"


def _hits(hits: list[int | None]) -> str:
    return ", ".join("-" if h is None else str(h) for h in hits)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| rung | task | control | seeds | steps x batch | final acc % (mean ± sd) | min-max | best % "
             "| steps to 90% (per seed) | binding: answer changes % | s/run |",
             "|---:|---|---|---:|---|---:|---|---:|---|---:|---:|"]
    for r in rows:
        bind = _pct(r["binding"]) if "binding" in r else ""
        lines.append(f"| {r['rung']} | {r['task']} | {r['control']} | {len(r['seeds'])} | {r['steps']} x {r['batch']} "
                     f"| {_pct(r['final'])} | {100 * r['final']['min']:.0f}-{100 * r['final']['max']:.0f} "
                     f"| {100 * r['best']['mean']:.1f} | {_hits(r['steps_to_90'])} | {bind} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """Rows present in both folders: final accuracy and steps to 90% before and after."""
    a = {(r["rung"], r["control"]): r for r in after}
    lines = ["| rung | task | control | before % | after % | change (points) | steps to 90% before | after |",
             "|---:|---|---|---:|---:|---:|---|---|"]
    for b in before:
        r = a.get((b["rung"], b["control"]))
        if r is None:
            continue
        delta = 100 * (r["final"]["mean"] - b["final"]["mean"])
        lines.append(f"| {b['rung']} | {b['task']} | {b['control']} | {_pct(b['final'])} | {_pct(r['final'])} "
                     f"| {delta:+.1f} | {_hits(b['steps_to_90'])} | {_hits(r['steps_to_90'])} |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: str | Path) -> None:
    """One panel per rung, one line per control: mean held-out accuracy over seeds, band = min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rungs = sorted({r["rung"] for r in runs})
    names = sorted({r["control"] for r in runs})
    colour = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(names)}  # one colour per control everywhere
    cols = min(4, len(rungs))
    rows_n = (len(rungs) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    for ax in axes.flat[len(rungs):]:
        ax.axis("off")
    for ax, rung in zip(axes.flat, rungs):
        mine = [r for r in runs if r["rung"] == rung]
        for control in sorted({r["control"] for r in mine}):
            curves = [r["curve"] for r in mine if r["control"] == control]
            steps = sorted(set.intersection(*[{p["step"] for p in c} for c in curves]))
            accs = [[next(p["acc"] for p in c if p["step"] == s) for c in curves] for s in steps]
            mean = [statistics.fmean(a) for a in accs]
            ax.plot(steps, mean, marker=".", color=colour[control], label=f"{control} ({len(curves)} seeds)")
            ax.fill_between(steps, [min(a) for a in accs], [max(a) for a in accs], color=colour[control], alpha=0.2)
        ax.axhline(THRESHOLD, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{rung}: {mine[0]['task']}", fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel("held-out accuracy")
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)
