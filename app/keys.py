"""Every Redis key Beagle uses, all under one prefix.

<p>:stream:<model>        requests for a model that name no version (consumer group
                          GROUP); every worker serving the model reads it
<p>:stream:<model>:v<N>   requests for version N; only workers holding N read it.
                          Entries are deleted once answered: a stream's length is its
                          backlog
<p>:result:<id>           list holding the one answer for a request; expires (result_ttl)
<p>:refused:<id>          list holding a refused request's verdict, which ends its wait;
                          popped at once (expires after a minute if not)
<p>:models                set of the models workers have announced
<p>:model:<model>         hash: each worker's announcement (versions, input shapes)
<p>:live:<model>          sorted set of worker ids serving the model, scored by last heartbeat
<p>:worker:<id>           JSON status of one worker; expires (heartbeat_ttl)
<p>:workers               sorted set of every worker's id, scored by last heartbeat
<p>:metrics:counters      hash of Prometheus counters, one field per name and labels
<p>:metrics:histograms    hash of histogram buckets, sums and counts (app/metrics.py)
"""

GROUP = "workers"


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def stream(self, model: str, version: int | None = None) -> str:
        """The stream of ``model``'s requests for ``version`` (None: no version named)."""
        return f"{self.prefix}:stream:{model}" + ("" if version is None else f":v{version}")

    def stream_of(self, key: str) -> tuple[str, int | None]:
        """(model, version or None) of a stream key."""
        model, _, version = key.removeprefix(f"{self.prefix}:stream:").partition(":v")
        return model, int(version) if version else None

    def result(self, request_id: str) -> str:
        return f"{self.prefix}:result:{request_id}"

    def refused(self, request_id: str) -> str:
        return f"{self.prefix}:refused:{request_id}"

    def models(self) -> str:
        return f"{self.prefix}:models"

    def model(self, model: str) -> str:
        return f"{self.prefix}:model:{model}"

    def live(self, model: str) -> str:
        return f"{self.prefix}:live:{model}"

    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def metrics(self, kind: str) -> str:
        return f"{self.prefix}:metrics:{kind}"

    def pattern(self, kind: str = "*") -> str:
        """Glob matching one kind of key ("stream", "result", ...) or all of Beagle's."""
        return f"{self.prefix}:*" if kind == "*" else f"{self.prefix}:{kind}:*"
