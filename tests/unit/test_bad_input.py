"""Bad input, as a new user would type it: every row is refused by the real program under
Pulumi's mocks, as `pulumi preview` runs it, with a `pulumi.RunError` that names the key,
before any resource is registered. Together the rows cover every key of the README's
configuration table; `test_the_table_covers_every_key` prints the counts."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pulumi
import pytest

from components.stack_settings import KNOWN_KEYS, PROJECT_DIR, SettingsError, load_stack_config
from tests.unit.conftest import KUBECONFIG
from tests.unit.test_readme import table_keys
from tools.render_manifests import ProgramRun, run_program

PASSWORD = "Stack-Password-0123456789"
EXISTING = {
    "redis-eks:platform": "existing",
    "redis-eks:kubeconfig": KUBECONFIG,
    "redis-eks:storageProvisioner": "rancher.io/local-path",
}


@dataclass(frozen=True)
class Bad:
    """One bad input: `key` = `value` over a stack (`more` other settings with it), refused
    with a message naming `named` (default: redis-eks:<key>) and holding `says`."""

    key: str
    value: str
    says: tuple[str, ...] = ()
    named: str = ""
    stack: str = "dev"
    more: dict[str, str] = field(default_factory=dict)
    # Secret settings given in plain text (the others are set as secrets).
    plain: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.stack}:{self.key}={self.value!r}"[:60]


def _ints(key: str, low: int, high: int, stack: str = "dev", **more: str) -> list[Bad]:
    """Numbers in every spelling Python would take but the stack file should not."""
    ok = str(low if low > 0 else 1)
    values = ["", "three", f"{high + 1}", f" {ok}", f"{ok} ", f"{ok}\n", f"+{ok}", f"0{ok}", f"{ok}.0", "1e3"]
    values += ["9" * 5000, "\u0663", "0x10", "1_0"]
    if low > 0:
        values.append(str(low - 1))
    return [Bad(key, value, stack=stack, more=more) for value in values]


def _bools(key: str, **more: str) -> list[Bad]:
    return [
        Bad(key, value, ("true or false",), more=more) for value in ("True", "TRUE", "yes", "1", "true\n", " false")
    ]


def _newline(key: str, good: str, stack: str = "dev", **more: str) -> Bad:
    """A valid value with a trailing newline: it would reach a resource (or a file) as is."""
    return Bad(key, good + "\n", stack=stack, more=more)


ROWS: list[Bad] = [
    # --- numbers ------------------------------------------------------------------------------
    *_ints("nodeMinSize", 1, 100),
    *_ints("nodeDesiredSize", 1, 100),
    *_ints("nodeMaxSize", 1, 100),
    *_ints("availabilityZoneCount", 2, 6),
    *_ints("storageIops", 3000, 80000),
    *_ints("storageThroughput", 125, 2000),
    *_ints("shards", 3, 100),
    *_ints("replicasPerShard", 0, 5),
    *_ints("nodeTimeoutMs", 1000, 60000),
    *_ints("bootstrapTimeoutSeconds", 30, 3600),
    *_ints("rotationGraceSeconds", 0, 3600),
    *_ints("backupRetentionCount", 1, 1000),
    *_ints("backupCopyRetentionDays", 1, 3650, backupCopyRegion="eu-central-1"),
    # --- booleans -----------------------------------------------------------------------------
    *_bools("endpointPublicAccess"),
    *_bools("tls"),
    *_bools("monitoring"),
    # --- sizes and CPUs -----------------------------------------------------------------------
    Bad("storageSize", "5", ("a number without a unit is bytes",)),
    Bad("storageSize", "5GB"),
    Bad("storageSize", "0Gi"),
    Bad("storageSize", "1Pi", ("to 16Ti",)),
    Bad("storageSize", "5Gi\n"),
    Bad("storageSize", "-5Gi"),
    Bad("storageSize", "1e3Gi"),
    Bad("storageSize", "9" * 400 + "Gi"),
    Bad("storageSize", "5 Gi"),
    Bad("storageSize", "5gi"),
    Bad("storageSize", "500Mi", ("from 1Gi",)),
    Bad("storageSize", "1Gi", ("2 x maxmemory", "AOF rewrite"), more={"memoryLimit": "1Gi"}),
    Bad("storageSize", "10Gi", ("2 x maxmemory",), stack="prod"),
    Bad("memoryRequest", "1", ("a number without a unit is bytes",)),
    Bad("memoryRequest", "1k", ("from 64Mi",)),
    Bad("memoryRequest", "500m"),
    Bad("memoryRequest", "2Gi", ("at most memoryLimit",)),
    Bad("memoryRequest", "1Gi\n"),
    Bad("memoryRequest", "9" * 5000 + "Mi"),
    Bad("memoryLimit", "1Ei", ("to 1Ti",)),
    Bad("memoryLimit", "1", ("a number without a unit is bytes",)),
    Bad("memoryLimit", "128Mi", ("from 256Mi",), more={"memoryRequest": "128Mi"}),
    Bad("memoryLimit", "512Gi", ("a limit a node can give", "t3.large"), more={"storageSize": "2Ti"}),
    Bad("memoryLimit", "9" * 400 + "Gi"),
    Bad("memoryLimit", "1Gi\n"),
    Bad("memoryLimit", "1.5"),
    Bad("cpuRequest", "0"),
    Bad("cpuRequest", "0m"),
    Bad("cpuRequest", "1.2345"),
    Bad("cpuRequest", "2", ("at most cpuLimit",)),
    Bad("cpuRequest", "250m\n"),
    Bad("cpuRequest", "250 m"),
    Bad("cpuRequest", "2Ki"),
    Bad("cpuRequest", "-1"),
    Bad("cpuLimit", "1000000"),
    Bad("cpuLimit", "4", ("a limit a node can give", "t3.large")),
    Bad("cpuLimit", "1\n"),
    Bad("cpuLimit", "50m", ("from 100m",), more={"cpuRequest": "50m"}),
    # --- capacity and topology ----------------------------------------------------------------
    Bad("nodeInstanceType", "t3.nano", ("x86_64 EC2 instance type",)),
    Bad("nodeInstanceType", "zz9.huge"),
    Bad("nodeInstanceType", "m6g.large"),
    Bad("nodeInstanceType", "t3.large\n"),
    Bad("nodeInstanceType", "T3.LARGE"),
    Bad("nodeInstanceType", "large"),
    Bad("nodeDesiredSize", "3", ("cannot hold the cluster",), more={"shards": "12", "replicasPerShard": "2"}),
    Bad("nodeDesiredSize", "1", ("singleNode", "acceptRisks"), more={"nodeMinSize": "1"}),
    Bad("nodeDesiredSize", "2", ("zoneMajority", "a majority"), more={"nodeMinSize": "2"}),
    Bad("nodeDesiredSize", "4", ("nodeMaxSize (3) must hold",), more={"nodeMaxSize": "3"}),
    Bad("nodeMinSize", "4", ("nodeMinSize (4) <= redis-eks:nodeDesiredSize (3)",)),
    Bad(
        "memoryRequest",
        "4Gi",
        ("cannot hold the cluster",),
        named="redis-eks:nodeDesiredSize",
        more={"memoryLimit": "4Gi", "storageSize": "10Gi"},
    ),
    Bad("replicasPerShard", "0", ("noReplicas", "acceptRisks")),
    Bad("availabilityZoneCount", "2", ("zoneMajority",)),
    Bad("shards", "5", ("zoneMajority",), more={"availabilityZoneCount": "2", "nodeMaxSize": "6"}),
    Bad(
        "privateSubnetIds",
        '["subnet-00000000000000001", "subnet-00000000000000002"]',
        ("zoneMajority",),
        named="zoneMajority",
        more={"vpcId": "vpc-0123456789abcdef0"},
    ),
    # --- risks accepted by name ---------------------------------------------------------------
    Bad("acceptRisks", '["noReplicas"]', ("only risks the stack takes", "'noReplicas' is not one of them")),
    Bad("acceptRisks", '["everything"]', ("'everything' is not one",)),
    Bad("acceptRisks", '["dangerousCommands=app"]', ("only risks the stack takes",)),
    Bad("acceptRisks", "noReplicas", ("a JSON list of strings",)),
    Bad("acceptRisks", '["noReplicas\\n"]', more={"replicasPerShard": "0"}),
    # --- strings, whole -----------------------------------------------------------------------
    _newline("platform", "eks"),
    _newline("clusterVersion", "1.35"),
    _newline("vpcId", "vpc-0123456789abcdef0", privateSubnetIds='["subnet-00000000000000001"]'),
    _newline("natGateways", "single"),
    _newline("ebsCsiDriverVersion", "v1.66.0-eksbuild.1"),
    _newline("storageKmsKeyArn", "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
    _newline("storageProvisioner", "rancher.io/local-path", stack="existing"),
    _newline("namespace", "redis"),
    _newline("engine", "valkey"),
    _newline("image", "redis:8.10.2-trixie"),
    _newline("maxmemoryPolicy", "noeviction"),
    _newline("monitoringNamespace", "monitoring"),
    _newline("exporterImage", "oliver006/redis_exporter:v1.86.0"),
    _newline("certManagerIssuer", "ClusterIssuer/ca", tls="true"),
    _newline("backupSchedule", "cron(0 3 * * ? *)"),
    _newline("backupCopyRegion", "eu-central-1"),
    Bad("platform", "EKS"),
    Bad("platform", "gke"),
    Bad("clusterVersion", "1.29"),
    Bad("clusterVersion", "v1.35"),
    Bad("natGateways", "onePerAZ"),
    Bad("vpcId", "vpc-123"),
    Bad("ebsCsiDriverVersion", "latest"),
    Bad("storageKmsKeyArn", "alias/redis"),
    Bad("storageKmsKeyArn", "arn:aws:s3:::bucket"),
    Bad("storageProvisioner", "rancher.io/local-path", ("platform=eks uses ebs.csi.aws.com",)),
    Bad("storageProvisioner", "Rancher/Local Path", stack="existing"),
    Bad("engine", "keydb"),
    Bad("engine", "valkey", ("with redis-eks:engine",), named="redis-eks:image", more={"image": "redis:8.10.2"}),
    Bad("image", "redis:latest"),
    Bad("image", "redis:8"),
    Bad("image", "redis"),
    Bad("image", "valkey/valkey:9.1.2", ("with redis-eks:engine = 'redis'",)),
    Bad("image", "redis:6.2.14", ("with redis-eks:engine",)),
    Bad("image", "redis@sha256:" + "0" * 64, ("a digest alone",)),
    Bad("image", "x" * 600),
    Bad("maxmemoryPolicy", "lru"),
    Bad("maxmemoryPolicy", "NOEVICTION"),
    Bad("exporterImage", "redis:8.10.2-trixie", ("not the server's",)),
    Bad("exporterImage", "oliver006/redis_exporter:latest"),
    Bad("exporterImage", "oliver006/redis_exporter"),
    Bad("certManagerIssuer", "ca", tls="true") if False else Bad("certManagerIssuer", "ca", more={"tls": "true"}),
    Bad("certManagerIssuer", "Issuer/", more={"tls": "true"}),
    Bad("certManagerIssuer", "ClusterIssuer/ca", ("only with redis-eks:tls = true",)),
    # --- namespaces ---------------------------------------------------------------------------
    Bad("namespace", "kube-system", ("not one of Kubernetes'",)),
    Bad("namespace", "kube-public"),
    Bad("namespace", "kube-node-lease"),
    Bad("namespace", "default"),
    Bad("namespace", "null", ("YAML null",)),
    Bad("namespace", "", ("YAML null",)),
    Bad("namespace", "Redis_NS"),
    Bad("namespace", "a" * 64),
    Bad("namespace", "-redis"),
    Bad("monitoringNamespace", "Monitoring"),
    Bad("monitoringNamespace", ""),
    # --- keys that do nothing -----------------------------------------------------------------
    Bad("redis:tls", "true", ("did you mean redis-eks:tls?",), named="redis:tls"),
    Bad("redis_eks:tls", "true", ("did you mean redis-eks:tls?",), named="redis_eks:tls"),
    Bad("redisEks:tls", "true", ("did you mean redis-eks:tls?",), named="redisEks:tls"),
    Bad("Redis-EKS:shards", "4", ("did you mean redis-eks:shards?",), named="Redis-EKS:shards"),
    Bad("redis-eks-dev:shards", "4", ("did you mean redis-eks:shards?",), named="redis-eks-dev:shards"),
    Bad("durabilty", "aof", ("is not a setting of this program",)),
    Bad("shard", "4", ("did you mean redis-eks:shards?",)),
    Bad("Shards", "4", ("did you mean redis-eks:shards?",)),
    *[
        Bad(key, value, ("only applies to platform=eks",), stack="existing")
        for key, value in (
            ("availabilityZoneCount", "3"),
            ("endpointPublicAccess", "true"),
            ("publicAccessCidrs", '["203.0.113.0/24"]'),
            ("clusterVersion", "1.35"),
            ("natGateways", "single"),
            ("ebsCsiDriverVersion", "v1.66.0-eksbuild.1"),
            ("nodeInstanceType", "m6i.large"),
            ("nodeMinSize", "3"),
            ("nodeDesiredSize", "3"),
            ("nodeMaxSize", "6"),
            ("clusterAdminArns", '["arn:aws:iam::111122223333:role/ci"]'),
            ("backupSchedule", "off"),
            ("backupRetentionCount", "7"),
            ("backupCopyRegion", "eu-central-1"),
            ("backupCopyRetentionDays", "7"),
        )
    ],
    *[
        Bad(
            key,
            value,
            ("only shapes a VPC this program creates",),
            more={
                "vpcId": "vpc-0123456789abcdef0",
                "privateSubnetIds": json.dumps([f"subnet-0000000000000000{i}" for i in range(3)]),
            },
        )
        for key, value in (("availabilityZoneCount", "3"), ("natGateways", "onePerAz"))
    ],
    Bad(
        "publicAccessCidrs",
        '["203.0.113.0/24"]',
        ("does nothing with redis-eks:endpointPublicAccess = false",),
        more={"endpointPublicAccess": "false"},
    ),
    Bad("monitoringLabels", '{"release": "kps"}', ("only with redis-eks:monitoring = true",)),
    Bad("backupCopyRetentionDays", "30", ("only with redis-eks:backupCopyRegion",)),
    # --- the public endpoint ------------------------------------------------------------------
    Bad("publicAccessCidrs", "[]", ("EKS reads an empty list as 0.0.0.0/0",)),
    Bad("publicAccessCidrs", '["0.0.0.0/0"]', ("publicEndpointOpenToInternet",)),
    Bad("publicAccessCidrs", '["::/0"]', ("publicEndpointOpenToInternet",)),
    Bad("publicAccessCidrs", '["0.0.0.0/1", "128.0.0.0/1"]', ("publicEndpointOpenToInternet",)),
    Bad(
        "publicAccessCidrs",
        json.dumps(
            [
                "1.0.0.0/8",
                "2.0.0.0/7",
                "4.0.0.0/6",
                "8.0.0.0/7",
                "11.0.0.0/8",
                "12.0.0.0/6",
                "16.0.0.0/4",
                "32.0.0.0/3",
                "64.0.0.0/3",
                "96.0.0.0/4",
                "112.0.0.0/5",
                "120.0.0.0/6",
                "124.0.0.0/7",
                "126.0.0.0/8",
                "128.0.0.0/3",
                "160.0.0.0/5",
                "168.0.0.0/8",
                "169.0.0.0/9",
                "169.128.0.0/10",
                "169.192.0.0/11",
                "169.224.0.0/12",
                "169.240.0.0/13",
                "169.248.0.0/14",
                "169.252.0.0/15",
                "169.255.0.0/16",
                "170.0.0.0/7",
                "172.0.0.0/12",
                "172.32.0.0/11",
                "172.64.0.0/10",
                "172.128.0.0/9",
                "173.0.0.0/8",
                "174.0.0.0/7",
                "176.0.0.0/4",
                "192.0.0.0/9",
                "192.128.0.0/11",
                "192.160.0.0/13",
                "192.169.0.0/16",
                "192.170.0.0/15",
                "192.172.0.0/14",
                "192.176.0.0/12",
                "192.192.0.0/10",
                "193.0.0.0/8",
                "194.0.0.0/7",
                "196.0.0.0/6",
                "200.0.0.0/5",
                "208.0.0.0/4",
                "100.0.0.0/10",
                "100.128.0.0/9",
                "101.0.0.0/8",
                "102.0.0.0/7",
                "104.0.0.0/5",
            ]
        ),
        ("publicEndpointOpenToInternet",),
    ),
    Bad("publicAccessCidrs", '["0.0.0.0"]', ("prefix notation",)),
    Bad("publicAccessCidrs", '["10.0.0.1/24"]', ("host bits zero",)),
    Bad("publicAccessCidrs", '["203.0.113.0/24", "198.51.100.7", "10.0.0.0/33"]', ("'198.51.100.7'", "'10.0.0.0/33'")),
    Bad("publicAccessCidrs", '["203.0.113.0/24\\n"]'),
    Bad("publicAccessCidrs", "203.0.113.0/24", ("a JSON list of strings",)),
    Bad("publicAccessCidrs", '["203.0.113.0/24", "203.0.113.0/24"]', ("listed twice",)),
    Bad("publicAccessCidrs", "", named="redis-eks:publicAccessCidrs", more={}),
    Bad(
        "endpointPublicAccess",
        "true",
        ("publicAccessCidrs is required",),
        named="redis-eks:publicAccessCidrs",
        more={"publicAccessCidrs": None},
    ),
    # --- IAM principals and subnets -----------------------------------------------------------
    Bad(
        "clusterAdminArns", '["ci-deploy", "arn:aws:iam::1111:role/ci"]', ("'ci-deploy'", "'arn:aws:iam::1111:role/ci'")
    ),
    Bad("clusterAdminArns", '["arn:aws:sts::111122223333:assumed-role/ci/s"]', ("not an sts assumed-role ARN",)),
    Bad("clusterAdminArns", '["arn:aws:iam::111122223333:role/ci\\n"]'),
    Bad(
        "clusterAdminArns",
        '["arn:aws:iam::111122223333:role/ci", "arn:aws:iam::111122223333:role/CI"]',
        ("listed twice",),
    ),
    Bad("clusterAdminArns", '"arn:aws:iam::111122223333:role/ci"', ("a JSON list of strings",)),
    Bad("privateSubnetIds", '["sn-1", "sn-2"]', ("'sn-1'", "'sn-2'"), more={"vpcId": "vpc-0123456789abcdef0"}),
    Bad(
        "privateSubnetIds",
        '["subnet-00000000000000001"]',
        ("at least 2 availability zones",),
        more={"vpcId": "vpc-0123456789abcdef0"},
    ),
    Bad(
        "privateSubnetIds",
        '["subnet-00000000000000001", "subnet-00000000000000001", "subnet-00000000000000002"]',
        ("each subnet once",),
        more={"vpcId": "vpc-0123456789abcdef0"},
    ),
    Bad(
        "privateSubnetIds",
        "subnet-00000000000000001,subnet-00000000000000002",
        ("a JSON list",),
        more={"vpcId": "vpc-0123456789abcdef0"},
    ),
    Bad("vpcId", "vpc-0123456789abcdef0", ("go together",)),
    # --- labels -------------------------------------------------------------------------------
    Bad("clientPodLabels", "{}", ("allPodsAsClients",)),
    Bad("clientPodLabels", '["app"]'),
    Bad("clientPodLabels", '{"-bad.prefix/app": "x"}', ("no DNS subdomain",)),
    Bad("clientPodLabels", '{"Example.COM/app": "x"}', ("no DNS subdomain",)),
    Bad("clientPodLabels", '{"a..b/app": "x"}', ("no DNS subdomain",)),
    Bad("clientPodLabels", '{"/app": "x"}'),
    Bad("clientPodLabels", '{"app": "x\\n"}'),
    Bad("clientPodLabels", '{"app": "' + "v" * 64 + '"}'),
    Bad("clientPodLabels", '{"app": "a", "app": "b"}', ("'app' is given twice",)),
    Bad("clientPodLabels", '{"app": 1}'),
    Bad("clientNamespaceLabels", '{"team": "a b"}'),
    Bad("clientNamespaceLabels", '{"x_.io/team": "a"}', ("no DNS subdomain",)),
    Bad("monitoringLabels", '{"release": "kps", "bad key": "x"}', more={"monitoring": "true"}),
    # --- users and passwords ------------------------------------------------------------------
    Bad("users", '{"admin": {"commands": ["+@all"], "keys": ["*"]}}', ("dangerousCommands=admin",)),
    Bad("users", '{"app": {"commands": ["+@read", "+@admin"]}}', ("dangerousCommands=app",)),
    Bad("users", '{"app": {"commands": ["+@dangerous"]}}', ("dangerousCommands=app",)),
    Bad("users", '{"app": {"commands": ["+get", "+acl"]}}', ("dangerousCommands=app", "'+acl'")),
    Bad("users", '{"app": {"commands": ["+config|set"]}}', ("dangerousCommands=app",)),
    Bad("users", '{"app": {"commands": ["+@write"], "keys": ["app:*"]}}', ("'+@write'", "-@dangerous")),
    Bad("users", '{"app": {"commands": ["+@read", "-@dangerous", "+flushall"]}}', ("'+flushall'",)),
    Bad("users", '{"app": {"commands": ["+get"]}, "app": {"commands": ["+set"]}}', ("'app' is given twice",)),
    Bad("users", '{"app": {"commands": ["+get\\nuser evil on nopass +@all"]}}', ("is not one",)),
    Bad("users", '{"app": {"commands": ["+get"], "keys": ["app:*\\n"]}}', ("patterns without spaces",)),
    Bad(
        "users",
        '{"a": {"commands": ["+get"], "keys": ["x y"]}, "b": {"commands": []}}',
        ("users.a.keys patterns", "users.b.commands to grant something"),
    ),
    Bad("users", '{"default": {"commands": ["+get"]}}', ("this program's own users",)),
    Bad("users", '{"App": {"commands": ["+get"]}}'),
    Bad("users", '{"app": {"commands": "+get"}}'),
    Bad("users", '{"app": {"commands": ["+get"], "key": ["x"]}}'),
    Bad("users", '["app"]'),
    Bad(
        "userPasswords",
        '{"app": "Same-Password-0123456789", "ops": "Same-Password-0123456789"}',
        ("the same password",),
        more={"users": '{"app": {"commands": ["+get"]}, "ops": {"commands": ["+get"]}}'},
    ),
    Bad(
        "userPasswords",
        json.dumps({"app": PASSWORD}),
        ("the admin (password) and app the same password",),
        more={"users": '{"app": {"commands": ["+get"]}}', "password": PASSWORD},
    ),
    Bad("userPasswords", '{"app": "short"}', more={"users": '{"app": {"commands": ["+get"]}}'}),
    Bad("userPasswords", '{"nobody": "Some-Password-0123456789"}', ("which is not in redis-eks:users",)),
    Bad(
        "userPasswords",
        '{"app": "A-Password-0123456789", "app": "B-Password-0123456789"}',
        ("given twice",),
        more={"users": '{"app": {"commands": ["+get"]}}'},
    ),
    Bad(
        "userPasswords",
        json.dumps({"app": "App-Password-0123456789"}),
        ("pulumi config set --secret",),
        more={"users": '{"app": {"commands": ["+get"]}}'},
        plain=("userPasswords",),
    ),
    Bad("userPasswords", "not json"),
    Bad("password", PASSWORD, ("pulumi config set --secret redis-eks:password",), plain=("password",)),
    Bad("password", "short"),
    Bad("password", "Has Spaces-0123456789"),
    Bad("password", PASSWORD + "\n"),
    Bad("password", "p" * 513),
    # --- the kubeconfig -----------------------------------------------------------------------
    Bad("kubeconfig", "not a kubeconfig", ("clusters and contexts",), stack="existing"),
    Bad(
        "kubeconfig",
        KUBECONFIG.replace("current-context: kind", "current-context: other"),
        ("current-context names one of its contexts",),
        stack="existing",
    ),
    Bad("kubeconfig", KUBECONFIG.replace("current-context: kind", ""), ("it is unset",), stack="existing"),
    Bad(
        "kubeconfig",
        KUBECONFIG.replace("contexts: [{name: kind, context: {cluster: kind, user: kind}}]", "contexts: [kind]"),
        ("a mapping with a name",),
        stack="existing",
    ),
    Bad(
        "kubeconfig",
        KUBECONFIG.replace("context: {cluster: kind,", "context: {cluster: other,"),
        ("names one of its clusters",),
        stack="existing",
    ),
    Bad(
        "kubeconfig",
        KUBECONFIG,
        ("pulumi config set --secret redis-eks:kubeconfig",),
        stack="existing",
        plain=("kubeconfig",),
    ),
    Bad("platform", "existing", ("redis-eks:kubeconfig, set as a secret",), more={"storageProvisioner": "x.io/p"}),
    Bad("kubeconfig", "[" * 5000, ("clusters and contexts",), stack="existing"),
    Bad("kubeconfig", "a: " + "9" * 5000, ("clusters and contexts",), stack="existing"),
    Bad("kubeconfig", KUBECONFIG, ("only applies to platform=existing",)),
    # --- backups ------------------------------------------------------------------------------
    Bad("backupSchedule", "daily"),
    Bad("backupSchedule", "OFF"),
    Bad("backupSchedule", "cron(0 3 * * *)", ("six fields",)),
    Bad("backupSchedule", "cron(* 3 * * ? *)", ("minutes '*'", "at most once an hour")),
    Bad("backupSchedule", "cron(0/30 * * * ? *)", ("minutes",)),
    Bad("backupSchedule", "cron(0 24 * * ? *)", ("hours '24'",)),
    Bad("backupSchedule", "cron(0 3 32 * ? *)", ("day-of-month '32'",)),
    Bad("backupSchedule", "cron(0 3 * 13 ? *)", ("month '13'",)),
    Bad("backupSchedule", "cron(0 3 ? * 8 *)", ("day-of-week '8'",)),
    Bad("backupSchedule", "cron(0 3 ? * FRX *)", ("day-of-week",)),
    Bad("backupSchedule", "cron(0 3 * * 1 *)", ("'?' in exactly one",)),
    Bad("backupSchedule", "cron(0 3 ? * ? *)", ("'?' in exactly one",)),
    Bad("backupSchedule", "cron(0 3 31 2 ? *)", ("no date matches",)),
    Bad("backupSchedule", "cron(0 3 29 2 ? *)", ("at least once a year",)),
    Bad("backupSchedule", "cron(0 3 * * ? 2030)", ("year '2030'",)),
    Bad("backupSchedule", "cron(0 5-2 * * ? *)", ("hours",)),
    Bad("backupCopyRegion", "Europe"),
    Bad("backupCopyRegion", "eu-west-9", ("one pulumi-aws knows",)),
    Bad("backupCopyRegion", "eu-west-1", ("another region than the stack's own",)),
    Bad("backupCopyRegion", "cn-north-1", ("a region of the stack's partition",)),
    Bad("backupCopyRegion", "us-gov-west-1", ("a region of the stack's partition",)),
    Bad("backupCopyRegion", "eu-central-1", ("only with a redis-eks:backupSchedule",), more={"backupSchedule": "off"}),
    # --- the manual-change opt-in -------------------------------------------------------------
    Bad("acceptManualChange", '["shards"]', ("image=<image>",)),
    Bad("acceptManualChange", '["shards=3"]', ("no longer needed", "scaled in by `pulumi up` itself")),
    Bad("acceptManualChange", '["replicasPerShard=1"]', ("no longer needed",)),
    Bad("acceptManualChange", '["password"]', ("no longer needed",)),
    Bad("acceptManualChange", '["shards=3\\n"]'),
    Bad("acceptManualChange", '["namespace=Bad_NS"]', ("no DNS-1123 label",)),
    Bad("acceptManualChange", "shards=3", ("a JSON list of strings",)),
    Bad("acceptManualChange", '["shards=99999999999999999999"]'),
    Bad("acceptManualChange", '["nodeGroupDrained="]', ("nodeGroupDrained=<node group>",)),
    Bad("acceptManualChange", '["nodeGroupDrained=-old-group"]'),
    Bad("acceptManualChange", '["nodeGroupDrained=old group"]'),
    Bad("acceptManualChange", '["nodeGroupDrained=' + "g" * 64 + '"]'),
    Bad("acceptManualChange", '["storageSize=10"]', ("no size with a unit",)),
    Bad("acceptManualChange", '["storageSize=10GB"]', ("no size with a unit",)),
    Bad("acceptManualChange", '["storageIops=06000"]'),
    Bad("acceptManualChange", '["storageIops=' + "9" * 40 + '"]'),
    Bad("acceptManualChange", '["storageThroughput=fast"]', ("storageThroughput=<n>",)),
    Bad("acceptManualChange", '["storageThroughput=250\\n"]'),
    # --- add-on builds, the node group's form, deletion protection (platform=eks) -----------
    *[
        Bad(key, value, ("an add-on build such as v1.66.0-eksbuild.1",))
        for key in ("ebsCsiDriverVersion", "corednsVersion", "kubeProxyVersion", "vpcCniVersion")
        for value in (
            "1.12.4-eksbuild.1",
            "v1.12.4",
            "v1.12-eksbuild.1",
            "v1.12.4-eksbuild",
            "V1.12.4-eksbuild.1",
            "v1.12.4-EKSBUILD.1",
            " v1.12.4-eksbuild.1",
            "v1.12.4--eksbuild.1",
            "v1.12.4-eksbuild.1\n",
            "v" + "9" * 30 + ".0.0-eksbuild.1",
        )
    ],
    *[Bad(key, "latest") for key in ("corednsVersion", "kubeProxyVersion", "vpcCniVersion")],
    Bad("kubeProxyVersion", "v1.35.0-Minimal-eksbuild.2"),
    Bad("nodeGroupForm", "launchtemplate", ("one of launchTemplate, instanceTypes, moving",)),
    Bad("nodeGroupForm", "LaunchTemplate"),
    Bad("nodeGroupForm", "instance-types"),
    Bad("nodeGroupForm", "blueGreen"),
    Bad("nodeGroupForm", ""),
    _newline("nodeGroupForm", "launchTemplate"),
    # What EKS answers (the fake cloud's builds; a fresh account): refused before anything registers.
    *[
        Bad(key, "v1.99.0-eksbuild.1", ("EKS offers", "builds up to"))
        for key in ("ebsCsiDriverVersion", "corednsVersion", "kubeProxyVersion", "vpcCniVersion")
    ],
    Bad("nodeGroupForm", "moving", ("no node group with its instance type on the group",)),
    *_bools("deletionProtection"),
    *[
        Bad(key, value, ("only applies to platform=eks",), stack="existing")
        for key, value in (
            ("corednsVersion", "v1.12.4-eksbuild.1"),
            ("kubeProxyVersion", "v1.35.0-eksbuild.2"),
            ("vpcCniVersion", "v1.20.1-eksbuild.1"),
            ("nodeGroupForm", "launchTemplate"),
            ("deletionProtection", "true"),
        )
    ],
    # --- the volumes' key ---------------------------------------------------------------------
    Bad("storageKmsKeyArn", "arn:aws:kms:eu-west-1:111122223333:alias/redis-volumes", ("not an alias ARN",)),
    Bad("storageKmsKeyArn", "arn:aws:kms:eu-west-1:111122223333:key/my-key", ("key/<key id>",)),
    Bad("storageKmsKeyArn", "1234abcd-12ab-34cd-56ef-1234567890ab", ("key/<key id>",)),
    Bad("storageKmsKeyArn", "arn:aws:kms:eu-west-1:111122223333:key/1234ABCD-12AB-34CD-56EF-1234567890AB"),
    Bad("storageKmsKeyArn", "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234"),
    Bad(
        "storageKmsKeyArn",
        "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        ("a key of the stack's own region (eu-west-1",),
    ),
    Bad(
        "storageKmsKeyArn",
        "arn:aws-cn:kms:cn-north-1:111122223333:key/mrk-1234567890abcdef1234567890abcdef",
        ("multi-Region key, its replica's ARN",),
        stack="prod",
    ),
    Bad("storageKmsKeyArn", "arn:aws:kms:eu-west-1:1111:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
    Bad("storageKmsKeyArn", "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab/x"),
    # --- monitoring: the CRDs and the runbook links -------------------------------------------
    Bad("prometheusOperatorCrds", "helm", ("one of install, existing",), more={"monitoring": "true"}),
    Bad("prometheusOperatorCrds", "Install", more={"monitoring": "true"}),
    Bad("prometheusOperatorCrds", "installed", more={"monitoring": "true"}),
    Bad("prometheusOperatorCrds", "", more={"monitoring": "true"}),
    _newline("prometheusOperatorCrds", "existing", monitoring="true"),
    Bad("prometheusOperatorCrds", "existing", ("only with redis-eks:monitoring = true",)),
    # On a cluster made elsewhere, neither value can be assumed: it is asked for, with both ways.
    Bad(
        "monitoring",
        "true",
        ("platform=existing with monitoring = true needs it set", "'existing' if the cluster runs a Prometheus"),
        named="redis-eks:prometheusOperatorCrds",
        stack="existing",
    ),
    Bad(
        "runbookBaseUrl",
        "http://git.example.com/redis-eks/",
        ("an https URL ending in /",),
        more={"monitoring": "true"},
    ),
    Bad("runbookBaseUrl", "https://github.com/o/redis-eks/blob/main", ("ending in /",), more={"monitoring": "true"}),
    Bad("runbookBaseUrl", "docs/", more={"monitoring": "true"}),
    Bad("runbookBaseUrl", "https://github.com/o/redis eks/", more={"monitoring": "true"}),
    Bad("runbookBaseUrl", "https://GitHub.com/o/redis-eks/", more={"monitoring": "true"}),
    Bad("runbookBaseUrl", "https:///o/redis-eks/", more={"monitoring": "true"}),
    Bad(
        "runbookBaseUrl", "https://git.example.com/r/?ref=main/", ("no query or fragment",), more={"monitoring": "true"}
    ),
    Bad("runbookBaseUrl", "https://git.example.com/r/#top/", more={"monitoring": "true"}),
    Bad("runbookBaseUrl", "https://git.example.com/<r>/", more={"monitoring": "true"}),
    _newline("runbookBaseUrl", "https://git.example.com/r/", monitoring="true"),
    Bad("runbookBaseUrl", "https://git.example.com/r/", ("only with redis-eks:monitoring = true",)),
    # --- storage ------------------------------------------------------------------------------
    Bad("storageIops", "16000", ("at least 32Gi",)),
    Bad("storageThroughput", "1000", ("0.25 MiB/s per provisioned IOPS",)),
    Bad("rotationGraceSeconds", "600", ("less than redis-eks:bootstrapTimeoutSeconds",)),
]


def _config(row: Bad) -> tuple[dict[str, str], list[str]]:
    config = load_stack_config("dev") if row.stack == "dev" else dict(EXISTING)
    if row.stack == "prod":
        config = load_stack_config("prod")
    for key, value in {row.key: row.value, **row.more}.items():
        full = key if ":" in key else f"redis-eks:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value
    secret_keys = [
        f"redis-eks:{name}"
        for name in ("password", "kubeconfig", "userPasswords")
        if f"redis-eks:{name}" in config and name not in row.plain
    ]
    return config, secret_keys


@pytest.mark.parametrize("row", ROWS, ids=[f"{number}-{row.id}" for number, row in enumerate(ROWS)])
def test_a_bad_input_is_refused_naming_the_key_before_anything_is_created(row: Bad):
    config, secret_keys = _config(row)
    run = ProgramRun()
    with pytest.raises(SettingsError) as raised:
        run_program(config, stack=row.stack if row.stack != "existing" else "local", run=run, secret_keys=secret_keys)
    assert isinstance(raised.value, pulumi.RunError)
    message = str(raised.value)
    named = row.named or (row.key if ":" in row.key else f"redis-eks:{row.key}")
    assert named in message, message
    for fragment in row.says:
        assert fragment in message, message
    # Never a secret's value in a refusal.
    for secret in ("password", "userPasswords", "kubeconfig"):
        value = config.get(f"redis-eks:{secret}")
        if value and len(value) > 8 and secret != "kubeconfig":
            assert value.strip() not in message
    assert "not-a-real-token" not in message
    assert run.resources == []


def test_the_table_covers_every_key():
    """Every key of the README's configuration table (and every setting) is named by a row."""
    named = Counter(
        (row.named or row.key).removeprefix("redis-eks:") for row in ROWS if ":" not in (row.named or row.key)
    )
    named.update(row.key for row in ROWS)
    readme = table_keys((PROJECT_DIR / "README.md").read_text())
    print(
        f"\nbad-input table: {len(ROWS)} rows, {len({row.key for row in ROWS})} keys given bad values, "
        f"{len(readme & set(named))} of the README's {len(readme)} keys named"
    )
    print("rows per key: " + ", ".join(f"{key} {count}" for key, count in sorted(Counter(r.key for r in ROWS).items())))
    assert len(ROWS) >= 250
    assert readme - set(named) == set(), readme - set(named)
    assert set(KNOWN_KEYS) - set(named) == set()
    twice = [row for row, count in Counter((r.key, r.value, r.stack, str(r.more)) for r in ROWS).items() if count > 1]
    assert not twice, twice


