#!/bin/sh
# Scans the rendered Kubernetes objects with checkov, the scanner an auditor runs on them, and
# fails on every finding that is neither fixed in the render nor carried on its object as an
# explicit exception with a reason:
#
#     metadata:
#       annotations:
#         checkov.io/skip1: CKV_K8S_43=<why this object is an exception>
#         checkov.io/skip2: CKV_K8S_15=<why>
#
# One annotation per check (skip1, skip2, ...: keys must differ). checkov 3.3.30 splits the
# value on "=", so the reason itself may not contain one (the scan would crash), and an
# annotation without "=<reason>" is reported here as an exception without a reason. It reads
# them from the metadata of the object it reports (the StatefulSet, not its pod template).
#
# checkov lives in .venv-scan (git-ignored), a venv of its own: its pinned dependencies clash
# with the project's. pip runs only when that venv is missing, broken, or holds another pin.
# The scan itself is offline: no API key, nothing downloaded (--skip-download), no update
# check, and no .checkov.yaml or CKV_* variable of the caller's can skip a check.
#
# Usage: sh tools/scan-manifests.sh [manifests.yaml ...]
#        (default: every tests/golden/*/manifests.yaml, i.e. every golden render)
# Prints nothing when clean. Exit status: 0 clean; 1 findings (listed); 2 the scan could not
# run or did not cover every file; 3 .venv-scan could not be built (pip's log is printed).
# Environment: PYTHON (python3), the interpreter .venv-scan is built with. POSIX sh.
set -eu

CHECKOV_PIN="checkov==3.3.30"

project=$(cd "$(dirname "$0")/.." && pwd -P)
venv="$project/.venv-scan"
stamp="$venv/.checkov-pin"
python=${PYTHON:-python3}

# --- what to scan -------------------------------------------------------------------------------
if [ "$#" -eq 0 ]; then
    for file in "$project"/tests/golden/*/manifests.yaml; do
        [ -f "$file" ] && set -- "$@" "$file"
    done
    if [ "$#" -eq 0 ]; then
        echo "scan-manifests: no tests/golden/*/manifests.yaml to scan" >&2
        exit 2
    fi
fi
# Absolute paths: checkov runs in a scratch directory (see below).
first=1
for file in "$@"; do
    if [ "$first" -eq 1 ]; then
        set --
        first=0
    fi
    if [ ! -f "$file" ]; then
        echo "scan-manifests: $file: no such file" >&2
        exit 2
    fi
    set -- "$@" "$(cd "$(dirname "$file")" && pwd -P)/$(basename "$file")"
done

# --- .venv-scan, built only when needed -------------------------------------------------------
# Runs at once (two test sessions, say) share .venv-scan. Each holds a shared lock while it uses
# the venv and takes it exclusive only to rebuild it, so no run builds into, or scans from, a
# venv another run is rebuilding. The lock is on this script's own file (one inside the venv
# would go with `venv --clear`); the kernel drops it when the run ends, however it ends. flock
# is util-linux, Essential on Debian; without it, runs are not serialised.
lock() {
    :
}
if command -v flock >/dev/null 2>&1; then
    exec 9<"$project/tools/scan-manifests.sh"
    lock() {
        flock "$1" 9
    }
fi

venv_current() {
    [ -x "$venv/bin/checkov" ] || return 1
    [ -f "$stamp" ] || return 1
    [ "$(cat "$stamp")" = "$CHECKOV_PIN" ] || return 1
    # A venv whose interpreter is gone (e.g. the base Python was upgraded) is rebuilt too.
    "$venv/bin/python" -c '' >/dev/null 2>&1
}

build_venv() {
    # From scratch (--clear): a changed pin must not leave the old pin's dependencies behind.
    # The stamp is written last, so an interrupted install is redone by the next run.
    if ! out=$("$python" -m venv --clear "$venv" 2>&1); then
        echo "scan-manifests: could not create $venv with '$python -m venv':" >&2
        printf '%s\n' "$out" >&2
        exit 3
    fi
    log="$venv/pip-install.log"
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        "$CHECKOV_PIN" >"$log" 2>&1; then
        echo "scan-manifests: could not build .venv-scan: pip install $CHECKOV_PIN failed; its log:" >&2
        cat "$log" >&2
        exit 3
    fi
    printf '%s\n' "$CHECKOV_PIN" >"$stamp"
}

