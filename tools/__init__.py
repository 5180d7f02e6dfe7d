"""Development and operator tools that Apache never serves: the local stack (make run,
the tests) and the HTTP client of the stress test and scripts/simple_request.py."""
