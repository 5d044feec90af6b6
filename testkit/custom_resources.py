"""What the API server would say to an object the program renders, custom resources included.

`kubernetes_validate --strict` knows the built-in kinds only. The custom resources the
program creates are checked against their CRDs' own openAPIV3Schema (v1), vendored under
tests/schemas/ from a pinned release of the project that defines them (each file's
`$comment` names the release and the file it came from), closed the way the API server
treats a structural schema (`closed`). Their `metadata` is checked as any object's
(ObjectMeta of the cluster's version). A kind neither knows is an error naming it: a new
kind of object needs its schema here before the tests accept it.

jsonschema ignores the `x-kubernetes-*` extensions; none of the vendored schemas has CEL
rules (`x-kubernetes-validations`), which it would miss. Their `pattern`s are Go (RE2)
regular expressions; the one construct Python's `re` reads otherwise is translated
(`python_pattern`).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import jsonschema
import kubernetes_validate

from components.stack_settings import PROJECT_DIR

SCHEMA_DIR = PROJECT_DIR / "tests" / "schemas"
# (apiVersion, kind) -> its vendored openAPIV3Schema, a file of SCHEMA_DIR.
CUSTOM_RESOURCE_SCHEMAS: dict[tuple[str, str], str] = {
    ("cert-manager.io/v1", "Certificate"): "cert-manager-certificate-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator-servicemonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheus-operator-prometheusrule-v1.json",
}


class CustomResourceInvalid(jsonschema.ValidationError):
    """A custom resource its CRD's schema refuses; `errors` lists every complaint (path: message).

    A jsonschema.ValidationError, like kubernetes_validate's for the built-in kinds, so one
    `except` catches a refused object of either kind."""

    def __init__(self, obj: dict, errors: list[str]):
        super().__init__(f"{_describe(obj)} does not pass its CRD schema:\n" + "\n".join(errors))
        self.errors = errors


class UnknownKind(LookupError):
    """An object of a kind neither Kubernetes nor a vendored CRD schema defines."""


def closed(schema: Any) -> Any:
    """The schema with unknown fields refused where Kubernetes would prune them.

    A structural schema drops fields it does not declare (and a strict apply rejects
    them), whereas JSON Schema lets them through: close every object that lists its
    `properties` and neither sets `additionalProperties` nor preserves unknown fields.
    """
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


# RE2 lets flags such as `(?i)` stand anywhere and apply from there on; Python wants global
# flags at the very start. After a leading `^` alone, moving them to the front means the same.
_FLAGS_AFTER_ANCHOR = re.compile(r"^\^(\(\?[a-zA-Z]+\))(.*)$", re.DOTALL)


def python_pattern(pattern: str) -> str:
    """A CRD's (Go RE2) `pattern` as Python's `re` reads it with the same meaning."""
    moved = _FLAGS_AFTER_ANCHOR.match(pattern)
    if moved:
        pattern = f"{moved.group(1)}^{moved.group(2)}"
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"a CRD pattern Python cannot read; translate it in python_pattern: {pattern!r}") from error
    return pattern


def _python_patterns(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_python_patterns(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: python_pattern(value) if key == "pattern" and isinstance(value, str) else _python_patterns(value)
        for key, value in schema.items()
    }


def crd_schema(api_version: str, kind: str) -> dict:
    """The vendored openAPIV3Schema of a custom resource kind, as its CRD has it (open)."""
    return json.loads(_schema_file(api_version, kind).read_text())


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    """A validator of the kind's closed schema (its patterns in Python's syntax)."""
    schema = _python_patterns(closed(crd_schema(api_version, kind)))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def custom_resource_errors(obj: dict) -> list[str]:
    """Every complaint of its CRD's closed schema about a custom resource, as `path: message`
    (`<root>` for the object itself), sorted by path; [] when it passes."""
    validator = crd_validator(obj.get("apiVersion"), obj.get("kind"))
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


def validate_manifest(obj: dict, cluster_version: str) -> None:
    """Raise unless the API server of `cluster_version` ("1.35" or "1.35.0") would take `obj`
    as it is, with strict field validation.

    Built-in kinds: kubernetes_validate's strict schema (its ValidationError). The vendored
    custom resource kinds: their closed CRD schema, and their metadata as ObjectMeta
    (CustomResourceInvalid). Any other kind: UnknownKind, naming it.
    """
    version = cluster_version if cluster_version.count(".") >= 2 else f"{cluster_version}.0"
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CUSTOM_RESOURCE_SCHEMAS:
        errors = custom_resource_errors(obj)
        errors += [f"metadata: {message}" for message in _object_meta_errors(obj.get("metadata"), version)]
        if errors:
            raise CustomResourceInvalid(obj, errors)
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as error:
        raise UnknownKind(
            f"{_describe(obj)}: kind {obj.get('kind')} of {obj.get('apiVersion')} is neither a built-in kind of "
            f"Kubernetes {error.version} nor a custom resource with a schema in {SCHEMA_DIR.relative_to(PROJECT_DIR)}/ "
            f"({', '.join(sorted(kind for _, kind in CUSTOM_RESOURCE_SCHEMAS))})"
        ) from None


def _schema_file(api_version: str, kind: str):
    name = CUSTOM_RESOURCE_SCHEMAS.get((api_version, kind))
    if name is None:
        raise UnknownKind(f"no vendored CRD schema for kind {kind} of {api_version}")
    return SCHEMA_DIR / name


def _object_meta_errors(metadata: Any, version: str) -> list[str]:
    """What strict validation says of this metadata on any object: the CRD schemas declare
    `metadata: {type: object}` only, and the API server checks ObjectMeta itself. Checked
    through a ConfigMap that carries nothing else (one kubernetes_validate knows)."""
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    try:
        kubernetes_validate.validate(carrier, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [error.message]
    return []


def _describe(obj: dict) -> str:
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = "/".join(str(part) for part in (metadata.get("namespace"), metadata.get("name")) if part)
    return f"{obj.get('kind')} {name or '<unnamed>'}"