lock -s
if ! venv_current; then
    # Shared to exclusive is not atomic (flock(2) drops the lock first), so two runs that both
    # found the venv stale cannot deadlock; the second one then finds it current.
    lock -x
    venv_current || build_venv
    lock -s
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/scan-manifests.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the scan -----------------------------------------------------------------------------------
# env -i: no BC_API_KEY (nothing is uploaded), no CKV_SKIP_CHECK / CKV_CHECK / CKV_FRAMEWORK /
# CKV_NO_FAIL_ON_CRASH from the caller. The scratch directory as working directory and HOME:
# checkov reads .checkov.yaml from both, and a config file there could skip checks.
# CKV_SKIP_PACKAGE_UPDATE_CHECK: otherwise checkov asks PyPI for a newer version on every run,
# --skip-download notwithstanding.
status=0
(
    cd "$scratch"
    env -i PATH="$PATH" HOME="$scratch" TMPDIR="$scratch" LANG=C.UTF-8 \
        CKV_SKIP_PACKAGE_UPDATE_CHECK=true \
        "$venv/bin/checkov" --framework kubernetes --skip-download --output json --file "$@" \
        >"$scratch/report.json" 2>"$scratch/stderr.txt"
) || status=$?
# checkov exits 1 when a check failed: the report below says which. Anything else is a crash.
if [ "$status" -ne 0 ] && [ "$status" -ne 1 ]; then
    echo "scan-manifests: checkov exited $status; its messages:" >&2
    tail -n 30 "$scratch/stderr.txt" >&2
    if grep -q 'too many values to unpack' "$scratch/stderr.txt"; then
        echo "scan-manifests: a checkov.io/skip annotation has a reason containing '=': remove it from the reason" >&2
    fi
    exit 2
fi

# The report, read with .venv-scan's own Python (stdlib only): every failed check, every
# exception without a reason, and every file in which checkov found no object to check.
"$venv/bin/python" - "$scratch/report.json" "$project" "$@" <<'PYTHON'
import json
import os
import sys

report_path, project, files = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    with open(report_path, encoding="utf-8") as handle:
        data = json.load(handle)
except ValueError as error:
    print(f"scan-manifests: checkov wrote no JSON report ({error})", file=sys.stderr)
    sys.exit(2)

reports = [report for report in (data if isinstance(data, list) else [data]) if "results" in report]
findings, reasonless, parsing_errors, covered = [], [], [], set()


def where(check):
    path = check.get("file_abs_path") or check.get("file_path", "?")
    if path.startswith(project + "/"):
        path = path[len(project) + 1 :]
    first, last = (check.get("file_line_range") or [0, 0])[:2]
    return f"{path}:{first}-{last}"


for report in reports:
    results = report["results"]
    parsing_errors += results.get("parsing_errors", [])
    for kind in ("passed_checks", "failed_checks", "skipped_checks"):
        for check in results.get(kind, []):
            covered.add(os.path.realpath(check.get("file_abs_path") or ""))
    for check in results.get("failed_checks", []):
        findings.append(f"{where(check)}  {check['resource']}  {check['check_id']}: {check['check_name']}")
    for check in results.get("skipped_checks", []):
        reason = (check.get("check_result", {}).get("suppress_comment") or "").strip()
        if not reason or reason == "No comment provided":
            reasonless.append(f"{where(check)}  {check['resource']}  {check['check_id']}: exception without a reason")

unscanned = [path for path in files if os.path.realpath(path) not in covered]
for path in parsing_errors:
    print(f"scan-manifests: checkov could not parse {path}", file=sys.stderr)
for path in unscanned:
    print(f"scan-manifests: checkov checked no Kubernetes object in {path}", file=sys.stderr)
for line in sorted(findings) + sorted(reasonless):
    print(line)
if findings or reasonless:
    print(
        f"scan-manifests: {len(findings) + len(reasonless)} finding(s). Fix each in the render, or carry it on"
        " the object as an exception with a reason: metadata.annotations"
        " 'checkov.io/skipN: CKV_K8S_XX=<reason, without \"=\">'.",
        file=sys.stderr,
    )
    sys.exit(1)
if parsing_errors or unscanned:
    sys.exit(2)
PYTHON
