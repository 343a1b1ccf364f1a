"""Reports: `reports/<question>/README.md` with verdicts, figures, grid and provenance; `reports/README.md` index.

Reports are generated from the store, never edited by hand; each says which command, commit and
profile made it. Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from suite import provenance
from suite.claims import require_seeds
from suite.configs import to_dict
from suite.errors import UserError
from suite.questions import CLAIMS, QUESTIONS, Question
from suite.questions.base import PROFILE_DOC, Analysis, GridPoint
from suite.runner import run_id
from suite.store import Store

ANALYSIS_SEED = 20261123
"""The bootstrap's generator seed: reports are reproducible to the digit from the same runs."""

BADGE = {"supported": "✅ supported", "not supported": "❌ not supported", "inconclusive": "➖ inconclusive"}


def analyse(question: Question, points: list[GridPoint], store: Store) -> tuple[Analysis, pd.DataFrame]:
    """Load the grid's runs from the store and run the question's analysis on them."""
    ids = [run_id(p.spec) for p in points]
    loaded = store.load(ids)
    if loaded.problems:
        raise UserError("\n".join(str(p) for p in loaded.problems))
    have = set(loaded.runs.run_id) if len(loaded.runs) else set()
    missing = [i for i in ids if i not in have]
    if missing:
        raise UserError(f"{len(missing)} of {len(ids)} runs of question {question.name!r} are not in the store "
                        f"{store.root} (e.g. {missing[0]}); run `emrl run {question.name}` with the same profile and overrides first.")
    variant = {run_id(p.spec): p.variant for p in points}
    runs = loaded.runs.copy()
    runs["variant"] = runs.run_id.map(variant)
    rng = np.random.default_rng(ANALYSIS_SEED)
    analysis = question.analyse(runs, loaded.rows, rng)
    min_seeds = int(runs.groupby(["task", "variant"]).size().min())
    analysis.verdicts = [require_seeds(v, min_seeds) for v in analysis.verdicts]
    return analysis, runs


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; reports are meant to be read
    os.replace(tmp, path)


def _save_figure(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    fig.savefig(tmp, format="png")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)


