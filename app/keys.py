"""Every Redis key Beagle uses, all under one prefix.

    <p>:stream:<model>    stream of requests for a model (consumer group GROUP);
                          entries are deleted once answered, so its length is the backlog
    <p>:result:<id>       list holding the one answer for a request; expires (result_ttl)
    <p>:model:<model>     JSON metadata of the versions workers serve; expires unless refreshed
    <p>:live:<model>      sorted set of worker ids serving the model, scored by last heartbeat
    <p>:worker:<id>       JSON status of one worker; expires (heartbeat_ttl)
    <p>:metrics:counters  hash of Prometheus counters, one field per name and labels
    <p>:metrics:histograms  hash of histogram buckets, sums and counts (app/metrics.py)
"""

GROUP = "workers"


class Keys:
    def __init__(self, prefix):
        self.prefix = prefix

    def stream(self, model):
        return f"{self.prefix}:stream:{model}"

    def result(self, request_id):
        return f"{self.prefix}:result:{request_id}"

    def model(self, model):
        return f"{self.prefix}:model:{model}"

    def live(self, model):
        return f"{self.prefix}:live:{model}"

    def worker(self, worker_id):
        return f"{self.prefix}:worker:{worker_id}"

    def metrics(self, kind):
        return f"{self.prefix}:metrics:{kind}"

    def pattern(self, kind="*"):
        """Glob matching one kind of key ("stream", "result", ...) or all of Beagle's."""
        return f"{self.prefix}:*" if kind == "*" else f"{self.prefix}:{kind}:*"

    def name_in(self, key, kind):
        """The model, request or worker a key of ``kind`` names."""
        return key.removeprefix(f"{self.prefix}:{kind}:")
