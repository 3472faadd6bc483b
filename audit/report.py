"""Write an audit as ``audit.json`` plus a self-contained ``report.html`` (inline CSS and plots)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedsynth.common.io import atomic_write_json, atomic_write_text
from fedsynth.common.schema import Schema, canonical

if TYPE_CHECKING:
    from fedsynth.audit.runner import AuditReport

SECTIONS = (
    "summary",
    "privacy",
    "membership",
    "distance",
    "reidentification",
    "fidelity",
    "utility",
    "notes",
)
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px}
body{color:#222} h1{margin-bottom:.2rem}
h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left} th{background:#f4f4f4}
.pass{color:#176d2c;font-weight:600} .fail{color:#b3141b;font-weight:600} .skipped{color:#777}
.verdict{font-size:1.4rem;padding:.6rem 1rem;border-radius:6px;display:inline-block}
.verdict.pass{background:#e3f5e6} .verdict.fail{background:#fde4e4}
img{max-width:100%} .muted{color:#666}
"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode()
    alt = html.escape(fig.get_label() or "plot")
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2e}" if 0 < abs(v) < 10**-digits else f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{c if isinstance(c, str) and c.startswith('<') else _fmt(c)}</td>" for c in r
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def plot_distributions(
    real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema, *, max_columns: int = 12
) -> Figure:
    """Real vs synthetic marginals: histograms for numeric columns, bar charts for categorical
    ones."""
    cols = list(schema.columns)[:max_columns]
    n = len(cols)
    ncols = 4
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(3.2 * ncols, 2.4 * nrows), label="real vs synthetic distributions")
    for i, col in enumerate(cols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if col.kind == "numeric":
            r = pd.to_numeric(real[col.name], errors="coerce").dropna()
            s = pd.to_numeric(synthetic[col.name], errors="coerce").dropna()
            bins = np.linspace(col.lower, col.upper, 31) if col.lower is not None else 30
            lo, hi = np.nanquantile(np.r_[r, s], [0.005, 0.995]) if len(r) + len(s) else (0, 1)
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
            ax.hist(r, bins=bins, density=True, alpha=0.5, label="real")
            ax.hist(s, bins=bins, density=True, alpha=0.5, label="synthetic")
        else:
            keys = list(col.category_keys)
            pr = (
                real[col.name]
                .map(canonical)
                .value_counts(normalize=True)
                .reindex(keys, fill_value=0)
            )
            ps = (
                synthetic[col.name]
                .map(canonical)
                .value_counts(normalize=True)
                .reindex(keys, fill_value=0)
            )
            x = np.arange(len(keys))
            ax.bar(x - 0.2, pr.to_numpy(), width=0.4, label="real")
            ax.bar(x + 0.2, ps.to_numpy(), width=0.4, label="synthetic")
            ax.set_xticks(x, [k[:8] for k in keys], rotation=45, fontsize=7)
        ax.set_title(col.name, fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _numeric_view(df: pd.DataFrame, schema: Schema, names: list[str]) -> pd.DataFrame:
    out = {}
    for name in names:
        col = schema.column(name)
        if col.kind == "numeric":
            out[name] = pd.to_numeric(df[name], errors="coerce")
        else:
            out[name] = (df[name].map(canonical) == col.category_keys[-1]).astype(float)
    return pd.DataFrame(out)


def plot_correlations(
    real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema, *, max_columns: int = 30
) -> Figure:
    """Pearson correlation heatmaps (numeric and binary columns) of real and synthetic rows."""
    names = [c.name for c in schema.columns if c.kind in ("numeric", "binary")][:max_columns]
    fig = Figure(figsize=(11, 5), label="correlation heatmaps")
    for i, (title, df) in enumerate((("real", real), ("synthetic", synthetic))):
        ax = fig.add_subplot(1, 2, i + 1)
        corr = _numeric_view(df, schema, names).corr().fillna(0.0).to_numpy()
        im = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"{title} correlations", fontsize=10)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
    fig.colorbar(im, ax=fig.axes, shrink=0.8)
    return fig


def plot_roc(mia: dict[str, Any]) -> Figure:
    """ROC curves of every membership attack (log-scaled FPR to show the low-FPR regime)."""
    fig = Figure(figsize=(9, 4), label="ROC curves")
    for i, scale in enumerate(("linear", "log")):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, res in mia.items():
            fpr = np.asarray(res.get("roc_fpr") or [0, 1], dtype=float)
            tpr = np.asarray(res.get("roc_tpr") or [0, 1], dtype=float)
            ax.plot(
                np.maximum(fpr, 1e-4) if scale == "log" else fpr,
                tpr,
                label=f"{name} (AUC {res['auc']:.2f})",
            )
        grid = np.logspace(-4, 0, 50) if scale == "log" else np.linspace(0, 1, 50)
        ax.plot(grid, grid, "k--", lw=0.8, label="chance")
        ax.set_xscale(scale)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_epsilon(privacy: dict[str, Any], mia: dict[str, Any]) -> Figure:
    """Accountant epsilon per round, with the empirical lower bounds of the attacks."""
    fig = Figure(figsize=(6, 3.5), label="epsilon per round")
    ax = fig.add_subplot(1, 1, 1)
    rounds = privacy.get("epsilon_per_round") or []
    if rounds:
        ax.plot(
            [r["round"] for r in rounds],
            [r["epsilon"] for r in rounds],
            "o-",
            label="accountant epsilon (worst site)",
        )
    elif privacy.get("accountant_epsilon") is not None:
        ax.axhline(privacy["accountant_epsilon"], color="C0", label="accountant epsilon (final)")
    for i, (name, res) in enumerate(mia.items()):
        ax.axhline(
            res["epsilon_lower_bound"],
            ls="--",
            color=f"C{i + 1}",
            label=f"empirical lower bound: {name}",
        )
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon")
    ax.legend(fontsize=7)
    return fig


def plot_dcr(distance: dict[str, Any]) -> Figure:
    """Histograms of distances to the closest record."""
    fig = Figure(figsize=(6, 3.5), label="distance to closest record")
    ax = fig.add_subplot(1, 1, 1)
    series = {"synthetic to reference": distance.get("dcr_synthetic_to_reference")}
    canary = distance.get("canary_dcr") or {}
    series["member canaries to synthetic"] = canary.get("members")
    series["held-out canaries to synthetic"] = canary.get("nonmembers")
    for name, summ in series.items():
        if summ:
            edges = np.asarray(summ["hist_edges"])
            counts = np.asarray(summ["hist_counts"], dtype=float)
            ax.stairs(counts / max(counts.sum(), 1), edges, label=name)
    ax.set_xlabel("Euclidean distance in encoded space")
    ax.set_ylabel("share")
    ax.legend(fontsize=7)
    return fig


def render_html(
    report: AuditReport, *, real: pd.DataFrame | None, synthetic: pd.DataFrame, schema: Schema
) -> str:
    """Render the self-contained HTML report."""
    d = report.to_dict()
    gate = d["gate"]
    verdict = "pass" if gate["passed"] else "fail"
    parts = [
        "<h1>fedsynth audit</h1>"
        f"<p class='muted'>{_fmt(d['generator'].get('path', ''))} — {d['created']}</p>"
    ]
    checks = [
        [
            c["name"],
            f"<span class='{c['status']}'>{c['status']}</span>",
            c["value"],
            c["threshold"],
            c["message"],
        ]
        for c in gate["checks"]
    ]
    parts.append(
        "<section id='summary'><h2>Release gate</h2>"
        f"<div class='verdict {verdict}'>RELEASE {'ALLOWED' if gate['passed'] else 'BLOCKED'}</div>"
        + _table(["check", "status", "value", "threshold", "detail"], checks)
        + "</section>"
    )
    priv = d["privacy"]
    eps_rows = [
        ["accountant epsilon (worst site)", priv.get("accountant_epsilon")],
        ["delta", priv.get("delta")],
    ]
    eps_rows += [
        [f"empirical epsilon lower bound ({k})", v["epsilon_lower_bound"]]
        for k, v in d["mia"].items()
    ]
    parts.append(
        "<section id='privacy'><h2>Privacy accounting</h2>"
        + _table(["figure", "value"], eps_rows)
        + _png(plot_epsilon(priv, d["mia"]))
        + "</section>"
    )
    mia_rows = [
        [
            k,
            v["auc"],
            f"{_fmt(v['auc_ci'][0])}–{_fmt(v['auc_ci'][1])}",
            v["tpr_at_fpr"].get("0.001"),
            v["tpr_at_fpr"].get("0.01"),
            v["epsilon_lower_bound"],
            v["n_members"],
            v["n_nonmembers"],
            v.get("notes", ""),
        ]
        for k, v in d["mia"].items()
    ]
    parts.append(
        "<section id='membership'><h2>Membership inference</h2>"
        + (
            _table(
                [
                    "attack",
                    "AUC",
                    "95% CI",
                    "TPR@0.1%FPR",
                    "TPR@1%FPR",
                    "ε lower bound",
                    "members",
                    "non-members",
                    "notes",
                ],
                mia_rows,
            )
            + _png(plot_roc(d["mia"]))
            if mia_rows
            else "<p>No attack was run.</p>"
        )
        + "</section>"
    )
    dist = d["distance"]
    share = dist.get("dcr_share")
    dist_rows = [
        [
            "DCR share (synthetic closer to train than holdout; ideal 0.5)",
            share["share"] if share else None,
        ]
    ]
    for key in ("dcr_synthetic_to_reference", "nndr_synthetic_to_reference"):
        if dist.get(key):
            dist_rows.append(
                [
                    f"{key} p5 / median",
                    f"{_fmt(dist[key]['quantiles']['p5'])} / {_fmt(dist[key]['quantiles']['p50'])}",
                ]
            )
    per_site = dist.get("per_site") or []
    site_table = (
        _table(list(per_site[0].keys()), [list(r.values()) for r in per_site]) if per_site else ""
    )
    parts.append(
        "<section id='distance'><h2>Distance to closest record</h2>"
        + _table(["figure", "value"], dist_rows)
        + site_table
        + _png(plot_dcr(dist))
        + "</section>"
    )
    reid = d.get("reid") or {}
    reid_rows = [
        [
            k,
            v.get("risk"),
            f"{_fmt(v['ci'][0])}–{_fmt(v['ci'][1])}" if "ci" in v else v.get("error", ""),
            v.get("attack_rate"),
            v.get("control_rate"),
        ]
        for k, v in reid.items()
        if isinstance(v, dict)
    ]
    parts.append(
        "<section id='reidentification'><h2>Re-identification risks (anonymeter)</h2>"
        + (
            f"<p class='muted'>computed on: {_fmt(reid.get('source'))}</p>"
            + _table(["risk", "value", "95% CI / error", "attack rate", "control rate"], reid_rows)
            if reid_rows
            else "<p>Not computed.</p>"
        )
        + "</section>"
    )
    fid = d.get("fidelity")
    fid_html = "<p>Not computed (no reference table).</p>"
    if fid and real is not None:
        fid_html = (
            _table(
                ["score", "value"],
                [
                    ["overall", fid["overall"]],
                    ["column shapes", fid["column_shapes"]],
                    ["column pair trends", fid["column_pair_trends"]],
                ],
            )
            + _png(plot_distributions(real, synthetic, schema))
            + _png(plot_correlations(real, synthetic, schema))
        )
    parts.append(f"<section id='fidelity'><h2>Fidelity</h2>{fid_html}</section>")
    util = d.get("utility")
    util_html = "<p>Not computed.</p>"
    if util:
        util_html = (
            f"<p>Target <code>{html.escape(util['target'])}</code>; "
            f"real train {util['n_real_train']}, real test {util['n_real_test']}, "
            f"synthetic train {util['n_synthetic']} rows.</p>"
            + _table(
                ["model", "TRTR acc", "TSTR acc", "acc gap", "TRTR AUC", "TSTR AUC", "AUC gap"],
                [
                    [
                        m["model"],
                        m["trtr_accuracy"],
                        m["tstr_accuracy"],
                        m["accuracy_gap"],
                        m["trtr_auc"],
                        m["tstr_auc"],
                        m["auc_gap"],
                    ]
                    for m in util["models"]
                ],
            )
        )
    parts.append(
        "<section id='utility'><h2>Utility (train on synthetic, test on real)</h2>"
        f"{util_html}</section>"
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in d["notes"]) or "<li>none</li>"
    parts.append(f"<section id='notes'><h2>Notes</h2><ul>{notes}</ul></section>")
    script = (
        "<script>window.addEventListener('load',function(){var im=document.images,ok=0;"
        "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}"
        "document.body.setAttribute('data-images-total',im.length);document.body.setAttribute('data-images-ok',ok);});</script>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>fedsynth audit — {verdict}</title><style>{_CSS}</style></head>"
        f"<body data-verdict='{verdict}'>{''.join(parts)}"
        "<script type='application/json' id='audit-json'>"
        f"{html.escape(json.dumps(d['gate']))}</script>"
        f"{script}</body></html>"
    )


def write_report(
    report: AuditReport,
    out_dir: str | os.PathLike[str],
    *,
    real: pd.DataFrame | None,
    synthetic: pd.DataFrame,
    schema: Schema,
) -> Path:
    """Write ``audit.json`` and ``report.html`` into ``out_dir`` and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "audit.json", report.to_dict())
    atomic_write_text(
        out / "report.html", render_html(report, real=real, synthetic=synthetic, schema=schema)
    )
    return out
