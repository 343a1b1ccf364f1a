"""Reports: `reports/<question>/README.md` with verdicts, figures, grid and provenance; `reports/README.md` index.

Reports are generated from the store, never edited by hand; each says which command, commit and
profile made it. Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from suite import provenance
from suite.claims import require_seeds
from suite.configs import to_dict
from suite.costs import BUDGET_KEYS
from suite.errors import UserError
from suite.questions import CLAIMS, QUESTIONS, Question
from suite.questions.base import PROFILE_DOC, Analysis, GridPoint
from suite.runner import run_id
from suite.store import Store

ANALYSIS_SEED = 20261123
"""The bootstrap's generator seed: reports are reproducible to the digit from the same runs."""

BADGE = {"supported": "✅ supported", "not supported": "❌ not supported", "inconclusive": "➖ inconclusive",
         "depends on": "🔀 depends on"}
COMMITTED_PROFILE = "quick"
"""The profile of the committed `reports/` (`make reproduce`). Runs at another profile, or with `--seeds` or `--set`,
write their report under `results/ablations/` so that they never replace a committed verdict."""


def badge(outcome: str, by: str = "") -> str:
    return f"{BADGE[outcome]} {by}" if outcome == "depends on" else BADGE[outcome]


def budget_text(question: Question, points: list[GridPoint]) -> str:
    """The budget a question ran at: per task, its training lengths (ascending, so the text never depends on set order),
    and the seeds per variant."""
    per_task: dict[str, set] = {}
    for p in points:
        cfg = to_dict(p.spec.train_config)
        key = next((k for k in BUDGET_KEYS if k in cfg), None)
        if key is not None and not cfg.get("random_baseline"):
            per_task.setdefault(p.spec.task, set()).add((cfg[key], key.replace("total_", "")))
    lengths = lambda budgets: " / ".join(f"{n:,} {unit}" for n, unit in sorted(budgets))  # noqa: E731
    seeds = len({p.spec.seed for p in points})
    if len(set(map(frozenset, per_task.values()))) > 1:
        text = "; ".join(f"{t} {lengths(v)}" for t, v in per_task.items())
    else:
        text = lengths(next(iter(per_task.values()))) if per_task else "one pass"
    return f"{text}; {seeds} seeds"


def _load(points: list[GridPoint], store: Store):
    """The grid's stored runs and the ids of those missing. A corrupt record is bad input: it raises, naming the file."""
    ids = [run_id(p.spec) for p in points]
    loaded = store.load(ids)
    if loaded.problems:
        raise UserError("\n".join(str(p) for p in loaded.problems))
    have = set(loaded.runs.run_id) if len(loaded.runs) else set()
    return loaded, [i for i in ids if i not in have]


def missing_runs(points: list[GridPoint], store: Store) -> list[str]:
    return _load(points, store)[1]


def analyse(question: Question, points: list[GridPoint], store: Store) -> tuple[Analysis, pd.DataFrame]:
    """Load the grid's runs from the store and run the question's analysis on them."""
    loaded, missing = _load(points, store)
    if missing:
        raise UserError(f"{len(missing)} of {len(points)} runs of question {question.name!r} are not in the store "
                        f"{store.root} (e.g. {missing[0]}); run `emrl run {question.name}` with the same profile and overrides first.")
    variant = {run_id(p.spec): p.variant for p in points}
    runs = loaded.runs.copy()
    runs["variant"] = runs.run_id.map(variant)
    rng = np.random.default_rng(ANALYSIS_SEED)
    analysis = question.analyse(runs, loaded.rows, rng)
    for v in analysis.verdicts:  # the framework's contract: an outcome comes from verdict checks of the quoted sentence
        if not any(c.kind == "verdict" for c in v.checks):
            raise RuntimeError(f"question {question.name!r}: claim {v.claim.id}'s verdict has no verdict check")
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
          profile: str, command: str, overrides: list[str], ablation: str = "") -> Path:
    """Write the question's report folder: README.md, figures and verdicts.json — as a unit.

    Everything is written to a staging folder beside `out_dir`, which then takes the old folder's place, so a failure
    half-way (a full disk, a blocked file) leaves the previous report whole and no stray file. `ablation`: for a report
    outside the committed folder, the path of the committed report it departs from.
    """
    final = out_dir
    final.parent.mkdir(parents=True, exist_ok=True)
    out_dir = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".staging"))
    try:
        _write_folder(question, analysis, runs, points, out_dir, profile=profile, command=command, overrides=overrides,
                      ablation=ablation)
        os.chmod(out_dir, 0o755)  # mkdtemp makes it 0700; reports are meant to be read
        _replace_folder(out_dir, final)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return final / "README.md"


def _replace_folder(new: Path, final: Path) -> None:
    """Put `new` where `final` is; the old folder is removed only once the new one is in place."""
    if not final.exists():
        os.rename(new, final)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.rename(final, old)
    try:
        os.rename(new, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old)


