"""What fab deploy writes and ships, checked without a host: the release bundle carries
code and never the operator's configuration or keys; the env file means the same to
systemd and to a shell; Redis's address is private; the rendered units are sound."""

import re
import shlex
import shutil
import subprocess
import sys

import pytest
from invoke.exceptions import Exit
from old_redis import old_redis_server

from app.config import PROJECT_ROOT
from provisioning import config_files, envfile
from provisioning.bundle import SHIPPED, Bundle
from provisioning.deployment import redis_address
from provisioning.edge import LETS_ENCRYPT, Edge, check_exposure
from provisioning.host import gpu_requirements
from provisioning.plan import Plan
from provisioning.redis_host import redis_server_problem

ENV_GENERATOR = "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator"
AWKWARD = {
    "BEAGLE_API_KEYS": "k1,k-2_x.y~z",
    "BEAGLE_HOST": "*",
    "BEAGLE_LOG_LEVEL": "a b  #not a comment ; & | < > ( ) * ? [ ] { } ! ~ % ^ = + @",
}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A git clone of this checkout (with the ignore rules of its work tree), to add
    files to."""
    copy = tmp_path_factory.mktemp("bundle") / "checkout"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(copy)], check=True)
    shutil.copy(PROJECT_ROOT / ".gitignore", copy / ".gitignore")
    return copy


def names_in(bundle):
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(bundle.tarball)) as archive:
        return set(archive.getnames())


def test_the_operators_config_is_never_bundled(checkout):
    (checkout / "fabric.yaml").write_text("beagle:\n  settings: {api_keys: s3cret}\n")
    (checkout / "beagle.env").write_text("BEAGLE_API_KEYS='s3cret'\n")
    names = names_in(Bundle.from_checkout(checkout))
    assert "app/web/__init__.py" in names and "wsgi/beagle.wsgi" in names
    assert "fabric.yaml" not in names and "beagle.env" not in names


def test_a_release_ships_the_projects_own_folders_only(checkout):
    """What an operator leaves lying around in the checkout never reaches a host: the
    allow-list leaves it out (the test fails without it: git ignores none of these)."""
    left = {
        "ops/prod.yaml": "beagle:\n  sudo_password: hunter2\n",
        "cluster.yaml.bak": "beagle:\n  roles: {web: [web1]}\n",
        "beagle.env.old": "BEAGLE_API_KEYS='s3cret-s3cret-s3cret-s3cret-s3cret'\n",
        "notes.txt": "the sudo password is hunter2\n",
    }
    for name, text in left.items():
        (checkout / name).parent.mkdir(exist_ok=True)
        (checkout / name).write_text(text)
    try:
        ignored = subprocess.run(
            ["git", "check-ignore", *left], cwd=checkout, capture_output=True, text=True
        ).stdout.split()
        assert ignored == []  # so only the allow-list keeps them home
        names = names_in(Bundle.from_checkout(checkout))
        assert not set(left) & names
        assert {name.split("/")[0] for name in names} <= set(SHIPPED)
        assert "app/web/__init__.py" in names and "stress/images/digit_7.png" in names
    finally:
        for name in left:
            (checkout / name).unlink()


@pytest.mark.parametrize(
    "name,content",
    [
        ("stress/deploy/cluster.yaml", "# my cluster\nbeagle:\n  roles: {web: [web1]}\n"),
        ("scripts/ops/prod.yml", "hosts:\n  beagle:\n    sudo_password: hunter2\n"),
        ("tools/old/cluster.yaml.bak", "beagle:\n  roles: {web: [web1]}\n"),
        ("app/keys/id_ed25519", "anything"),
        ("models/notes/server.pem", "anything"),
        ("stress/notes/innocent.txt", "-----BEGIN OPENSSH " + "PRIVATE KEY-----\nb3Bl\n"),
    ],
)
def test_files_that_look_like_secrets_stop_the_bundle(checkout, name, content):
    path = checkout / name  # in a folder of its own inside a shipped one
    path.parent.mkdir()
    path.write_text(content)
    subprocess.run(["git", "add", "-f", name], cwd=checkout, check=True)  # even if tracked
    try:
        with pytest.raises(ValueError, match=f"refusing to bundle {name}: they look like"):
            Bundle.from_checkout(checkout)
    finally:
        subprocess.run(["git", "rm", "-q", "--cached", name], cwd=checkout, check=True)
        shutil.rmtree(path.parent)


def systemd_reads(env_text, tmp_path):
    """The variables systemd's own env-file loader reads from ``env_text`` (through the
    environment.d generator, which shares EnvironmentFile='s parser)."""
    (tmp_path / "environment.d").mkdir()
    (tmp_path / "environment.d" / "beagle.conf").write_text(env_text)
    out = subprocess.run(
        [ENV_GENERATOR],
        env={"XDG_CONFIG_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(
        shlex.split(line)[0].split("=", 1)
        for line in out.splitlines()
        if line.startswith("BEAGLE_")
    )


def shell_reads(env_text, tmp_path):
    path = tmp_path / "beagle.env"
    path.write_text(env_text)
    out = subprocess.run(
        ["bash", "-c", f"set -a; . {path}; set +a; env -0"], env={}, capture_output=True, check=True
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if item.startswith("BEAGLE_"))


def test_the_env_file_means_the_same_to_systemd_and_to_a_shell(tmp_path):
    text = envfile.render(AWKWARD)
    assert systemd_reads(text, tmp_path) == AWKWARD
    assert shell_reads(text, tmp_path) == AWKWARD
    assert envfile.parse(text) == AWKWARD
    # and to the systemctl stand-in that runs the units on this machine's test hosts
    from systemctl2.systemctl3 import read_env_file

    (tmp_path / "stand-in.env").write_text(text)
    assert dict(read_env_file(str(tmp_path / "stand-in.env"))) == AWKWARD


@pytest.mark.parametrize(
    "value",
    ["$(touch /tmp/pwned)", "`id`", "a'b", 'a"b', "a\\b", "two\nlines", "$HOME", "tab\there"],
)
def test_values_a_shell_could_expand_are_refused(value):
    with pytest.raises(ValueError, match="BEAGLE_API_KEYS holds"):
        envfile.render({"BEAGLE_API_KEYS": value})


def plan(**values):
    return Plan(**values)


KEY = "k" * 32


def test_closed_by_default_plain_http_only_on_loopback_or_behind_a_proxy(tmp_path):
    open_http = Edge.from_plan(plan())
    check_exposure(plan(listen="127.0.0.1"), open_http, ())  # make-run-like: fine
    with pytest.raises(Exit, match="would serve plain HTTP on \\*"):
        check_exposure(plan(), open_http, (KEY,))
    proxied = Edge.from_plan(plan(tls={"behind_proxy": True}))
    check_exposure(plan(), proxied, (KEY,))
    with pytest.raises(Exit, match="no API keys are set.*fab new-api-key.*open_api: true"):
        check_exposure(plan(), proxied, ())
    check_exposure(plan(open_api=True), proxied, ())  # said out loud


def test_the_tls_part_of_the_plan_is_checked_before_any_host_is_touched(tmp_path):
    with pytest.raises(Exit, match="must be one of off, certificate, acme"):
        Edge.from_plan(plan(tls={"mode": "letsencrypt"}))
    with pytest.raises(Exit, match="acme needs domains"):
        Edge.from_plan(plan(tls={"mode": "acme", "email": "ops@example.com"}))
    with pytest.raises(Exit, match="no such file"):
        Edge.from_plan(plan(tls={"mode": "certificate", "certificate": str(tmp_path / "x")}))
    with pytest.raises(Exit, match="unknown keys domain"):
        Edge.from_plan(plan(tls={"mode": "acme", "domain": "x"}))
    acme = Edge.from_plan(plan(tls={"mode": "acme", "domains": "a.example", "email": "o@x"}))
    assert acme.domains == ("a.example",) and acme.ca == LETS_ENCRYPT and acme.on


def test_redis_binds_loopback_alone_and_a_given_private_address_in_a_cluster():
    assert redis_address(plan(), 1) == "127.0.0.1"
    assert redis_address(plan(redis_address="10.0.0.5"), 3) == "10.0.0.5"
    assert redis_address(plan(redis_address="fd12::5"), 2) == "fd12::5"
    with pytest.raises(Exit, match="set beagle.redis_address"):
        redis_address(plan(), 2)
    for public in ("203.0.113.80", "8.8.8.8", "0.0.0.0", "127.0.0.1", "2001:4860::8888"):
        with pytest.raises(Exit, match="not a private address"):
            redis_address(plan(redis_address=public), 2)
    with pytest.raises(Exit, match="must be an IP address"):
        redis_address(plan(redis_address="redis.example.com"), 2)


def test_the_operations_doc_lists_every_key_of_the_deployment_with_its_default():
    doc = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    rows = dict(
        re.findall(
            r"^\| `(\w+)` \| `([^`]*)` \|",
            doc.split("**Settings of the deployment**")[1].split("\n\n")[1],
            re.M,
        )
    )
    assert rows == {
        key: '""' if default == "" else str(default)
        for key, default in Plan.defaults()["beagle"].items()
    }


def test_a_gpu_host_gets_the_cuda_builds_of_the_same_pins():
    requirements = (PROJECT_ROOT / "requirements.txt").read_bytes()
    gpu = gpu_requirements(requirements).decode()
    assert "\nonnxruntime-gpu==1.31.1" in gpu and "\nonnxruntime==" not in gpu
    assert "\ntensorflow[and-cuda]==2.21.0\n" in gpu and "\ntensorflow==2.21.0" in gpu


def test_rendered_units_pass_systemd_analyze(tmp_path):
    units = {
        "beagle-redis.service": config_files.render(
            "systemd/beagle-redis.service.j2", etc="/etc/beagle", redis_dir="/var/lib/x"
        ),
        "beagle-worker@.service": config_files.render(
            "systemd/beagle-worker@.service.j2",
            etc="/etc/beagle",
            prefix=sys.prefix,
            stop_timeout=90,
            hostname="gpu1",
            gpus=1,
        ),
        "beagle-firewall.service": config_files.render(
            "systemd/beagle-firewall.service.j2", etc="/etc/beagle"
        ),
    }
    for name, text in units.items():
        (tmp_path / name).write_text(text.replace(f"{sys.prefix}/current/venv", sys.prefix))
    (tmp_path / "beagle-worker@0.service").symlink_to(tmp_path / "beagle-worker@.service")
    verify = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(tmp_path / "beagle-redis.service"),
            str(tmp_path / "beagle-worker@0.service"),
            str(tmp_path / "beagle-firewall.service"),
        ],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    redis_unit = units["beagle-redis.service"]
    for hardening in (
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "ReadWritePaths=/var/lib/x",
        "ProtectSystem=strict",
    ):
        assert hardening in redis_unit, hardening
    assert "RestartPreventExitStatus=78" in units["beagle-worker@.service"]


