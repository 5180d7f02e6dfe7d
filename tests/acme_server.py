"""A local ACME CA for the tests: Debian's pebble (Let's Encrypt's test server), with
pebble-challtestsrv as its DNS server, which answers every name with 127.0.0.1 — so
pebble validates http-01 challenges against Apache on this machine, for any test domain.

Pebble's own HTTPS listener needs a certificate (Debian's package ships none): it gets
one from a small CA of the test's own (provisioning/pki.py), which mod_md is told to trust
(beagle.tls.ca_certificate). Certificates pebble issues chain to its issuing root, served
on its management port: `issuing_root` is what a client verifies them with.
"""

import json
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from provisioning.pki import Authority
from tools.devstack import free_port


class Pebble:
    def __init__(self, work, http_port, https_port):
        self.work = Path(work)
        self.http_port, self.https_port = http_port, https_port
        self.port, self.management, self.dns = free_port(), free_port(), free_port()
        self.processes = []

    @property
    def directory(self):
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def ca_certificate(self):
        """The CA of pebble's own HTTPS listener (for MDCACertificateFile)."""
        return self.work / "ca.pem"

    def start(self):
        self.work.mkdir(parents=True, exist_ok=True)
        authority = Authority(self.work / "pki")
        self.ca_certificate.write_bytes(authority.certificate())
        issued = authority.issue("pebble", ["127.0.0.1", "localhost"])
        (self.work / "cert.pem").write_bytes(issued.certificate)
        (self.work / "key.pem").write_bytes(issued.key)
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management}",
                "certificate": str(self.work / "cert.pem"),
                "privateKey": str(self.work / "key.pem"),
                "httpPort": self.http_port,
                "tlsPort": self.https_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (self.work / "pebble.json").write_text(json.dumps(config))
        self._spawn(
            "challtestsrv",
            [
                "pebble-challtestsrv",
                "-dns01",
                f"127.0.0.1:{self.dns}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{free_port()}",
                "-defaultIPv6",
                "",
            ],
        )
        self._spawn(
            "pebble",
            [
                "pebble",
                "-config",
                str(self.work / "pebble.json"),
                "-dnsserver",
                f"127.0.0.1:{self.dns}",
                "-strict=false",
            ],
            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
        )
        for _ in range(100):
            try:
                self._get(f"{self.directory}")
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"pebble did not start: {(self.work / 'pebble.log').read_text()}")

    def issuing_root(self):
        """The root that certificates pebble issues chain to (PEM)."""
        return self._get(f"https://127.0.0.1:{self.management}/roots/0")

    def _get(self, url):
        context = ssl.create_default_context(cafile=str(self.ca_certificate))
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return response.read()

    def _spawn(self, name, command, env=None):
        log = open(self.work / f"{name}.log", "wb")
        self.processes.append(
            subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", **(env or {})},
                start_new_session=True,
            )
        )

    def stop(self):
        for process in self.processes:
            process.terminate()
            process.wait(10)