@pytest.mark.parametrize(
    "overrides",
    [
        {"replicasPerShard": "0", "acceptRisks": '["noReplicas"]'},
        {"users": '{"ops": {"commands": ["+@all"]}}', "acceptRisks": '["dangerousCommands=ops"]'},
        {"publicAccessCidrs": '["0.0.0.0/0"]', "acceptRisks": '["publicEndpointOpenToInternet"]'},
        {"clientPodLabels": "{}", "acceptRisks": '["allPodsAsClients"]'},
        {"nodeMinSize": "1", "nodeDesiredSize": "1", "acceptRisks": '["singleNode"]'},
        {"nodeMinSize": "2", "nodeDesiredSize": "2", "acceptRisks": '["zoneMajority"]'},
        {"users": '{"app": {"commands": ["+@read", "+@write", "-@dangerous"], "keys": ["app:*"]}}'},
        {"backupSchedule": "cron(0 3 ? * MON-FRI *)", "backupCopyRegion": "eu-central-1"},
        {"backupSchedule": "cron(30 */6 L * ? *)"},
    ],
    ids=lambda overrides: ",".join(overrides),
)
def test_a_risk_accepted_by_name_or_a_safe_form_passes(overrides):
    config = load_stack_config("dev") | {f"redis-eks:{key}": value for key, value in overrides.items()}
    run = run_program(config)
    assert run.resources
