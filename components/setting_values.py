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

_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_BINARY_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_SUFFIX = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
# An image reference as Docker parses it: [registry[:port]/]path[:tag][@digest]. A colon
# before the last slash belongs to the registry (registry.example.com:5000/redis).
_IMAGE = re.compile(
    r"^(?P<name>(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
# A tag that names one release: major.minor.patch, optionally with a variant
# (7.4.10, 7.4.10-bookworm, 8.2.3-alpine). `7`, `7.4`, `latest` or `alpine` move.
_EXACT_VERSION_TAG = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+(-[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
# An IAM role or user (a path is allowed); not an STS session (assumed-role), which EKS
# refuses in an access entry.
_IAM_PRINCIPAL_ARN = re.compile(
    r"^arn:(aws|aws-us-gov|aws-cn):iam::[0-9]{12}:(role|user)/([A-Za-z0-9_+=,.@-]+/)*[A-Za-z0-9_+=,.@-]{1,128}$"
)
_LABEL_KEY = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
# The password goes into auth.conf and a shell variable: keep it to characters that need
# no quoting anywhere (what pulumi-random is told to produce as well).
PASSWORD_PATTERN = re.compile(r"^[A-Za-z0-9_.~-]{16,512}$")


def parse_quantity(text: str) -> float:
    """The value of a Kubernetes quantity (`5Gi`, `500m`, `1.5G`) in base units."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    suffix = match.group("suffix") or ""
    factor = _BINARY_SUFFIX.get(suffix) or _DECIMAL_SUFFIX[suffix]
    return float(match.group("number")) * factor


def quantity_gib_rounded_up(text: str) -> int:
    """A size quantity in whole GiB, rounded up, as the EBS CSI driver sizes a volume for a claim.

    Exact arithmetic: `34G` is 31.66 GiB and gets a 32 GiB volume, `32Gi` exactly 32."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    suffix = match.group("suffix") or ""
    factor = Fraction(_BINARY_SUFFIX[suffix]) if suffix in _BINARY_SUFFIX else Fraction(str(_DECIMAL_SUFFIX[suffix]))
    return math.ceil(Fraction(match.group("number")) * factor / 2**30)


# Config key -> (dataclass field, parser). Parsers take the raw string (Pulumi stores every
# config value as a string; lists and objects as JSON) and raise ValueError with a message
# that says what is allowed.
def as_int(low: int, high: int, why: str = ""):
    allowed = f"a whole number from {low} to {high}" + (f" ({why})" if why else "")

    def parse(raw: str) -> int:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError(allowed) from None
        if not low <= value <= high:
            raise ValueError(allowed)
        return value

    return parse


def as_bool(raw: str) -> bool:
    text = str(raw).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise ValueError("true or false")


def one_of(choices: tuple[str, ...]):
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return raw

    return parse


def matching(pattern: re.Pattern, what: str):
    def parse(raw: str) -> str:
        if not pattern.match(raw):
            raise ValueError(what)
        return raw

    return parse


def as_quantity(raw: str) -> str:
    try:
        if parse_quantity(raw) <= 0:
            raise ValueError
    except ValueError:
        raise ValueError("a positive Kubernetes quantity such as 5Gi, 512Mi or 500m") from None
    return raw


def _json(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def as_string_list(item_check):
    def parse(raw: Any) -> tuple[str, ...]:
        value = _json(raw)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("a list of strings")
        for item in value:
            item_check(item)
        return tuple(value)

    return parse


_MANUAL_CHANGE = re.compile(
    r"^(shards=[0-9]+|replicasPerShard=[0-9]+|image=\S+|nodeGroupDrained=[A-Za-z0-9_-]+"
    r"|storageSize=\S+|storageIops=[0-9]+|storageThroughput=[0-9]+)$"
)
_MANUAL_CHANGES = (
    "shards=<n>, replicasPerShard=<n>, image=<image>, nodeGroupDrained=<node group>, storageSize=<size>, "
    "storageIops=<n> or storageThroughput=<n>"
)


def manual_change(item: str) -> None:
    if item == "password":
        raise ValueError(
            f"a list of {_MANUAL_CHANGES}; 'password' is no longer needed: "
            "a changed password is rotated by `pulumi up` itself (docs/operations.md, Rotating credentials)"
        )
    if not _MANUAL_CHANGE.match(item):
        raise ValueError(f"a list of {_MANUAL_CHANGES}; {item!r} is not one")


def subnet_id(item: str) -> None:
    if not re.match(r"^subnet-[0-9a-f]{8,17}$", item):
        raise ValueError(f"a list of subnet IDs (subnet-...); {item!r} is not one")


def cidr(item: str) -> None:
    # A bare address (0.0.0.0) would parse as a /32: a typo for 0.0.0.0/0 that locks everyone out.
    try:
        if "/" not in item:
            raise ValueError
        ipaddress.ip_network(item, strict=True)
    except ValueError:
        raise ValueError(
            f"a list of CIDR blocks in prefix notation such as 203.0.113.0/24 (0.0.0.0/0 for anywhere); {item!r} is not one"
        ) from None


def _iam_principal(item: str) -> None:
    if not _IAM_PRINCIPAL_ARN.match(item):
        raise ValueError(
            "a list of IAM role or user ARNs such as arn:aws:iam::111122223333:role/ci-deploy "
            f"(partitions aws, aws-us-gov, aws-cn; not an sts assumed-role ARN); {item!r} is not one"
        )


def as_principal_list(raw: Any) -> tuple[str, ...]:
    arns = as_string_list(_iam_principal)(raw)
    # IAM names are unique regardless of case: Role/CI and role/ci are the same identity.
    seen: dict[str, str] = {}
    for arn in arns:
        if arn.lower() in seen:
            raise ValueError(f"each IAM principal once; {arn!r} is listed twice")
        seen[arn.lower()] = arn
    return arns


def as_image(raw: str) -> str:
    allowed = (
        "an image pinned by an exact version tag (redis:8.0.6, valkey/valkey:9.1.2-trixie, "
        "registry.example.com:5000/redis:8.0.6-alpine), with a digest beside it if you like (redis:8.0.6@sha256:<64 hex>)"
    )
    match = _IMAGE.match(raw)
    if not match:
        raise ValueError(allowed)
    tag = match.group("tag")
    if tag is None and match.group("digest"):
        # The digest pins the bytes, but only the tag says which release they are, and the
        # release decides the config and which changes a running stack may take.
        raise ValueError(f"{allowed}; a digest alone does not say which release it is")
    if tag is None:
        raise ValueError(f"{allowed}; it names no tag, which means latest")
    if not _EXACT_VERSION_TAG.match(tag):
        raise ValueError(f"{allowed}; the tag {tag!r} moves to new releases")
    return raw


def as_labels(raw: Any) -> tuple[tuple[str, str], ...]:
    value = _json(raw)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError('an object of Kubernetes labels such as {"redis-client": "true"}')
    for key, label in value.items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(label):
            raise ValueError(f"valid Kubernetes label keys and values; {key}={label} is not")
    return tuple(sorted(value.items()))


def as_arn(service: str):
    return matching(re.compile(rf"^arn:aws[a-z-]*:{service}:[a-z0-9-]+:\d{{12}}:.+$"), f"an {service} ARN")


# A KMS key by its key ID: an alias ARN (alias/...) names no key in an IAM policy's Resource,
# which matches key ARNs only, so the EBS CSI driver's and DLM's policies would allow nothing.
_KMS_KEY_ARN = re.compile(
    r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
)


def as_kms_key_arn(raw: str) -> str:
    if not _KMS_KEY_ARN.match(raw):
        raise ValueError(
            "a KMS key ARN with its key ID, arn:aws:kms:<region>:<account>:key/<key id> (aws kms describe-key "
            "--key-id alias/<name> prints it); not an alias ARN, which no IAM policy matches"
        )
    return raw


_USER_FIELDS = {"commands": "commands", "keys": "keys", "readKeys": "read_keys", "channels": "channels"}
_USERS_EXAMPLE = '{"app": {"commands": ["+@read", "+@write"], "keys": ["app:*"]}}'


def as_users(raw: Any) -> tuple[UserAccess, ...]:
    """The `users` object: name -> {commands, keys, readKeys, channels}, each a list."""
    value = _json(raw)
    if not isinstance(value, dict):
        raise ValueError(f"an object of users such as {_USERS_EXAMPLE}")
    users = []
    for name, spec in sorted(value.items()):
        if name in RESERVED_USERS:
            raise ValueError(f"user names other than {', '.join(RESERVED_USERS)} (this program's own users)")
        if not USER_NAME.match(name):
            raise ValueError(f"user names of lower-case letters, digits, '_' and '-' (at most 32); {name!r} is not one")
        if not isinstance(spec, dict) or set(spec) - set(_USER_FIELDS):
            raise ValueError(f"for user {name} an object with {', '.join(_USER_FIELDS)}, each a list of strings")
        lists = {}
        for key, attribute in _USER_FIELDS.items():
            items = spec.get(key, [])
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError(f"users.{name}.{key} to be a list of strings")
            lists[attribute] = tuple(items)
        if not lists["commands"]:
            raise ValueError(f'users.{name}.commands to grant something, e.g. ["+@read"]')
        for rule in lists["commands"]:
            if not COMMAND_RULE.match(rule):
                raise ValueError(
                    f"users.{name}.commands entries such as +@read, -@dangerous or +get; {rule!r} is not one"
                )
        for key in ("keys", "read_keys", "channels"):
            for pattern in lists[key]:
                if not PATTERN.match(pattern):
                    raise ValueError(
                        f"users.{name} patterns without spaces, quotes or ACL markers; {pattern!r} is not one"
                    )
        users.append(UserAccess(name=name, **lists))
    return tuple(users)


def as_cert_manager_issuer(raw: Any) -> tuple[str, str]:
    """`Issuer/<name>` or `ClusterIssuer/<name>`: who signs the nodes' certificate."""
    kind, _, name = str(raw).partition("/")
    if kind not in ("Issuer", "ClusterIssuer") or not DNS_SUBDOMAIN.match(name):
        raise ValueError("Issuer/<name> (in the Redis namespace) or ClusterIssuer/<name>")
    return kind, name


# A DLM schedule: cron(minutes hours day-of-month month day-of-week year), AWS's six-field
# form (one of day-of-month and day-of-week is "?").
_DLM_CRON = re.compile(r"^cron\((?P<fields>[^()]+)\)$")
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?,/#L W-]+$")
AWS_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$")


def as_backup_schedule(raw: str) -> Optional[str]:
    """`off`, or a DLM cron expression such as cron(0 3 * * ? *)."""
    allowed = 'off, or an AWS cron expression with six fields such as "cron(0 3 * * ? *)" (daily at 03:00 UTC)'
    if raw.strip().lower() == "off":
        return None
    match = _DLM_CRON.match(raw.strip())
    fields = match.group("fields").split() if match else []
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(allowed)
    if (fields[2] == "?") == (fields[4] == "?"):
        raise ValueError(f"{allowed}; AWS needs '?' in exactly one of day-of-month and day-of-week")
    return raw.strip()


def aws_region(raw: str) -> str:
    if not AWS_REGION.match(raw):
        raise ValueError("an AWS region such as eu-central-1")
    return raw
