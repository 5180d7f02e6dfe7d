"""The host's services, through its service manager (``plan.systemctl``): whether a unit is
active or enabled, and keeping units enabled and running, restarted when their
configuration changed, one at a time for workers (the next only once the restarted one
serves again)."""

from fabric import Connection

from provisioning.plan import Plan
from provisioning.remote import run


def unit_is(c: Connection, plan: Plan, state: str, unit: str) -> bool:
    """Whether ``unit`` is ``state`` ("active", "enabled") on the host."""
    return run(c, f"{plan.systemctl} is-{state} {unit}", warn=True).stdout.strip() == state


def keep_running(
    c: Connection,
    plan: Plan,
    units: list[str],
    changed: bool,
    rolling: bool = False,
    restart: bool = False,
) -> list[str]:
    """Enabled and running; restarted (one at a time when rolling) if their configuration
    changed or ``restart`` asks, e.g. for new code."""
    systemctl = plan.systemctl
    changes = ["configuration changed"] if changed else []
    changes += ["new code"] if restart and not changed else []
    changed = changed or restart
    run(c, f"{systemctl} daemon-reload")
    for unit in units:
        if not unit_is(c, plan, "enabled", unit):
            run(c, f"{systemctl} enable -q {unit}")
            changes.append(f"enabled {unit}")
        active = unit_is(c, plan, "active", unit)
        if not active or changed:
            since = run(c, "date +%s.%N").stdout.strip()
            run(c, f"{systemctl} restart {unit}")
            changes.append(f"{'restarted' if active else 'started'} {unit}")
            if rolling:  # one at a time: the next only once this one serves again
                wait_live(c, plan, unit.split("@")[1], since)
    return changes


def wait_live(c: Connection, plan: Plan, instance: str, since: str) -> None:
    run(
        c,
        plan.with_env(
            plan.python(
                f'scripts.wait_worker --name "$(hostname)-{instance}" --since {since} --timeout 300'
            ),
            role="worker",
        ),
    )
