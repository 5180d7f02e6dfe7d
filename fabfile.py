"""Lets `fab` find Beagle's tasks (provisioning/fabfile.py) from the checkout's root."""

from provisioning.fabfile import ns  # noqa: F401
