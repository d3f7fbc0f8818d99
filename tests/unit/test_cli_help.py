"""`--help` teaches: every command and option says what it is for, the main commands show
examples that really parse, the commands are listed in the order a user runs them, and init
offers no --config (it reads none). A new option without help fails here."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from cdc_daemon.cli_parser import build_parser

MAIN_COMMANDS = ("init", "install", "check", "backfill", "run", "status", "verify", "dead-letters")
HIDDEN = {("init", "--config")}  # accepted for old scripts, not offered: init reads no config


def commands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def command_helps() -> dict[str, str | None]:
    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action.help for action in sub._choices_actions}


def option_name(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


def examples(parser: argparse.ArgumentParser) -> list[str]:
    """The `Examples:` epilog's command lines, without comments, pipes and redirections."""
    _, found, text = (parser.epilog or "").partition("Examples:\n")
    assert found, f"{parser.prog}: no Examples: epilog"
    lines = [re.split(r"\s(?:#|>|\||&&)", line.strip())[0] for line in text.splitlines()]
    return [line for line in lines if line]


def test_every_command_has_a_one_line_help() -> None:
    helps = command_helps()
    assert set(helps) == set(commands())
    for name, text in helps.items():
        assert text and text.strip() and "\n" not in text, f"{name}: help {text!r}"


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_option_has_a_help_text(command: str) -> None:
    parser = commands()[command]
    for action in parser._actions:
        name = option_name(action)
        if (command, name) in HIDDEN:
            assert action.help == argparse.SUPPRESS
            continue
        assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), (
            f"`cdc-daemon {command} {name}` has no help text: add help= to its add_argument"
        )


def test_top_level_options_have_help() -> None:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue  # its commands: test_every_command_has_a_one_line_help
        assert action.help and action.help.strip(), option_name(action)


@pytest.mark.parametrize("command", MAIN_COMMANDS)
def test_main_commands_show_examples_that_parse(command: str) -> None:
    lines = examples(commands()[command])
    assert 1 <= len(lines) <= 3, lines
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "cdc-daemon", line
        args = build_parser().parse_args(words[1:])  # exits (SystemExit) on an unknown option
        assert args.command == command, line


def test_the_command_list_follows_the_order_a_user_runs_them() -> None:
    listed = list(command_helps())
    assert [c for c in listed if c in MAIN_COMMANDS] == list(MAIN_COMMANDS)
    text = build_parser().format_help()
    positions = [text.index(f"\n    {command} ") for command in MAIN_COMMANDS]
    assert positions == sorted(positions)


def test_top_level_help_says_where_the_config_comes_from() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "--config PATH (before or after the command), else $CDC_CONFIG, else ./cdc.yaml" in text


def test_init_offers_no_config_but_still_accepts_one() -> None:
    init = commands()["init"]
    assert "--config" not in init.format_help()
    # Old scripts keep working: before or after the command, it is accepted and unused.
    for argv in (["init", "--config", "x.yaml"], ["--config", "x.yaml", "init"]):
        args = build_parser().parse_args([*argv, "--database", "app.db"])
        assert args.command == "init" and str(args.database) == "app.db"
