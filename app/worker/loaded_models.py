"""The model versions a worker holds in memory, kept in step with the repository.

A worker serves the newest version of each selected model, or the versions pinned
with ``name:version`` in the ``models`` setting. `refresh` loads and warms a new
version before it retires the one it replaces, so no request sees a gap; a version
that fails to load is logged once and the previous one keeps serving.
"""

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from app.metrics import Tally
from app.worker import repository, runtimes
from app.worker.repository import ModelSpec

log = logging.getLogger("beagle.models")


class LoadedModels:
    def __init__(
        self,
        root: str | Path,
        selection: Iterable[tuple[str, int | None]],
        tally: Tally | None = None,
        load: Callable[[ModelSpec], Any] = runtimes.load,
    ) -> None:
        """``selection``: the models setting, ((name, version or None), ...); empty:
        every model in the repository, newest version. ``load(spec)``: a warmed runner."""
        self.root = root
        self.pins: dict[str, set[int]] = {}  # name -> pinned versions (none: the newest)
        for name, version in selection:
            self.pins.setdefault(name, set()).update(() if version is None else (version,))
        self.tally = tally or Tally()  # counts loads, swaps and failures for /metrics
        self.load = load
        self.runners: dict[str, dict[int, Any]] = {}  # name -> {version: runner}
        self._failed: set[tuple[str, int]] = set()

    def refresh(self) -> bool:
        """Bring memory in step with the repository; True if anything changed. The new set
        is built aside and published with one assignment: readers in other threads (the
        heartbeat) see the old set or the new one, never half of each."""
        wanted = self._wanted()
        runners = {name: dict(loaded) for name, loaded in self.runners.items() if name in wanted}
        for name, versions in wanted.items():
            loaded = runners.setdefault(name, {})
            for version in sorted(versions - loaded.keys()):
                runner = self._load(name, version)
                if runner is not None:
                    loaded[version] = runner
            if versions & loaded.keys():
                for version in sorted(loaded.keys() - versions):
                    log.info("model %s: retiring version %d", name, version)
                    del loaded[version]
                    self.tally.count("model_swaps", model=name)
        for name in self.runners.keys() - wanted.keys():
            log.info("model %s: no longer in the repository, retired", name)
        runners = {name: loaded for name, loaded in runners.items() if loaded}
        changed = _versions(runners) != _versions(self.runners)
        self.runners = runners
        return changed

    def get(self, name: str, version: int | None = None) -> Any | None:
        """The runner for ``name`` at ``version`` (None = newest loaded), or None."""
        loaded = self.runners.get(name) or {}
        if version is None:
            return loaded[max(loaded)] if loaded else None
        return loaded.get(version)

    def names(self) -> list[str]:
        return sorted(self.runners)

    def announcement(self) -> dict[str, dict[str, Any]]:
        """What the registry should say this worker serves."""
        return {
            name: {
                "versions": {
                    str(v): {
                        "shape": list(r.spec.shape),
                        "classes": len(r.spec.labels),
                        "runtime": r.spec.runtime,
                    }
                    for v, r in loaded.items()
                },
                "latest": max(loaded),
            }
            for name, loaded in self.runners.items()
        }

    def versions(self) -> dict[str, list[int]]:
        return _versions(self.runners)

    def _wanted(self) -> dict[str, set[int]]:
        names = self.pins.keys() if self.pins else repository.names(self.root)
        wanted: dict[str, set[int]] = {}
        for name in names:
            available = set(repository.versions(self.root, name))
            pinned = self.pins.get(name)
            if pinned:
                wanted[name] = pinned & available
            elif available:
                wanted[name] = {max(available)}
        return wanted

    def _load(self, name: str, version: int) -> Any | None:
        if (name, version) in self._failed:
            return None
        try:
            spec = repository.load_spec(self.root, name, version)
            log.info(
                "model %s: loading version %d (%s) from %s",
                name,
                version,
                spec.runtime,
                spec.model_path,
            )
            runner = self.load(spec)
        except Exception:
            log.exception("model %s: version %d failed to load; not serving it", name, version)
            self._failed.add((name, version))
            self.tally.count("model_load_failures", model=name)
            return None
        log.info("model %s: version %d loaded and warmed", name, version)
        self.tally.count("model_loads", model=name)
        return runner


def _versions(runners: dict[str, dict[int, Any]]) -> dict[str, list[int]]:
    return {name: sorted(loaded) for name, loaded in runners.items()}
