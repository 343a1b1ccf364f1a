"""The command line (`suite.cli`): bad input exits 2 having written nothing; the smoke profile end to end.

Bad-input cases call `suite.cli.main` in this process (each interpreter start costs seconds); the
end-to-end run starts `python -m suite` in a subprocess once, as a user would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Dirs, run_cli_subprocess, snapshot, subprocess_env

import algorithms
import tasks
from algorithms.pmpo import PMPOConfig
from suite import catalogue
from suite.questions import CLAIMS, QUESTIONS, get_question
from suite.runner import make_record, run_id
from suite.store import Store
from tasks import RunResult
from tasks.bandits import BanditConfig, BanditLoopConfig

# --------------------------------------------------------------------------------------- bad input

BAD_INPUT = [
    # (arguments after the global options, what stderr must say, in order)
    (["run", "bandit-pmpo"],
     ["unknown question 'bandit-pmpo'", "Did you mean 'bandits-pmpo'?", "Allowed: bandits-pmpo, "]),
    (["run", "B9"], ["unknown question 'B9'", "Allowed: ", "B1", "bandits-kl"]),
    (["run", "B1", "--profile", "smok"], ["unknown profile 'smok'", "Did you mean 'smoke'?", "Allowed: smoke, "]),
    (["reproduce", "--profile", "papr"], ["unknown profile 'papr'", "Did you mean 'paper'?", "Allowed: paper, "]),
    (["run", "L1", "--profile", "standard"],
     ["question 'lm-temperature' defines no 'standard' profile yet", "Allowed for it: smoke, quick, paper"]),
    (["run", "B1", "--profile", "smoke", "--set", "task.dimm=3"], ["'dimm'", "Did you mean 'dim'?", "Allowed: dim, "]),
    (["run", "B1", "--profile", "smoke", "--set", "pmpo.beta=-1"], ["PMPOConfig.beta = -1.0 is invalid", "must be >= 0"]),
    (["run", "B1", "--profile", "smoke", "--set", "algo.alpha=2"], ["PMPOConfig.alpha = 2.0 is invalid", "must lie in [0.0, 1.0]"]),
    (["run", "B1", "--profile", "smoke", "--set", "train.steps=abc"],
     ["BanditLoopConfig.steps = 'abc' is malformed", "expected a value of type int"]),
    (["run", "B1", "--profile", "smoke", "--set", "mpo.temperature=fixd"],
     ["MPOConfig.temperature 'fixd'", "Did you mean 'fixed'?", "Allowed: fixed, dual"]),
    (["run", "B1", "--profile", "smoke", "--set", "train.steps"],
     ["malformed override 'train.steps'", "expected section.field=value", "sections: task, train, algo"]),
    (["run", "B1", "--profile", "smoke", "--set", "steps=3"], ["malformed override 'steps=3'", "expected section.field=value"]),
    (["run", "B1", "--profile", "smoke", "--set", "trian.steps=3"],
     ["unknown override section 'trian'", "Did you mean 'train'?", "Allowed: train, ", "pmpo"]),
    (["run", "B1", "--profile", "smoke", "--seeds", "0"], ["argument --seeds", "0 must be >= 1"]),
    (["run", "B1", "--profile", "smoke", "--seeds", "two"], ["argument --seeds", "'two' is not an integer"]),
    (["run", "B1", "--profile", "smoke", "--workers", "0"], ["argument --workers", "0 must be >= 1"]),
    (["run", "B1", "--profile", "smoke", "--set", "ppo.clip_eps=0.1"],
     ["override section 'ppo': ppo is not in question 'bandits-pmpo' (its algorithms: dpo, mpo, pmpo;"]),
    (["run", "B1", "--profile", "smoke", "--seeds", "5000"], ["argument --seeds", "5000 is above the maximum of 1000"]),
    (["runs", "B99"], ["unknown question 'B99'", "Allowed: "]),
    (["export", "--format", "xlsx"], ["argument --format: invalid choice: 'xlsx'"]),
    (["runs", "--status", "done"], ["argument --status: invalid choice: 'done'", "ok"]),
    (["show", "0123abc"], ["no stored run has an id starting with '0123abc'"]),
    (["list", "claimz"], ["argument what: invalid choice: 'claimz'", "claims"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'", "run"]),
    ([], ["the following arguments are required"]),
]


def assert_in_order(text: str, parts: list[str]) -> None:
    pos = 0
    for part in parts:
        i = text.find(part, pos)
        assert i >= 0, f"{part!r} not found (in order) in: {text!r}"
        pos = i + len(part)


def assert_nothing_written(dirs: Dirs) -> None:
    assert not dirs.results.exists(), sorted(map(str, dirs.results.rglob("*")))
    assert not dirs.reports.exists(), sorted(map(str, dirs.reports.rglob("*")))


@pytest.mark.parametrize("args, says", BAD_INPUT, ids=[" ".join(a) or "(none)" for a, _ in BAD_INPUT])
def test_bad_input_exits_2_says_what_is_allowed_and_writes_nothing(cli, dirs, args, says):
    result = cli(*dirs.options(), *args)
    assert result.rc == 2
    assert "emrl: error: " in result.err
    assert_in_order(result.err, says)
    assert result.out == ""
    assert_nothing_written(dirs)


def test_bad_input_leaves_an_existing_store_as_it_was(cli, dirs):
    spec = get_question("bandits-pmpo").grid("smoke")[0].spec
    prov = {"code": {"commit": None, "dirty": False}, "packages": {}}
    Store(dirs.results).write(make_record(spec, RunResult("ok", [(0, "f", 1.0)]), "2026-01-01", 0.1, 1, prov))
    before = snapshot(dirs.results)
    for args, _ in BAD_INPUT:
        assert cli(*dirs.options(), *args).rc == 2, args
        assert snapshot(dirs.results) == before, args
        assert not dirs.reports.exists(), args


def test_corrupt_results_file_in_the_grid_stops_run_naming_the_file(cli, dirs):
    points = get_question("bandits-pmpo").grid("smoke")
    store = Store(dirs.results)
    bad = store.path(run_id(points[7].spec))
    bad.parent.mkdir(parents=True)
    bad.write_text('{"schema": 1, "run_id": "trunc')
    before = snapshot(dirs.results)

    result = cli(*dirs.options(), "run", "B1", "--profile", "smoke", "--workers", "1", "--quiet")
    assert result.rc == 2
    assert f"corrupt results file {bad}" in result.err and "not valid JSON" in result.err
    assert "Move it aside" in result.err
    assert snapshot(dirs.results) == before  # no run trained, the bad file untouched
    assert not dirs.reports.exists()


# --------------------------------------------------------------------------------------- help and list


@pytest.mark.parametrize("command", [[], ["list"], ["run"], ["report"], ["reproduce"], ["runs"], ["export"], ["show"]])
def test_help_exits_0(cli, dirs, command):
    result = cli(*command, "--help")
    assert result.rc == 0
    assert result.out.startswith("usage: emrl")
    assert_nothing_written(dirs)


def test_help_lists_every_subcommand(cli):
    out = cli("--help").out
    for command in ("list", "run", "report", "reproduce", "runs", "export", "show"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command


def test_list_names_every_question_claim_and_profile(cli, dirs):
    result = cli(*dirs.options(), "list")
    assert result.rc == 0 and result.err == ""
    for name in QUESTIONS:
        assert re.search(rf"^  {re.escape(name)}\s", result.out, re.M), name
    for cid in CLAIMS:
        assert re.search(rf"^  {cid}\s+\[", result.out, re.M), cid
    assert re.search(r"^  family bandit \(3 tasks\)$", result.out, re.M)
    for task in ("sphere", "rosenbrock", "schwefel"):
        assert re.search(rf"^    {task}\s", result.out, re.M), task
    for profile in ("smoke", "quick", "standard", "paper"):
        assert re.search(rf"^  {profile}\s", result.out, re.M), profile
    assert re.search(r"^  pmpo\s", result.out, re.M)
    assert_nothing_written(dirs)


def test_list_describes_each_algorithm_in_one_complete_sentence(cli):
    lines = [line for line in cli("list", "algorithms").out.splitlines() if line.startswith("  ")]
    described = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert set(described) == set(algorithms.REGISTRY)
    assert all(d.rstrip().endswith((".", ")")) for d in described.values()), described  # never cut mid-sentence
    dar_family = [described[n] for n in ("dar", "at_dar", "dar_tr", "topk_dar")]
    assert len(set(dar_family)) == 4  # one description per variant, not the module's shared one
    assert not described["vmpo"].startswith("Adaptor")


def _field_lines(cfg, prefix: str) -> list[str]:
    return [f"      {prefix}{name} = {default}  — {doc}" for name, default, doc in catalogue.fields(cfg)]


def test_list_algorithm_fields_are_printed_as_typed_in_set(cli):
    result = cli("list", "algorithms", "--fields")
    assert result.rc == 0, result.err
    lines = result.out.splitlines()
    assert "      pmpo.beta = 0.5  — " + PMPOConfig.__dataclass_fields__["beta"].metadata["doc"] in lines
    assert set(_field_lines(PMPOConfig(), "pmpo.")) <= set(lines)


def test_list_task_fields_are_grouped_by_family_not_repeated_per_task(cli):
    result = cli("list", "tasks", "--fields")
    assert result.rc == 0, result.err
    lines = result.out.splitlines()
    for name, _, doc in catalogue.fields(BanditConfig()):
        assert sum(line.startswith(f"      task.{name} = ") and line.endswith(f"  — {doc}") for line in lines) == 1, name
    per_task = ", ".join(f"{tasks.TASKS[t].config.init_low} ({t})" for t in ("sphere", "rosenbrock", "schwefel"))
    assert f"      task.init_low = {per_task}  — " in result.out  # the bandits' defaults differ: each is shown
    assert set(_field_lines(BanditLoopConfig(), "train.")) <= set(lines)
    assert lines.count(_field_lines(BanditLoopConfig(), "train.")[0]) == 1
    assert len(lines) < 600  # was 2,289 with the training-loop fields repeated for every dm_control task


def test_the_clis_copies_of_the_status_and_backend_names_match_the_store_and_runner():
    from suite import cli, runner, store

    assert cli.STATUSES == store.STATUSES and cli.BACKENDS == runner.BACKENDS


def test_commands_that_need_no_training_do_not_import_torch(dirs):
    """`--help`, `list` and a rejected name answer at once: nothing heavy is imported (the catalogue cache is warm)."""
    catalogue.load()  # the cache the subprocess reads (tests share EMRL_CACHE, see conftest)
    probe = ("import sys\nfrom suite.cli import main\n"
             "for argv in (['list'], ['list', 'algorithms', '--fields'], ['run', 'B99'], ['run', 'B1', '--set', 'ppo.x=1'],\n"
             "             ['run', 'B1', '--set', 'train.stepz=3'], ['report', 'B99'], ['reproduce', '--profile', 'papr']):\n"
             "    main(argv)\n"
             "heavy = sorted(m for m in ('torch', 'dm_control', 'transformers', 'matplotlib', 'scipy', 'ray') if m in sys.modules)\n"
             "print('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


# --------------------------------------------------------------------------------------- end to end


def smoke_grid_ids() -> list[str]:
    return sorted(run_id(p.spec) for p in get_question("bandits-pmpo").grid("smoke"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`python -m suite run B1 --profile smoke` once, in a subprocess; the tests below read what it wrote."""
    root = tmp_path_factory.mktemp("e2e")
    dirs = Dirs(root / "results", root / "reports")
    result = run_cli_subprocess(dirs, "run", "B1", "--profile", "smoke", "--workers", "1", "--quiet", cwd=root)
    assert result.rc == 0, result.out + result.err
    return dirs, result


