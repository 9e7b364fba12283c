"""``--help`` reads well and every error has one style, through the real entry point
(``python -m geofast``). None of these load a model: they run in seconds."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

COMMANDS = ["locate", "eval", "db", "db build", "db add", "db info", "check", "train", "export", "serve", "bench"]
#: typer's type labels and click's closed-range suffixes: what a reader should never see.
NOISE = re.compile(r"<(bool|int|float|str|text|path|list\[[^]]*\]|int range|float range)>|\[x[<>]=|x>=|x<=")


def run_cli(*args: str, columns: int = 130) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "GEOFAST_CACHE": os.devnull + "-unused"}
    env.pop("GEOFAST_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "geofast", *args], capture_output=True, text=True, env=env, timeout=300)


def option_row(text: str, flag: str) -> str:
    """The help line of ``flag`` (its first line)."""
    for line in text.splitlines():
        if re.match(rf"│ {{1,4}}(\* +)?{re.escape(flag)} ", line):
            return line
    raise AssertionError(f"{flag} not in help:\n{text}")


def test_commands_are_listed_locate_first():
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    listed = re.findall(r"^│ (\w+)\s{2,}", r.stdout, re.MULTILINE)
    names = [n for n in listed if n in ("locate", "eval", "db", "check", "train", "export", "serve", "bench")]
    assert names == ["locate", "eval", "db", "check", "train", "export", "serve", "bench"], r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_type_noise(command):
    r = run_cli(*command.split(), "--help")
    assert r.returncode == 0, r.stderr
    assert not NOISE.findall(r.stdout), NOISE.findall(r.stdout)
    assert "Usage: geofast" in r.stdout and "{" not in r.stdout.splitlines()[1]


def test_choices_ranges_and_help_of_method_options():
    text = run_cli("locate", "--help").stdout
    assert "geoclip|swc|geoclip+swc|rag" in option_row(text, "--method")
    assert "cpu|cuda|cuda:N|mps" in option_row(text, "--device")
    assert "KM > 0" in option_row(text, "--eps-km") and "KM > 0" in option_row(text, "--cell-km")
    assert "N ≥ 1" in option_row(text, "--top-k")
    assert "Sampling temperature" in option_row(text, "--llm-temperature")
    assert "Longest answer" in option_row(text, "--llm-max-tokens")
    assert "g3|img2loc" in option_row(text, "--llm-recipe")
    assert "--top-k" in run_cli("eval", "--help").stdout


def test_square_brackets_in_help_are_printed_as_written():
    text = run_cli("db", "build", "--help").stdout
    assert "pip install 'geofast[scale]'" in text  # a Rich panel title: "[scale]" used to vanish
    assert "geofast[scale]" in run_cli("eval", "--help").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["locate", "--bogus"], "No such option: --bogus"),
        (["locate", "--top-k", "0", "x.jpg"], "Invalid value for '--top-k' / '-k'"),
        (["locate", "--eps-km", "0", "x.jpg"], "Invalid value for '--eps-km': 0 is not > 0"),
        (["db", "build"], "Missing argument 'SOURCE'"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
    ],
)
def test_usage_errors_are_one_error_and_one_hint_with_exit_2(args, message):
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines
    assert lines[1].startswith("hint: see 'geofast") and lines[1].endswith(" --help'"), lines
    assert not set("╭╰│") & set(r.stderr) and "Traceback" not in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize(
    "args, flag, method",
    [
        (["--eps-km", "2"], "--eps-km", "geoclip"),
        (["--cell-km", "5", "--method", "swc"], "--cell-km", "swc"),
        (["--llm-model", "gpt-4o"], "--llm-model", "geoclip"),
        (["--llm-max-tokens", "99", "--method", "swc"], "--llm-max-tokens", "swc"),
        (["--no-confidence"], "--confidence/--no-confidence", "geoclip"),
    ],
)
@pytest.mark.parametrize("command", ["locate", "eval"])
def test_an_option_the_method_ignores_is_refused_like_db(command, args, flag, method):
    r = run_cli(command, "ds.csv" if command == "eval" else "x.jpg", *args)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: {flag} is used by --method ") and lines[0].endswith(f"not --method {method}"), lines
    assert lines[1].startswith(f"hint: drop {flag.split('/')[0]}, or pass --method "), lines
    assert len(lines) == 2


def test_swc_k_without_a_database_is_refused():
    r = run_cli("locate", "x.jpg", "--method", "swc", "--swc-k", "5")
    assert r.returncode == 1
    assert r.stderr.startswith("error: --swc-k counts database neighbours and needs --db"), r.stderr
