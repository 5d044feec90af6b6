"""The nodes' TLS certificate: from a CA of the stack's own (pulumi-tls) or from a
cert-manager issuer, kept in a kubernetes.io/tls Secret with the CA beside it (`ca.crt`).

One certificate serves every node: its names are the headless Service's wildcard (each
pod's stable DNS name, which the nodes announce), the client Service and localhost
(`redis_node_files.certificate_dns_names`). Renewal replaces the Secret's files in place;
the readiness probe reloads them into the running server (docs/design.md, "TLS").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s
import pulumi_tls as tls

from components import redis_node_files as files

# The CA signs node certificates for as long as the stack lives; replacing it means
# distributing a new CA to every client (docs/operations.md, "Certificates").
CA_VALIDITY_HOURS = 10 * 365 * 24
# A node certificate lasts a year; from 30 days before its end, any `pulumi up` issues the
# next one (pulumi-tls has no background renewal: a monthly `pulumi up` keeps ahead of it).
NODE_VALIDITY_HOURS = 365 * 24
NODE_EARLY_RENEWAL_HOURS = 30 * 24
# cert-manager renews by itself, well before the end.
CERT_MANAGER_DURATION = "2160h"
CERT_MANAGER_RENEW_BEFORE = "720h"
SUBJECT_ORGANIZATION = "redis-eks"


@dataclass(frozen=True)
class NodeCertificatesArgs:
    namespace: pulumi.Input[str]
    secret_name: str
    dns_names: list[str]
    labels: dict[str, str]
    provider: k8s.Provider
    # (kind, name) of a cert-manager Issuer or ClusterIssuer; None: a CA of the stack's own.
    cert_manager_issuer: Optional[tuple[str, str]] = None


class NodeCertificates(pulumi.ComponentResource):
    """The TLS Secret the pods mount, and the CA clients verify the nodes against."""

    secret_name: pulumi.Output[str]
    # The CA's certificate (PEM; public), or None when cert-manager's issuer holds the CA:
    # then it is the Secret's ca.crt.
    ca_certificate: Optional[pulumi.Output[str]]

    def __init__(self, resource_name: str, args: NodeCertificatesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("redis-eks:index:NodeCertificates", resource_name, None, opts)
        on_cluster = pulumi.ResourceOptions(parent=self, provider=args.provider)
        metadata = k8s.meta.v1.ObjectMetaArgs(name=args.secret_name, namespace=args.namespace, labels=args.labels)
        if args.cert_manager_issuer:
            kind, name = args.cert_manager_issuer
            certificate = k8s.apiextensions.CustomResource(
                f"{resource_name}-certificate",
                api_version="cert-manager.io/v1",
                kind="Certificate",
                metadata=metadata,
                spec={
                    "secretName": args.secret_name,
                    "secretTemplate": {"labels": args.labels},
                    # No commonName: cert-manager refuses one over 64 characters, which
                    # a wildcard of a long namespace is; the names are in dnsNames.
                    "dnsNames": args.dns_names,
                    "duration": CERT_MANAGER_DURATION,
                    "renewBefore": CERT_MANAGER_RENEW_BEFORE,
                    "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                    # The cluster bus and replication connect with the same certificate.
                    "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
                    "issuerRef": {"group": "cert-manager.io", "kind": kind, "name": name},
                },
                opts=on_cluster,
            )
            self.secret_name = certificate.spec.apply(lambda spec: spec["secretName"])
            self.ca_certificate = None
        else:
            child = pulumi.ResourceOptions(parent=self)
            ca_key = tls.PrivateKey(f"{resource_name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
            ca_cert = tls.SelfSignedCert(
                f"{resource_name}-ca",
                private_key_pem=ca_key.private_key_pem,
                is_ca_certificate=True,
                # The CA signs node certificates only, never another CA.
                max_path_length=0,
                subject=tls.SelfSignedCertSubjectArgs(
                    common_name=f"{SUBJECT_ORGANIZATION} cluster CA", organization=SUBJECT_ORGANIZATION
                ),
                validity_period_hours=CA_VALIDITY_HOURS,
                allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
                opts=child,
            )
            node_key = tls.PrivateKey(f"{resource_name}-node-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
            request = tls.CertRequest(
                f"{resource_name}-node-request",
                private_key_pem=node_key.private_key_pem,
                subject=tls.CertRequestSubjectArgs(common_name=args.dns_names[0], organization=SUBJECT_ORGANIZATION),
                dns_names=args.dns_names,
                opts=child,
            )
            node_cert = tls.LocallySignedCert(
                f"{resource_name}-node",
                cert_request_pem=request.cert_request_pem,
                ca_private_key_pem=ca_key.private_key_pem,
                ca_cert_pem=ca_cert.cert_pem,
                validity_period_hours=NODE_VALIDITY_HOURS,
                early_renewal_hours=NODE_EARLY_RENEWAL_HOURS,
                allowed_uses=["digital_signature", "key_encipherment", "server_auth", "client_auth"],
                opts=child,
            )
            secret = k8s.core.v1.Secret(
                f"{resource_name}-secret",
                metadata=metadata,
                type="kubernetes.io/tls",
                string_data={
                    files.TLS_CERT_FILE: node_cert.cert_pem,
                    files.TLS_KEY_FILE: pulumi.Output.secret(node_key.private_key_pem),
                    files.TLS_CA_FILE: ca_cert.cert_pem,
                },
                opts=on_cluster,
            )
            self.secret_name = secret.metadata.name
            self.ca_certificate = ca_cert.cert_pem
        self.register_outputs({"secret_name": self.secret_name, "ca_certificate": self.ca_certificate})
