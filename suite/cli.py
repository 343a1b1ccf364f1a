"""`emrl` / `python -m suite`: list, run, report, reproduce, show.

Bad input (unknown name, invalid value, malformed override, corrupt results file) prints what was
wrong and what is allowed, and exits with 2 having written nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from algorithms.config import ConfigError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
MAX_SEEDS = 1000  # more than any claim needs (suite.analysis.AFFORDABLE_SEEDS); a larger number is a typo
STATUSES = ("ok", "diverged", "failed")  # suite.store.STATUSES, repeated so that parsing imports nothing heavy
BACKENDS = ("process", "ray")  # suite.runner.BACKENDS, likewise
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


def _seeds(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"{value} is above the maximum of {MAX_SEEDS} seeds per variant")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors are bad input too: exit 2, nothing written
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"emrl: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="emrl", description="Reproduce or refute, with evidence, the claims of EM-style RL fine-tuning papers.",
                epilog="Commands that read runs (report, runs, export, show) need a filled results store: `make reproduce` "
                       "or `emrl run <question>` fills it. Only a run at the committed profile (quick) with no --seeds and "
                       "no --set rewrites reports/.")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="results store folder (default: %(default)s, env EMRL_RESULTS)")
    p.add_argument("--reports", default=None,
                   help=f"reports folder (default: {DEFAULT_REPORTS}, env EMRL_REPORTS). Without it, only a run of the committed "
                        "profile (quick) with no --seeds and no --set writes there; any other run writes an ablation report "
                        "under <results>/ablations/")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = sub.add_parser("list", help="list questions, claims, tasks, algorithms or profiles")
    ls.add_argument("what", nargs="?", default="all", choices=["all", "questions", "claims", "tasks", "algorithms", "profiles"])
    ls.add_argument("--fields", action="store_true", help="also list each config's fields as you type them in --set, with defaults")

    run = sub.add_parser("run", help="run a question's grid (skipping stored runs) and write its report")
    run.add_argument("question", help="a question name or a claim ID (e.g. bandits-kl or B3)")
    _grid_args(run)
    _backend_args(run)
    run.add_argument("--no-report", action="store_true", help="train only; do not write the report")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--dry-run", action="store_true", help="print the grid's runs, how many are stored and the estimated "
                                                           "CPU-hours per family; train and write nothing")

    rep = sub.add_parser("report", help="re-analyse stored runs and rewrite reports (all questions if none given); "
                                        "names the questions whose runs are not stored yet")
    rep.add_argument("question", nargs="?", help="a question name or claim ID")
    _grid_args(rep)

    rpr = sub.add_parser("reproduce", help="run every question at a profile and write every report")
    rpr.add_argument("--profile", default="quick", help="smoke | quick | standard | paper (default: %(default)s)")
    rpr.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N: where the control, Atari and LM families "
                                                   "train (default: as configured, the CPU); bandits and theory stay on the CPU")
    _backend_args(rpr)
    rpr.add_argument("--quiet", action="store_true", help="no progress display")
    rpr.add_argument("--dry-run", action="store_true", help="print every question's runs, how many are stored and the "
                                                           "estimated CPU-hours per family; train and write nothing")

    runs = sub.add_parser("runs", help="a table of stored runs: id, question, variant, task, seed, status, steps, wall time, date")
    runs.add_argument("question", nargs="?", help="only the runs of this question or claim ID")
    runs.add_argument("--status", choices=STATUSES, help="only runs with this status")

    exp = sub.add_parser("export", help="write the stored runs' long-format rows (one row per logged value) to one file")
    exp.add_argument("question", nargs="?", help="only the runs of this question or claim ID (default: every stored run)")
    exp.add_argument("--format", choices=["csv", "parquet"], default="csv", help="csv, or parquet (needs pyarrow; default: %(default)s)")
    exp.add_argument("--output", default=None, help="file to write (default: <results>/exports/<question or all>.<format>); "
                                                    "an existing file is never replaced")

    show = sub.add_parser("show", help="show one stored run: question, variant, config, status, provenance, final metrics")
    show.add_argument("run_id", help="a run id or a unique prefix of one (`emrl runs` lists them)")
    return p


def _grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="quick", help="smoke | quick | standard | paper (default: %(default)s)")
    p.add_argument("--seeds", type=_seeds, default=None, help="seeds per variant (default: the profile's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field for every run that has it: task.*, train.*, algo.*, or <algorithm>.*")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N: where the control, Atari and LM families train "
                                                  "(default: as configured, the CPU); a CUDA run is another run than a CPU one")


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="worker processes, or the CPUs of a local Ray instance (default: all cores)")
    p.add_argument("--backend", choices=BACKENDS, default="process",
                   help="process: a local process pool; ray: Ray tasks, on a local instance or the cluster at --address "
                        "(default: %(default)s)")
    p.add_argument("--address", default=None, help="with --backend ray: a running Ray cluster's address (e.g. 10.0.0.1:6379 "
                                                  "or auto); without it a local Ray instance is started")


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
        return _error(str(exc))
    except BrokenPipeError:  # `emrl runs | head`: the reader stopped listening; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a read-only folder, a file where a folder should be, a full disk: named by path
        where = f" {exc.filename}" if exc.filename else ""
        return _error(f"cannot use{where}: {exc.strerror or exc}. Stored runs are kept; fix the path and run again.")
    except KeyboardInterrupt:
        print("emrl: interrupted. Every finished run is stored; the same command resumes where this one stopped.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is None:
            os.environ.pop("EMRL_RESULTS", None)
        else:
            os.environ["EMRL_RESULTS"] = previous


def _error(message: str) -> int:
    print(f"emrl: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


# ------------------------------------------------------------------------------------------------------- commands


def _plan(args, question_name: str):
    """The question, profile and grid a command runs on. Names, the profile and the overrides are checked against the
    catalogue first, so a typo is refused before torch and the task families are imported."""
    from suite import catalogue, overrides
    from suite.profiles import check_defined, check_profile

    entry = catalogue.question(question_name)
    profile = check_defined(entry["name"], check_profile(args.profile), entry["profiles"])
    catalogue.check_overrides(entry, overrides.parse(args.overrides))
    device = _device(args)
    from suite.questions import get_question

    question = get_question(entry["name"])
    points = question.grid(profile, seeds=args.seeds)
    points = question.adjust(overrides.apply(points, args.overrides))
    if device is not None:  # a question of one family must be able to use it; a sweep of all of them moves what can
        from suite import devices

        points = devices.apply(points, devices.resolve(device[0], *_backend(args)), require=bool(getattr(args, "question", None)))
    return question, profile, points


def _device(args) -> tuple[str, int | None] | None:
    """The parsed --device (None when not given), checked with the backend: an address is for Ray only, and a device
    index for the process pool only (Ray places GPUs)."""
    backend, address, _ = _backend(args)
    if address is not None and backend != "ray":
        raise ConfigError("--address is for --backend ray: give both, or neither.")
    if getattr(args, "device", None) is None:
        return None
    from suite import devices

    kind, index = devices.parse(args.device)
    if index is not None and backend == "ray":
        raise ConfigError(f"--device {args.device} with --backend ray: Ray chooses each task's GPU; give --device cuda.")
    return kind, index


def _backend(args) -> tuple[str, str | None, int | None]:
    return getattr(args, "backend", "process"), getattr(args, "address", None), getattr(args, "workers", None)


def _execute(args, points, label: str):
    """Train `points` on the chosen backend, having refused a CUDA run on a machine without CUDA (the process pool)."""
    from suite.runner import execute
    from suite.store import Store

    backend, address, workers = _backend(args)
    index = (_device(args) or ("cpu", None))[1]
    if backend == "process":
        from suite import devices

        devices.check_local(points, index)
    return execute(points, Store(args.results), workers=workers, progress=not args.quiet, label=label, backend=backend,
                   address=address, gpu=index)


def _report_dir(args, question, points) -> Path:
    """The reports folder for a canonical run; an ablation (another profile, --seeds or --set) goes under results/."""
    from suite.report import COMMITTED_PROFILE

    from suite.devices import on_gpu

    on_cpu = not any(on_gpu(p.spec) for p in points)  # the committed reports' device
    canonical = (not args.overrides and args.seeds is None and on_cpu
                 and (args.profile == COMMITTED_PROFILE or args.reports_chosen))
    if canonical:
        return Path(args.reports) / question.name
    from suite.configs import content_hash

    key = {"overrides": args.overrides, "seeds": args.seeds, "profile": args.profile}
    tag = content_hash(key if on_cpu else {**key, "device": "cuda"})[:8]  # CPU ablations keep their folders
    return Path(args.results) / "ablations" / f"{question.name}-{args.profile}-{tag}"


def _command_line(args) -> str:
    return "emrl " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))


def cmd_run(args) -> int:
    question, profile, points = _plan(args, args.question)  # first: bad input is refused before the heavy imports
    if args.dry_run:
        return _dry_run(args, f"{question.name} [{profile}]", points)
    from suite.store import Store

    store = Store(args.results)
    summary = _execute(args, points, question.name)
    done = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing new"
    print(f"{question.name} [{profile}]: {summary.total} runs, {summary.skipped} already stored, trained: {done} "
          f"({summary.wall_s:.1f} s)")
    if summary.all_failed:
        print(f"emrl: every one of the {summary.trained} runs trained failed; `emrl runs {question.name} --status failed` "
              "lists them and `emrl show <id>` prints a traceback.", file=sys.stderr)
        return EXIT_FAILED
    if args.no_report:
        return 0
    return _report(args, question, profile, points, store)


def _dry_run(args, label: str, points) -> int:
    """What the sweep would train and cost (`suite.costs`), having trained and written nothing."""
    from suite import costs
    from suite.runner import pending
    from suite.store import Store
    from tasks import get_task

    groups, _ = pending(points, Store(args.results))
    to_train = [spec for group in groups for spec in group]
    training = set(to_train)
    stored: dict[str, int] = {}
    for p in points:
        if p.spec not in training:
            family = get_task(p.spec.task).family.name
            stored[family] = stored.get(family, 0) + 1
    workers = args.workers or os.cpu_count() or 1
    print(f"{label}: {len(points)} runs, {len(points) - len(to_train)} stored, {len(to_train)} to train")
    print(costs.render(costs.estimate(to_train, stored, lambda task: get_task(task).family.name), workers))
    return 0


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
    """Re-render every question (or one) whose runs are all stored; name the others and the command that fills the store.

    A question with missing runs is not an error: on a fresh clone the store is empty and the committed reports stand.
    A corrupt record is (exit 2), and then nothing is written."""
    from suite import catalogue

    names = [args.question] if args.question else [q["name"] for q in catalogue.load()["questions"]]
    plans = [_plan(args, name) for name in names]
    from suite import report
    from suite.store import Store

    store = Store(args.results)
    ready, waiting = [], []
    for question, profile, points in plans:  # every question is checked before any report is written
        missing = report.missing_runs(points, store)
        if missing:
            waiting.append((question, len(missing), len(points)))
        else:
            ready.append((question, profile, points, report.analyse(question, points, store)))
    for question, profile, points, result in ready:
        _report(args, question, profile, points, store, analysed=result)
    if not args.question and ready and (args.profile == report.COMMITTED_PROFILE or args.reports_chosen):
        report.write_index(Path(args.reports))
    if waiting:
        flags = "" if args.profile == "quick" else f" --profile {args.profile}"
        flags += "".join(f" --set {shlex.quote(o)}" for o in args.overrides) + (f" --seeds {args.seeds}" if args.seeds else "")
        print(f"Not re-rendered — their runs are not (all) in the store {store.root}; each report already in "
              f"{args.reports}/ is left as it is:")
        for question, n_missing, n in waiting:
            print(f"  {question.name}: {n_missing} of {n} runs missing; `emrl run {question.name}{flags}` trains them")
        if not ready:
            print("The committed reports were generated by `make reproduce` (every question at the quick profile); "
                  "that command, or `emrl run <question>`, fills the store, after which `emrl report` re-renders them.")
    return 0


def cmd_reproduce(args) -> int:
    """Every question at one profile: one sweep over the union of their grids (one process pool, no
    idle tail between questions; runs shared by several questions train once), then every report."""
    from suite.profiles import check_profile

    check_profile(args.profile)  # before the heavy imports
    from suite.questions import QUESTIONS
    from suite.store import Store

    from suite import catalogue

    args = argparse.Namespace(**{**vars(args), "seeds": None, "overrides": []})
    store = Store(args.results)
    undefined = [q["name"] for q in catalogue.load()["questions"] if args.profile not in q["profiles"]]
    if undefined:  # a known profile that some families have not set yet (`standard` while their issues are open)
        print(f"reproduce [{args.profile}]: {len(undefined)} question(s) define no {args.profile!r} profile yet and are "
              f"left out: {', '.join(undefined)}")
    plans = [_plan(args, name) for name in QUESTIONS if name not in undefined]
    union = list({p.spec: p for _, _, points in plans for p in points}.values())
    if args.dry_run:
        return _dry_run(args, f"reproduce [{args.profile}]", union)
    summary = _execute(args, union, f"reproduce [{args.profile}]")
    done = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing new"
    print(f"reproduce [{args.profile}]: {summary.total} runs, {summary.skipped} already stored, trained: {done} ({summary.wall_s:.1f} s)")
    for question, profile, points in plans:
        _report(args, question, profile, points, store)
    return 0


# ------------------------------------------------------------------------------------------------ finding runs


def cmd_runs(args) -> int:
    from suite import inventory

    table = inventory.runs_table(args.results, args.question, args.status)
    if table.empty:
        print(inventory.empty_message(args.results, args.question, args.status))
        return 0
    print(inventory.render(table))
    print(f"{len(table)} runs; `emrl show <id>` prints one (a unique prefix of its id is enough).")
    for problem in inventory.store_problems(args.results):  # stray, misplaced or leftover files: named, never deleted
        print(f"note: {problem}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from suite import inventory

    name = inventory.question_name(args.question) if args.question else "all"
    output = Path(args.output) if args.output else Path(args.results) / "exports" / f"{name}.{args.format}"
    rows = inventory.long_rows(args.results, args.question)
    if rows.empty:
        print(inventory.empty_message(args.results, args.question, None))
        return 0
    inventory.write_export(rows, output, args.format)
    print(f"wrote {len(rows):,} rows of {rows.run_id.nunique()} runs to {output} "
          f"(columns: {', '.join(rows.columns)}); load it with pandas.read_{'parquet' if args.format == 'parquet' else 'csv'}.")
    return 0


def cmd_show(args) -> int:
    from suite import inventory

    print(inventory.show(args.results, args.run_id))
    return 0


# ------------------------------------------------------------------------------------------------------ listing


def cmd_list(args) -> int:
    """Everything comes from `suite.catalogue`: no torch import, so this answers at once."""
    from suite import catalogue
    from suite.profiles import PROFILE_DOC, PROFILES

    cat = catalogue.load()
    what = args.what
    if what in ("all", "questions"):
        print("questions:")
        for q in cat["questions"]:
            print(f"  {q['name']:<22} claims {', '.join(q['claims']):<10} {q['title']}")
    if what in ("all", "claims"):
        print("claims:")
        for c in cat["claims"]:
            print(f"  {c['id']:<4} [{c['question']}] {c['statement']}")
    if what in ("all", "tasks"):
        print("tasks (by family):")
        for fam in cat["families"]:
            print(f"  family {fam['name']} ({len(fam['tasks'])} tasks)")
            for t in fam["tasks"]:
                print(f"    {t['name']:<26} {t['description']}")
            if args.fields:
                _task_fields(fam)
    if what in ("all", "algorithms"):
        print("algorithms:")
        for a in cat["algorithms"]:
            print(f"  {a['name']:<14} {a['summary']}")
            if args.fields:
                _print_fields(a["fields"], f"{a['name']}.")
        if args.fields:
            print("  (`algo.<field>` sets the field for every algorithm of a question that has it)")
    if what in ("all", "profiles"):
        print("profiles:")
        for p in PROFILES:
            print(f"  {p:<8} {PROFILE_DOC[p]}")
    return 0


def _task_fields(fam: dict) -> None:
    """A family's task fields once (with the default every task shares, or each task's where they differ and the
    family is small), then the fields of each training loop the family runs."""
    print(f"      task fields of family {fam['name']}:")
    rows: dict[str, tuple[dict, str]] = {}
    for t in fam["tasks"]:
        for name, default, doc in t["fields"]:
            rows.setdefault(name, ({}, doc))[0][t["name"]] = default
    for name, (by_task, doc) in rows.items():
        values = set(by_task.values())
        if len(values) == 1:
            default = values.pop()
        elif len(by_task) <= 6:
            default = ", ".join(f"{v} ({task})" for task, v in by_task.items())
        else:
            default = "(differs per task)"
        print(f"      task.{name} = {default}  — {doc}")
    for loop, loop_fields in fam["loops"].items():
        print(f"      training loop {loop}:")
        _print_fields(loop_fields, "train.")


def _print_fields(fields: list, prefix: str) -> None:
    for name, default, doc in fields:
        print(f"      {prefix}{name} = {default}  — {doc}")


COMMANDS = {"list": cmd_list, "run": cmd_run, "report": cmd_report, "reproduce": cmd_reproduce, "runs": cmd_runs,
            "export": cmd_export, "show": cmd_show}

if __name__ == "__main__":
    sys.exit(main())
