"""The rendered objects pass the auditor's Kubernetes scanner: checkov, run by tools/scan-manifests.sh
on every golden render. Each finding is either fixed in the render or carried on its object as an
explicit exception with a reason, `checkov.io/skipN: CKV_K8S_XX=<reason>` in metadata.annotations."""

import os
import re
import subprocess

import pytest
import yaml

from tools.render_manifests import GOLDEN_DIR, GOLDEN_RENDERS, PROJECT_DIR

SCRIPT = PROJECT_DIR / "tools" / "scan-manifests.sh"
# tools/scan-manifests.sh: 0 clean, 1 findings, 2 the scan could not run, 3 no .venv-scan.
CLEAN, FINDINGS, SCAN_ERROR, NO_VENV = 0, 1, 2, 3
# checkov (3.3.30, kubernetes_utils.SKIP_ANNOTATION_PREFIXES) takes any annotation whose key
# contains one of these as an exception, and splits its value on "=" into check ID and reason.
SKIP_KEY_PARTS = ("checkov.io/skip", "bridgecrew.io/skip", "cortex.io/skip")
EXCEPTION = re.compile(r"(?P<check>CKV2?_K8S_[0-9]+)(=(?P<reason>.*))?", re.DOTALL)
# What pip prints when it reaches no package index: only then may the scan be skipped, and
# never in CI.
NO_NETWORK = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def run_scan(*files) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(SCRIPT), *map(str, files)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def output_of(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"


@pytest.fixture(scope="module")
def golden_scan() -> subprocess.CompletedProcess:
    """The scan of every golden render; builds .venv-scan first when it is missing or stale."""
    result = run_scan()
    if result.returncode == NO_VENV:
        offline = any(marker in result.stdout + result.stderr for marker in NO_NETWORK)
        if offline and not in_ci():
            pytest.skip(
                "tools/scan-manifests.sh could not build .venv-scan: pip reached no package index "
                "(no network?); CI never skips this"
            )
        pytest.fail(f"tools/scan-manifests.sh could not build .venv-scan:\n{output_of(result)}")
    return result


def test_every_golden_render_has_no_finding_without_an_exception(golden_scan):
    assert golden_scan.returncode == CLEAN, (
        "checkov flags rendered objects: fix each in components/, or carry it on its object as "
        f"`checkov.io/skipN: CKV_K8S_XX=<reason>` (then `make golden`):\n{output_of(golden_scan)}"
    )
    assert golden_scan.stdout == "" and golden_scan.stderr == "", output_of(golden_scan)


def test_the_scan_covers_every_golden_render():
    """The script globs tests/golden/*/manifests.yaml: every render there is one it scans."""
    scanned = sorted(path.parent.name for path in GOLDEN_DIR.glob("*/manifests.yaml"))
    assert scanned == sorted(GOLDEN_RENDERS)


def exception_annotations(node, where=""):
    """(where, key, value) of every checkov exception annotation anywhere in a manifest."""
    if isinstance(node, dict):
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        for key, value in annotations.items():
            if any(part in key for part in SKIP_KEY_PARTS):
                yield where, key, value
        for key, child in node.items():
            yield from exception_annotations(child, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from exception_annotations(child, f"{where}[{index}]")


def exception_problem(value) -> str | None:
    """Why an exception annotation's value is not `<check ID>=<reason>`, or None."""
    match = EXCEPTION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return "is not CKV_K8S_XX=<reason>"
    reason = (match["reason"] or "").strip()
    if not reason or reason == "No comment provided":
        return "has no reason"
    if "=" in reason:
        return 'has "=" in its reason (checkov 3.3.30 splits on it and crashes)'
    return None


@pytest.mark.parametrize("render", GOLDEN_RENDERS)
def test_every_exception_annotation_in_the_goldens_has_a_reason(render):
    path = GOLDEN_DIR / render / "manifests.yaml"
    manifests = [manifest for manifest in yaml.safe_load_all(path.read_text()) if manifest]
    assert manifests
    problems = []
    for manifest in manifests:
        name = f"{manifest['kind']} {manifest['metadata'].get('name')}"
        for where, key, value in exception_annotations(manifest):
            problem = exception_problem(value)
            if problem:
                problems.append(f"{name}: {where or 'metadata'}.annotations[{key}] = {value!r} {problem}")
    assert not problems, f"{path.relative_to(PROJECT_DIR)}:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("CKV_K8S_43=tags are pinned; digests cannot be resolved offline", None),
        ("CKV2_K8S_6=a reason", None),
        ("CKV_K8S_43", "has no reason"),
        ("CKV_K8S_43=  ", "has no reason"),
        ("CKV_K8S_43=a=b", 'has "=" in its reason (checkov 3.3.30 splits on it and crashes)'),
        ("digest: a reason", "is not CKV_K8S_XX=<reason>"),
    ],
)
def test_exception_problem(value, problem):
    assert exception_problem(value) == problem