def test_the_deploy_refuses_a_redis_older_than_6_2():
    def version_of(binary):
        return subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, check=True
        ).stdout

    assert redis_server_problem(version_of("/usr/bin/redis-server")) is None  # Debian 12: 7.0
    assert redis_server_problem(version_of(old_redis_server())).startswith(
        "Redis 5.0.6 is too old: Beagle needs 6.2 or newer"
    )


def exposure(*args):
    """systemd-analyze security's overall exposure (0-10; 4.0 or less is "OK")."""
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", *args], capture_output=True, text=True
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
    assert found, done.stdout[-2000:] + done.stderr
    return float(found.group(1)), found.group(2)


def test_each_web_host_rotates_its_logs_at_an_hour_of_its_own(tmp_path):
    """logrotate reloads Apache: the drop-in moves Debian's daily timer (as Debian ships
    it, written here) to the web host's own hour, a valid timer for systemd."""
    (tmp_path / "logrotate.service").write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    debians = "[Unit]\nDescription=Daily rotation of log files\n\n[Timer]\nOnCalendar=daily\n"
    debians += "AccuracySec=1h\nPersistent=true\n"
    hours = []
    for turn in (0, 1, 25):
        drop_in = config_files.logrotate_timer(turn)
        hours += re.findall(r"^OnCalendar=\*-\*-\* (\d\d):00:00 UTC$", drop_in, re.M)
        assert "\nOnCalendar=\n" in drop_in and "AccuracySec=1min" in drop_in
        (tmp_path / "logrotate.timer").write_text(debians + drop_in)
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / "logrotate.timer")],
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    assert hours == ["00", "01", "01"]


