"""The policy pack that `pulumi preview --policy-pack policy` runs: the rules of
redis_eks_rules.py, every one mandatory.

The CLI runs this file with policy/ first on sys.path (`runpy.run_path` of the directory),
hence the plain `import redis_eks_rules`. PolicyPack's constructor starts the analyzer's
gRPC server and never returns, so nothing else belongs here: the tests import the rules.
"""

from pulumi_policy import PolicyPack
from redis_eks_rules import ENFORCEMENT_LEVEL, PACK_NAME, POLICIES

PolicyPack(name=PACK_NAME, policies=POLICIES, enforcement_level=ENFORCEMENT_LEVEL)
