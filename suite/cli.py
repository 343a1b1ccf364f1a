"""`emrl` / `python -m suite`: list, run, report, reproduce, show.

Bad input (unknown name, invalid value, malformed override, corrupt results file) prints what was
wrong and what is allowed, and exits with 2 having written nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from algorithms.config import ConfigError

EXIT_BAD_INPUT = 2
DEFAULT_RESULTS = os.environ.get("EMRL_RESULTS", "results")
DEFAULT_REPORTS = "reports"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors are bad input too: exit 2, nothing written
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"emrl: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="emrl", description="Reproduce or refute, with evidence, the claims of EM-style RL fine-tuning papers.")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="results store folder (default: %(default)s, env EMRL_RESULTS)")
    p.add_argument("--reports", default=None,
                   help=f"reports folder (default: {DEFAULT_REPORTS}, env EMRL_REPORTS). Without it, only a run of the committed "
                        "profile (quick) with no --seeds and no --set writes there; any other run writes an ablation report "
                        "under <results>/ablations/")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = sub.add_parser("list", help="list questions, claims, tasks, algorithms or profiles")
    ls.add_argument("what", nargs="?", default="all", choices=["all", "questions", "claims", "tasks", "algorithms", "profiles"])
    ls.add_argument("--fields", action="store_true", help="also list each config's fields with their descriptions")

    run = sub.add_parser("run", help="run a question's grid (skipping stored runs) and write its report")
    run.add_argument("question", help="a question name or a claim ID (e.g. bandits-kl or B3)")
    _grid_args(run)
    run.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: all cores)")
    run.add_argument("--no-report", action="store_true", help="train only; do not write the report")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    rep = sub.add_parser("report", help="re-analyse stored runs and write reports (all questions if none given)")
    rep.add_argument("question", nargs="?", help="a question name or claim ID")
    _grid_args(rep)

    rpr = sub.add_parser("reproduce", help="run every question at a profile and write every report")
    rpr.add_argument("--profile", default="quick", help="smoke | quick | paper (default: %(default)s)")
    rpr.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: all cores)")
    rpr.add_argument("--quiet", action="store_true", help="no progress bar")

    show = sub.add_parser("show", help="show one stored run: config, status, provenance, final metrics")
    show.add_argument("run_id", help="a run id or a unique prefix of one")
    return p


def _grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="quick", help="smoke | quick | paper (default: %(default)s)")
    p.add_argument("--seeds", type=_positive_int, default=None, help="seeds per variant (default: the profile's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field for every run that has it: task.*, train.*, algo.*, or <algorithm>.*")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line the reports record (also when main is called with an explicit argv)
    # A reports folder named by the user (flag or environment) is written as asked; the default one holds the committed
    # reports, which only a canonical run (committed profile, no --seeds, no --set) may replace.
    args.reports_chosen = args.reports is not None or "EMRL_REPORTS" in os.environ
    if args.reports is None:
        args.reports = os.environ.get("EMRL_REPORTS", DEFAULT_REPORTS)
    # Artifacts that runs share (C6's offline dataset, `tasks/control_offline.py`) live under the results store;
    # train functions see only run specs, so the store's root reaches them, and the spawned workers, by the environment.
    previous = os.environ.get("EMRL_RESULTS")
    os.environ["EMRL_RESULTS"] = str(args.results)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"emrl: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if previous is None:
            os.environ.pop("EMRL_RESULTS", None)
        else:
            os.environ["EMRL_RESULTS"] = previous


# ------------------------------------------------------------------------------------------------------- commands


def _plan(args, question_name: str):
    from suite import overrides
    from suite.questions import check_profile, get_question

    question = get_question(question_name)
    profile = check_profile(args.profile)
    points = question.grid(profile, seeds=args.seeds)
    points = overrides.apply(points, args.overrides)
    return question, profile, points


def _report_dir(args, question, points) -> Path:
    """The reports folder for a canonical run; an ablation (another profile, --seeds or --set) goes under results/."""
    from suite.report import COMMITTED_PROFILE

    canonical = not args.overrides and args.seeds is None and (args.profile == COMMITTED_PROFILE or args.reports_chosen)
    if canonical:
        return Path(args.reports) / question.name
    from suite.configs import content_hash

    tag = content_hash({"overrides": args.overrides, "seeds": args.seeds, "profile": args.profile})[:8]
    return Path(args.results) / "ablations" / f"{question.name}-{args.profile}-{tag}"


def _command_line(args) -> str:
    return "emrl " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))


def cmd_run(args) -> int:
    from suite.runner import execute
    from suite.store import Store

    question, profile, points = _plan(args, args.question)
    store = Store(args.results)
    summary = execute(points, store, workers=args.workers, progress=not args.quiet, label=question.name)
    done = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing new"
    print(f"{question.name} [{profile}]: {summary.total} runs, {summary.skipped} already stored, trained: {done} "
          f"({summary.wall_s:.1f} s)")
    if args.no_report:
        return 0
    return _report(args, question, profile, points, store)


def _report(args, question, profile, points, store, analysed=None) -> int:
    from suite import report

    analysis, runs = analysed or report.analyse(question, points, store)
    out = _report_dir(args, question, points)
    baseline = Path(args.reports) / question.name / "README.md"
    ablation = "" if out.parent == Path(args.reports) else os.path.relpath(baseline, out)
    path = report.write(question, analysis, runs, points, out, profile=profile, command=_command_line(args),
                        overrides=args.overrides, ablation=ablation)
    if out.parent == Path(args.reports):
        report.write_index(Path(args.reports))
    for v in analysis.verdicts:
        print(f"  {v.claim.id}: {v.label} — {v.summary}")
    print(f"  report: {path}" + ("  (an ablation: the committed report is untouched)" if ablation else ""))
    return 0


def cmd_report(args) -> int:
    from suite.questions import QUESTIONS
    from suite.store import Store

    from suite import report

    store = Store(args.results)
    names = [args.question] if args.question else list(QUESTIONS)
    plans = [_plan(args, name) for name in names]
    # every question is analysed before any report is written: a missing or corrupt run exits 2 having written nothing
    analysed = [report.analyse(question, points, store) for question, _, points in plans]
    for (question, profile, points), result in zip(plans, analysed):
        _report(args, question, profile, points, store, analysed=result)
    if not args.question and (args.profile == report.COMMITTED_PROFILE or args.reports_chosen):
        report.write_index(Path(args.reports))
    return 0


def cmd_reproduce(args) -> int:
    """Every question at one profile: one sweep over the union of their grids (one process pool, no
    idle tail between questions; runs shared by several questions train once), then every report."""
    from suite.questions import QUESTIONS
    from suite.runner import execute
    from suite.store import Store

    args = argparse.Namespace(**{**vars(args), "seeds": None, "overrides": []})
    store = Store(args.results)
    plans = [_plan(args, name) for name in QUESTIONS]
    union = list({p.spec: p for _, _, points in plans for p in points}.values())
    summary = execute(union, store, workers=args.workers, progress=not args.quiet, label=f"reproduce [{args.profile}]")
    done = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing new"
    print(f"reproduce [{args.profile}]: {summary.total} runs, {summary.skipped} already stored, trained: {done} ({summary.wall_s:.1f} s)")
    for question, profile, points in plans:
        _report(args, question, profile, points, store)
    return 0


def cmd_show(args) -> int:
    from suite.store import Store

    store = Store(args.results)
    matches = [i for i in store.run_ids() if i.startswith(args.run_id)]
    if len(matches) != 1:
        if not matches:
            raise ConfigError(f"no stored run has an id starting with {args.run_id!r} in {store.root}.")
        raise ConfigError(f"run id prefix {args.run_id!r} is ambiguous: {', '.join(matches[:10])}.")
    record = store.read(matches[0])
    print(f"run {record['run_id']}  status: {record['status']}  wall: {record['wall_time_s']:.2f} s  started: {record['started_at']}")
    if record.get("diverged"):
        print(f"diverged at step {record['diverged']['step']}: {record['diverged']['reason']}")
    if record.get("error"):
        print(record["error"])
    print(f"code: {record['code']}")
    print("config: " + json.dumps(record["config"], indent=1))
    rows = record["rows"]
    final: dict[str, tuple[int, float]] = {}
    for step, metric, value in zip(rows["step"], rows["metric"], rows["value"]):
        final[metric] = (step, value)
    print("last logged values:")
    for metric, (step, value) in sorted(final.items()):
        print(f"  {metric:<24} {value!s:>14}  (step {step})")
    return 0


def cmd_list(args) -> int:
    import algorithms
    import tasks
    from algorithms.base import Method
    from suite.questions import CLAIMS, PROFILES, QUESTIONS
    from suite.questions.base import PROFILE_DOC

    what = args.what
    if what in ("all", "questions"):
        print("questions:")
        for q in QUESTIONS.values():
            print(f"  {q.name:<22} claims {', '.join(c.id for c in q.claims):<10} {q.title}")
    if what in ("all", "claims"):
        print("claims:")
        for cid, (q, c) in CLAIMS.items():
            print(f"  {cid:<4} [{q.name}] {c.statement}")
    if what in ("all", "tasks"):
        print("tasks:")
        for t in tasks.TASKS.values():
            print(f"  {t.name:<22} family {t.family.name:<8} {t.description}")
            if args.fields:
                _fields(t.config)
                try:
                    _fields(t.family.train_config(), prefix="train.")
                except ConfigError as exc:
                    print(f"      (training loop: {exc})")
    if what in ("all", "algorithms"):
        print("algorithms:")
        for name, cls in sorted(algorithms.REGISTRY.items()):
            doc = cls.__doc__ if cls.__doc__ and cls.__doc__ is not Method.__doc__ else sys.modules[cls.__module__].__doc__
            print(f"  {name:<22} {(doc or '').strip().splitlines()[0]}")
            if args.fields:
                _fields(cls.Config(), prefix="algo.")
    if what in ("all", "profiles"):
        print("profiles:")
        for p in PROFILES:
            print(f"  {p:<8} {PROFILE_DOC[p]}")
    return 0


def _fields(cfg, prefix: str = "task.") -> None:
    for f in dataclasses.fields(cfg):
        print(f"      {prefix}{f.name} = {getattr(cfg, f.name)!r}  — {f.metadata.get('doc', '')}")


COMMANDS = {"list": cmd_list, "run": cmd_run, "report": cmd_report, "reproduce": cmd_reproduce, "show": cmd_show}

if __name__ == "__main__":
    sys.exit(main())
