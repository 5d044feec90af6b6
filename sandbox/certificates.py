"""The cluster's TLS material for the sandbox and the tests: a CA, and the one certificate
every node presents, laid out as the stack's TLS Secret is (`tls.crt`, `tls.key`, `ca.crt`,
the kubernetes.io/tls layout with its CA, as cert-manager writes it).

The node certificate covers what the stack's covers, `certificate_dns_names(...)` for the
StatefulSet's Services in the stack's namespace: the wildcard of the headless Service (each
pod's stable name, which the nodes announce), the Services, and localhost. No IP address: pod
IPs change. It is meant for servers and, on the cluster bus and in replication, for the
nodes' outgoing connections as well (serverAuth and clientAuth).

A node's TLS directory is written the way the kubelet writes a Secret volume: the files live
in a directory of their own, `..data` links to it and every name links through `..data`. A
renewal writes a new directory and swaps the `..data` link in one rename, so a reader never
sees a new certificate beside an old key.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from components.redis_node_files import TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE, certificate_dns_names

# The names the stack gives its objects (components/redis_cluster.py, which imports Pulumi and
# so cannot be imported here): the StatefulSet, its headless Service and the client Service.
STATEFUL_SET = "redis-cluster"
HEADLESS_SERVICE = f"{STATEFUL_SET}-headless"
CLIENT_SERVICE = STATEFUL_SET

# cert-manager's defaults for an issued certificate (90 days); the sandbox's own CA lives as
# long as a sandbox might, and is never trusted beyond it.
CA_VALIDITY = datetime.timedelta(days=365)
NODE_VALIDITY = datetime.timedelta(days=90)
# Issued a few minutes in the past, so that a clock slightly behind still accepts them.
BACKDATE = datetime.timedelta(minutes=5)

CA_KEY_FILE = "ca.key"
_DATA_LINK = "..data"


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "redis-eks"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def certificate_serial(pem: bytes) -> int:
    """The serial number of a PEM certificate."""
    return x509.load_pem_x509_certificate(pem).serial_number


@dataclass(frozen=True)
class TlsFiles:
    """What a node's TLS directory holds: its certificate and key and the CA's certificate."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def serial(self) -> int:
        return certificate_serial(self.cert_pem)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def files(self) -> dict[str, bytes]:
        return {TLS_CERT_FILE: self.cert_pem, TLS_KEY_FILE: self.key_pem, TLS_CA_FILE: self.ca_pem}

    def write(self, directory: Path) -> None:
        """Writes (or replaces, at once) the files as a Secret volume holds them; mode 0600."""
        write_like_a_secret_volume(Path(directory), self.files())

    @classmethod
    def read(cls, directory: Path) -> TlsFiles:
        directory = Path(directory)
        return cls(
            ca_pem=(directory / TLS_CA_FILE).read_bytes(),
            cert_pem=(directory / TLS_CERT_FILE).read_bytes(),
            key_pem=(directory / TLS_KEY_FILE).read_bytes(),
        )


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA of its own: EC P-256, CA:TRUE with path length 0 (it signs node certificates only)."""

    cert_pem: bytes
    key_pem: bytes = b""

    @classmethod
    def new(
        cls, common_name: str = "redis-eks sandbox CA", validity: datetime.timedelta = CA_VALIDITY
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        start = _now() - BACKDATE
        subject = _name(common_name)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate.public_bytes(serialization.Encoding.PEM), _private_key_pem(key))

    def issue(
        self,
        dns_names: Sequence[str],
        common_name: Optional[str] = None,
        validity: datetime.timedelta = NODE_VALIDITY,
    ) -> TlsFiles:
        """A new key and a certificate for it signed by this CA, covering `dns_names` only:
        digitalSignature and keyEncipherment, serverAuth and clientAuth."""
        if not dns_names:
            raise ValueError("a node certificate needs at least one DNS name")
        if not self.key_pem:
            raise ValueError("this CA has no key: it can only be trusted, not issue")
        ca_certificate = x509.load_pem_x509_certificate(self.cert_pem)
        ca_key = serialization.load_pem_private_key(self.key_pem, password=None)
        key = ec.generate_private_key(ec.SECP256R1())
        start = _now() - BACKDATE
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name or dns_names[0]))
            .issuer_name(ca_certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(min(start + validity, ca_certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_certificate.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        return TlsFiles(self.cert_pem, certificate.public_bytes(serialization.Encoding.PEM), _private_key_pem(key))

    def save(self, directory: Path) -> None:
        """`ca.crt` and `ca.key` (0600) in `directory` (0700)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        _write_private(directory / TLS_CA_FILE, self.cert_pem)
        _write_private(directory / CA_KEY_FILE, self.key_pem)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        directory = Path(directory)
        return cls((directory / TLS_CA_FILE).read_bytes(), (directory / CA_KEY_FILE).read_bytes())


def node_dns_names(namespace: str) -> list[str]:
    """What the stack's node certificate covers in `namespace`."""
    return certificate_dns_names(HEADLESS_SERVICE, CLIENT_SERVICE, namespace)


def issue_node_files(ca: CertificateAuthority, namespace: str) -> TlsFiles:
    """The nodes' certificate for the stack's Services in `namespace`, signed by `ca`."""
    return ca.issue(node_dns_names(namespace), common_name=f"{STATEFUL_SET}.{namespace}")


def write_like_a_secret_volume(directory: Path, files: dict[str, bytes], mode: int = 0o600) -> None:
    """Writes `files` into `directory` as the kubelet's atomic writer fills a Secret volume:
    a fresh `..<timestamp>` directory, the `..data` link swapped to it in one rename, and each
    name a link through `..data`. The previous content is deleted after the swap."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    data_link = directory / _DATA_LINK
    previous = os.readlink(data_link) if data_link.is_symlink() else None
    fresh = Path(tempfile.mkdtemp(dir=directory, prefix=".." + _now().strftime("%Y_%m_%d_%H_%M_%S.")))
    for name, content in files.items():
        _write_private(fresh / name, content, mode)
    staged = directory / (_DATA_LINK + "_tmp")
    staged.unlink(missing_ok=True)
    os.symlink(fresh.name, staged)
    os.replace(staged, data_link)
    for name in files:
        link = directory / name
        if not link.is_symlink():
            # A regular file of an older layout, or nothing yet: a link through ..data.
            link.unlink(missing_ok=True)
            os.symlink(f"{_DATA_LINK}/{name}", link)
    if previous is not None and previous != fresh.name:
        shutil.rmtree(directory / previous, ignore_errors=True)


def _write_private(path: Path, content: bytes, mode: int = 0o600) -> None:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
    os.chmod(path, mode)
