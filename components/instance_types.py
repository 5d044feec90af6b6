"""The EC2 instance types a node group may use, and what a Redis pod can have of each.

The node group runs EKS's default AMI type for the cluster version (AL2023, x86_64: the
launch template names no AMI and the node group no `amiType`), so only x86_64 types are
listed; a Graviton type would need the ARM AMI type and fails when the node group is created.
Types below `medium` are left out: a t3.small holds 11 pods and 2 GiB, most of it taken by
the node's own daemons.

Sources, for the figures of each type:
- vCPUs and memory: AWS's "Amazon EC2 instance types" guide (docs.aws.amazon.com/ec2/latest/
  instancetypes/: gp.html, mo.html, co.html), "Default vCPUs" and "Memory (GiB)".
- max pods: awslabs/amazon-eks-ami, nodeadm/internal/kubelet/eni-max-pods.txt, i.e.
  ENIs x (IPv4 addresses per ENI - 1) + 2, what the AMI's kubelet is started with.
- what the kubelet reserves: the same repository, nodeadm/internal/kubelet/config.go:
  kube-reserved memory 11 MiB x max pods + 255 MiB; kube-reserved CPU 6% of the first core,
  1% of the second, 0.5% of the third and fourth, 0.25% of every core above; the hard
  eviction threshold memory.available 100Mi.
- what the hypervisor and kernel keep of the nominal memory: 7.5%, Karpenter's default
  `vmMemoryOverheadPercent` for the same estimate (aws/karpenter-provider-aws#5161).
- the EKS add-ons on every node (aws-node, kube-proxy, ebs-csi-node) and room for one of
  the cluster-wide ones (CoreDNS, the EBS CSI controller): SYSTEM_PODS_* below, an
  allowance rounded up from the requests the add-ons' manifests set.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 2**20
# Nominal memory the node never reports as capacity (hypervisor, kernel, firmware).
VM_MEMORY_OVERHEAD_PERCENT = 7.5
EVICTION_HARD_MEMORY_MIB = 100
# What the add-ons' pods take on every node, and one cluster-wide add-on pod per node.
SYSTEM_PODS_PER_NODE = 4
SYSTEM_PODS_MILLICORES = 300
SYSTEM_PODS_MEMORY_MIB = 400


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gib: int
    max_pods: int

    @property
    def kube_reserved_millicores(self) -> int:
        """nodeadm's getCPUMillicoresToReserve, for this type's vCPUs."""
        total = self.vcpus * 1000
        reserved = 0.0
        for start, end, percent in ((0, 1000, 6), (1000, 2000, 1), (2000, 4000, 0.5), (4000, total, 0.25)):
            if total > start:
                reserved += (min(total, end) - start) * percent / 100
        return int(reserved)

    @property
    def allocatable_millicores(self) -> int:
        """CPU the scheduler hands out on a node of this type, less the add-ons' pods."""
        return self.vcpus * 1000 - self.kube_reserved_millicores - SYSTEM_PODS_MILLICORES

    @property
    def allocatable_memory_bytes(self) -> int:
        """Memory the scheduler hands out on a node of this type, less the add-ons' pods."""
        capacity_mib = self.memory_gib * 1024 * (100 - VM_MEMORY_OVERHEAD_PERCENT) / 100
        kube_reserved_mib = 11 * self.max_pods + 255
        mib = capacity_mib - kube_reserved_mib - EVICTION_HARD_MEMORY_MIB - SYSTEM_PODS_MEMORY_MIB
        return int(mib) * MIB

    @property
    def pods_for_workloads(self) -> int:
        return self.max_pods - SYSTEM_PODS_PER_NODE


def _family(name: str, sizes: dict[str, tuple[int, int, int]]) -> dict[str, InstanceType]:
    return {f"{name}.{size}": InstanceType(f"{name}.{size}", *figures) for size, figures in sizes.items()}


# size -> (vCPUs, memory GiB, max pods), the same for every family of one shape.
_BURSTABLE = {"medium": (2, 4, 17), "large": (2, 8, 35), "xlarge": (4, 16, 58), "2xlarge": (8, 32, 58)}
_GENERAL = {
    "large": (2, 8, 29),
    "xlarge": (4, 16, 58),
    "2xlarge": (8, 32, 58),
    "4xlarge": (16, 64, 234),
    "8xlarge": (32, 128, 234),
}
_MEMORY = {
    "large": (2, 16, 29),
    "xlarge": (4, 32, 58),
    "2xlarge": (8, 64, 58),
    "4xlarge": (16, 128, 234),
    "8xlarge": (32, 256, 234),
}
_COMPUTE = {
    "large": (2, 4, 29),
    "xlarge": (4, 8, 58),
    "2xlarge": (8, 16, 58),
    "4xlarge": (16, 32, 234),
    "8xlarge": (32, 64, 234),
}

INSTANCE_TYPES: dict[str, InstanceType] = {
    **_family("t3", _BURSTABLE),
    **_family("t3a", _BURSTABLE),
    **{k: v for f in ("m5", "m6i", "m6a", "m7i", "m7a") for k, v in _family(f, _GENERAL).items()},
    **{k: v for f in ("r5", "r6i", "r6a", "r7i", "r7a") for k, v in _family(f, _MEMORY).items()},
    **{k: v for f in ("c6i", "c6a", "c7i", "c7a") for k, v in _family(f, _COMPUTE).items()},
}