def markdown_table(rows: list[dict] | pd.DataFrame) -> str:
    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    if df.empty:
        return "_(no rows)_\n"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in r.tolist()) + " |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def write(question: Question, analysis: Analysis, runs: pd.DataFrame, points: list[GridPoint], out_dir: Path, *,
          profile: str, command: str, overrides: list[str]) -> Path:
    """Write the question's report folder: README.md, figures and verdicts.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    code = provenance.code()
    commit = (code["commit"] or "unknown")[:12] + (" (dirty)" if code["dirty"] else "")
    date = dt.date.today().isoformat()
    for name, fig in analysis.figures.items():
        _save_figure(fig, out_dir / name)

    budget = question.budgets[profile]
    train_cfgs = {json.dumps(to_dict(p.spec.train_config), sort_keys=True) for p in points}
    seeds = sorted({p.spec.seed for p in points})
    status = runs.status.value_counts().to_dict()
    wall = runs.wall_time_s.sum()

    md = [f"# {question.title}", "", f"Question `{question.name}` — {question.description}", ""]
    md += ["| claim | verdict | summary |", "|---|---|---|"]
    md += [f"| [{v.claim.id}](#{v.claim.id.lower()}) | {BADGE[v.outcome]} | {_cell(v.summary)} |" for v in analysis.verdicts]
    md += ["", f"Profile **{profile}** ({PROFILE_DOC[profile]}), {len(seeds)} seeds per variant, "
               f"{len(points)} runs ({', '.join(f'{n} {s}' for s, n in sorted(status.items()))}), "
               f"{wall / 60:.1f} CPU-minutes of training.", ""]
    for v in analysis.verdicts:
        c = v.claim
        md += [f"## {c.id}", "", f"> {c.statement}", "", f"*Source:* `{c.source}`", "",
               f"**Verdict: {BADGE[v.outcome]}** — {v.summary}", "", f"*Rule (fixed in code before the data):* {c.rule}", ""]
        if v.paper:
            md += [f"*The paper's numbers:* {v.paper}", ""]
        if v.table:
            md += [markdown_table(v.table)]
        if c.deviations:
            md += ["Deviations from the paper:", "", markdown_table([dataclasses.asdict(d) for d in c.deviations])]
    if analysis.figures:
        md += ["## Figures", ""]
        md += [f"![{name}]({name})" + "\n" for name in analysis.figures]
    for title, df in analysis.tables:
        md += [f"## {title}", "", markdown_table(df)]
    for note in analysis.notes:
        md += [f"> Note: {note}", ""]
    md += ["## Grid and budget", "",
           f"- tasks: {', '.join(f'`{t}`' for t in question.tasks)}",
           f"- variants: {', '.join(sorted({p.variant for p in points}, key=[p.variant for p in points].index))}",
           f"- seeds: {seeds[0]}–{seeds[-1]} ({len(seeds)} per variant; the profile's default is {budget.seeds})",
           "- training loop: " + "; ".join(f"`{c}`" for c in sorted(train_cfgs)),
           f"- overrides: {', '.join(f'`{o}`' for o in overrides) if overrides else 'none'}", "",
           "## Provenance", "",
           f"- command: `{command}`", f"- commit: `{commit}`", f"- date: {date}",
           "- packages: " + ", ".join(f"{k} {v}" for k, v in provenance.packages().items() if k != "platform"), "",
           "## Cite this report", "", "```bibtex", bibtex(question, profile, code, date), "```", ""]
    _write_text(out_dir / "README.md", "\n".join(md))
    verdicts = {
        "question": question.name, "title": question.title, "profile": profile, "commit": code["commit"],
        "dirty": code["dirty"], "date": date, "overrides": overrides,
        "verdicts": [{"claim": v.claim.id, "statement": v.claim.statement, "outcome": v.outcome, "summary": v.summary} for v in analysis.verdicts],
    }
    _write_text(out_dir / "verdicts.json", json.dumps(verdicts, indent=1, ensure_ascii=False) + "\n")
    return out_dir / "README.md"


def bibtex(question: Question, profile: str, code: dict, date: str) -> str:
    commit = (code["commit"] or "unknown")[:7]
    key = f"emrl_{question.name.replace('-', '_')}_{commit}"
    return (f"@misc{{{key},\n  title = {{emrl report: {question.title}}},\n  author = {{{{emrl contributors}}}},\n"
            f"  year = {{{date[:4]}}},\n  note = {{Question {question.name}, profile {profile}, commit {commit}, generated {date}}},\n"
            f"  howpublished = {{reports/{question.name}/README.md}}\n}}")


def write_index(reports_root: Path) -> Path:
    """`reports/README.md`: every claim's verdict in one table, built from each folder's verdicts.json."""
    found = {}
    for path in sorted(reports_root.glob("*/verdicts.json")):
        data = json.loads(path.read_text())
        for v in data["verdicts"]:
            found[v["claim"]] = (data, v)
    lines = ["# emrl — every claim's verdict", "",
             "Generated by `emrl report` from the per-question reports; never edited by hand. "
             "Each row links to the report with the rule, the numbers, the figures and the deviations from the paper.", "",
             "| claim | question | verdict | statement | profile | commit |", "|---|---|---|---|---|---|"]
    for cid, (q, c) in CLAIMS.items():
        if cid in found:
            data, v = found[cid]
            commit = (data["commit"] or "unknown")[:7] + ("+dirty" if data["dirty"] else "")
            lines.append(f"| {cid} | [{data['question']}]({data['question']}/README.md#{cid.lower()}) | {BADGE[v['outcome']]} | "
                         f"{_cell(c.statement)} | {data['profile']} | `{commit}` |")
        else:
            lines.append(f"| {cid} | {q.name} | not yet run | {_cell(c.statement)} | — | — |")
    pending = [q for q in QUESTIONS if not (reports_root / q / "verdicts.json").exists()]
    if pending:
        lines += ["", f"Questions without a report yet: {', '.join(pending)}."]
    path = reports_root / "README.md"
    _write_text(path, "\n".join(lines) + "\n")
    return path
