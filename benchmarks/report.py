"""Results -> the README table (``results/latest.md``) and the chart (``results/chart.png``).

Reads every ``*.jsonl`` in the results folder: the engine benchmark files (``cpu.jsonl``,
``cuda_full.jsonl``, ...) and the cluster benchmark's ``cluster_*.jsonl`` when present,
plus ``bounds.json``. For each file and case the latest row is shown, with its change
against the previous row of that case (a slowdown shows the day it lands).
"""
from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

log = logging.getLogger(__name__)

_COLUMNS = ("group", "model", "impl/backend", "prec", "batch", "px", "threads", "images/s", "ms/step", "vs seed",
            "GFLOP/img", "TFLOP/s", "% peak", "mem MiB", "vs prev")


def read_rows(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d is not JSON; skipped", path, i + 1)
    return rows


def latest_by_case(rows: list[dict]) -> list[tuple[dict, dict | None]]:
    """(latest row, previous ok row or None) per case, in first-seen order."""
    order: list[str] = []
    hist: dict[str, list[dict]] = {}
    for r in rows:
        key = str(r.get("case") or r.get("name"))
        if key not in hist:
            order.append(key)
        hist.setdefault(key, []).append(r)
    out = []
    for key in order:
        latest = hist[key][-1]
        prev = next((r for r in reversed(hist[key][:-1]) if r.get("status", "ok") == "ok"), None)
        out.append((latest, prev))
    return out


def _fmt(v, digits: int = 3) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"
    return str(v)


def _engine_line(r: dict, prev: dict | None) -> str:
    impl = "seed (article)" if r["impl"] == "seed" else r["backend"]
    vs_prev = ""
    if prev and prev.get("images_per_s"):
        change = r["images_per_s"] / prev["images_per_s"]
        vs_prev = f"{change:.2f}x" + (" (slower)" if change < 0.9 else "")
    frac = r.get("fraction_of_peak")
    cells = (r["group"], r["model"], impl, r["precision"], r["batch_size"], r["size"],
             r.get("env", {}).get("torch_threads", ""), _fmt(r["images_per_s"]),
             _fmt(r["ms_per_step"]), f"{r['speedup_vs_seed']:.2f}x" if r.get("speedup_vs_seed") else "",
             _fmt(r["gflop_per_image"]), _fmt(r["achieved_tflops"]), f"{100 * frac:.1f}%" if frac else "",
             _fmt(r.get("cuda_max_allocated_mib") or r.get("rss_growth_mib")), vs_prev)
    return "| " + " | ".join(map(str, cells)) + " |"


def engine_section(path: Path) -> list[str]:
    pairs = latest_by_case(read_rows(path))
    ok = [(r, p) for r, p in pairs if r.get("status") == "ok"]
    if not pairs:
        return []
    first = (ok or pairs)[0][0]
    env = first.get("env", {})
    runs = sorted({r.get("run_id", "?") for r, _ in pairs})
    loads = [r["env"]["load_avg_1_5_15"][0] for r, _ in ok if r.get("env", {}).get("load_avg_1_5_15")]
    weights = sorted({f"{r['model']}: {r['weights']}" for r, _ in ok if r.get("weights")})
    lines = [f"### `{path.name}`: {first.get('label', '')}", "",
             f"Device: {env.get('device_name')} ({env.get('device')}); torch {env.get('torch')}, "
             f"{env.get('torch_threads')} threads; runs {', '.join(runs)}. Weights: {'; '.join(weights)}.", ""]
    cpus = env.get("host_cpus") or 1
    if loads and env.get("device") == "cpu":
        busy = max(loads) > cpus
        lines += [f"1-minute load average while measuring: {min(loads):.1f}-{max(loads):.1f} on {cpus} CPUs"
                  + (" (the machine was shared and busy: read these as lower bounds)." if busy else "."), ""]
    if ok:
        lines += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        lines += [_engine_line(r, p) for r, p in ok]
        seed = next((r for r, _ in ok if r["impl"] == "seed"), None)
        lines += ["", f"Job per group: {'; '.join(sorted({r['job'] for r, _ in ok}))}. "
                  "ms/step = one ascent step of the whole batch. mem MiB = the RSS rise during a run, after "
                  "malloc_trim (CPU; JSON rows also hold the whole process's peak RSS) or max allocated (CUDA). Peak: " + (ok[0][0].get("peak_source") or "") + "."]
        if seed:
            lines += [f"vs seed = images/s over the seed baseline's ({_fmt(seed['images_per_s'])} images/s) on the "
                      f"same job, measured in the same run."]
    not_run = [r for r, _ in pairs if r.get("status") != "ok"]
    if not_run:
        lines += ["", "Not measured:"] + [f"- `{r['case']}`: {r['status']}: {r.get('reason')}" for r in not_run]
    return lines + [""]


def cluster_rows(path: Path) -> list[dict]:
    """The cluster benchmark's latest run as flat rows: one per mode (in-process, N workers)."""
    raw = read_rows(path)
    if not raw:
        return []
    if any("images_per_s" in r for r in raw):  # already flat: latest row per case
        return [r for r, _ in latest_by_case(raw)]
    last, cfg = raw[-1], raw[-1].get("config", {})
    label = (f"cluster path: {cfg.get('model')}, max side {cfg.get('max_side')} px, {cfg.get('octaves')} octaves x "
             f"{cfg.get('iterations')} iterations, batch {cfg.get('batch_size')}, {last.get('images')} images")
    out = []
    for key, v in last.items():
        if isinstance(v, dict) and "images_per_s" in v:
            base = next((k for k in last if k.startswith("in_process")), "in_process")
            out.append({"case": key, "group": "cluster", "label": label, "threads": v.get("torch_threads"),
                        "images_per_s": v.get("images_per_s_steady") or v["images_per_s"],
                        "images_per_s_wall": v["images_per_s"], "wall_s": v.get("wall_s"),
                        "vs_in_process": last.get(f"ratio_{key}_vs_{base}"), "date": last.get("date"),
                        "load": [round(v, 1) for v in last.get("loadavg_before") or []]})
    return out


def cluster_section(path: Path) -> list[str]:
    """The cluster benchmark's rows, whatever their fields: the common ones first."""
    rows = cluster_rows(path)
    if not rows:
        return []
    preferred = ("case", "name", "workers", "threads", "images_per_s", "images_per_s_wall", "vs_in_process",
                 "speedup_vs_inprocess", "wall_s", "date", "load", "status", "note")
    cols = [c for c in preferred if any(c in r for r in rows)]
    lines = [f"### `{path.name}`: {rows[0].get('label', 'the cluster path')}", "",
             "images_per_s = steady state (benchmarks/cluster_bench.py); vs_in_process = ratio to the in-process "
             "engine on the same job.", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return lines + [""]


def bounds_section(path: Path, results: Path) -> list[str]:
    if not path.exists():
        return []
    bounds = json.loads(path.read_text())
    lines = ["### Targets: the FLOP limit of the standard job (not tests)", "",
             "FLOPs from FlopCounterMode (forward + input gradient) for 3 octaves x 1.4 from 512x512, 10 iterations; "
             "bound = 40% of the GPU's dense bf16 peak / FLOPs per image. A GPU run's `full` rows give the achieved "
             "fraction.", "", "| GPU | model | TFLOP/image | images/s bound (40% bf16) |", "|---|---|---|---|"]
    lines += [f"| {b['gpu']} | {b['model']} ({b['layer']}) | {b['tflop_per_image']} | {b['images_per_s_bound']} |"
              for b in bounds if b["gpu"] in ("H100", "H200", "A100")]
    return lines + [""]


def write_table(results: str | Path) -> Path:
    """Rewrite RESULTS/latest.md from every results file; returns its path."""
    results = Path(results)
    files = sorted(results.glob("*.jsonl"), key=lambda p: (p.name.startswith("cluster"), p.name))
    lines = ["## Benchmarks", "", "Generated by `dreamfleet bench` (benchmarks/report.py) from "
             "`benchmarks/results/*.jsonl`; latest row per case.", ""]
    for p in files:
        lines += cluster_section(p) if p.name.startswith("cluster") else engine_section(p)
    lines += bounds_section(results / "bounds.json", results)
    out = results / "latest.md"
    out.write_text("\n".join(lines))
    log.info("table written to %s", out)
    return out


def write_chart(results: str | Path) -> Path | None:
    """Rewrite RESULTS/chart.png: images/s per case (log scale), one panel per results file."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'dreamfleet[charts]'); no chart written")
        return None
    results = Path(results)
    panels = []
    for p in sorted(results.glob("*.jsonl"), key=lambda p: (p.name.startswith("cluster"), p.name)):
        rows = cluster_rows(p) if p.name.startswith("cluster") else [r for r, _ in latest_by_case(read_rows(p))]
        ok = [r for r in rows if r.get("status", "ok") == "ok" and r.get("images_per_s")]
        if ok:
            panels.append((p.name, ok))
    if not panels:
        return None
    heights = [max(2.0, 0.32 * len(rows) + 1.0) for _, rows in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights)), gridspec_kw={"height_ratios": heights},
                             squeeze=False)
    palette = plt.get_cmap("tab10")
    for ax, (name, rows) in zip(axes[:, 0], panels):
        groups = sorted({str(r.get("group", "cluster")) for r in rows})
        labels, values, colors = [], [], []
        for r in rows:
            if "model" in r and "backend" in r:
                labels.append(f"{r['model']} {'seed' if r.get('impl') == 'seed' else r['backend']} {r['precision']} "
                              f"b{r['batch_size']} {r['size']}px" + (f" t{r['threads']}" if r.get("threads") else ""))
            else:
                labels.append(str(r.get("case") or r.get("name")))
            values.append(float(r["images_per_s"]))
            colors.append(palette(groups.index(str(r.get("group", "cluster"))) % 10))
        y = range(len(rows))
        ax.barh(list(y), values, color=colors)
        ax.set_yticks(list(y), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        for i, r in enumerate(rows):
            note = f" {r['speedup_vs_seed']:.1f}x seed" if r.get("speedup_vs_seed") else ""
            ax.text(values[i], i, f" {values[i]:.3g}{note}", va="center", fontsize=6)
        handles = [plt.Rectangle((0, 0), 1, 1, color=palette(i % 10)) for i in range(len(groups))]
        ax.legend(handles, groups, fontsize=6, loc="lower right", title="varies", title_fontsize=6)
        ax.set_title(textwrap.fill(f"{name}: {rows[0].get('label', '')}", 120), fontsize=8)
        ax.set_xlabel("images/s (log)", fontsize=8)
    fig.tight_layout()
    out = results / "chart.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    log.info("chart written to %s", out)
    return out