def test_smoke_run_trains_the_grid_and_prints_verdicts(smoke):
    dirs, result = smoke
    assert "bandits-pmpo [smoke]: 30 runs, 0 already stored, trained: 30 ok" in result.out
    assert re.search(r"^  B1: (supported|not supported|inconclusive) — ", result.out, re.M)
    assert re.search(r"^  B2: (supported|not supported|inconclusive) — ", result.out, re.M)
    assert f"report: {dirs.reports / 'bandits-pmpo' / 'README.md'}" in result.out
    loaded = Store(dirs.results).load(smoke_grid_ids())
    assert loaded.problems == [] and len(loaded.runs) == 30 and set(loaded.runs.status) == {"ok"}
    assert sorted(loaded.runs.seed.unique()) == [0, 1]


def test_smoke_report_has_verdicts_rule_profile_provenance_and_citation(smoke):
    dirs, _ = smoke
    folder = dirs.reports / "bandits-pmpo"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "learning_curves.png", "verdicts.json"]
    readme = (folder / "README.md").read_text()
    assert readme.startswith("# PMPO from accepted and/or rejected samples")
    for cid in ("B1", "B2"):
        assert f"## {cid}" in readme and f"[{cid}](#{cid.lower()})" in readme
    assert re.search(r"\*\*Verdict: \S+ (supported|not supported|inconclusive)\*\*", readme)
    assert readme.count("*Rule (fixed in code before the data):*") == 2
    assert "Profile **smoke**" in readme and "budget 40 steps; 2 seeds" in readme and "30 runs (30 ok)" in readme
    assert re.search(r"^- commit: `([0-9a-f]{12}|unknown)( \(dirty\))?`$", readme, re.M)
    assert re.search(r"^- command: `emrl .*run B1 --profile smoke --workers 1 --quiet`$", readme, re.M)
    assert "- overrides: none" in readme
    assert "```bibtex\n@misc{emrl_bandits_pmpo_" in readme and "profile smoke" in readme
    assert "tests claims of PMPO" in readme and "\n@misc{PMPO,\n  title = {Decoupling learning" in readme  # cites the paper
    assert "![learning_curves.png](learning_curves.png)" in readme
    assert (folder / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    verdicts = json.loads((folder / "verdicts.json").read_text())
    assert verdicts["question"] == "bandits-pmpo" and verdicts["profile"] == "smoke" and verdicts["overrides"] == []
    assert [v["claim"] for v in verdicts["verdicts"]] == ["B1", "B2"]
    assert {v["outcome"] for v in verdicts["verdicts"]} <= {"supported", "not supported", "inconclusive"}


def test_smoke_index_has_a_row_per_claim(smoke):
    dirs, _ = smoke
    index = (dirs.reports / "README.md").read_text()
    rows = [line for line in index.splitlines() if line.startswith("| ") and not line.startswith("| claim ")]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == list(CLAIMS)
    verdicts = {v["claim"]: v["outcome"] for v in json.loads((dirs.reports / "bandits-pmpo" / "verdicts.json").read_text())["verdicts"]}
    for row in rows:
        cid = row.split(" | ")[0].strip("| ")
        if cid in verdicts:
            assert f"[bandits-pmpo](bandits-pmpo/README.md#{cid.lower()})" in row and verdicts[cid] in row and "| smoke |" in row
        else:
            assert "not yet run" in row
    assert f"Questions without a report yet: {', '.join(q for q in QUESTIONS if q != 'bandits-pmpo')}." in index


def test_second_run_trains_nothing_and_keeps_every_record(smoke, cli):
    dirs, _ = smoke
    runs_before = snapshot(dirs.results / "runs")
    result = cli(*dirs.options(), "run", "B1", "--profile", "smoke", "--workers", "1", "--quiet")
    assert result.rc == 0, result.err
    assert "bandits-pmpo [smoke]: 30 runs, 30 already stored, trained: nothing new" in result.out
    assert snapshot(dirs.results / "runs") == runs_before
    # the report is regenerated from the same runs: same verdicts
    assert re.search(r"^  B1: (supported|not supported|inconclusive) — ", result.out, re.M)


def test_override_run_writes_its_report_under_results_ablations(smoke, cli):
    dirs, _ = smoke
    reports_before = snapshot(dirs.reports)
    runs_before = snapshot(dirs.results / "runs")
    result = cli(*dirs.options(), "run", "B1", "--profile", "smoke", "--set", "train.steps=20", "--workers", "1", "--quiet")
    assert result.rc == 0, result.err
    assert "30 runs, 0 already stored, trained: 30 ok" in result.out  # a changed config is a new run
    ablations = list((dirs.results / "ablations").glob("bandits-pmpo-*"))
    assert len(ablations) == 1 and re.fullmatch(r"bandits-pmpo-smoke-[0-9a-f]{8}", ablations[0].name)
    readme = (ablations[0] / "README.md").read_text()
    assert "- overrides: `train.steps=20`" in readme
    assert json.loads((ablations[0] / "verdicts.json").read_text())["overrides"] == ["train.steps=20"]
    assert f"report: {ablations[0] / 'README.md'}" in result.out
    assert snapshot(dirs.reports) == reports_before  # the committed reports are untouched
    runs_after = snapshot(dirs.results / "runs")
    assert len(runs_after) == 60 and all(runs_after[k] == v for k, v in runs_before.items())

    # `report` with the same overrides re-analyses into the same ablation folder, training nothing
    again = cli(*dirs.options(), "report", "B1", "--profile", "smoke", "--set", "train.steps=20")
    assert again.rc == 0, again.err
    assert f"report: {ablations[0] / 'README.md'}" in again.out
    assert snapshot(dirs.results / "runs") == runs_after and snapshot(dirs.reports) == reports_before


def test_show_prints_the_config_of_a_run_by_prefix(smoke, cli):
    dirs, _ = smoke
    store = Store(dirs.results)
    ids = store.run_ids()
    rid = smoke_grid_ids()[0]  # a run of the canonical grid (40 steps), whatever else the store holds
    prefix = next(rid[:n] for n in range(1, 17) if sum(i.startswith(rid[:n]) for i in ids) == 1)
    record = store.read(rid)
    result = cli(*dirs.options(), "show", prefix)
    assert result.rc == 0, result.err
    assert result.out.startswith(f"run {rid}  status: ok")
    assert re.search(r"^in: bandits-pmpo variant '[^']+' \(smoke\)", result.out, re.M)
    assert re.search(r"^packages: python \S+, torch \S+", result.out, re.M)
    config = json.loads(result.out.split("config: ", 1)[1].split("\nlast logged values:", 1)[0])
    assert config == record["config"]
    assert "last logged values:" in result.out and re.search(r"^  f\s+\S+\s+\(step 40\)$", result.out, re.M)
    values = [line.split()[1] for line in result.out.split("last logged values:\n", 1)[1].splitlines()]
    assert all(len(re.sub(r"\D", "", v.split("e")[0]).lstrip("0")) <= 6 for v in values), values  # rounded for reading

    ambiguous = next((rid[:n] for n in range(1, 3) if sum(i.startswith(rid[:n]) for i in ids) > 1), "")
    result = cli(*dirs.options(), "show", ambiguous)
    assert result.rc == 2 and "is ambiguous" in result.err


def test_report_rerenders_what_is_stored_and_names_what_needs_a_run(smoke, cli):
    dirs, _ = smoke
    runs_before = snapshot(dirs.results)
    result = cli(*dirs.options(), "report", "--profile", "smoke")  # only bandits-pmpo's runs are stored
    assert result.rc == 0, result.err
    assert f"report: {dirs.reports / 'bandits-pmpo' / 'README.md'}" in result.out
    assert "Not re-rendered" in result.out
    n = len(get_question("bandits-kl").grid("smoke"))
    assert re.search(rf"^  bandits-kl: \d+ of {n} runs missing; `emrl run bandits-kl --profile smoke` trains them$", result.out, re.M)
    assert not (dirs.reports / "bandits-kl").exists()
    assert snapshot(dirs.results) == runs_before


def test_report_on_an_empty_store_says_how_to_fill_it_and_writes_nothing(cli, dirs):
    result = cli(*dirs.options(), "report")
    assert result.rc == 0, result.err
    assert "The committed reports were generated by `make reproduce`" in result.out
    n = len(get_question("bandits-pmpo").grid("quick"))  # report's default profile
    assert f"  bandits-pmpo: {n} of {n} runs missing; `emrl run bandits-pmpo` trains them\n" in result.out
    assert_nothing_written(dirs)


def test_runs_lists_stored_runs_with_question_variant_and_status(smoke, cli):
    dirs, _ = smoke
    result = cli(*dirs.options(), "runs", "B1")
    assert result.rc == 0, result.err
    header, *rows = result.out.splitlines()
    assert header.split() == ["id", "question", "variant", "profile", "task", "algo", "seed", "status", "steps", "wall_s", "date"]
    table = [r for r in rows if re.match(r"^[0-9a-f]{16}\s", r)]
    assert {r.split()[0] for r in table} >= set(smoke_grid_ids())
    assert all(" bandits-pmpo " in r and " smoke " in r for r in table if r.split()[0] in smoke_grid_ids())
    assert rows[-1].endswith("runs; `emrl show <id>` prints one (a unique prefix of its id is enough).")
    assert "No stored runs" in cli(*dirs.options(), "runs", "B1", "--status", "failed").out


def test_export_writes_long_rows_a_user_loads_with_pandas_and_never_replaces_a_file(smoke, cli, tmp_path):
    import pandas as pd

    dirs, _ = smoke
    out = tmp_path / "b1.csv"
    result = cli(*dirs.options(), "export", "B1", "--output", str(out))
    assert result.rc == 0, result.err
    rows = pd.read_csv(out)
    assert list(rows.columns) == ["run_id", "question", "variant", "profile", "task", "algo", "status", "seed", "step", "metric",
                                  "value"]
    assert set(smoke_grid_ids()) <= set(rows.run_id) and set(rows.question) == {"bandits-pmpo"}
    before = out.read_bytes()
    again = cli(*dirs.options(), "export", "B1", "--output", str(out))
    assert again.rc == 2 and "is never replaced" in again.err and out.read_bytes() == before

    parquet = cli(*dirs.options(), "export", "B1", "--format", "parquet", "--output", str(tmp_path / "b1.parquet"))
    assert parquet.rc == 0, parquet.err
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b1.parquet"), rows, check_dtype=False)


def test_report_of_one_question_rewrites_it_from_the_store(smoke, cli):
    dirs, _ = smoke
    runs_before = snapshot(dirs.results / "runs")
    verdicts_before = json.loads((dirs.reports / "bandits-pmpo" / "verdicts.json").read_text())["verdicts"]
    result = cli(*dirs.options(), "report", "bandits-pmpo", "--profile", "smoke")
    assert result.rc == 0, result.err
    assert f"report: {dirs.reports / 'bandits-pmpo' / 'README.md'}" in result.out
    assert json.loads((dirs.reports / "bandits-pmpo" / "verdicts.json").read_text())["verdicts"] == verdicts_before
    readme = (dirs.reports / "bandits-pmpo" / "README.md").read_text()
    assert "- command: `emrl --results" in readme and "report bandits-pmpo --profile smoke`" in readme
    assert snapshot(dirs.results / "runs") == runs_before


def test_a_report_folder_is_replaced_as_a_unit(smoke, cli, monkeypatch):
    """A failure while writing a report (here: verdicts.json) leaves the previous report whole and no stray file."""
    from suite import report

    dirs, _ = smoke
    before = snapshot(dirs.reports)
    real = report._write_text

    def blocked(path, text):
        if path.name == "verdicts.json":
            raise PermissionError(13, "Permission denied", str(path))
        real(path, text)

    monkeypatch.setattr(report, "_write_text", blocked)
    result = cli(*dirs.options(), "report", "bandits-pmpo", "--profile", "smoke")
    assert result.rc == 2 and "Permission denied" in result.err and "verdicts.json" in result.err
    assert snapshot(dirs.reports) == before
    assert not [p for p in dirs.reports.iterdir() if p.name.startswith(".")]


def test_smoke_run_without_a_reports_folder_leaves_the_committed_reports_byte_identical(smoke, cli, tmp_path, monkeypatch):
    """`emrl run B1 --profile smoke` from a checkout: the committed `reports/` (a copy of the repository's here) keep every
    byte and mtime, and the smoke report goes to `<results>/ablations/`, saying it is an ablation and linking the
    committed one."""
    import shutil

    dirs, _ = smoke
    checkout = tmp_path / "checkout"
    shutil.copytree(Path(__file__).resolve().parents[1] / "reports", checkout / "reports")
    before = snapshot(checkout / "reports")
    monkeypatch.delenv("EMRL_REPORTS", raising=False)
    monkeypatch.chdir(checkout)
    result = cli("--results", str(dirs.results), "run", "B1", "--profile", "smoke", "--workers", "1", "--quiet")
    assert result.rc == 0, result.err
    assert snapshot(checkout / "reports") == before
    (folder,) = [f for f in (dirs.results / "ablations").glob("bandits-pmpo-smoke-*")
                 if json.loads((f / "verdicts.json").read_text())["overrides"] == []]
    readme = (folder / "README.md").read_text()
    assert "**Ablation report** — not the committed verdict. Profile `smoke`" in readme
    assert "(an ablation: the committed report is untouched)" in result.out


# --------------------------------------------------------------------------------------- operating errors


def test_a_file_where_the_results_folder_should_be_exits_2_naming_it(cli, tmp_path):
    results = tmp_path / "results"
    results.write_text("not a folder")
    result = cli("--results", str(results), "--reports", str(tmp_path / "reports"), "run", "B1", "--profile", "smoke",
                 "--workers", "1", "--quiet")
    assert result.rc == 2 and "Traceback" not in result.err
    assert f"emrl: error: cannot use {results}" in result.err and "Not a directory" in result.err
    assert results.read_text() == "not a folder" and not (tmp_path / "reports").exists()


def test_a_file_where_the_reports_folder_should_be_exits_2_and_keeps_every_run(smoke, cli, tmp_path):
    dirs, _ = smoke
    reports = tmp_path / "reports"
    reports.write_text("not a folder")
    runs_before = snapshot(dirs.results / "runs")
    result = cli("--results", str(dirs.results), "--reports", str(reports), "report", "B1", "--profile", "smoke")
    assert result.rc == 2 and "Traceback" not in result.err
    assert f"emrl: error: cannot use {reports}" in result.err
    assert snapshot(dirs.results / "runs") == runs_before


def test_a_run_stored_by_a_second_runner_exits_2_with_the_conflict(cli, dirs, monkeypatch):
    from suite.store import StoreConflict

    def conflict(self, record):
        raise StoreConflict(f"run {record['run_id']} is already stored at {self.path(record['run_id'])} with status 'ok'")

    monkeypatch.setattr(Store, "write", conflict)
    result = cli(*dirs.options(), "run", "B1", "--profile", "smoke", "--workers", "1", "--quiet")
    assert result.rc == 2 and "Traceback" not in result.err
    assert "emrl: error: run " in result.err and "is already stored at" in result.err


def test_run_without_report_exits_1_when_every_run_it_trained_failed(cli, dirs, monkeypatch):
    import suite.runner

    def broken(name):
        raise RuntimeError("the simulator is broken")

    monkeypatch.setattr(suite.runner, "get_task", broken)
    result = cli(*dirs.options(), "run", "B1", "--profile", "smoke", "--workers", "1", "--quiet", "--no-report")
    n = len(get_question("bandits-pmpo").grid("smoke"))
    assert result.rc == 1
    assert f"trained: {n} failed" in result.out and f"every one of the {n} runs trained failed" in result.err
    assert len(Store(dirs.results).run_ids()) == n  # each failure is recorded, with its traceback
    assert "the simulator is broken" in Store(dirs.results).read(Store(dirs.results).run_ids()[0])["error"]


def test_ctrl_c_exits_130_saying_the_finished_runs_are_kept(cli, dirs, monkeypatch):
    import suite.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(suite.runner, "execute", interrupted)
    result = cli(*dirs.options(), "run", "B1", "--profile", "smoke", "--quiet")
    assert result.rc == 130 and "Every finished run is stored" in result.err


def test_budget_text_lists_every_length_of_a_task_in_order():
    """A task trained at two lengths (control-virel with VIREL shortened by hand: its grid trains every arm for the same
    steps) reads the same whatever the hash seed."""
    import dataclasses

    from suite import costs, report

    question = get_question("control-virel")
    points = [p if p.spec.algo != "virel" else dataclasses.replace(p, spec=dataclasses.replace(
              p.spec, train_config=dataclasses.replace(p.spec.train_config, total_steps=4_000))) for p in question.grid("quick")]
    lengths = sorted({costs.budget(p.spec.train_config) for p in points if not getattr(p.spec.train_config, "random_baseline", False)})
    assert len(lengths) > 1  # the premise: one task, several training lengths
    seeds = len({p.spec.seed for p in points})
    expected = " / ".join(f"{n:,} {unit.replace('total_', '')}" for n, unit in lengths) + f"; {seeds} seeds"
    assert report.budget_text(question, points) == expected


# --------------------------------------------------------------------------------------- cost preview


def test_dry_run_previews_runs_stored_and_cpu_hours_and_writes_nothing(cli, dirs):
    result = cli(*dirs.options(), "run", "B1", "--profile", "smoke", "--dry-run")
    assert result.rc == 0, result.err
    n = len(get_question("bandits-pmpo").grid("smoke"))
    assert result.out.startswith(f"bandits-pmpo [smoke]: {n} runs, 0 stored, {n} to train\n")
    assert re.search(rf"^bandit\s+{n}\s+0\s+{n}\s+\d+\.\d\d$", result.out, re.M)
    assert "CPU-hours to train" in result.out and "Nothing was trained." in result.out
    assert_nothing_written(dirs)


def test_reproduce_at_a_profile_some_families_lack_names_the_questions_left_out(cli, dirs):
    """`standard` is set by each family's own issue; until then `reproduce --profile standard` runs the questions that
    define it and says which it leaves out."""
    result = cli(*dirs.options(), "reproduce", "--profile", "standard", "--dry-run")
    assert result.rc == 0, result.err
    lacking = [name for name, q in QUESTIONS.items() if "standard" not in q.budgets]
    assert lacking and f"define no 'standard' profile yet and are left out: {', '.join(lacking)}" in result.out
    assert "bandits-pmpo" not in lacking and "Nothing was trained." in result.out
    assert_nothing_written(dirs)


def test_dry_run_counts_what_is_stored(smoke, cli):
    dirs, _ = smoke
    result = cli(*dirs.options(), "run", "B1", "--profile", "smoke", "--dry-run")
    assert result.rc == 0, result.err
    n = len(smoke_grid_ids())
    assert f"bandits-pmpo [smoke]: {n} runs, {n} stored, 0 to train" in result.out
    assert "about 0.00 CPU-hours to train" in result.out


def test_every_family_and_budget_of_every_grid_has_a_measured_cost():
    """A new family or training loop must bring its measured cost (suite/costs.py), or --dry-run cannot price it."""
    from suite import costs
    from tasks import get_task

    priced = {(get_task(p.spec.task).family.name, costs.budget(p.spec.train_config)[1])
              for q in QUESTIONS.values() for profile in ("quick", "standard", "paper") if profile in q.budgets
              for p in q.grid(profile, seeds=1)}
    unpriced = {(family, unit) for family, unit in priced if family not in costs.FAMILY_COST} - set(costs.SECONDS_PER_UNIT)
    assert not unpriced, unpriced


def test_the_settings_table_reads_none_for_an_unset_field_never_nan():
    """V-MPO's loop clips no gradient (max_grad_norm None) where PPO's clips at 0.5: the column says "none"."""
    from suite import report

    table = report.knob_table(get_question("control-vmpo-ppo").grid("quick"))
    assert "nan" not in table and "| none |" in table
