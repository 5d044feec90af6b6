"""One `pulumi up` per environment: the platform, then the Redis Cluster on it."""

import pulumi

from components.eks_platform import EksPlatform, EksPlatformArgs
from components.redis_cluster import RedisCluster, RedisClusterArgs
from components.redis_node_files import REDIS_PORT
from components.stack_settings import load_settings

settings = load_settings()

platform = EksPlatform(
    "platform",
    EksPlatformArgs(settings=settings, name=f"{pulumi.get_project()}-{pulumi.get_stack()}"),
)
redis_cluster = RedisCluster(
    "redis",
    RedisClusterArgs(
        settings=settings,
        provider=platform.provider,
        kubeconfig=platform.kubeconfig,
        storage_class_name=platform.storage_class_name,
    ),
)

pulumi.export("clusterName", platform.cluster_name)
pulumi.export("kubeconfig", platform.kubeconfig)
pulumi.export("storageClassName", platform.storage_class_name)
# The DLM policy that snapshots the data volumes (platform=eks with a backupSchedule).
pulumi.export("backupPolicyId", platform.backup_policy_id)
# Who EKS made the cluster's admin when it created it (platform=eks), and the clusterAdminArns
# left out for being that identity: EKS holds their access entry, a second one would fail.
pulumi.export("clusterCreatorArn", platform.cluster_creator_arn)
pulumi.export("clusterAdminArnsLeftOut", platform.cluster_admin_arns_left_out)
pulumi.export("namespace", redis_cluster.namespace)
pulumi.export("redisPassword", redis_cluster.password)
# name -> password of every user of the `users` setting (secret).
pulumi.export("redisUserPasswords", redis_cluster.user_passwords)
pulumi.export("redisTls", settings.tls)
# The CA to verify the nodes against (public), when TLS is on with the stack's own CA; with
# certManagerIssuer it is the issuer's CA (the Secret redis-cluster-tls, key ca.crt).
pulumi.export("redisCaCertificate", redis_cluster.ca_certificate)
pulumi.export(
    "redisConnection",
    pulumi.Output.format(
        "{0}.{1}.svc.cluster.local:{2} (cluster mode; seed nodes via the headless service)",
        redis_cluster.headless_service_name,
        redis_cluster.namespace,
        REDIS_PORT,
    ),
)
pulumi.export("redisClientService", redis_cluster.client_service_name)
pulumi.export("redisClusterState", redis_cluster.bootstrap.state)
pulumi.export("redisTopology", redis_cluster.bootstrap.placement)
# The claims of pods a scale-in removed: the StatefulSet keeps them (whenScaled: Retain), with
# whatever they held; delete them on purpose once they are no longer wanted.
pulumi.export("retainedClaims", redis_cluster.retained_claims)
