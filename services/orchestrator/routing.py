"""Expert routing by the confidence graph: probe clients, then route questions.

``ExpertRouter`` embeds the auxiliary set once, probes every reward client
through its Score RPC when it first becomes healthy (answers of known
correctness; garbage, errors and timeouts count as incompetent and are
logged), and for each training question returns the M most competent live
clients over its L nearest auxiliary items, with their competence (the
consensus weights). The graph holds what the probes found and nothing a run
learnt: a run's online confidence (``online_confidence.py``) is passed to
``select`` and ``export``, never written into the graph, so every run starts
from the probed graph. Access is serialised by a lock.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection, Mapping, Sequence

from fedgrpo.tasks import LabelledQuestion, Question

from .auxiliary import probe_candidates
from .clients import RewardClient, RewardClients
from .competence import select_top_m
from .confidence_graph import ConfidenceGraph
from .embedding import Embedder

log = logging.getLogger(__name__)


class ExpertRouter:
    def __init__(
        self,
        clients: RewardClients,
        embedder: Embedder,
        items: Sequence[LabelledQuestion],
        neighbours: int = 20,
        probe_timeout: float = 10.0,
        store=None,  # RunStore: the graph is saved there after every change and restored at start
    ) -> None:
        self.clients, self.embedder, self.items = clients, embedder, list(items)
        self.neighbours, self.probe_timeout = neighbours, probe_timeout
        self.graph = ConfidenceGraph()
        self.graph.add_items(
            [i.question_id for i in self.items], [i.domain for i in self.items],
            embedder.embed([i.text for i in self.items]),
        )
        self.probed: set[str] = set()
        self.lock = threading.Lock()
        self.probe_lock = threading.Lock()  # one probing pass at a time (joins trigger them too)
        self.store = store
        self._restore()

    def _restore(self) -> None:
        """Take back the probed graph saved before a restart, if it was built on the same auxiliary items."""
        saved = self.store.load_confidence() if self.store is not None else None
        if not saved:
            return
        try:
            graph = ConfidenceGraph.from_json(json.loads(saved))
        except (ValueError, KeyError, TypeError) as err:
            log.warning("saved confidence graph unreadable (%s); probing again", err)
            return
        if sorted(graph.items()) != sorted(self.graph.items()):
            log.info("saved confidence graph was built on other auxiliary items; probing again")
            return
        self.graph = graph
        self.probed = set(graph.clients())
        log.info("confidence graph restored: %d probed clients (%s)", len(self.probed), ", ".join(sorted(self.probed)))

    def _save(self) -> None:
        if self.store is not None:
            with self.lock:
                data = json.dumps(self.graph.to_json())
            self.store.save_confidence(data)

    def probe(self, client: RewardClient) -> int:
        """Probe one client on every auxiliary item; returns how many probes were rejected."""
        name = client.view().name
        calls = []
        for item in self.items:
            candidates, truth = probe_candidates(item)
            future = self.clients.pool.submit(
                self.clients.score_one, client, "probe", item, candidates, self.probe_timeout, False
            )
            calls.append((item, truth, future))
        threshold = (client.reward_min + client.reward_max) / 2
        rejected = 0
        with self.lock:
            self.graph.add_client(name)
            for item, truth, future in calls:
                row, _, problem = future.result()
                invalid = self.graph.record_probe(
                    name, item.question_id, row, truth, client.reward_min, client.reward_max, threshold
                )
                rejected += invalid is not None
                if problem and rejected <= 3:
                    log.info("probe of %s on %s (%s): %s", name, item.question_id, item.domain, problem)
            self.probed.add(name)
        weights = self.graph.client_domain_weights().get(name, {})
        log.info(
            "probed %s on %d items (%d rejected): judging accuracy %s", name, len(self.items), rejected,
            ", ".join(f"{d} {a:.2f}" for d, a in sorted(weights.items())),
        )
        return rejected

    def probe_new_clients(self) -> None:
        with self.probe_lock:
            fresh = [c for c in list(self.clients.clients) if c.healthy and c.view().name not in self.probed]
            for client in fresh:
                self.probe(client)
            if fresh:
                self._save()

    def select(
        self, questions: Sequence[Question], m: int, allowed: Collection[str] = (),
        confidence: Mapping[str, float] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Each question's experts with their competence, most competent first.

        Only live clients, and only those in ``allowed`` when it is given.
        ``confidence``: the run's online confidence per client (others: as probed).
        """
        self.probe_new_clients()
        live = [v.name for v in self.clients.views() if v.healthy and (not allowed or v.name in allowed)]
        embeddings = self.embedder.embed([q.text for q in questions])
        with self.lock:
            chosen = []
            for e in embeddings:
                competences = self.graph.competences(e, L=self.neighbours, confidence=confidence)
                names = select_top_m(competences, m, live)
                chosen.append([(n, competences.get(n, 0.0)) for n in names])
            return chosen

    def probed_confidence(self) -> dict[str, float]:
        """Every probed client's confidence in the graph: where each run's online confidence starts."""
        with self.lock:
            return {name: self.graph.confidence(name) for name in self.graph.clients()}

    def snapshot(self, confidence: Mapping[str, float] | None = None) -> tuple[str, dict[str, dict[str, float]]]:
        """The graph as JSON (its clients carrying a run's ``confidence`` when given), and each client's
        judging accuracy per domain."""
        with self.lock:
            graph = self.graph.with_confidence(confidence) if confidence else self.graph
            return json.dumps(graph.to_json()), graph.client_domain_weights()

    def export(self, directory, confidence: Mapping[str, float] | None = None) -> None:
        """Write the graph into a run's folder, its clients carrying the run's ``confidence`` when given."""
        from pathlib import Path

        directory = Path(directory)
        with self.lock:
            graph = self.graph.with_confidence(confidence) if confidence else self.graph
            (directory / "confidence_graph.json").write_text(json.dumps(graph.to_json(), indent=1))
            graph.write_graphml(directory / "confidence_graph.graphml")
            weights = graph.client_domain_weights()
        from .graph_plot import draw

        draw(weights, directory / "confidence_graph.png")