def test_every_rendered_unit_is_sandboxed_to_an_exposure_of_4_at_most(tmp_path):
    render = config_files.render
    units = {
        "beagle-worker@0.service (CPU host)": render(
            "systemd/beagle-worker@.service.j2",
            etc="/etc/beagle",
            prefix="/opt/beagle",
            stop_timeout=90,
            hostname="h",
            gpus=0,
        ),
        "beagle-worker@0.service (GPU host)": render(
            "systemd/beagle-worker@.service.j2",
            etc="/etc/beagle",
            prefix="/opt/beagle",
            stop_timeout=90,
            hostname="h",
            gpus=1,
        ),
        "beagle-redis.service": render(
            "systemd/beagle-redis.service.j2", etc="/etc/beagle", redis_dir="/var/lib/x"
        ),
    }
    scores = {}
    for name, text in units.items():
        path = tmp_path / name.split()[0]
        path.write_text(text)
        scores[name] = exposure(str(path))
        path.unlink()
    # Apache: Debian's own unit with Beagle's drop-in, merged as systemd merges them.
    root = tmp_path / "root"
    (root / "lib/systemd/system").mkdir(parents=True)
    shutil.copy("/lib/systemd/system/apache2.service", root / "lib/systemd/system")
    scores["apache2.service (Debian's)"] = exposure(f"--root={root}", "apache2.service")
    (root / "etc/systemd/system/apache2.service.d").mkdir(parents=True)
    (root / "etc/systemd/system/apache2.service.d/beagle.conf").write_text(
        config_files.apache_environment("/etc/beagle")
    )
    scores["apache2.service + beagle.conf"] = exposure(f"--root={root}", "apache2.service")
    print(f"\nsystemd-analyze security exposure: {scores}")
    assert scores.pop("apache2.service (Debian's)")[0] > 4.0  # what the drop-in improves on
    assert all(level <= 4.0 and verdict == "OK" for level, verdict in scores.values()), scores
    gpu = units["beagle-worker@0.service (GPU host)"]
    assert "DeviceAllow=/dev/nvidia%i rw" in gpu and "PrivateDevices" not in gpu
