"""How one stack setting's raw value is read: the parsers (numbers, quantities, images,
ARNs, CIDRs, labels) that `stack_settings` applies to each key, each refusing with what is
allowed. Pulumi stores every config value as a string; lists and objects as JSON."""

from __future__ import annotations

import ipaddress
import json
import math
import re
from fractions import Fraction
from typing import Any, Optional

from cluster_logic.credentials import COMMAND_RULE, PATTERN, RESERVED_USERS, USER_NAME, UserAccess
from components.dlm_cron import CronError, parse_dlm_cron

# Quantities are read exactly (Fraction), with their digits capped so that no value can
# overflow or reach Python's limit on the digits of an integer.
_SIZE = re.compile(r"(?P<number>[0-9]{1,15}(?:\.[0-9]{1,9})?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)")
_CPU = re.compile(r"(?P<milli>[1-9][0-9]{0,6})m|(?P<cores>(?:0|[1-9][0-9]{0,3})(?:\.[0-9]{1,3})?)")
_BINARY_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_SUFFIX = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
GIB = 2**30
MIB = 2**20
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN_LABELS = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)*"
DNS_SUBDOMAIN = re.compile(_DNS_SUBDOMAIN_LABELS)
# Namespaces Kubernetes itself uses: the workload must not land in (and a later change of
# namespace must not delete) one of them.
RESERVED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "default")
# An image reference as Docker parses it: [registry[:port]/]path[:tag][@digest]. A colon
# before the last slash belongs to the registry (registry.example.com:5000/redis).
_IMAGE = re.compile(
    r"(?P<name>(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
# A tag that names one release: major.minor.patch, optionally with a variant
# (7.4.10, 7.4.10-bookworm, 8.2.3-alpine). `7`, `7.4`, `latest` or `alpine` move.
_EXACT_VERSION_TAG = re.compile(r"v?[0-9]+\.[0-9]+\.[0-9]+(-[A-Za-z0-9][A-Za-z0-9_.-]*)?")
# An IAM role or user (a path is allowed); not an STS session (assumed-role), which EKS
# refuses in an access entry.
_IAM_PRINCIPAL_ARN = re.compile(
    r"arn:(aws|aws-us-gov|aws-cn):iam::[0-9]{12}:(role|user)/([A-Za-z0-9_+=,.@-]+/)*[A-Za-z0-9_+=,.@-]{1,128}"
)
# A label key: an optional DNS-subdomain prefix (at most 253 characters) and a name.
_LABEL_PREFIX = re.compile(_DNS_SUBDOMAIN_LABELS)
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")
# The password goes into auth.conf and a shell variable: keep it to characters that need
# no quoting anywhere (what pulumi-random is told to produce as well).
PASSWORD_PATTERN = re.compile(r"[A-Za-z0-9_.~-]{16,512}")
PASSWORD_RULE = "16 to 512 characters from A-Z a-z 0-9 _ . ~ -"


class ValueProblems(ValueError):
    """Several things wrong with one setting's value (two bad CIDRs, two bad users): the
    settings report each on a line of its own."""

    def __init__(self, problems: list[str]):
        self.problems = tuple(problems)
        super().__init__("; ".join(problems))


def size_bytes(text: str) -> int:
    """A size quantity (`5Gi`, `512Mi`, `34G`) in whole bytes, rounded up as Kubernetes does;
    a unit is required (`1` would be one byte)."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a size with a unit")
    suffix = match.group("suffix")
    factor = _BINARY_SUFFIX.get(suffix) or _DECIMAL_SUFFIX[suffix]
    return math.ceil(Fraction(match.group("number")) * factor)


def cpu_millicores(text: str) -> int:
    """A CPU quantity (`250m`, `1`, `1.5`) in millicores."""
    match = _CPU.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a CPU quantity")
    if match.group("milli"):
        return int(match.group("milli"))
    return int(Fraction(match.group("cores")) * 1000)


def quantity_gib_rounded_up(text: str) -> int:
    """A size quantity in whole GiB, rounded up, as the EBS CSI driver sizes a volume for a claim.

    Exact arithmetic: `34G` is 31.66 GiB and gets a 32 GiB volume, `32Gi` exactly 32."""
    return math.ceil(Fraction(size_bytes(text), GIB))


def format_bytes(value: int) -> str:
    """A byte count the way a reader compares it with a setting: 6.5Gi, 300Mi."""
    for suffix, factor in (("Ti", 2**40), ("Gi", GIB), ("Mi", MIB)):
        if value >= factor:
            return f"{value / factor:.4g}{suffix}"
    return f"{value} bytes"


# Parsers take the raw string (Pulumi stores every config value as a string; lists and
# objects as JSON) and raise ValueError with a message that says what is allowed. Each value
# has one spelling: a value that Python would read leniently (" 3", "+3", "3_000", "TRUE",
# "a,b" for a list) is refused rather than turned into what was probably meant, so the stack
# file says exactly what is deployed.
def as_int(low: int, high: int, why: str = ""):
    allowed = f"a whole number from {low} to {high}" + (f" ({why})" if why else "")

    def parse(raw: str) -> int:
        # Plain decimal digits, no sign, no leading zero (YAML 1.1 reads 010 as octal).
        if not re.fullmatch(r"0|[1-9][0-9]{0,8}", str(raw)) or not low <= int(raw) <= high:
            raise ValueError(allowed)
        return int(raw)

    return parse


def as_bool(raw: str) -> bool:
    if raw in ("true", "false"):
        return raw == "true"
    raise ValueError("true or false")


def one_of(choices: tuple[str, ...]):
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return raw

    return parse


def matching(pattern: re.Pattern, what: str):
    def parse(raw: str) -> str:
        if not isinstance(raw, str) or not pattern.fullmatch(raw):
            raise ValueError(what)
        return raw

    return parse


def as_size(low: int, high: int):
    """A size with a unit (Ki, Mi, Gi, Ti or k, M, G, T), from `low` to `high` bytes."""
    allowed = f"a size with a unit such as 512Mi, 5Gi or 100G, from {format_bytes(low)} to {format_bytes(high)}"

    def parse(raw: str) -> str:
        try:
            value = size_bytes(raw)
        except ValueError:
            hint = "; a number without a unit is bytes" if re.fullmatch(r"[0-9.]{1,30}", str(raw)) else ""
            raise ValueError(allowed + hint) from None
        if not low <= value <= high:
            raise ValueError(allowed)
        return raw

    return parse


def as_cpu(low: int, high: int):
    allowed = f"a CPU quantity such as 250m, 1 or 1.5, from {low}m to {high // 1000} cores"

    def parse(raw: str) -> str:
        try:
            value = cpu_millicores(raw)
        except ValueError:
            raise ValueError(allowed) from None
        if not low <= value <= high:
            raise ValueError(allowed)
        return raw

    return parse


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(f"{key!r} is given twice")
        seen[key] = value
    return seen


def _json(raw: Any) -> Any:
    """A JSON value (objects with no key given twice), or the raw string if it is no JSON."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates)
    except _DuplicateKey:
        raise
    except (json.JSONDecodeError, RecursionError):
        return raw


def json_object(raw: Any) -> Any:
    """A JSON object whose keys are each given once; json would keep only the last."""
    try:
        return _json(raw)
    except _DuplicateKey as error:
        raise ValueError(f"an object with each key once; {error}") from None


def as_string_list(item_check, example: str = '["a", "b"]'):
    """A JSON list of strings, every bad item named."""

    def parse(raw: Any) -> tuple[str, ...]:
        value = _json(raw)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"a JSON list of strings such as {example}")
        problems = []
        for item in value:
            try:
                item_check(item)
            except ValueError as error:
                problems.append(str(error))
        if problems:
            raise ValueProblems(problems)
        return tuple(value)

    return parse


