"""The GitHub workflows in .github/workflows, checked offline: schema-valid, free of zizmor findings,
every action pinned to a commit, least-privilege tokens, and running what the README and the stack
files say (the test command, a preview of every stack, prod behind its environment).

Each check is a function from workflow text or parsed workflows to a list of problems, each naming
the file and what is wrong; the tests at the end feed the checks copies of the real workflows with
one thing broken, so every check is shown to notice what it is there for.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT_DIR = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = PROJECT_DIR / ".github" / "workflows"
TEST_WORKFLOW = ".github/workflows/test.yml"
PREVIEW_WORKFLOW = ".github/workflows/preview.yml"
DEPLOY_WORKFLOW = ".github/workflows/deploy.yml"
CI_SCRIPT = PROJECT_DIR / ".ci" / "run"
README = PROJECT_DIR / "README.md"

# The tools requirements-dev.txt pins, from the interpreter's own virtualenv, so the tests run
# the versions pinned there and not whatever a PATH holds.
BIN_DIR = Path(sys.executable).parent
ZIZMOR = BIN_DIR / "zizmor"
CHECK_JSONSCHEMA = BIN_DIR / "check-jsonschema"

AWS_CREDENTIALS_ACTION = "aws-actions/configure-aws-credentials"
PULUMI_ACTION = "pulumi/actions"
SHA = re.compile(r"[0-9a-f]{40}")
VERSION_COMMENT = re.compile(r"#\s*v\d+\.\d+\.\d+\s*$")
USES_LINE = re.compile(r"""^\s*(?:-\s+)?uses:\s*["']?(?P<ref>[^\s"'#]+)["']?\s*(?P<comment>#.*)?$""")
IMAGE_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# .ci/run is a bash script (its shebang): run by bash or by its own path.
CI_SCRIPT_CALL = re.compile(r"^(?:bash\s+)?(?:\./)?\.ci/run$")

Workflow = dict[str, Any]


# --- reading ------------------------------------------------------------------------------------


def workflow_paths() -> list[Path]:
    return sorted([*WORKFLOWS_DIR.glob("*.yml"), *WORKFLOWS_DIR.glob("*.yaml")])


def relative(path: Path) -> str:
    return path.resolve().relative_to(PROJECT_DIR).as_posix()


def display(path: Path) -> str:
    """How a message names a file: its path in the repository, or its name outside it."""
    path = Path(path).resolve()
    return relative(path) if path.is_relative_to(PROJECT_DIR) else path.name


def load_workflows() -> dict[str, tuple[str, Workflow]]:
    """Every workflow by its path in the repository: (text, parsed)."""
    return {relative(path): (path.read_text(), yaml.safe_load(path.read_text())) for path in workflow_paths()}


def triggers(workflow: Workflow) -> dict[str, Any]:
    """The `on:` mapping (YAML 1.1 reads the bare key `on` as True)."""
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on or {}


def jobs(workflow: Workflow) -> dict[str, dict]:
    return workflow.get("jobs") or {}


def steps(job: dict) -> list[dict]:
    return job.get("steps") or []


def action_of(uses: str) -> str:
    """`owner/repo` of a `uses:` value (`owner/repo/path@ref` included)."""
    return "/".join(uses.split("@", 1)[0].split("/")[:2])


def is_local(uses: str) -> bool:
    return uses.startswith(("./", "$/"))


def steps_using(job: dict, action: str) -> list[dict]:
    return [step for step in steps(job) if action_of(str(step.get("uses", ""))) == action]


def environment_name(job: dict) -> str | None:
    environment = job.get("environment")
    return environment.get("name") if isinstance(environment, dict) else environment


def commands(script: str) -> list[str]:
    """A shell script's commands: its lines without comments or blanks, split at `&&` and `;`."""
    found = []
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found.extend(part.strip() for part in re.split(r"&&|;", line) if part.strip())
    return found


def stack_files() -> list[str]:
    """The stacks of the repository: one Pulumi.<stack>.yaml each."""
    return sorted(path.name[len("Pulumi.") : -len(".yaml")] for path in PROJECT_DIR.glob("Pulumi.*.yaml"))


def pinned_pulumi_version() -> str:
    """The pulumi SDK release requirements.txt pins (the CLI is released with the same number)."""
    match = re.search(r"^pulumi==(\S+)$", (PROJECT_DIR / "requirements.txt").read_text(), re.MULTILINE)
    assert match, "requirements.txt pins no `pulumi==` release"
    return match.group(1)


def resolved_stacks(job: dict, value: str) -> list[str]:
    """The stack names a `stack-name:` value stands for: itself, or a matrix dimension's values."""
    match = re.fullmatch(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", str(value).strip())
    if not match:
        return [str(value)]
    matrix = (job.get("strategy") or {}).get("matrix") or {}
    values = list(matrix.get(match.group(1)) or [])
    values += [entry[match.group(1)] for entry in matrix.get("include") or [] if match.group(1) in entry]
    return [str(value) for value in values]


def pulumi_runs(workflow: Workflow, command: str) -> list[tuple[str, dict, dict, list[str]]]:
    """(job id, job, step, stacks) of every pulumi/actions step running `command`."""
    runs = []
    for job_id, job in jobs(workflow).items():
        for step in steps_using(job, PULUMI_ACTION):
            inputs = step.get("with") or {}
            if inputs.get("command") == command:
                runs.append((job_id, job, step, resolved_stacks(job, inputs.get("stack-name", ""))))
    return runs


def is_true(value) -> bool:
    return value is True or str(value).strip().lower() == "true"


# --- the checks: each returns a list of problems, every one naming its file --------------------


def schema_problems(path: Path) -> list[str]:
    """check-jsonschema against the GitHub workflow schema it vendors (offline)."""
    result = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode == 0:
        return []
    return [f"{display(path)}: not a valid GitHub workflow:\n{result.stdout}{result.stderr}"]


def zizmor_findings(paths: list[Path]) -> list[str]:
    """Every zizmor finding on the files, one line each.

    The widest persona (auditor) and no ignores: an inline `# zizmor: ignore` or a config file
    cannot silence a finding; an exception means changing this function, in review like any
    code. --offline: no network, so the online audits (known-vulnerable actions, impostor
    commits) are left out; the pins below are what keeps them meaningful."""
    result = subprocess.run(
        [
            str(ZIZMOR),
            "--offline",
            "--no-config",
            "--no-ignores",
            "--persona=auditor",
            "--format=json",
            "--no-progress",
            *map(str, paths),
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # 0: no finding; 10-14: findings, by highest severity; anything else: zizmor could not run.
    if result.returncode != 0 and not 10 <= result.returncode <= 14:
        raise AssertionError(f"zizmor failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    findings = []
    for finding in json.loads(result.stdout or "[]"):
        where = "?"
        for location in finding["locations"]:
            if location["symbolic"]["kind"] == "Primary":
                path = location["symbolic"]["key"]["Local"]["verbatim_path"]
                where = f"{display(PROJECT_DIR / path)}:{location['concrete']['location']['start_point']['row'] + 1}"
        determinations = finding["determinations"]
        findings.append(
            f"{where}: {finding['ident']} ({determinations['severity']}, confidence "
            f"{determinations['confidence']}): {finding['desc']}"
        )
    return findings


def pin_problems(name: str, text: str) -> list[str]:
    """Every action from outside the repository at a full commit SHA with a `# vX.Y.Z` comment,
    and every container image by digest."""
    problems = []
    on_lines = set()
    for number, line in enumerate(text.splitlines(), start=1):
        match = USES_LINE.match(line)
        if not match:
            continue
        ref, comment = match.group("ref"), match.group("comment") or ""
        on_lines.add(ref)
        if is_local(ref):
            continue
        if ref.startswith("docker://"):
            if not IMAGE_DIGEST.search(ref):
                problems.append(f"{name}:{number}: {ref} is not pinned by digest (@sha256:...)")
            continue
        _, _, version = ref.partition("@")
        if not SHA.fullmatch(version):
            problems.append(f"{name}:{number}: {ref} is not pinned to a full 40-hex commit SHA")
        elif not VERSION_COMMENT.search(comment):
            problems.append(f"{name}:{number}: {ref} has no `# vX.Y.Z` comment naming the release of its SHA")
    workflow = yaml.safe_load(text)
    for job_id, job in jobs(workflow).items():
        refs = [job["uses"]] if "uses" in job else [step["uses"] for step in steps(job) if "uses" in step]
        problems += [
            f"{name}: job {job_id}: `uses: {ref}` is not on a line of its own, so its pin comment is unchecked"
            for ref in refs
            if ref not in on_lines
        ]
        container = job.get("container")
        images = [container.get("image") if isinstance(container, dict) else container]
        images += [service.get("image") for service in (job.get("services") or {}).values()]
        problems += [
            f"{name}: job {job_id}: image {image} is not pinned by digest (@sha256:<64 hex>)"
            for image in images
            if image and not IMAGE_DIGEST.search(str(image))
        ]
    return problems


def consistency_problems(texts: dict[str, str]) -> list[str]:
    """One action, one pin: the same release at the same SHA in every workflow."""
    seen: dict[str, set[str]] = {}
    for text in texts.values():
        for line in text.splitlines():
            match = USES_LINE.match(line)
            if match and "@" in match.group("ref") and not is_local(match.group("ref")):
                pin = f"{match.group('ref').split('@')[1]} {(match.group('comment') or '').strip()}"
                seen.setdefault(action_of(match.group("ref")), set()).add(pin)
    return [
        f"{action} is pinned differently across .github/workflows: {sorted(pins)}"
        for action, pins in sorted(seen.items())
        if len(pins) > 1
    ]


def permission_problems(name: str, workflow: Workflow) -> list[str]:
    """No token scope by default; each job names its own, and writes only where they are used:
    id-token where AWS credentials come from OIDC, pull-requests where the preview is
    commented."""
    problems = []
    if workflow.get("permissions", "missing") != {}:
        problems.append(
            f"{name}: the top-level permissions must be `{{}}` (each job grants its own), "
            f"not {workflow.get('permissions', 'missing')!r}"
        )
    for job_id, job in jobs(workflow).items():
        granted = job.get("permissions")
        if not isinstance(granted, dict):
            problems.append(
                f"{name}: job {job_id}: needs explicit per-scope permissions, not {granted!r}"
                if granted is not None
                else f"{name}: job {job_id}: has no explicit permissions"
            )
            continue
        uses_aws = bool(steps_using(job, AWS_CREDENTIALS_ACTION))
        comments = any(
            is_true((step.get("with") or {}).get("comment-on-pr")) for step in steps_using(job, PULUMI_ACTION)
        )
        for scope, level in granted.items():
            if level not in ("read", "write", "none"):
                problems.append(f"{name}: job {job_id}: {scope}: {level!r} is no permission level")
            elif level == "write" and scope == "id-token" and not uses_aws:
                problems.append(f"{name}: job {job_id}: id-token: write without {AWS_CREDENTIALS_ACTION}")
            elif level == "write" and scope == "pull-requests" and not comments:
                problems.append(f"{name}: job {job_id}: pull-requests: write without a preview commented on the PR")
            elif level == "write" and scope not in ("id-token", "pull-requests"):
                problems.append(f"{name}: job {job_id}: {scope}: write is more than any job here needs")
        if uses_aws and granted.get("id-token") != "write":
            problems.append(f"{name}: job {job_id}: {AWS_CREDENTIALS_ACTION} needs id-token: write for OIDC")
        if comments and granted.get("pull-requests") != "write":
            problems.append(f"{name}: job {job_id}: comment-on-pr needs pull-requests: write")
    return problems


def job_problems(name: str, workflow: Workflow) -> list[str]:
    """Every job that runs steps has a time limit and a fixed runner image (a `*-latest` label
    moves under the workflow). A job calling a reusable workflow takes neither: the called
    workflow's jobs carry their own."""
    problems = []
    for job_id, job in jobs(workflow).items():
        if "uses" in job:
            continue
        timeout = job.get("timeout-minutes")
        if not isinstance(timeout, int) or timeout <= 0:
            problems.append(f"{name}: job {job_id}: has no timeout-minutes")
        runner = job.get("runs-on")
        # An expression (a self-hosted runner named by a variable) names its images as quoted
        # fallbacks: each must be fixed too.
        images = re.findall(r"'([^']*)'", runner) if isinstance(runner, str) and "${{" in runner else [runner]
        if not images or not all(isinstance(image, str) and not image.endswith("-latest") for image in images):
            problems.append(f"{name}: job {job_id}: runs-on {runner!r} is not a fixed runner image")
    return problems


# What aws-actions/configure-aws-credentials asks STS for with OIDC when role-duration-seconds
# is not given (its action.yml: "1 hour for OIDC"), and the most any role allows (IAM's
# MaxSessionDuration, 1 to 12 hours).
DEFAULT_OIDC_SESSION_SECONDS = 3600
MAX_SESSION_SECONDS = 43200


def session_problems(name: str, workflow: Workflow) -> list[str]:
    """Every AWS session lasts as long as its job may run: credentials that expire mid-job fail
    its last steps (a long `pulumi up` half done)."""
    problems = []
    for job_id, job in jobs(workflow).items():
        for step in steps_using(job, AWS_CREDENTIALS_ACTION):
            raw = (step.get("with") or {}).get("role-duration-seconds", DEFAULT_OIDC_SESSION_SECONDS)
            seconds = int(raw)
            job_seconds = int(job.get("timeout-minutes") or 360) * 60
            if seconds < job_seconds:
                problems.append(
                    f"{name}: job {job_id}: the AWS session ({seconds} s) ends before the job may ({job_seconds} s): "
                    "set role-duration-seconds to cover timeout-minutes"
                )
            if seconds > MAX_SESSION_SECONDS:
                problems.append(f"{name}: job {job_id}: role-duration-seconds {seconds} is past IAM's 12-hour limit")
    return problems


# What a deploy job spends before `pulumi up` starts: checkout, the two virtualenvs, and the
# preview with its refresh (an allowance; GitHub's runners were not timed here).
JOB_SETUP_SECONDS = 15 * 60


def roll_problems(name: str, workflow: Workflow, budgets: dict[str, int]) -> list[str]:
    """The job that runs `pulumi up` of a stack outlasts the longest that `pulumi up` may wait
    (control plane, nodes node by node, add-ons, pods pod by pod) after the job's setup, or it
    would be cut off mid-roll."""
    problems = []
    for job_id, job, _, step_stacks in pulumi_runs(workflow, "up"):
        job_seconds = int(job.get("timeout-minutes") or 360) * 60
        for stack in step_stacks:
            if stack in budgets and budgets[stack] + JOB_SETUP_SECONDS > job_seconds:
                problems.append(
                    f"{name}: job {job_id}: a roll of {stack} may take {budgets[stack]} s after "
                    f"{JOB_SETUP_SECONDS} s of setup, more than the job's {job_seconds} s"
                )
    return problems


def stack_roll_budgets() -> dict[str, int]:
    """The longest one `pulumi up` of each stack file may wait (components/roll_budget.py:
    the control plane's update, the node groups' roll, the add-ons', the StatefulSet's roll)."""
    from components.roll_budget import deploy_seconds
    from components.stack_settings import NAMESPACE, load_stack_config, parse_settings

    budgets = {}
    for stack in stack_files():
        config = load_stack_config(stack, PROJECT_DIR)
        values = {key.split(":", 1)[1]: value for key, value in config.items() if key.startswith(f"{NAMESPACE}:")}
        budgets[stack] = deploy_seconds(parse_settings(values))
    return budgets


def readme_test_command(readme: str) -> str:
    """The command in the first fenced block under the README's `## Tests` heading."""
    section = readme.split("\n## Tests\n", 1)
    assert len(section) == 2, "README.md has no `## Tests` section"
    block = re.search(r"```[a-z]*\n(.*?)```", section[1], re.DOTALL)
    assert block, "README.md's Tests section has no fenced command"
    command = commands(block.group(1).split("#", 1)[0])
    assert command, "README.md's Tests block holds no command"
    return command[0]


def ci_script_problems(script: str, test_command: str) -> list[str]:
    """.ci/run runs the README's test command, after `make lint`."""
    found = commands(script)
    if test_command not in found:
        return [f".ci/run: does not run the README's test command `{test_command}`"]
    if "make lint" not in found[: found.index(test_command)]:
        return [f".ci/run: runs `{test_command}` without `make lint` before it"]
    return []


def ci_workflow_problems(name: str, workflow: Workflow, test_command: str) -> list[str]:
    """A job runs the README's test command, through .ci/run (or itself after `make lint`), in
    the Debian bookworm container CI runs, with CI set, on every pull request and push."""
    problems = []
    on = triggers(workflow)
    if "pull_request" not in on or (on["pull_request"] or {}).keys() & {
        "branches",
        "branches-ignore",
        "paths",
        "paths-ignore",
    }:
        problems.append(f"{name}: does not run on every pull request")
    if "push" not in on:
        problems.append(f"{name}: does not run on push")
    runners = []
    for job_id, job in jobs(workflow).items():
        run = [command for step in steps(job) for command in commands(str(step.get("run", "")))]
        via_script = any(CI_SCRIPT_CALL.match(command) for command in run)
        direct = test_command in run and "make lint" in run[: run.index(test_command)]
        if via_script or direct:
            runners.append((job_id, job))
    if not runners:
        return [*problems, f"{name}: no job runs .ci/run or `make lint` then `{test_command}` (the README's)"]
    for job_id, job in runners:
        container = job.get("container")
        image = str(container.get("image") if isinstance(container, dict) else container or "")
        if not image.startswith("debian:bookworm"):
            problems.append(
                f"{name}: job {job_id}: runs the tests outside the Debian bookworm image CI uses ({image!r})"
            )
        env = {**(workflow.get("env") or {}), **(job.get("env") or {})}
        if not is_true(env.get("CI")):
            problems.append(f"{name}: job {job_id}: CI is not set to true for .ci/run")
    return problems


def push_coverage_problems(workflows: dict[str, Workflow], test_name: str) -> list[str]:
    """A branch the test workflow's push trigger leaves out is tested by the workflow that calls
    it on a push there (deploy.yml on main), or else pushes to it run no test at all."""
    push = triggers(workflows[test_name]).get("push") or {}
    problems = []
    if push.get("branches"):
        problems.append(f"{test_name}: its push trigger is limited to {push['branches']}")
    for branch in push.get("branches-ignore") or []:
        covered = [
            name
            for name, workflow in workflows.items()
            if branch in ((triggers(workflow).get("push") or {}).get("branches") or [])
            and any(str(job.get("uses", "")).endswith(test_name) for job in jobs(workflow).values())
        ]
        if not covered:
            problems.append(f"{test_name}: a push to {branch} runs no test (no workflow on it calls {test_name})")
    return problems


# The stacks whose state holds production's secrets: a pull request's code previews them only
# behind an environment of their own (`preview-<stack>`), whose reviewers read it first.
PRODUCTION_STACKS = ("prod",)


def stack_environments(job: dict, stacks: list[str]) -> dict[str, str | None]:
    """stack -> the GitHub environment the job runs it in (a matrix entry's, when the job's
    environment is `${{ matrix.<key> }}`)."""
    environment = environment_name(job)
    match = re.fullmatch(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", str(environment or "").strip())
    if not match:
        return dict.fromkeys(stacks, environment)
    entries = ((job.get("strategy") or {}).get("matrix") or {}).get("include") or []
    return {
        str(entry.get("stack")): entry.get(match.group(1)) for entry in entries if str(entry.get("stack")) in stacks
    }


def preview_problems(
    name: str,
    workflow: Workflow,
    stacks: list[str],
    pulumi_version: str,
    production: tuple[str, ...] = PRODUCTION_STACKS,
) -> list[str]:
    """Every stack previewed on pull requests, with the policy pack, the diff commented; the
    other stacks in the `preview` environment, each production stack only in an environment of
    its own (`preview-<stack>`, the one with reviewers)."""
    problems = []
    if "pull_request" not in triggers(workflow):
        problems.append(f"{name}: does not run on pull requests")
    previewed = set()
    for job_id, job, step, step_stacks in pulumi_runs(workflow, "preview"):
        inputs = step.get("with") or {}
        previewed.update(step_stacks)
        for stack, environment in stack_environments(job, step_stacks).items():
            wanted = f"preview-{stack}" if stack in production else "preview"
            if environment != wanted:
                problems.append(
                    f"{name}: job {job_id}: previews {stack} in the environment {environment!r}, not {wanted!r}"
                    + (
                        " (a production stack's preview waits for that environment's reviewers)"
                        if stack in production
                        else ""
                    )
                )
        if not is_true(inputs.get("comment-on-pr")):
            problems.append(f"{name}: job {job_id}: the preview is not commented on the pull request")
        problems += pulumi_step_problems(name, job_id, inputs, pulumi_version)
    missing = sorted(set(stacks) - previewed)
    if missing:
        problems.append(f"{name}: no preview of the stack(s) {missing} (Pulumi.<stack>.yaml in the repository)")
    unknown = sorted(previewed - set(stacks))
    if unknown:
        problems.append(f"{name}: previews stack(s) {unknown} with no Pulumi.<stack>.yaml")
    return problems


def pulumi_step_problems(name: str, job_id: str, inputs: dict, pulumi_version: str) -> list[str]:
    problems = []
    if inputs.get("policyPacks") != "policy":
        problems.append(f"{name}: job {job_id}: pulumi {inputs.get('command')} without `policyPacks: policy`")
    if str(inputs.get("pulumi-version")) != pulumi_version:
        problems.append(
            f"{name}: job {job_id}: pulumi-version {inputs.get('pulumi-version')!r} is not the "
            f"release requirements.txt pins ({pulumi_version})"
        )
    return problems


def needs_of(workflow: Workflow, job_id: str) -> set[str]:
    """Every job `job_id` waits for, directly or not."""
    pending, found = [job_id], set()
    while pending:
        needs = jobs(workflow)[pending.pop()].get("needs") or []
        for need in [needs] if isinstance(needs, str) else needs:
            if need not in found:
                found.add(need)
                pending.append(need)
    return found


def deploy_problems(name: str, workflow: Workflow, stacks: list[str], test_name: str, pulumi_version: str) -> list[str]:
    """`pulumi up` of every stack on a push to main, after the tests, each in the GitHub
    environment of its stack name (prod's has the required reviewers), one update per stack at a
    time and never cancelled, with a policy-pack preview first."""
    problems = []
    push = triggers(workflow).get("push") or {}
    if push.get("branches") != ["main"]:
        problems.append(f"{name}: does not run on (and only on) a push to main")
    testers = {job_id for job_id, job in jobs(workflow).items() if str(job.get("uses", "")).endswith(test_name)}
    deployed: dict[str, str] = {}
    for job_id, job, step, step_stacks in pulumi_runs(workflow, "up"):
        inputs = step.get("with") or {}
        problems += pulumi_step_problems(name, job_id, inputs, pulumi_version)
        for stack in step_stacks:
            deployed[stack] = job_id
            if environment_name(job) != stack:
                problems.append(
                    f"{name}: job {job_id}: pulumi up of {stack} outside the GitHub environment {stack!r} "
                    f"(it is {environment_name(job)!r})"
                )
        concurrency = job.get("concurrency")
        group = concurrency.get("group") if isinstance(concurrency, dict) else concurrency
        if not group or not all(stack in str(group) for stack in step_stacks):
            problems.append(f"{name}: job {job_id}: no concurrency group of its own stack ({group!r})")
        elif isinstance(concurrency, dict) and concurrency.get("cancel-in-progress") not in (None, False):
            problems.append(f"{name}: job {job_id}: cancel-in-progress would stop a running pulumi up")
        if not testers & needs_of(workflow, job_id):
            problems.append(f"{name}: job {job_id}: runs pulumi up without waiting for {test_name}")
        ordered = [s for s in steps(job) if action_of(str(s.get("uses", ""))) == PULUMI_ACTION]
        first = (ordered[0].get("with") or {}) if ordered else {}
        if first.get("command") != "preview":
            problems.append(f"{name}: job {job_id}: no preview with the policy pack before pulumi up")
        else:
            problems += pulumi_step_problems(name, job_id, first, pulumi_version)
    missing = sorted(set(stacks) - set(deployed))
    if missing:
        problems.append(f"{name}: no pulumi up of the stack(s) {missing}")
    groups = [
        str(
            (job.get("concurrency") or {}).get("group")
            if isinstance(job.get("concurrency"), dict)
            else job.get("concurrency")
        )
        for job_id, job in jobs(workflow).items()
        if job_id in deployed.values()
    ]
    if len(set(groups)) != len(groups):
        problems.append(f"{name}: two stacks share a concurrency group: {groups}")
    return problems


# --- the repository's workflows -----------------------------------------------------------------


@pytest.fixture(scope="module")
def workflows() -> dict[str, tuple[str, Workflow]]:
    return load_workflows()


def test_the_three_pipelines_exist():
    names = {relative(path) for path in workflow_paths()}
    assert {TEST_WORKFLOW, PREVIEW_WORKFLOW, DEPLOY_WORKFLOW} <= names, f"missing: {names}"


def test_each_workflow_opens_with_a_purpose_comment(workflows):
    problems = [name for name, (text, _) in workflows.items() if not text.startswith("# ")]
    assert not problems, f"no one-line purpose comment at the top of: {problems}"


@pytest.mark.parametrize("path", workflow_paths(), ids=lambda path: path.name)
def test_workflow_matches_the_github_schema(path):
    problems = schema_problems(path)
    assert not problems, "\n".join(problems)


def test_zizmor_finds_nothing():
    findings = zizmor_findings(workflow_paths())
    assert not findings, "zizmor (auditor persona, offline) reports:\n" + "\n".join(findings)


def test_every_action_is_pinned_to_a_commit_with_its_release(workflows):
    texts = {name: text for name, (text, _) in workflows.items()}
    problems = [problem for name, text in texts.items() for problem in pin_problems(name, text)]
    problems += consistency_problems(texts)
    assert not problems, "\n".join(problems)


def test_tokens_are_least_privilege(workflows):
    problems = [problem for name, (_, workflow) in workflows.items() for problem in permission_problems(name, workflow)]
    assert not problems, "\n".join(problems)


def test_every_job_has_a_timeout_and_a_fixed_runner(workflows):
    problems = [problem for name, (_, workflow) in workflows.items() for problem in job_problems(name, workflow)]
    assert not problems, "\n".join(problems)


def test_ci_script_runs_the_readme_test_command_after_lint():
    problems = ci_script_problems(CI_SCRIPT.read_text(), readme_test_command(README.read_text()))
    assert not problems, "\n".join(problems)


def test_the_test_workflow_runs_the_readme_test_command_on_every_push_and_pull_request(workflows):
    command = readme_test_command(README.read_text())
    problems = ci_workflow_problems(TEST_WORKFLOW, workflows[TEST_WORKFLOW][1], command)
    problems += push_coverage_problems({name: workflow for name, (_, workflow) in workflows.items()}, TEST_WORKFLOW)
    assert not problems, "\n".join(problems)


def test_every_aws_session_outlasts_its_job(workflows):
    problems = [problem for name, (_, workflow) in workflows.items() for problem in session_problems(name, workflow)]
    assert not problems, "\n".join(problems)


def test_every_deploy_job_outlasts_a_roll_of_its_stack(workflows):
    budgets = stack_roll_budgets()
    assert set(budgets) == set(stack_files())
    problems = roll_problems(DEPLOY_WORKFLOW, workflows[DEPLOY_WORKFLOW][1], budgets)
    assert not problems, "\n".join(problems)


def test_every_stack_is_previewed_on_pull_requests(workflows):
    assert "prod" in stack_files(), f"the stack files found: {stack_files()}"
    problems = preview_problems(
        PREVIEW_WORKFLOW, workflows[PREVIEW_WORKFLOW][1], stack_files(), pinned_pulumi_version()
    )
    assert not problems, "\n".join(problems)


def test_every_stack_is_deployed_after_the_tests_prod_behind_its_environment(workflows):
    workflow = workflows[DEPLOY_WORKFLOW][1]
    problems = deploy_problems(DEPLOY_WORKFLOW, workflow, stack_files(), TEST_WORKFLOW, pinned_pulumi_version())
    assert not problems, "\n".join(problems)
    prod_jobs = [job for _, job, _, stacks in pulumi_runs(workflow, "up") if "prod" in stacks]
    assert [environment_name(job) for job in prod_jobs] == ["prod"]


# --- the checks themselves: each notices the flaw it is there for ------------------------------


def broken(name: str, old: str, new: str) -> str:
    """The text of a real workflow with one thing changed; `old` must be in it, so this table
    fails loudly when the workflow changes under it instead of testing nothing."""
    text = (PROJECT_DIR / name).read_text()
    assert old in text, f"{name} no longer holds {old!r}: update this test's broken copy"
    return text.replace(old, new, 1)


def checkout_pin() -> tuple[str, str]:
    """test.yml's checkout pin (`actions/checkout@<sha> # vX.Y.Z`) and its SHA, read from the
    file so that moving to a new release does not break the table below."""
    match = re.search(r"actions/checkout@(\w+) # v\S+", (PROJECT_DIR / TEST_WORKFLOW).read_text())
    assert match, f"{TEST_WORKFLOW} has no pinned actions/checkout to break"
    return match.group(0), match.group(1)


CHECKOUT_PIN, CHECKOUT_SHA = checkout_pin()
PULUMI_VERSION = pinned_pulumi_version()


@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        (TEST_WORKFLOW, CHECKOUT_PIN, "actions/checkout@v7", "is not pinned to a full 40-hex commit SHA"),
        (
            TEST_WORKFLOW,
            CHECKOUT_PIN,
            f"actions/checkout@{CHECKOUT_SHA}",
            "has no `# vX.Y.Z` comment",
        ),
        (TEST_WORKFLOW, "@sha256:", " #", "is not pinned by digest"),
    ],
    ids=["tag-instead-of-sha", "sha-without-release", "image-without-digest"],
)
def test_pin_check_notices(name, old, new, expected):
    problems = pin_problems(name, broken(name, old, new))
    assert any(expected in problem and name in problem for problem in problems), problems


def test_pin_check_notices_two_pins_of_one_action():
    texts = {name: (PROJECT_DIR / name).read_text() for name in (TEST_WORKFLOW, PREVIEW_WORKFLOW)}
    texts[TEST_WORKFLOW] = broken(TEST_WORKFLOW, CHECKOUT_PIN, f"actions/checkout@{CHECKOUT_SHA} # v0.0.1")
    assert any("actions/checkout is pinned differently" in problem for problem in consistency_problems(texts))


@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        (TEST_WORKFLOW, "permissions: {}", "permissions: write-all", "top-level permissions must be `{}`"),
        (
            TEST_WORKFLOW,
            "    permissions:\n      contents: read",
            "    permissions: write-all\n    x-contents: read",
            "job test: needs explicit per-scope permissions",
        ),
        (TEST_WORKFLOW, "      contents: read", "      contents: write", "contents: write is more than"),
        (
            TEST_WORKFLOW,
            "      contents: read",
            "      contents: read\n      id-token: write",
            "id-token: write without aws-actions/configure-aws-credentials",
        ),
        (
            PREVIEW_WORKFLOW,
            "          comment-on-pr: true",
            "          comment-on-pr: false",
            "pull-requests: write without a preview commented",
        ),
        (
            DEPLOY_WORKFLOW,
            "      id-token: write # the OIDC token exchanged for the environment's AWS role\n    concurrency:\n      group: pulumi-up-prod",
            "    concurrency:\n      group: pulumi-up-prod",
            "job deploy-prod: aws-actions/configure-aws-credentials needs id-token: write",
        ),
    ],
    ids=[
        "top-level-write-all",
        "job-write-all",
        "contents-write",
        "id-token-without-aws",
        "pr-write-unused",
        "aws-without-id-token",
    ],
)
def test_permission_check_notices(name, old, new, expected):
    problems = permission_problems(name, yaml.safe_load(broken(name, old, new)))
    assert any(expected in problem and name in problem for problem in problems), problems


def test_permission_check_notices_a_job_without_permissions():
    workflow = yaml.safe_load(broken(TEST_WORKFLOW, "    permissions:\n      contents: read", ""))
    assert f"{TEST_WORKFLOW}: job test: has no explicit permissions" in permission_problems(TEST_WORKFLOW, workflow)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    timeout-minutes: 30\n", "", "job preview: has no timeout-minutes"),
        ("|| 'ubuntu-24.04' }}", "|| 'ubuntu-latest' }}", "is not a fixed runner image"),
        (
            "runs-on: ${{ matrix.stack == 'prod' && vars.PROD_RUNNER || 'ubuntu-24.04' }}",
            "runs-on: ubuntu-latest",
            "is not a fixed runner image",
        ),
    ],
    ids=["no-timeout", "latest-fallback-runner", "latest-runner"],
)
def test_job_check_notices(old, new, expected):
    problems = job_problems(PREVIEW_WORKFLOW, yaml.safe_load(broken(PREVIEW_WORKFLOW, old, new)))
    assert any(expected in problem for problem in problems), problems