def workload(name: str, image: str, annotations=None) -> list[dict]:
    """A StatefulSet that passes every checkov check but the image ones, and its NetworkPolicy."""
    labels = {"app": name}
    metadata = {"name": name, "namespace": "scan-test", "labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    probe = {"exec": {"command": ["true"]}}
    container = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "livenessProbe": probe,
        "readinessProbe": probe,
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata,
        "spec": {
            "serviceName": name,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "containers": [container],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                },
            },
        },
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "scan-test"},
        "spec": {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress", "Egress"]},
    }
    return [statefulset, policy]


def findings_by_file(stdout: str) -> dict[str, set[str]]:
    """File name -> the check IDs the script listed for it (`<path>:<lines>  <resource>  <ID>: ...`)."""
    found: dict[str, set[str]] = {}
    for line in stdout.splitlines():
        location, _resource, check = line.split("  ", 2)
        found.setdefault(os.path.basename(location.rsplit(":", 1)[0]), set()).add(check.split(":", 1)[0])
    return found


def test_the_script_fails_on_findings_and_honours_only_exceptions_with_a_reason(golden_scan, tmp_path):
    """The script on objects of known verdicts (it only runs once .venv-scan is there)."""
    tag = "redis:8.10.2-trixie"
    digest = f"{tag}@sha256:{'0' * 64}"
    reasons = {
        "checkov.io/skip1": "CKV_K8S_43=pinned by exact tag",
        "checkov.io/skip2": "CKV_K8S_15=IfNotPresent with an immutable tag",
    }
    cases = {
        "plain.yaml": workload("plain", tag),
        "excepted.yaml": workload("excepted", tag, reasons),
        "reasonless.yaml": workload("reasonless", tag, {"checkov.io/skip1": "CKV_K8S_43"}),
        "digest.yaml": workload("digest", digest),
    }
    for name, manifests in cases.items():
        (tmp_path / name).write_text(yaml.safe_dump_all(manifests))

    result = run_scan(*(tmp_path / name for name in cases))

    assert result.returncode == FINDINGS, output_of(result)
    assert findings_by_file(result.stdout) == {
        # Both image checks fail on a tag with IfNotPresent ...
        "plain.yaml": {"CKV_K8S_43", "CKV_K8S_15"},
        # ... an exception without a reason is still a finding, next to the unexcepted one;
        "reasonless.yaml": {"CKV_K8S_43", "CKV_K8S_15"},
        # exceptions with reasons clear them, and so does a digest (with IfNotPresent, too).
    }, output_of(result)
    assert "exception without a reason" in result.stdout


def test_the_script_rejects_a_file_with_no_kubernetes_object(golden_scan, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("just: data\n")
    result = run_scan(empty)
    assert result.returncode == SCAN_ERROR, output_of(result)
    assert "checked no Kubernetes object" in result.stderr
