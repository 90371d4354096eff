"""One vocabulary of DIMSE statuses: every status the receiving code can answer is a
:class:`Status` member, and every one is in the generated conformance statement."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dicomnode.receiving
from dicomnode.cli import app
from dicomnode.receiving.statuses import Status

RECEIVING = Path(dicomnode.receiving.__file__).parent
#: Modules that decide a DIMSE status (handlers, header checks, command-set check).
STATUS_MODULES = ("handlers.py", "validation.py", "commands.py")


def _tree(name: str) -> ast.Module:
    return ast.parse((RECEIVING / name).read_text(encoding="utf-8"), filename=name)


def _statuses_used() -> set[Status]:
    """``Status.X`` members named anywhere in the status-deciding modules."""
    used: set[Status] = set()
    for name in STATUS_MODULES:
        for node in ast.walk(_tree(name)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "Status"
            ):
                used.add(Status[node.attr])
    return used


def test_every_status_has_a_meaning_and_when() -> None:
    for status in Status:
        assert status.meaning and status.when, status
        assert status.hex == f"0x{int(status):04X}"


def test_the_receiving_code_uses_the_statuses_the_conformance_statement_claims() -> None:
    used = _statuses_used()
    # Includes the two once left out of the statement.
    assert {Status.DATASET_TOO_LARGE, Status.INVALID_VALUE} <= used
    assert used == set(Status), f"members nobody returns: {set(Status) - used}"


def test_every_returned_status_is_in_the_generated_statement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)
    result = CliRunner().invoke(app, ["conformance", "--format", "md"])
    assert result.exit_code == 0, result.output
    rows = {line.split(" | ")[0].lstrip("| ") for line in result.output.splitlines()}
    for status in _statuses_used():
        assert status.hex in rows, f"{status.name} ({status.hex}) missing from the statement"
    assert "| 0xC223 | Error: cannot understand (data set too large) |" in result.output
    assert "0xC224" in rows


def _int_literal(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def test_no_bare_integer_status_in_the_receiving_code() -> None:
    """Statuses are returned, raised and sent as Status members, never as ``0xC210``."""
    offenders: list[str] = []
    for name in STATUS_MODULES:
        tree = _tree(name)
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef) or func.returns is None:
                continue
            if "Status" not in ast.unparse(func.returns):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Return) and _int_literal(node.value):
                    offenders.append(f"{name}:{node.lineno} return {ast.unparse(node)}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "RejectedInstance"
                and node.args
                and _int_literal(node.args[0])
            ):
                offenders.append(f"{name}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.Assign) and _int_literal(node.value):
                targets = [ast.unparse(t) for t in node.targets]
                if any(t.endswith(".Status") for t in targets):
                    offenders.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


def test_handlers_return_status_members() -> None:
    """Every ``handle_*`` is annotated to return a Status (so mypy checks its returns)."""
    tree = _tree("handlers.py")
    handlers = [
        f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("handle_")
    ]
    assert {f.name for f in handlers} == {"handle_echo", "handle_store"}
    for func in handlers:
        assert func.returns is not None and ast.unparse(func.returns) == "Status", func.name


def test_statement_says_when_low_disk_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)
    result = CliRunner().invoke(app, ["conformance", "--format", "md"])
    (row,) = [line for line in result.output.splitlines() if line.startswith(f"| {Status.OUT_OF_RESOURCES.hex}")]
    assert "store.min_free_bytes" in row
