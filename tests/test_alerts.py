"""The Prometheus alerting rules an operator loads (prometheus/beagle.rules.yml): valid for
promtool, unit-tested with promtool's own rule tests, and naming only metrics that Beagle's
/metrics serves."""

import re
import subprocess

import requests

from app.config import PROJECT_ROOT

RULES = PROJECT_ROOT / "prometheus"


def promtool(*args):
    done = subprocess.run(
        ["promtool", *args], cwd=RULES, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid_and_their_unit_tests_pass():
    assert "SUCCESS: 6 rules found" in promtool("check", "rules", "beagle.rules.yml")
    assert "SUCCESS" in promtool("test", "rules", "beagle.rules.test.yml")


def test_every_metric_the_rules_name_is_served(stack):
    named = set(re.findall(r"\bbeagle_\w+", (RULES / "beagle.rules.yml").read_text()))
    text = requests.get(stack.url + "/metrics").text
    served = re.findall(r"^# TYPE (beagle_\w+) (\w+)", text, re.M)
    names = {n.removesuffix("_total") + ("_total" if k == "counter" else "") for n, k in served}
    assert named and named <= names, named - names