def test_schema_check_notices_an_invalid_workflow(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text(broken(TEST_WORKFLOW, "runs-on: ubuntu-24.04", "runs-onn: ubuntu-24.04"))
    problems = schema_problems(path)
    assert problems and "bad.yml: not a valid GitHub workflow" in problems[0], problems


def test_zizmor_check_notices_injection_and_unpinned_actions(tmp_path):
    path = tmp_path / "bad.yml"
    text = broken(TEST_WORKFLOW, CHECKOUT_PIN, "actions/checkout@v7")
    text = text.replace("        with:\n          persist-credentials: false\n", "", 1)
    text = text.replace("run: bash .ci/run", 'run: echo "${{ github.event.pull_request.title }}"', 1)
    path.write_text(text)
    findings = zizmor_findings([path])
    for audit in ("template-injection", "unpinned-uses", "artipacked"):
        assert any(finding.startswith("bad.yml:") and audit in finding for finding in findings), findings


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("#!/usr/bin/env bash\nmake lint\n# make test\n", "does not run the README's test command `make test`"),
        ("#!/usr/bin/env bash\nmake test\nmake lint\n", "without `make lint` before it"),
    ],
    ids=["test-commented-out", "lint-after-test"],
)
def test_ci_script_check_notices(script, expected):
    assert any(expected in problem for problem in ci_script_problems(script, "make test"))


