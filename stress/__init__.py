"""The stress test, the benchmark and the Locust file."""
