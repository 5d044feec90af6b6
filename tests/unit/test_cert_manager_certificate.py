"""The cert-manager Certificate the program renders (tls=true with certManagerIssuer),
checked against cert-manager's own CRD schema.

kubernetes-validate knows built-in kinds only, so the Certificate's openAPIV3Schema (v1)
is kept in tests/schemas/cert-manager-certificate-v1.json; its `$comment` names the
release it came from. jsonschema ignores the `x-kubernetes-*` extensions; the schema has
no CEL rules (`x-kubernetes-validations`) that it would miss.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from tests.unit.conftest import build_stack
from tools.render_manifests import _whole_numbers

CERTIFICATE = "kubernetes:cert-manager.io/v1:Certificate"
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "cert-manager-certificate-v1.json"
TLS_SECRET = "redis-cluster-tls"


def _closed(schema):
    """The schema with unknown fields refused where Kubernetes would prune them.

    A structural schema drops fields it does not declare (and a strict apply rejects
    them), whereas JSON Schema lets them through: close every object that lists its
    `properties` and neither sets `additionalProperties` nor preserves unknown fields.
    """
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


@pytest.fixture(scope="module")
def validator(schema) -> jsonschema.Draft7Validator:
    closed = _closed(schema)
    jsonschema.Draft7Validator.check_schema(closed)
    return jsonschema.Draft7Validator(closed)


def _errors(validator: jsonschema.Draft7Validator, obj: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


@pytest.fixture(scope="module", params=["ClusterIssuer/internal-ca", "Issuer/redis-ca"])
def rendered(request):
    """(issuer setting, Redis namespace, the Certificate object as the provider would send it)."""
    run = build_stack("dev", tls="true", certManagerIssuer=request.param)
    namespace = run.one("kubernetes:core/v1:Namespace").inputs["metadata"]["name"]
    inputs = run.one(CERTIFICATE).inputs
    # Numbers cross Pulumi's wire as doubles (privateKey.size arrives as 256.0); the
    # provider sends whole ones as integers, as the manifest renderer does.
    obj = _whole_numbers({key: inputs[key] for key in ("apiVersion", "kind", "metadata", "spec")})
    return request.param, namespace, obj


def test_schema_file_is_the_certificate_v1_schema_with_its_source(schema):
    assert "github.com/cert-manager/cert-manager" in schema["$comment"]
    assert "deploy/crds/cert-manager.io_certificates.yaml" in schema["$comment"]
    assert "v1.21.1" in schema["$comment"]
    assert set(schema["properties"]) >= {"apiVersion", "kind", "metadata", "spec", "status"}
    assert schema["properties"]["spec"]["required"] == ["issuerRef", "secretName"]


def test_rendered_certificate_passes_the_crd_schema(rendered, validator):
    _, _, obj = rendered
    assert obj["spec"]["privateKey"]["size"] == 256
    assert _errors(validator, obj) == []


def test_certificate_is_cert_manager_v1_in_the_redis_namespace(rendered):
    _, namespace, obj = rendered
    assert obj["apiVersion"] == "cert-manager.io/v1"
    assert obj["kind"] == "Certificate"
    assert namespace == "redis"
    assert obj["metadata"]["namespace"] == namespace


def test_certificate_names_the_tls_secret_and_the_configured_issuer(rendered):
    issuer, _, obj = rendered
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
def test_schema_rejects_a_broken_certificate(rendered, validator, path, value, complaint):
    _, _, obj = rendered
    assert _errors(validator, obj) == []
    errors = _errors(validator, _broken(obj, path, value))
    assert errors, f"a Certificate with {'.'.join(path)} = {value!r} passed the schema"
    assert any(complaint in error for error in errors), errors
