"""What each stack renders equals its golden files under tests/golden/, so every change to what reaches a cluster is reviewed as a diff."""

import difflib
import subprocess
import sys

import pytest
import yaml

from components.stack_settings import DEFAULT_CLUSTER_VERSION, NAMESPACE
from testkit.custom_resources import validate_manifest
from tools.render_manifests import (
    GOLDEN_DIR,
    GOLDEN_RENDERS,
    GOLDEN_STACKS,
    GOLDEN_VARIANTS,
    PROJECT_DIR,
    golden_config,
    golden_renders,
    main,
)

HINT = "run `make golden` and review the diff"


@pytest.fixture(scope="module")
def renders():
    """Golden path -> freshly rendered text, for every golden directory (one program run each)."""
    rendered = {}
    for name in GOLDEN_RENDERS:
        rendered.update(golden_renders(name))
    return rendered


def golden_mismatch(path, rendered: str, golden=None):
    """None when the golden file (or `golden`, standing in for its text) holds `rendered`,
    else a message with the unified diff and how to update it."""
    relative = path.relative_to(PROJECT_DIR)
    if golden is None:
        if not path.exists():
            return f"{relative} is missing; {HINT}"
        golden = path.read_text()
    if golden == rendered:
        return None
    diff = "".join(
        difflib.unified_diff(
            golden.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            fromfile=f"{relative} (golden)",
            tofile=f"{relative} (rendered now)",
        )
    )
    return f"{relative} differs from what the stack renders; {HINT}:\n{diff}"


def test_every_golden_directory_is_rendered_and_no_other_exists():
    assert {path.name for path in GOLDEN_DIR.iterdir() if path.is_dir()} == set(GOLDEN_RENDERS)
    assert set(GOLDEN_STACKS) <= set(GOLDEN_RENDERS) and "dev-valkey" in GOLDEN_RENDERS


@pytest.mark.parametrize("stack", GOLDEN_RENDERS)
@pytest.mark.parametrize("name", ["manifests.yaml", "redis.conf"])
def test_render_equals_its_golden_file(stack, name, renders):
    path = GOLDEN_DIR / stack / name
    problem = golden_mismatch(path, renders[path])
    if problem:
        pytest.fail(problem, pytrace=False)


def test_a_changed_value_fails_with_the_diff_and_the_hint(renders):
    path = GOLDEN_DIR / "dev" / "redis.conf"
    edited = path.read_text().replace("cluster-node-timeout 2000", "cluster-node-timeout 15000")
    problem = golden_mismatch(path, renders[path], golden=edited)
    assert problem is not None and HINT in problem
    assert "-cluster-node-timeout 15000\n+cluster-node-timeout 2000\n" in problem


@pytest.mark.parametrize("stack", GOLDEN_RENDERS)
def test_golden_redis_conf_is_the_one_in_the_config_map(stack):
    documents = list(yaml.safe_load_all((GOLDEN_DIR / stack / "manifests.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap" and "redis.conf" in d["data"])
    assert config_map["data"]["redis.conf"] == (GOLDEN_DIR / stack / "redis.conf").read_text()


@pytest.mark.parametrize("stack", GOLDEN_RENDERS)
def test_golden_manifests_pass_strict_validation(stack, renders):
    # What reviewers read, as rendered now, is what the API server of the stack's version takes.
    _stack, config = golden_config(stack)
    version = config.get(f"{NAMESPACE}:clusterVersion", DEFAULT_CLUSTER_VERSION)
    documents = list(yaml.safe_load_all(renders[GOLDEN_DIR / stack / "manifests.yaml"]))
    assert documents
    for document in documents:
        validate_manifest(document, version)


def test_the_valkey_variant_is_the_dev_stack_with_engine_valkey(renders):
    assert GOLDEN_VARIANTS["dev-valkey"] == ("dev", {"engine": "valkey"})
    documents = yaml.safe_load_all(renders[GOLDEN_DIR / "dev-valkey" / "manifests.yaml"])
    containers = next(d for d in documents if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"]
    container = next(c for c in containers if c["name"] == "redis")
    assert container["image"] == "valkey/valkey:9.1.2-trixie"
    assert container["args"] == ["valkey-server", "/conf/redis.conf"]
    assert {"name": "ENGINE_CLI", "value": "valkey-cli"} in container["env"]


def test_update_golden_takes_no_overrides(capsys):
    with pytest.raises(SystemExit):
        main(["--update-golden", "--set", "engine=valkey"])
    assert "takes no --set" in capsys.readouterr().err


def test_renders_are_deterministic(renders):
    # Object and key order come out of Pulumi's wire format differently on each run; the
    # golden files are only useful if a second run prints the same bytes.
    again = golden_renders("dev")
    assert {path: renders[path] for path in again} == again


@pytest.mark.parametrize(
    "name, arguments",
    [("dev", ["--stack", "dev"]), ("dev-valkey", ["--stack", "dev", "--set", "engine=valkey"])],
)
def test_the_render_command_prints_the_golden_manifests(name, arguments):
    result = subprocess.run(
        [sys.executable, "-m", "tools.render_manifests", *arguments],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    problem = golden_mismatch(GOLDEN_DIR / name / "manifests.yaml", result.stdout)
    assert problem is None, problem
