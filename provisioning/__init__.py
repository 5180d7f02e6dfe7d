"""fab deploy and the operator tasks (fabfile.py), and the steps they run on a host."""
