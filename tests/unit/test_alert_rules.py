"""The alerting rules (components/alerts/redis-cluster.rules.yaml) pass `promtool check rules`
and the promtool unit tests in tests/alerts/, every alert has a case that fires it and one
that does not, and every alert carries what the on-call person needs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from components.metrics_exporter import ALERT_RULES_FILE
from components.redis_cluster import APP_NAME
from testkit.exporter import PROMTOOL
from tools.render_manifests import PROJECT_DIR

ALERT_TESTS_DIR = PROJECT_DIR / "tests" / "alerts"
# The job label the Prometheus Operator gives the targets of the metrics Service.
METRICS_JOB = f"{APP_NAME}-metrics"
OPERATIONS_DOC = "docs/operations.md"
# A metric selector in an expression: the metric name and its braces, if any.
SELECTOR = re.compile(r"\b(redis_[a-z_]+|up)\b(\{[^}]*\})?")


@pytest.fixture(scope="module")
def promtool() -> str:
    # CI runs tools/fetch-engines.sh before the tests: a missing promtool is a broken setup,
    # and skipping would let broken rules through unnoticed.
    if not PROMTOOL.is_file():
        pytest.fail(f"{PROMTOOL} is missing: run `sh tools/fetch-engines.sh`", pytrace=False)
    return str(PROMTOOL)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERT_RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_test_files() -> list[Path]:
    return sorted(ALERT_TESTS_DIR.glob("*.yaml"))


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rules(promtool: str) -> None:
    done = run_promtool(promtool, "check", "rules", str(ALERT_RULES_FILE))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_the_promtool_unit_tests_pass(promtool: str) -> None:
    files = alert_test_files()
    assert files, f"no promtool tests in {ALERT_TESTS_DIR}"
    done = run_promtool(promtool, "test", "rules", *map(str, files))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_unit_tests_load_the_rules_file_itself() -> None:
    for path in alert_test_files():
        rule_files = yaml.safe_load(path.read_text())["rule_files"]
        assert [(path.parent / name).resolve() for name in rule_files] == [ALERT_RULES_FILE], path.name


def test_every_alert_has_a_case_that_fires_it_and_one_that_does_not() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in alert_test_files():
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test") or []:
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names, f"no alert in {ALERT_RULES_FILE}"
    assert not names - firing, f"alerts no promtool test fires: {sorted(names - firing)}"
    assert not names - quiet, f"alerts no promtool test holds quiet: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, f"tests of alerts that do not exist: {sorted((firing | quiet) - names)}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_says_how_bad_what_and_where_the_runbook_is(rule: dict) -> None:
    assert rule["labels"]["severity"] in ("critical", "warning")
    assert "for" in rule, "a `for` says how long a condition must hold; 0m when the expression debounces itself"
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["runbook_url"] == f"{OPERATIONS_DOC}#alert-{rule['alert'].lower()}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_selector_names_the_metrics_job(rule: dict) -> None:
    # Another application's redis_exporter in the same Prometheus must not page for ours.
    selectors = SELECTOR.findall(rule["expr"])
    assert selectors, rule["expr"]
    for name, braces in selectors:
        assert f'job="{METRICS_JOB}"' in braces, f"{name}{braces} does not select job {METRICS_JOB}"
