"""The deployment's small certificate authority for Redis over TLS between hosts.

It is made once on the operator's machine, in ``beagle.pki`` (``~/.beagle/pki``: the CA's
key never leaves that folder, mode 700, the key 600), and signs one certificate per Redis
host, for the addresses clients reach it on. Hosts receive the CA's certificate (to check
Redis's) and a Redis host its own certificate and key. A certificate is issued again only
when its addresses change or it nears its end, so a second deploy changes nothing.
"""

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_DAYS = 3650
CERT_DAYS = 825
RENEW_DAYS = 60  # a certificate closer than this to its end is issued again


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM."""

    certificate: bytes
    key: bytes


class Authority:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()

    @property
    def certificate_path(self) -> Path:
        return self.folder / "ca.pem"

    def certificate(self) -> bytes:
        """The CA's certificate (PEM), the CA made first if there is none."""
        if not self.certificate_path.exists():
            self._make()
        return self.certificate_path.read_bytes()

    def issue(self, name: str, addresses: list[str]) -> Issued:
        """The certificate of server ``name`` for ``addresses`` (IP addresses or DNS names),
        kept in the folder and issued again only when needed."""
        ca_cert = x509.load_pem_x509_certificate(self.certificate())
        cert_path, key_path = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        if cert_path.exists() and key_path.exists():
            current = x509.load_pem_x509_certificate(cert_path.read_bytes())
            left = current.not_valid_after_utc - _now()
            if _names(current) == sorted(addresses) and left.days > RENEW_DAYS:
                return Issued(cert_path.read_bytes(), key_path.read_bytes())
        ca_key = serialization.load_pem_private_key((self.folder / "ca.key").read_bytes(), None)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _builder(name, key, ca_cert.subject, CERT_DAYS)
            .add_extension(x509.SubjectAlternativeName(_general_names(addresses)), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        )
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]  # an EC key
        _write(key_path, _private_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return Issued(cert_path.read_bytes(), key_path.read_bytes())

    def _make(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder.chmod(0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Beagle Redis CA")])
        cert = (
            _builder("Beagle Redis CA", key, name, CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            )
            .sign(key, hashes.SHA256())
        )
        _write(self.folder / "ca.key", _private_pem(key))
        self.certificate_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _builder(
    common_name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
    )


def _general_names(addresses: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    return names


def _names(cert: x509.Certificate) -> list[str]:
    alternative = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(
        [str(ip) for ip in alternative.get_values_for_type(x509.IPAddress)]
        + alternative.get_values_for_type(x509.DNSName)
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> None:
    """Write a private key: mode 600 from the start."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(data)