_MANUAL_CHANGE = re.compile(
    r"image=\S{1,300}|namespace=\S{1,63}"
    r"|nodeGroupDrained=[A-Za-z0-9][A-Za-z0-9_-]{0,62}|storageSize=\S{1,30}"
    r"|storageIops=[1-9][0-9]{0,5}|storageThroughput=[1-9][0-9]{0,4}"
)
MANUAL_CHANGES = (
    "image=<image>, namespace=<namespace>, nodeGroupDrained=<node group>, "
    "storageSize=<size>, storageIops=<n> or storageThroughput=<n>"
)
_SCALE_IN_ITEM = re.compile(r"(?:shards|replicasPerShard)=\S*")


def manual_change(item: str) -> None:
    if item == "password":
        raise ValueError(
            f"a list of {MANUAL_CHANGES}; 'password' is no longer needed: "
            "a changed password is rotated by `pulumi up` itself (docs/operations.md, Rotating credentials)"
        )
    if _SCALE_IN_ITEM.fullmatch(item):
        raise ValueError(
            f"a list of {MANUAL_CHANGES}; {item!r} is no longer needed: a smaller shards or replicasPerShard is "
            "scaled in by `pulumi up` itself (docs/operations.md, Scale in)"
        )
    if not _MANUAL_CHANGE.fullmatch(item):
        raise ValueError(f"a list of {MANUAL_CHANGES}; {item!r} is not one")
    name, _, value = item.partition("=")
    if name == "namespace" and not DNS_LABEL.fullmatch(value):
        raise ValueError(f"a list of {MANUAL_CHANGES}; {item!r} names no DNS-1123 label")
    if name == "storageSize" and not _SIZE.fullmatch(value):
        # The guard compares it with storageSize as written: a size with a unit, such as 10Gi.
        raise ValueError(f"a list of {MANUAL_CHANGES}; {item!r} names no size with a unit such as 10Gi")