def test_readme_command_is_read_from_the_tests_section():
    readme = "# x\n\n```sh\nmake sandbox\n```\n\n## Tests\n\n```sh\nmake check   # all of it\n```\n"
    assert readme_test_command(readme) == "make check"


@pytest.mark.parametrize(
    ("old", "new", "command", "expected"),
    [
        ("run: bash .ci/run", "run: make test", "make test", "no job runs .ci/run or `make lint` then `make test`"),
        ("run: bash .ci/run", "run: bash .ci/run", "make check", None),
        ("image: debian:bookworm", "image: ubuntu:24.04-x", "make test", "outside the Debian bookworm image"),
        ('      CI: "true"', '      CI: "false"', "make test", "CI is not set to true"),
        ("  pull_request:\n", "", "make test", "does not run on every pull request"),
    ],
    ids=["no-lint-no-script", "script-runs-any-readme-command", "not-bookworm", "ci-unset", "no-pull-request"],
)
def test_test_workflow_check_notices(old, new, command, expected):
    problems = ci_workflow_problems(TEST_WORKFLOW, yaml.safe_load(broken(TEST_WORKFLOW, old, new)), command)
    if expected is None:
        # Through .ci/run the workflow runs whatever the README names; ci_script_problems holds
        # .ci/run to it.
        assert not problems, problems
    else:
        assert any(expected in problem and TEST_WORKFLOW in problem for problem in problems), problems