def _write_folder(question: Question, analysis: Analysis, runs: pd.DataFrame, points: list[GridPoint], out_dir: Path, *,
                  profile: str, command: str, overrides: list[str], ablation: str) -> None:
    code = provenance.code()
    commit = (code["commit"] or "unknown")[:12] + (" (dirty)" if code["dirty"] else "")
    date = dt.date.today().isoformat()
    for name, fig in analysis.figures.items():
        _save_figure(fig, out_dir / name)

    budget = question.budgets[profile]
    seeds = sorted({p.spec.seed for p in points})
    status = runs.status.value_counts().to_dict()
    wall = runs.wall_time_s.sum()

    budget_str = budget_text(question, points)
    md = [f"# {question.title}", ""]
    if ablation:
        md += [f"> **Ablation report** — not the committed verdict. Profile `{profile}`"
               + (f", overrides {', '.join(f'`{o}`' for o in overrides)}" if overrides else "")
               + (f", {len(seeds)} seeds per variant" if len(seeds) != budget.seeds else "")
               + f". The committed report is [{ablation}]({ablation}).", ""]
    md += [f"Question `{question.name}` — {question.description}", ""]
    md += ["| claim | verdict | summary |", "|---|---|---|"]
    md += [f"| [{v.claim.id}](#{v.claim.id.lower()}) | {badge(v.outcome, v.by)} | {_cell(v.summary)} |" for v in analysis.verdicts]
    md += ["", f"Profile **{profile}** ({PROFILE_DOC[profile]}), budget {budget_str}, "
               f"{len(points)} runs ({', '.join(f'{n} {s}' for s, n in sorted(status.items()))}), "
               f"{wall / 60:.1f} CPU-minutes of training.", ""]
    for v in analysis.verdicts:
        c = v.claim
        md += [f"## {c.id}", ""]
        if c.quote:
            md += [f"> “{c.quote}”", ">", f"> — {c.source}", ""]
        md += [f"*What the suite tests:* {c.statement}", "",
               f"**Verdict: {badge(v.outcome, v.by)}** — {v.summary}", ""]
        if v.outcome in ("inconclusive", "depends on") and v.decide:
            md += [f"*What would decide it:* {v.decide}", ""]
        md += [f"*Rule (fixed in code before the data):* {c.rule}", ""]
        if v.checks:
            md += ["Checks — only *verdict* checks, each testing the quoted words, move the verdict; *observations* are "
                   "reported beside it:", "", markdown_table(check_rows(v.checks))]
        if c.knob is not None:
            k = c.knob
            md += [f"*Sensitivity* — open knob **{k.name}** (the paper: {k.paper}; pre-registered values "
                   f"{', '.join(f'{x:g}' if isinstance(x, float) else str(x) for x in k.values)}): "
                   + (v.sensitivity or (f"run at {', '.join(k.run_at)}" if profile in k.run_at else
                      f"not run at the `{profile}` profile; planned at `{c.decides}`.")), ""]
        if v.paper:
            md += [f"*The paper's numbers beside ours:* {v.paper}", ""]
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
           f"- budget: {budget_str}",
           f"- overrides: {', '.join(f'`{o}`' for o in overrides) if overrides else 'none'}", "",
           "Algorithm and training-loop settings that differ between runs of this grid (every other field is the same in all "
           "runs; — where a field does not apply):", "",
           knob_table(points),
           "## Provenance", "",
           f"- command: `{command}`", f"- commit: `{commit}`", f"- date: {date}",
           "- packages: " + ", ".join(f"{k} {v}" for k, v in provenance.packages().items() if k != "platform"), "",
           "## Cite this report", "", "```bibtex", bibtex(question, profile, code, date), "```", ""]
    _write_text(out_dir / "README.md", "\n".join(md))
    verdicts = {
        "question": question.name, "title": question.title, "profile": profile, "commit": code["commit"],
        "dirty": code["dirty"], "date": date, "overrides": overrides,
        "budget": budget_str,
        "verdicts": [{"claim": v.claim.id, "statement": v.claim.statement, "quote": v.claim.quote, "source": v.claim.source,
                      "outcome": v.outcome, "by": v.by, "summary": v.summary, "decide": v.decide,
                      "budget_limited": v.budget_limited,
                      "checks": [{"name": c.name, "kind": c.kind, "words": c.words, "group": c.group, "outcome": c.outcome}
                                 for c in v.checks]}
                     for v in analysis.verdicts],
    }
    _write_text(out_dir / "verdicts.json", json.dumps(verdicts, indent=1, ensure_ascii=False) + "\n")


def check_rows(checks) -> list[dict]:
    """One row per check; the "at" column (knob value or sub-claim) shows "—" where a check belongs to no group."""
    rows = [c.row() for c in checks]
    if any("at" in r for r in rows):
        rows = [{k: r.get(k, "—") for k in ("check", "kind", "tests the words", "at", "statistic [95% CI]", "outcome",
                                             "what would decide it")} for r in rows]
    return rows