def subnet_id(item: str) -> None:
    if not re.fullmatch(r"subnet-[0-9a-f]{8,17}", item):
        raise ValueError(f"a list of subnet IDs (subnet-...); {item!r} is not one")


def cidr(item: str) -> None:
    # A bare address (0.0.0.0) would parse as a /32: a typo for 0.0.0.0/0 that locks everyone out.
    try:
        if not re.fullmatch(r"[0-9a-fA-F.:]{2,39}/[0-9]{1,3}", item):
            raise ValueError
        ipaddress.ip_network(item, strict=True)
    except ValueError:
        raise ValueError(
            f"a list of CIDR blocks in prefix notation such as 203.0.113.0/24, the host bits zero; {item!r} is not one"
        ) from None


def as_cidr_list(raw: Any) -> tuple[str, ...]:
    cidrs = as_string_list(cidr, '["203.0.113.0/24"]')(raw)
    if not cidrs:
        # EKS reads an empty list as 0.0.0.0/0.
        raise ValueError(
            "at least one CIDR: EKS reads an empty list as 0.0.0.0/0 (set endpointPublicAccess false instead)"
        )
    twice = sorted({c for c in cidrs if cidrs.count(c) > 1})
    if twice:
        raise ValueError(f"each CIDR once; {', '.join(twice)} is listed twice")
    return cidrs


def _iam_principal(item: str) -> None:
    if not _IAM_PRINCIPAL_ARN.fullmatch(item):
        raise ValueError(
            "a list of IAM role or user ARNs such as arn:aws:iam::111122223333:role/ci-deploy "
            f"(partitions aws, aws-us-gov, aws-cn; not an sts assumed-role ARN); {item!r} is not one"
        )


