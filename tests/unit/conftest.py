"""Whole stacks built by the real program under Pulumi's mocks (see tools/render_manifests.py)."""

from __future__ import annotations

import pytest

from components.stack_settings import load_stack_config
from tools.render_manifests import SECRET_SIG, SECRET_SIG_VALUE, ProgramRun, run_program, secret_config_keys

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: kind, cluster: {server: "https://127.0.0.1:6443"}}]
contexts: [{name: kind, context: {cluster: kind, user: kind}}]
current-context: kind
users: [{name: kind, user: {token: not-a-real-token}}]
"""


def is_secret(value) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_SIG_VALUE


def reveal(value):
    """The plain value of a (possibly) secret input."""
    return value["value"] if is_secret(value) else value


def build_stack(stack: str = "dev", **overrides: str) -> ProgramRun:
    """Run the program for a stack file, with `redis-eks:` keys overridden; the secret
    settings among them as if set with `pulumi config set --secret`."""
    config = load_stack_config(stack)
    config.update({f"redis-eks:{key}": value for key, value in overrides.items()})
    return run_program(config, stack=stack, secret_keys=secret_config_keys(config))


@pytest.fixture(scope="session")
def dev_stack() -> ProgramRun:
    return build_stack("dev")


@pytest.fixture(scope="session")
def prod_stack() -> ProgramRun:
    return build_stack("prod")


@pytest.fixture(scope="session")
def existing_stack() -> ProgramRun:
    """The workload on a cluster made elsewhere (e.g. kind), from an empty stack file."""
    return run_program(
        {
            "redis-eks:platform": "existing",
            "redis-eks:kubeconfig": KUBECONFIG,
            "redis-eks:storageProvisioner": "rancher.io/local-path",
        },
        stack="local",
        secret_keys=["redis-eks:kubeconfig"],
    )