def knob_table(points: list[GridPoint]) -> str:
    """The algorithm and training-loop fields whose values differ between the grid's runs, one row per variant and task."""
    cfgs = [(p.variant, p.spec.task, {**{f"{p.spec.algo}.{k}": v for k, v in to_dict(p.spec.algo_config).items()},
                                      **{f"train.{k}": v for k, v in to_dict(p.spec.train_config).items()}})
            for p in points]
    keys = sorted({k for _, _, c in cfgs for k in c})
    # a field varies when the runs that have it do not all agree (an algorithm's own fields are not "varying" merely
    # because another algorithm of the grid lacks them)
    varying = [k for k in keys if len({json.dumps(c[k], sort_keys=True) for _, _, c in cfgs if k in c}) > 1]
    rows, seen = [], set()
    for variant, task, c in cfgs:
        key = (variant, task)
        if key in seen:
            continue
        seen.add(key)
        # a field set to None reads "none" (a table column of numbers and None would print it as nan)
        rows.append({"variant": variant, "task": task, **{k: "none" if c.get(k, "—") is None else c.get(k, "—") for k in varying}})
    if not varying:
        return "_(every run uses the same training-loop settings)_\n"
    return markdown_table(rows)


def bibtex(question: Question, profile: str, code: dict, date: str) -> str:
    """This report's entry, then the entries (from REFERENCES.bib) of every work its claims quote."""
    commit = (code["commit"] or "unknown")[:7]
    key = f"emrl_{question.name.replace('-', '_')}_{commit}"
    cited = cited_keys(question)
    entries = references()
    own = (f"@misc{{{key},\n  title = {{emrl report: {question.title}}},\n  author = {{{{emrl contributors}}}},\n"
           f"  year = {{{date[:4]}}},\n  note = {{Question {question.name}, profile {profile}, commit {commit}, generated {date}; "
           f"tests claims of {', '.join(cited) or 'no cited work'}}},\n  howpublished = {{reports/{question.name}/README.md}}\n}}")
    return "\n\n".join([own, *(entries[k] for k in cited if k in entries)])


def cited_keys(question: Question) -> list[str]:
    """REFERENCES keys in the sources of the question's claims (`[PMPO] §5.1` -> PMPO), in order of first mention."""
    keys = [k for c in question.claims for k in re.findall(r"\[([^\]\s]+)\]", c.source)]
    return list(dict.fromkeys(keys))


def references() -> dict[str, str]:
    """REFERENCES.bib's entries by key (the keys of REFERENCES.md)."""
    text = (provenance.ROOT / "REFERENCES.bib").read_text()
    entries = re.findall(r"^@\w+\{([^,]+),.*?^\}", text, flags=re.S | re.M)
    bodies = re.findall(r"^(@\w+\{[^,]+,.*?^\})", text, flags=re.S | re.M)
    return dict(zip(entries, bodies))


def write_index(reports_root: Path) -> Path:
    """`reports/README.md`: every claim's verdict in one table, built from each folder's verdicts.json."""
    found = {}
    for path in sorted(reports_root.glob("[!.]*/verdicts.json")):  # not a staging folder (see `write`)
        data = json.loads(path.read_text())
        for v in data["verdicts"]:
            found[v["claim"]] = (data, v)
    lines = ["# emrl — every claim's verdict", "",
             "Generated by `emrl report` from the per-question reports; never edited by hand. Each row links to the report "
             "with the quoted sentence, the rule, the checks, the numbers, the figures and the deviations from the paper. "
             "*Budget-limited*: a verdict check is still open and its CI would shrink with more seeds or steps (the report "
             "says how many). Sources are keys of [REFERENCES.md](../REFERENCES.md).", "",
             "| claim | question | verdict | the paper's sentence | budget | budget-limited | profile | commit |",
             "|---|---|---|---|---|---|---|---|"]
    for cid, (q, c) in CLAIMS.items():
        quote = f"“{c.quote}” ({c.source})" if c.quote else c.statement
        if cid in found:
            data, v = found[cid]
            commit = (data["commit"] or "unknown")[:7] + ("+dirty" if data["dirty"] else "")
            limited = "yes" if v.get("budget_limited") else "no"
            lines.append(f"| {cid} | [{data['question']}]({data['question']}/README.md#{cid.lower()}) | "
                         f"{badge(v['outcome'], v.get('by', ''))} | {_cell(quote)} | {_cell(data.get('budget', '—'))} | {limited} | "
                         f"{data['profile']} | `{commit}` |")
        else:
            lines.append(f"| {cid} | {q.name} | not yet run | {_cell(quote)} | — | — | — | — |")
    pending = [q for q in QUESTIONS if not (reports_root / q / "verdicts.json").exists()]
    if pending:
        lines += ["", f"Questions without a report yet: {', '.join(pending)}."]
    path = reports_root / "README.md"
    _write_text(path, "\n".join(lines) + "\n")
    return path