def as_principal_list(raw: Any) -> tuple[str, ...]:
    arns = as_string_list(_iam_principal, '["arn:aws:iam::111122223333:role/ci-deploy"]')(raw)
    # IAM names are unique regardless of case: Role/CI and role/ci are the same identity.
    seen: dict[str, str] = {}
    twice = []
    for arn in arns:
        if arn.lower() in seen:
            twice.append(f"each IAM principal once; {arn!r} is listed twice")
        seen[arn.lower()] = arn
    if twice:
        raise ValueProblems(twice)
    return arns


def as_image(raw: str) -> str:
    allowed = (
        "an image pinned by an exact version tag (redis:8.0.6, valkey/valkey:9.1.2-trixie, "
        "registry.example.com:5000/redis:8.0.6-alpine), with a digest beside it if you like (redis:8.0.6@sha256:<64 hex>)"
    )
    match = _IMAGE.fullmatch(raw) if len(raw) <= 512 else None
    if not match:
        raise ValueError(allowed)
    tag = match.group("tag")
    if tag is None and match.group("digest"):
        # The digest pins the bytes, but only the tag says which release they are, and the
        # release decides the config and which changes a running stack may take.
        raise ValueError(f"{allowed}; a digest alone does not say which release it is")
    if tag is None:
        raise ValueError(f"{allowed}; it names no tag, which means latest")
    if not _EXACT_VERSION_TAG.fullmatch(tag):
        raise ValueError(f"{allowed}; the tag {tag!r} moves to new releases")
    return raw


def label_problem(key: Any, value: Any) -> Optional[str]:
    """Why a Kubernetes label (key and value) is not valid, or None."""
    if not isinstance(key, str) or not isinstance(value, str):
        return f"{key!r}: labels are strings"
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _LABEL_PREFIX.fullmatch(prefix)):
        return f"the label key {key!r} has a prefix that is no DNS subdomain (lower-case labels joined by dots)"
    if not _LABEL_NAME.fullmatch(name):
        return f"the label key {key!r}: a name of at most 63 letters, digits, '-', '_', '.', alphanumeric at each end"
    if not _LABEL_VALUE.fullmatch(value):
        return (
            f"the label value {value!r} of {key}: at most 63 letters, digits, '-', '_', '.', alphanumeric at each end"
        )
    return None


def as_labels(raw: Any) -> tuple[tuple[str, str], ...]:
    value = json_object(raw)
    if not isinstance(value, dict):
        raise ValueError('a JSON object of Kubernetes labels such as {"redis-client": "true"}')
    problems = [problem for key, label in value.items() if (problem := label_problem(key, label))]
    if problems:
        raise ValueProblems([f"valid Kubernetes labels; {problem}" for problem in problems])
    return tuple(sorted(value.items()))


# A KMS key by its key ID (a UUID, or mrk- and 32 hex digits for a multi-Region key): an alias
# ARN (alias/...) names no key in an IAM policy's Resource, which matches key ARNs only, so the
# EBS CSI driver's and DLM's policies would allow nothing.
_KMS_KEY_ARN = re.compile(
    r"arn:aws(?:-cn|-us-gov)?:kms:[a-z]{2}(?:-[a-z]+)+-[0-9]:[0-9]{12}:key/"
    r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
)


def as_kms_key_arn(raw: str) -> str:
    if not isinstance(raw, str) or not _KMS_KEY_ARN.fullmatch(raw):
        raise ValueError(
            "a KMS key ARN with its key ID, arn:aws:kms:<region>:<account>:key/<key id> (aws kms describe-key "
            "--key-id alias/<name> prints it); not an alias ARN, which no IAM policy matches"
        )
    return raw


_USER_FIELDS = {"commands": "commands", "keys": "keys", "readKeys": "read_keys", "channels": "channels"}
_USERS_EXAMPLE = '{"app": {"commands": ["+@read", "+@write", "-@dangerous"], "keys": ["app:*"]}}'