def test_push_coverage_check_notices_main_left_untested(workflows):
    parsed = {name: workflow for name, (_, workflow) in workflows.items()}
    parsed[DEPLOY_WORKFLOW] = yaml.safe_load(
        broken(DEPLOY_WORKFLOW, "uses: $/.github/workflows/test.yml", "uses: $/.github/workflows/other.yml")
    )
    problems = push_coverage_problems(parsed, TEST_WORKFLOW)
    assert f"{TEST_WORKFLOW}: a push to main runs no test (no workflow on it calls {TEST_WORKFLOW})" in problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "          - stack: prod\n            environment: preview-prod\n",
            "",
            "no preview of the stack(s) ['prod']",
        ),
        (
            "          - stack: dev\n",
            "          - stack: staging\n            environment: preview\n          - stack: dev\n",
            "previews stack(s) ['staging'] with no Pulumi.<stack>.yaml",
        ),
        (
            "            environment: preview-prod",
            "            environment: preview",
            "previews prod in the environment 'preview', not 'preview-prod'",
        ),
        (
            "    environment: ${{ matrix.environment }}",
            "    environment: preview",
            "previews prod in the environment 'preview', not 'preview-prod'",
        ),
        ("          policyPacks: policy\n", "", "without `policyPacks: policy`"),
        ("          comment-on-pr: true", "          comment-on-pr: false", "not commented on the pull request"),
        (f"pulumi-version: {PULUMI_VERSION}", "pulumi-version: 3.0.0", "is not the release requirements.txt pins"),
    ],
    ids=[
        "stack-missing",
        "stack-unknown",
        "prod-unreviewed",
        "one-environment-for-all",
        "no-policy-pack",
        "no-comment",
        "other-cli",
    ],
)
def test_preview_check_notices(old, new, expected):
    workflow = yaml.safe_load(broken(PREVIEW_WORKFLOW, old, new))
    problems = preview_problems(PREVIEW_WORKFLOW, workflow, ["dev", "prod"], PULUMI_VERSION)
    assert any(expected in problem and PREVIEW_WORKFLOW in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    environment: prod\n", "", "pulumi up of prod outside the GitHub environment 'prod'"),
        (
            "    environment: prod\n",
            "    environment: dev\n",
            "pulumi up of prod outside the GitHub environment 'prod'",
        ),
        (
            "      group: pulumi-up-prod\n      cancel-in-progress: false",
            "      group: pulumi-up-prod\n      cancel-in-progress: true",
            "cancel-in-progress would stop a running pulumi up",
        ),
        ("      group: pulumi-up-prod", "      group: pulumi-up-dev", "no concurrency group of its own stack"),
        ("    needs: test\n", "", "job deploy-dev: runs pulumi up without waiting for"),
        ("    branches: [main]", "    branches: [main, release]", "does not run on (and only on) a push to main"),
    ],
    ids=[
        "prod-no-environment",
        "prod-in-dev-environment",
        "cancel-in-progress",
        "shared-group",
        "no-tests-first",
        "not-main-only",
    ],
)
def test_deploy_check_notices(old, new, expected):
    workflow = yaml.safe_load(broken(DEPLOY_WORKFLOW, old, new))
    problems = deploy_problems(DEPLOY_WORKFLOW, workflow, ["dev", "prod"], TEST_WORKFLOW, PULUMI_VERSION)
    assert any(expected in problem and DEPLOY_WORKFLOW in problem for problem in problems), problems


