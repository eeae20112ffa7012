"""Render an evaluation result: ``eval.json`` (every figure), ``report.md`` (tables per K,
per slice and segment, bootstrap intervals, the cold-quota trade-off) and PNG plots
(matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main_table", "markdown", "plot", "write_report"]

KIND_ORDER = {"channel": 0, "variant": 1, "baseline": 2}
LABELS = {
    "recall": "recall",
    "ndcg": "NDCG",
    "hit": "hit rate",
    "coverage": "coverage",
    "novelty": "novelty (bits)",
}
SEGMENT_TITLES = {
    "history_length": "History length (training interactions per user)",
    "item_popularity": "Item popularity (deciles of items with training interactions, "
    "d1 = most popular; cold = none)",
    "items": "Cold and warm test items",
}
SLICE_TITLES = {
    "cold_users": "Cold users (at most {n} training interactions)",
    "cold_items": "Cold items (test items absent from training; recall on those items only)",
}


def _ordered(systems: dict[str, Any]) -> list[str]:
    """Channels, then fused variants, then baselines; config order within each."""
    names = list(systems)
    return sorted(names, key=lambda n: (KIND_ORDER.get(systems[n]["kind"], 9), names.index(n)))


def _fmt(v: float | None, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def k_table(systems: dict[str, Any], k: int) -> str:
    """Rows = systems, columns = every metric at ``k``."""
    metrics = list(LABELS)
    rows = []
    for name in _ordered(systems):
        m = systems[name]["metrics"][str(k)]
        rows.append(
            [
                f"{name} ({systems[name]['kind']})",
                *(_fmt(m[x], 2 if x == "novelty" else 4) for x in metrics),
            ]
        )
    return _table(["system", *(f"{LABELS[x]}@{k}" for x in metrics)], rows)


def recall_table(systems: dict[str, Any], ks: Sequence[int], main_k: int) -> str:
    """Rows = systems, columns = recall at every K plus NDCG and hit rate at ``main_k``."""
    rows = []
    for name in _ordered(systems):
        m = systems[name]["metrics"]
        rows.append(
            [
                f"{name} ({systems[name]['kind']})",
                *(_fmt(m[str(k)]["recall"]) for k in ks),
                _fmt(m[str(main_k)]["ndcg"]),
                _fmt(m[str(main_k)]["hit"]),
            ]
        )
    return _table(["system", *(f"recall@{k}" for k in ks), f"NDCG@{main_k}", f"hit@{main_k}"], rows)


def main_table(result: dict[str, Any]) -> str:
    """The table ``recall-engine eval`` prints."""
    p = result["protocol"]
    return recall_table(result["systems"], p["ks"], p["main_k"])


def describe_split(split: dict[str, Any]) -> str:
    """One line for the protocol of ``split`` (``Split.describe()``)."""
    kind = split["kind"]
    if kind == "temporal":
        return f"per-user temporal hold-out, newest {split['test_fraction']:.0%} of each user"
    if kind == "random":
        return (
            f"per-user random hold-out, {split['test_fraction']:.0%} of each user "
            f"(seed {split['seed']})"
        )
    if kind == "loo":
        return "leave-last-one-out: each user's newest interaction"
    return f"global time cut at {split['cut_time']}" + (
        f" (quantile {split['quantile']})" if "quantile" in split else ""
    )


def segment_tables(result: dict[str, Any]) -> list[str]:
    """Per segment family: recall and NDCG at the main K, systems × segments."""
    k = str(result["protocol"]["main_k"])
    out: list[str] = []
    for family, segs in result.get("segments", {}).items():
        names = list(segs)
        systems = _ordered(next(iter(segs.values()))["systems"]) if segs else []
        sizes = ", ".join(
            f"{n}: {s['users']} users / {s['test_items']} items" for n, s in segs.items()
        )
        out += ["", f"### {SEGMENT_TITLES.get(family, family)}", "", f"Sizes: {sizes}."]
        for metric in ("recall", "ndcg"):
            rows = [
                [
                    name,
                    *(
                        _fmt(segs[n]["systems"][name]["metrics"][k][metric])
                        if name in segs[n]["systems"]
                        else "–"
                        for n in names
                    ),
                ]
                for name in systems
            ]
            out += ["", f"{LABELS[metric]}@{k}:", "", _table(["system", *names], rows)]
    return out


def comparison_table(result: dict[str, Any]) -> list[str]:
    """Every fused variant against the best baseline, and ``fused:default`` against
    every channel: difference and its paired bootstrap interval."""
    cmp = result.get("comparisons") or {}
    if not cmp.get("rows"):
        return []
    best = cmp["best_baseline"]
    picked = [
        r
        for r in cmp["rows"]
        if r["reference"] in (best, "fused:default")
        or (r["system"] == "fused:default" and r["reference_kind"] == "channel")
    ]
    rows = [
        [
            r["system"],
            r["reference"],
            r["metric"],
            _fmt(r["a"]),
            _fmt(r["b"]),
            f"{r['diff']:+.4f}",
            f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]",
            f"{r['p_value']:.3f}",
        ]
        for r in picked
        if r["diff"] is not None
    ]
    level = cmp["rows"][0]["level"]
    return [
        "",
        f"## Paired bootstrap: fused against the best baseline ({best}), the channels "
        "and fused:default",
        "",
        f"Per-user resampling, {cmp['resamples']} resamples, seed {cmp['seed']}, "
        f"{level:.0%} percentile intervals of the difference; every pair is in eval.json. "
        "'Best baseline' is the one with the highest test recall, a label only.",
        "",
        _table(
            ["system", "reference", "metric", "system's", "reference's", "diff", "CI", "p"],
            rows,
        ),
    ]


def cold_table(result: dict[str, Any]) -> list[str]:
    """The cold-quota trade-off: overall, warm-item and cold-item recall per system."""
    cq = result.get("cold_quota") or {}
    if not cq.get("rows"):
        return []
    k = cq["k"]
    content = next(
        (r["cold_recall"] for r in cq["rows"] if r["system"] == "content" and r["cold_recall"]),
        None,
    )
    rows = []
    for r in cq["rows"]:
        ratio = (
            _fmt(r["cold_recall"] / content, 2) if content and r["cold_recall"] is not None else "–"
        )
        rows.append(
            [
                f"{r['system']} ({r['kind']})",
                "–" if r["cold_quota"] is None else f"{r['cold_quota']:g}",
                _fmt(r["recall"]),
                _pct(r["recall_change"]),
                _fmt(r["warm_recall"]),
                _pct(r["warm_recall_change"]),
                _fmt(r["cold_recall"]),
                ratio,
            ]
        )
    return [
        "",
        f"## Cold items in the fused list (recall@{k})",
        "",
        f"{cq['cold_users']} users with {cq['cold_test_items']} cold test items. Changes "
        f"are relative to {cq['reference']}; 'vs content' is cold-item recall over "
        "content alone's.",
        "",
        _table(
            [
                "system",
                "cold_quota",
                f"recall@{k}",
                "change",
                f"warm recall@{k}",
                "change",
                f"cold recall@{k}",
                "vs content",
            ],
            rows,
        ),
    ]


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.2f} %"


def markdown(result: dict[str, Any], images: Sequence[str] = ()) -> str:
    p, ch, t = result["protocol"], result["channels"], result["timings"]
    split = p["split"]
    how = describe_split(split)
    built = ", ".join(f"{b['channel']} ({b['seconds']:.1f} s)" for b in ch["built"] if b["version"])
    skipped = "; ".join(f"{b['channel']}: {b['skipped']}" for b in ch["built"] if not b["version"])
    parity = ", ".join(
        f"{v}: {c['identical']}/{c['users']}" for v, c in ch.get("engine_parity", {}).items()
    )
    out = [
        f"# Offline evaluation{': ' + result['dataset'] if result.get('dataset') else ''}",
        "",
        f"* Split: {how}; {split['train_rows']} train / {split['test_rows']} test rows.",
        f"* Evaluated users: {p['evaluated_users']} ({p['test_items']} test items); catalogue "
        f"{p['catalog_items']} items. Relevance: {p['relevance']}. Excluded: {p['exclude']}.",
        f"* Channels built: {built or 'none'}" + (f"; skipped: {skipped}" if skipped else ""),
        f"* Channels loaded: {', '.join(ch['loaded']) or 'none'}.",
        f"* Engine parity (offline fusion vs `Engine.recall`, identical lists): {parity or 'n/a'}.",
        f"* Wall time: {t['total_seconds']:.0f} s ("
        + ", ".join(
            f"{k.removesuffix('_seconds')} {v:.0f} s" for k, v in t.items() if k != "total_seconds"
        )
        + ").",
        f"* Machine: {result['machine']['cpu']}, {result['machine']['cpus_usable']} usable CPUs, "
        f"Python {result['machine']['python']}.",
    ]
    if result.get("command"):
        out += ["", "```", result["command"], "```"]
    out += ["", "## Recall at every K", "", main_table(result)]
    for k in p["ks"]:
        out += ["", f"## All metrics @{k}", "", k_table(result["systems"], k)]
    for name, sl in result["slices"].items():
        title = SLICE_TITLES.get(name, name).format(n=p["cold_user_max_train_interactions"])
        out += [
            "",
            f"## Slice: {title}",
            "",
            f"{sl['users']} users, {sl.get('test_items', 0)} test items.",
        ]
        if sl["systems"]:
            out += ["", recall_table(sl["systems"], p["ks"], p["main_k"])]
    if result.get("segments"):
        out += ["", "## Segments"] + segment_tables(result)
    out += comparison_table(result)
    out += cold_table(result)
    base = {n: s for n, s in result["systems"].items() if s["kind"] == "baseline"}
    if base:
        out += ["", "## Baselines", ""]
        out += [
            f"* {n}: {json.dumps(s['params'])}, fit {s['fit_seconds']} s, "
            f"recommend {s['recommend_seconds']} s"
            + (
                f"; λ grid recall: {json.dumps(s['lambda_grid_recall'])}"
                if "lambda_grid_recall" in s
                else ""
            )
            for n, s in base.items()
        ]
    if images:
        out += ["", "## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(out) + "\n"


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    """``recall_at_k.png`` (one curve per system), ``slice_<name>.png`` (recall at
    the main K per system, one bar each), ``segments_<family>.png`` (recall@K curves per
    system, one panel per segment) and ``cold_quota.png`` (the trade-off)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = result["protocol"]
    ks, main_k = p["ks"], p["main_k"]
    styles = {"channel": "-", "variant": "--", "baseline": ":"}
    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    systems = result["systems"]
    for name in _ordered(systems):
        s = systems[name]
        ax.plot(
            ks,
            [s["metrics"][str(k)]["recall"] or 0.0 for k in ks],
            styles.get(s["kind"], "-"),
            marker="o",
            label=name,
        )
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K")
    ax.set_title("Recall@K per channel, fused variant and baseline")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    paths.append(out / "recall_at_k.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    colors = {"channel": "tab:blue", "variant": "tab:orange", "baseline": "tab:gray"}
    for sname, sl in result["slices"].items():
        names = _ordered(sl["systems"]) if sl["systems"] else []
        fig, ax = plt.subplots(figsize=(8, 4.5))
        values = [sl["systems"][n]["metrics"][str(main_k)]["recall"] or 0.0 for n in names]
        ax.bar(
            range(len(names)),
            values,
            color=[colors.get(sl["systems"][n]["kind"], "tab:green") for n in names],
        )
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(f"recall@{main_k}")
        ax.set_title(f"{sname}: {sl['users']} users" + ("" if names else " (empty slice)"))
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        paths.append(out / f"slice_{sname}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    for family, segs in result.get("segments", {}).items():
        paths.append(_plot_segments(plt, family, segs, ks, styles, out))
    if (result.get("cold_quota") or {}).get("rows"):
        paths.append(_plot_cold(plt, result["cold_quota"], out))
    return paths


def _plot_segments(
    plt: Any, family: str, segs: dict[str, Any], ks: Sequence[int], styles: dict, out: Path
) -> Path:
    n = len(segs)
    cols = min(4, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 3.0 * rows + 0.8), squeeze=False, sharey=True
    )
    for ax in axes.flat[n:]:
        ax.axis("off")
    handles: dict[str, Any] = {}
    for ax, (name, seg) in zip(axes.flat, segs.items(), strict=False):
        systems = seg["systems"]
        for sys_name in _ordered(systems):
            s = systems[sys_name]
            (line,) = ax.plot(
                ks,
                [s["metrics"][str(k)]["recall"] for k in ks],
                styles.get(s["kind"], "-"),
                marker=".",
                label=sys_name,
            )
            handles.setdefault(sys_name, line)
        ax.set_title(f"{name} ({seg['users']} users)", fontsize=9)
        ax.set_xlabel("K", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("recall@K")
    fig.suptitle(SEGMENT_TITLES.get(family, family), fontsize=10)
    fig.legend(list(handles.values()), list(handles), fontsize=7, loc="lower center", ncol=6)
    fig.tight_layout(rect=(0, 0.08 + 0.02 * (len(handles) // 6), 1, 0.96))
    path = out / f"segments_{family}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_cold(plt: Any, cq: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in cq["rows"]:
        if r["cold_recall"] is None or r["warm_recall"] is None:
            continue
        marker = "o" if r["kind"] == "variant" else "s"
        ax.scatter(r["warm_recall"], r["cold_recall"], marker=marker)
        ax.annotate(r["system"], (r["warm_recall"], r["cold_recall"]), fontsize=7)
    ax.set_xlabel(f"warm-item recall@{cq['k']}")
    ax.set_ylabel(f"cold-item recall@{cq['k']}")
    ax.set_title("Cold quota: cold-item against warm-item recall")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "cold_quota.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``eval.json``, the plots and ``report.md`` into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "eval.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    images = plot(result, out)
    md_path = out / "report.md"
    md_path.write_text(markdown(result, [i.name for i in images]), encoding="utf-8")
    return {"json": json_path, "markdown": md_path, **{i.stem: i for i in images}}
