"""The cert-manager Certificate the program renders (tls=true with certManagerIssuer),
checked against cert-manager's own CRD schema.

kubernetes-validate knows built-in kinds only, so the Certificate's openAPIV3Schema (v1)
is kept in tests/schemas/cert-manager-certificate-v1.json; its `$comment` names the
release it came from. `testkit.custom_resources` closes it as the API server would and
validates against it, for these tests and for every rendered object.
"""

from __future__ import annotations

import copy

import pytest

from testkit.custom_resources import CustomResourceInvalid, crd_schema, custom_resource_errors, validate_manifest
from tests.unit.conftest import build_stack
from tools.render_manifests import _whole_numbers

CERTIFICATE = "kubernetes:cert-manager.io/v1:Certificate"
TLS_SECRET = "redis-cluster-tls"


@pytest.fixture(scope="module")
def schema() -> dict:
    return crd_schema("cert-manager.io/v1", "Certificate")


@pytest.fixture(scope="module", params=["ClusterIssuer/internal-ca", "Issuer/redis-ca"])
def rendered(request):
    """(issuer setting, Redis namespace, the Certificate object as the provider would send it,
    the stack's cluster version)."""
    run = build_stack("dev", tls="true", certManagerIssuer=request.param)
    namespace = run.one("kubernetes:core/v1:Namespace").inputs["metadata"]["name"]
    inputs = run.one(CERTIFICATE).inputs
    # Numbers cross Pulumi's wire as doubles (privateKey.size arrives as 256.0); the
    # provider sends whole ones as integers, as the manifest renderer does.
    obj = _whole_numbers({key: inputs[key] for key in ("apiVersion", "kind", "metadata", "spec")})
    return request.param, namespace, obj, run.one("eks:index:Cluster").inputs["version"]


def test_schema_file_is_the_certificate_v1_schema_with_its_source(schema):
    assert "github.com/cert-manager/cert-manager" in schema["$comment"]
    assert "deploy/crds/cert-manager.io_certificates.yaml" in schema["$comment"]
    assert "v1.21.1" in schema["$comment"]
    assert set(schema["properties"]) >= {"apiVersion", "kind", "metadata", "spec", "status"}
    assert schema["properties"]["spec"]["required"] == ["issuerRef", "secretName"]


def test_rendered_certificate_passes_the_crd_schema(rendered):
    _, _, obj, version = rendered
    assert obj["spec"]["privateKey"]["size"] == 256
    assert custom_resource_errors(obj) == []
    validate_manifest(obj, version)


def test_certificate_is_cert_manager_v1_in_the_redis_namespace(rendered):
    _, namespace, obj, _ = rendered
    assert obj["apiVersion"] == "cert-manager.io/v1"
    assert obj["kind"] == "Certificate"
    assert namespace == "redis"
    assert obj["metadata"]["namespace"] == namespace


def test_certificate_names_the_tls_secret_and_the_configured_issuer(rendered):
    issuer, _, obj, _ = rendered
    kind, name = issuer.split("/")
    assert obj["metadata"]["name"] == TLS_SECRET
    assert obj["spec"]["secretName"] == TLS_SECRET
    assert obj["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": kind, "name": name}


_DELETE = object()  # as a value in _broken: remove the field


def _broken(obj: dict, path: tuple[str, ...], value) -> dict:
    broken = copy.deepcopy(obj)
    *parents, last = path
    target = broken
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return broken


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        (("spec", "usages"), ["digital signature", "server-auth"], "'server-auth' is not one of"),
        (("spec", "privateKey", "algorithm"), "DSA", "'DSA' is not one of"),
        (("spec", "privateKey", "rotationPolicy"), "Sometimes", "'Sometimes' is not one of"),
        (("spec", "privateKey", "size"), "256", "'256' is not of type 'integer'"),
        (("spec", "issuerRef"), _DELETE, "'issuerRef' is a required property"),
        (("spec", "secretName"), _DELETE, "'secretName' is a required property"),
        (("spec", "issuerRef", "name"), _DELETE, "'name' is a required property"),
        (("spec", "dnsNames"), "localhost", "'localhost' is not of type 'array'"),
        # Unknown fields: Kubernetes would prune these (a strict apply refuses them).
        (("spec", "secretname"), TLS_SECRET, "('secretname' was unexpected)"),
        (("spec", "privateKey", "curve"), "P256", "('curve' was unexpected)"),
    ],
    ids=[
        "usage-not-in-enum",
        "algorithm-DSA",
        "rotationPolicy-not-in-enum",
        "size-as-string",
        "no-issuerRef",
        "no-secretName",
        "issuerRef-without-name",
        "dnsNames-not-a-list",
        "unknown-spec-field",
        "unknown-privateKey-field",
    ],
)
def test_schema_rejects_a_broken_certificate(rendered, path, value, complaint):
    _, _, obj, version = rendered
    assert custom_resource_errors(obj) == []
    broken = _broken(obj, path, value)
    errors = custom_resource_errors(broken)
    assert errors, f"a Certificate with {'.'.join(path)} = {value!r} passed the schema"
    assert any(complaint in error for error in errors), errors
    with pytest.raises(CustomResourceInvalid) as refused:
        validate_manifest(broken, version)
    assert refused.value.errors == errors