def test_deploy_check_notices_up_without_a_preview_first():
    text = (PROJECT_DIR / DEPLOY_WORKFLOW).read_text()
    start = text.index("      - name: pulumi preview (policy pack)", text.index("deploy-prod:"))
    end = text.index("      - name: pulumi up", start)
    workflow = yaml.safe_load(text[:start] + text[end:])
    problems = deploy_problems(DEPLOY_WORKFLOW, workflow, ["dev", "prod"], TEST_WORKFLOW, PULUMI_VERSION)
    assert f"{DEPLOY_WORKFLOW}: job deploy-prod: no preview with the policy pack before pulumi up" in problems


def test_deploy_check_notices_a_preview_first_without_the_policy_pack():
    text = (PROJECT_DIR / DEPLOY_WORKFLOW).read_text()
    start = text.index("          command: preview", text.index("deploy-dev:"))
    pack = text.index("          policyPacks: policy\n", start)
    workflow = yaml.safe_load(text[:pack] + text[pack + len("          policyPacks: policy\n") :])
    problems = deploy_problems(DEPLOY_WORKFLOW, workflow, ["dev", "prod"], TEST_WORKFLOW, PULUMI_VERSION)
    assert f"{DEPLOY_WORKFLOW}: job deploy-dev: pulumi preview without `policyPacks: policy`" in problems, problems