def as_users(raw: Any) -> tuple[UserAccess, ...]:
    """The `users` object: name -> {commands, keys, readKeys, channels}, each a list; every
    user's problems named."""
    value = json_object(raw)
    if not isinstance(value, dict):
        raise ValueError(f"a JSON object of users such as {_USERS_EXAMPLE}")
    users, problems = [], []
    for name, spec in sorted(value.items()):
        found = _user_problems(name, spec)
        if found:
            problems += found
        else:
            users.append(UserAccess(name=name, **{a: tuple(spec.get(k, [])) for k, a in _USER_FIELDS.items()}))
    if problems:
        raise ValueProblems(problems)
    return tuple(users)


def _user_problems(name: str, spec: Any) -> list[str]:
    if name in RESERVED_USERS:
        return [f"user names other than {', '.join(RESERVED_USERS)} (this program's own users); {name!r} is one"]
    if not USER_NAME.fullmatch(name):
        return [f"user names of lower-case letters, digits, '_' and '-' (at most 32); {name!r} is not one"]
    if not isinstance(spec, dict) or set(spec) - set(_USER_FIELDS):
        return [f"for user {name} an object with {', '.join(_USER_FIELDS)}, each a list of strings"]
    problems = []
    for key in _USER_FIELDS:
        items = spec.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            problems.append(f"users.{name}.{key} to be a list of strings")
    if problems:
        return problems
    if not spec.get("commands"):
        problems.append(f'users.{name}.commands to grant something, e.g. ["+@read", "-@dangerous"]')
    # Whole-string matches: a rule or pattern with a newline would split users.acl into a
    # line the server refuses to load.
    problems += [
        f"users.{name}.commands entries such as +@read, -@dangerous or +get; {rule!r} is not one"
        for rule in spec.get("commands", [])
        if not COMMAND_RULE.fullmatch(rule)
    ]
    problems += [
        f"users.{name}.{key} patterns without spaces, quotes or ACL markers; {pattern!r} is not one"
        for key in ("keys", "readKeys", "channels")
        for pattern in spec.get(key, [])
        if not PATTERN.fullmatch(pattern)
    ]
    return problems


def as_cert_manager_issuer(raw: Any) -> tuple[str, str]:
    """`Issuer/<name>` or `ClusterIssuer/<name>`: who signs the nodes' certificate."""
    kind, _, name = str(raw).partition("/")
    if kind not in ("Issuer", "ClusterIssuer") or len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        raise ValueError("Issuer/<name> (in the Redis namespace) or ClusterIssuer/<name>")
    return kind, name


def as_backup_schedule(raw: str) -> Optional[str]:
    """`off`, or a DLM cron expression such as cron(0 3 * * ? *), checked field by field."""
    allowed = 'off, or an AWS cron expression with six fields such as "cron(0 3 * * ? *)" (daily at 03:00 UTC)'
    if raw == "off":
        return None
    try:
        parse_dlm_cron(raw)
    except CronError as error:
        raise ValueError(f"{allowed}; {error}") from None
    return raw


# Every region of the AWS provider's own list, by partition: a region a copy can go to.
_PARTITION_PREFIXES = (
    ("cn-", "aws-cn"),
    ("us-gov-", "aws-us-gov"),
    ("us-isob-", "aws-iso-b"),
    ("us-isof-", "aws-iso-f"),
    ("us-iso-", "aws-iso"),
    ("eu-isoe-", "aws-iso-e"),
    ("eusc-", "aws-eusc"),
)


def region_partition(region: str) -> str:
    return next((partition for prefix, partition in _PARTITION_PREFIXES if region.startswith(prefix)), "aws")


def aws_regions() -> tuple[str, ...]:
    """The regions pulumi-aws knows (its `Region` enum, the pinned provider's list)."""
    import pulumi_aws

    return tuple(region.value for region in pulumi_aws.Region)


def aws_region(raw: str) -> str:
    if raw not in aws_regions():
        raise ValueError("an AWS region such as eu-central-1 (one pulumi-aws knows)")
    return raw
