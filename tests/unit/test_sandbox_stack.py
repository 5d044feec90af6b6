"""The sandbox reads a stack file through the program's own validation: what `pulumi preview`
refuses (a misspelt key, a key in a near-miss namespace, a plain-text secret), `sandbox up`
refuses too, before it writes any state or starts any process."""

from __future__ import annotations

import pytest

from components.stack_settings import SettingsError, load_stack_config
from sandbox import __main__ as sandbox_cli
from sandbox import local_cluster
from sandbox.local_cluster import Sandbox


@pytest.fixture
def stack_file(monkeypatch):
    """Stack files the sandbox reads: `typo` is the dev stack with `extra` keys over it."""
    extra: dict[str, str] = {}

    def load(stack: str, *args, **kwargs) -> dict[str, str]:
        return load_stack_config("dev") | (extra if stack == "typo" else {})

    monkeypatch.setattr(local_cluster, "load_stack_config", load)
    return extra


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("redis-eks:durabilty", "aof", "redis-eks:durabilty is not a setting of this program"),
        ("redis:tls", "true", "did you mean redis-eks:tls?"),
        ("redis-eks:password", "Plain-Text-Password-0123", "pulumi config set --secret redis-eks:password"),
        ("redis-eks:memoryLimit", "1", "a number without a unit is bytes"),
    ],
)
def test_up_refuses_what_the_program_refuses_and_writes_nothing(tmp_path, stack_file, key, value, named):
    stack_file[key] = value
    for engine, tls in ((None, None), ("redis", True)):
        sandbox = Sandbox(tmp_path, stack="typo", engine=engine, tls=tls)
        with pytest.raises(SettingsError, match=named.replace("?", r"\?")):
            sandbox.up()
        assert not sandbox.state_path.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_cli_prints_the_refusal_without_a_traceback(tmp_path, stack_file, capsys):
    stack_file["redis-eks:durabilty"] = "aof"
    assert sandbox_cli.main(["--root", str(tmp_path), "--stack", "typo", "up", "--engine", "redis"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: redis-eks:durabilty is not a setting of this program")
    assert "Traceback" not in error and list(tmp_path.iterdir()) == []


def test_the_dev_stack_file_passes_and_gives_the_pods_its_settings(tmp_path, stack_file):
    sandbox = Sandbox(tmp_path, stack="typo")
    assert sandbox.stack_engine() == "redis" and sandbox.stack_tls() is False
    assert sandbox.stack_config() == load_stack_config("dev")
