"""CLI option enums: each equals the set its command passes on, ``--help`` lists it, and
Typer refuses another value before the command runs."""

from __future__ import annotations

from enum import StrEnum
from typing import get_args

import pytest
from typer.testing import CliRunner

from dicomnode import config
from dicomnode.cli import choices
from dicomnode.cli.main import app


def _values(enum: type[StrEnum]) -> list[str]:
    return [member.value for member in enum]


def test_the_cli_enums_equal_their_sources() -> None:
    from dicomnode.conformance import OutputFormat
    from dicomnode.node import ROLES

    fields = config.ModelSettings.model_fields
    assert _values(choices.ExplainMode) == list(get_args(fields["explain"].annotation))
    assert _values(choices.LogLevel) == list(
        get_args(config.Settings.model_fields["log_level"].annotation)
    )
    assert _values(choices.Role) == list(ROLES)
    assert _values(choices.ConformanceFormat) == _values(OutputFormat)


@pytest.mark.parametrize(
    ("command", "option", "listed"),
    [
        (["serve"], "--role", "all|receiver|worker"),
        (["serve"], "--explain", "all|positive"),
        (["predict"], "--explain", "all|positive"),
        (["conformance"], "--format", "md|html"),
        (["train"], "--calibration", "temperature|platt|none"),
        (["evaluate"], "--split", "all|train|val|test"),
    ],
)
def test_help_lists_the_choices(command: list[str], option: str, listed: str) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if option in line)
    assert listed in line


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--role", "everything"],
        ["serve", "--explain", "none"],
        ["serve", "--log-level", "LOUD"],
        ["conformance", "--format", "pdf"],
        ["evaluate", "--model", "m", "--data", ".", "--split", "holdout"],
    ],
)
def test_other_values_are_refused_before_the_command_runs(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2  # click's usage error
    assert "Invalid value" in result.output


def test_choices_are_case_insensitive() -> None:
    result = CliRunner().invoke(app, ["conformance", "--format", "HTML"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("<!DOCTYPE html>")