def test_deploy_check_notices_a_stack_never_deployed():
    workflow = yaml.safe_load((PROJECT_DIR / DEPLOY_WORKFLOW).read_text())
    problems = deploy_problems(DEPLOY_WORKFLOW, workflow, ["dev", "prod", "staging"], TEST_WORKFLOW, PULUMI_VERSION)
    assert f"{DEPLOY_WORKFLOW}: no pulumi up of the stack(s) ['staging']" in problems


@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        (
            DEPLOY_WORKFLOW,
            "          role-duration-seconds: 18300\n",
            "",
            "the AWS session (3600 s) ends before the job may (18000 s)",
        ),
        (DEPLOY_WORKFLOW, "role-duration-seconds: 18300", "role-duration-seconds: 7500", "ends before the job may"),
        (PREVIEW_WORKFLOW, "role-duration-seconds: 1800", "role-duration-seconds: 90000", "past IAM's 12-hour limit"),
    ],
    ids=["deploy-default-hour", "deploy-one-hour", "preview-past-limit"],
)
def test_session_check_notices(name, old, new, expected):
    problems = session_problems(name, yaml.safe_load(broken(name, old, new)))
    assert any(expected in problem and name in problem for problem in problems), problems


def test_roll_check_notices_a_stack_that_rolls_longer_than_its_job():
    workflow = yaml.safe_load((PROJECT_DIR / DEPLOY_WORKFLOW).read_text())
    job_seconds = 300 * 60
    fits = job_seconds - JOB_SETUP_SECONDS
    problems = roll_problems(DEPLOY_WORKFLOW, workflow, {"dev": fits, "prod": fits + 1})
    assert problems == [
        f"{DEPLOY_WORKFLOW}: job deploy-prod: a roll of prod may take {fits + 1} s after {JOB_SETUP_SECONDS} s "
        f"of setup, more than the job's {job_seconds} s"
    ]


def test_the_deploy_budget_counts_the_control_plane_and_the_node_roll_not_only_the_pods():
    """prod's pods alone roll within 40 minutes; with a clusterVersion upgrade in the same run,
    the control plane (up to 60 minutes) and six nodes drained one by one come first."""
    from components.roll_budget import roll_budget
    from components.stack_settings import NAMESPACE, load_stack_config, parse_settings

    config = load_stack_config("prod", PROJECT_DIR)
    settings = parse_settings({k.split(":", 1)[1]: v for k, v in config.items() if k.startswith(f"{NAMESPACE}:")})
    assert roll_budget(settings).update_seconds < 40 * 60
    assert stack_roll_budgets()["prod"] > 4 * 3600
