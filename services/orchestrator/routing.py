"""Expert routing by the confidence graph: probe clients, then route questions.

``ExpertRouter`` embeds the auxiliary set once, probes every reward client
through its Score RPC (answers of known correctness, shaped like training
work: ``probes.py``), and for each training question returns the M most
competent live clients over its L nearest auxiliary items, with their
competence (the consensus weights); at equal competence exact judges go first
(``experts.exactness``: answer-based, then model-based, then by name).

When a client is probed (``probe_new_clients``, run when a client joins, a
question is routed and the graph is read): when it is first seen live; again
on every item when its description (domains, evaluator kinds, reward range)
changed since its last probe, its old results dropped first; and again when
its last probe is older than ``reprobe_seconds`` (0: never for age). A probe
pass carries the id of the run executing now (``live``, set by the run
loop), else a fresh id shaped like a run id, and goes through the same
``RewardClients.score_one`` call path as training.

What a probe records: an answer is judged, garbage included (NaN, out of
range, wrong count, "cannot judge", an error the client raised: incompetent
on that item, logged). A call that failed in transport (``UNKNOWN_PROBE_CODES``:
timeout, unreachable, overloaded, cancelled) records the item *unknown*: it
does not count in competence, and it is probed again whenever probing runs,
at most ``PROBE_TRIES`` failed tries per item in
all; after that it stays unknown and the log says so.

The same probes fit MoR's reward router (``reward_router.py``): ``router_fit``
fits one over a set of clients (a run's ``reward_clients``, or every probed
client) and refits it whenever a probe changed what it is fitted on: the
gate is a softmax over exactly the clients a run may fuse, so a client
outside the run (say, one holding every label) cannot soak up the weight
the run's clients share. ``fusion_weights`` gives each question's experts
their router weights (RunSpec ``reward_fusion: router``) and
``router_domain_weights`` each client's mean weight per domain
(GetConfidenceGraph, a run's folder).

The graph holds what the probes found and nothing a run learnt: a run's
online confidence (``online_confidence.py``) is passed to ``select`` and
``export``, never written into the graph, so every run starts from the
probed graph. Access is serialised by a lock.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Collection, Mapping, Sequence

import grpc
import numpy as np

from fedgrpo.serving import RETRYABLE_CODES
from fedgrpo.tasks import LabelledQuestion, Question

from .clients import RewardClient, RewardClients
from .competence import select_top_m
from .confidence_graph import ConfidenceGraph
from .embedding import Embedder
from .experts import exactness
from .probes import (
    DEFAULT_CANDIDATES,
    DESCRIPTION_CHANGED,
    LiveRun,
    description_signature,
    probe_candidates,
    probe_due,
    probe_run_id,
)
from .reward_router import RouterFit, fit_router
from .reward_scale import CORRECT_THRESHOLD, REWARD_MAX, REWARD_MIN

log = logging.getLogger(__name__)

# A probe that failed with one of these says nothing about how the client judges: unknown, tried again.
UNKNOWN_PROBE_CODES = RETRYABLE_CODES | {grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED}
# Failed tries per (client, item) before an item stays unknown for good (counted across restarts).
PROBE_TRIES = 3


class ExpertRouter:
    def __init__(
        self,
        clients: RewardClients,
        embedder: Embedder,
        items: Sequence[LabelledQuestion],
        neighbours: int = 20,
        probe_timeout: float = 10.0,
        store=None,  # RunStore: the graph is saved there after every change and restored at start
        reprobe_seconds: float = 3600.0,
    ) -> None:
        if not reprobe_seconds >= 0:
            raise ValueError(f"reprobe_seconds must be >= 0 (0: never for age), got {reprobe_seconds!r}")
        self.clients, self.embedder, self.items = clients, embedder, list(items)
        self.answers: dict[str, list[str]] = {}  # domain -> its items' answers: wrong candidates for text answers
        for item in self.items:
            self.answers.setdefault(item.domain, []).append(str(item.entry["answer"]))
        self.neighbours, self.probe_timeout = neighbours, probe_timeout
        self.reprobe_seconds = reprobe_seconds
        # The run executing now (set by the run loop): probes carry its id and its candidate count.
        self.live: LiveRun | None = None
        # Candidates, their order and the ids of idle passes are drawn unpredictably for the clients.
        self.rng = random.Random(secrets.randbits(64))
        # Per client: when its last full probe began (time.monotonic()) and the description it had then.
        self.probed_at: dict[str, float] = {}
        self.signatures: dict[str, tuple] = {}
        self.graph = ConfidenceGraph()
        self.graph.add_items(
            [i.question_id for i in self.items], [i.domain for i in self.items],
            embedder.embed([i.text for i in self.items]),
        )
        self.probed: set[str] = set()
        self.lock = threading.Lock()
        self.probe_lock = threading.Lock()  # one probing pass at a time (joins trigger them too)
        self.fit_lock = threading.Lock()  # the MoR routers' fits, refitted when the probes change
        # client set -> (probe errors it was fitted on, the fit, its mean weight per client and domain)
        self._fits: dict[tuple[str, ...], tuple[bytes, RouterFit, dict[str, dict[str, float]]]] = {}
        self.store = store
        self._restore()

    def _restore(self) -> None:
        """Take back the probed graph saved before a restart, if it was built on the same auxiliary items."""
        saved = self.store.federation.load_graph() if self.store is not None else None
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
        moved = {n: 1.0 for n in graph.clients() if graph.confidence(n) != 1.0}
        if moved:
            # Saved by a version whose runs wrote their online confidence into this graph;
            # the probed graph carries none now (a run's confidence lives with the run).
            log.info("confidence graph restored without the online confidence older runs left in it (%s)",
                     ", ".join(sorted(moved)))
            graph = graph.with_confidence(moved)
        self.graph = graph
        self.probed = set(graph.clients())
        # Their age counts from the restore; their description is taken as it is when next seen.
        self.probed_at = {name: time.monotonic() for name in self.probed}
        log.info("confidence graph restored: %d probed clients (%s)", len(self.probed), ", ".join(sorted(self.probed)))

    def _save(self) -> None:
        if self.store is not None:
            with self.lock:
                data = json.dumps(self.graph.to_json())
            self.store.federation.save_graph(data)

    def probe(self, client: RewardClient, items: Sequence[LabelledQuestion] | None = None) -> int:
        """Probe one client on ``items`` (default: every auxiliary item); returns how many probes were rejected.

        Rejected: garbage, judged wrong. A probe that failed in transport is
        recorded unknown (not rejected) and logged.
        """
        name = client.view().name
        live = self.live
        run_id = probe_run_id(live)
        count = live.candidates if live is not None else DEFAULT_CANDIDATES
        calls = []
        for item in self.items if items is None else items:
            candidates, truth = probe_candidates(item, self.rng, count, self.answers.get(item.domain, ()))
            future = self.clients.pool.submit(
                self.clients.score_one, client, run_id, item, candidates, self.probe_timeout, False
            )
            calls.append((item, truth, future))
        # score_one returns rewards on the federation's scale, whatever range the client declared.
        threshold = CORRECT_THRESHOLD
        rejected = unknown = 0
        with self.lock:
            self.graph.add_client(name)
            for item, truth, future in calls:
                row, _, problem = future.result()
                if getattr(problem, "code", None) in UNKNOWN_PROBE_CODES:
                    tries = self.graph.record_unknown(name, item.question_id, problem)
                    unknown += 1
                    if tries >= PROBE_TRIES:
                        log.warning("probe of %s on %s failed %d times (%s): it stays unknown",
                                    name, item.question_id, tries, problem)
                    elif unknown <= 3:
                        log.info("probe of %s on %s failed (try %d of %d), unknown until probed again: %s",
                                 name, item.question_id, tries, PROBE_TRIES, problem)
                    continue
                invalid = self.graph.record_probe(
                    name, item.question_id, row, truth, REWARD_MIN, REWARD_MAX, threshold
                )
                rejected += invalid is not None
                if problem and rejected <= 3:
                    log.info("probe of %s on %s (%s): %s", name, item.question_id, item.domain, problem)
            self.probed.add(name)
        weights = self.graph.client_domain_weights().get(name, {})
        log.info(
            "probed %s on %d items (%d rejected, %d unknown): judging accuracy %s", name, len(calls), rejected,
            unknown, ", ".join(f"{d} {a:.2f}" for d, a in sorted(weights.items())),
        )
        return rejected

    @staticmethod
    def signature(client: RewardClient) -> tuple:
        return description_signature(client.domains, client.evaluator_kinds, client.reward_min, client.reward_max)

    def due(self, client: RewardClient, now: float | None = None) -> str | None:
        """Why ``client`` must be probed on every item now (``probes.probe_due``), or None."""
        name = client.view().name
        if name not in self.probed:
            return "never probed"
        signature = self.signature(client)
        if name not in self.signatures:  # restored from the store: its description then is unknown
            self.signatures[name] = signature
        now = time.monotonic() if now is None else now
        return probe_due(signature, self.signatures[name], self.probed_at.get(name), now, self.reprobe_seconds)

    def probe_new_clients(self) -> None:
        """Probe every live client that is due (``due``: never probed, description changed, last probe too
        old) on every item, and again the items of other live clients whose probe failed in transport.

        The hook for wherever a client's description is learned (a join, a rejoin, Describe): call it
        after, and a changed description is probed before the client is routed again.
        """
        with self.probe_lock:
            fresh = []
            for client in list(self.clients.clients):
                why = self.due(client) if client.healthy else None
                if why is None:
                    continue
                name = client.view().name
                if name in self.probed:
                    log.info("probing %s again: %s", name, why)
                if why == DESCRIPTION_CHANGED:
                    with self.lock:  # what it judged under its old description says nothing now
                        if name in self.graph.clients():
                            self.graph.remove_client(name)
                self.probed_at[name], self.signatures[name] = time.monotonic(), self.signature(client)
                self.probe(client)
                fresh.append(client)
            by_id = {i.question_id: i for i in self.items}
            again = 0
            for client in list(self.clients.clients):
                if not client.healthy or any(client is f for f in fresh):
                    continue
                with self.lock:
                    ids = self.graph.unknown_items(client.view().name, max_tries=PROBE_TRIES)
                if ids:
                    self.probe(client, [by_id[i] for i in ids if i in by_id])
                    again += 1
            if fresh or again:
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
        views = self.clients.views()
        live = [v.name for v in views if v.healthy and (not allowed or v.name in allowed)]
        exact = {v.name: exactness(v.evaluator_kinds) for v in views}
        embeddings = self.embedder.embed([q.text for q in questions])
        with self.lock:
            chosen = []
            for e in embeddings:
                competences = self.graph.competences(e, L=self.neighbours, confidence=confidence)
                names = select_top_m(competences, m, live, exact)
                chosen.append([(n, competences.get(n, 0.0)) for n in names])
            return chosen

    def router_fit(self, clients: Sequence[str] = ()) -> RouterFit | None:
        """MoR's router over ``clients`` (default: every probed client; ones never probed are left out),
        fitted on the current probes and refitted whenever a probe changed them; None while none of them
        has a usable probe."""
        with self.lock:
            known = self.graph.clients()
            names = sorted(set(clients) & set(known)) if clients else sorted(known)
            ids, features, errors = self.graph.probe_errors(names)
            domains = [self.graph.graph.nodes[("item", i)]["domain"] for i in ids]
        if not names or not np.isfinite(errors).any():
            return None
        key, probes = tuple(names), errors.tobytes()
        with self.fit_lock:
            cached = self._fits.get(key)
            if cached is not None and cached[0] == probes:
                return cached[1]
        started = time.monotonic()
        fit = fit_router(names, features, errors)
        per_domain: dict[str, dict[str, list[float]]] = {}
        for domain, weights in zip(domains, fit.weights(features)):
            for name, w in weights.items():
                per_domain.setdefault(name, {}).setdefault(domain, []).append(w)
        by_domain = {n: {d: float(np.mean(v)) for d, v in sorted(by.items())} for n, by in per_domain.items()}
        with self.fit_lock:
            self._fits[key] = (probes, fit, by_domain)
        log.info("reward router over %s fitted on %d items in %.2fs: mixture error %.4f (uniform %.4f); "
                 "weight per domain %s", ", ".join(names), fit.items, time.monotonic() - started, fit.loss,
                 fit.uniform_loss, {n: {d: round(w, 3) for d, w in by.items()} for n, by in by_domain.items()})
        return fit

    def router_domain_weights(self, clients: Sequence[str] = ()) -> dict[str, dict[str, float]]:
        """Per client, per domain: its mean weight, under the router over ``clients`` (see ``router_fit``),
        on the domain's auxiliary items."""
        fit = self.router_fit(clients)
        if fit is None:
            return {}
        with self.fit_lock:
            by_domain = self._fits[tuple(fit.clients)][2]
            return {n: dict(by) for n, by in by_domain.items()}

    def fusion_weights(
        self, questions: Sequence[Question], experts: Sequence[Sequence[str]], clients: Sequence[str] = (),
    ) -> list[list[float]]:
        """Each question's experts' weights under the router over ``clients`` (a run's ``reward_clients``;
        default every probed client), in ``experts``' order; a client the router was not fitted on (never
        probed usably) gets 0, unless it is the question's only expert."""
        self.probe_new_clients()
        fit = self.router_fit(clients)
        if fit is None:
            raise RuntimeError("reward_fusion router: no client has been probed usably yet (see the probe log)")
        weights = fit.weights(self.embedder.embed([q.text for q in questions]), available=experts)
        return [[w.get(n, 0.0) for n in names] for w, names in zip(weights, experts)]

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

    def export(
        self, directory, confidence: Mapping[str, float] | None = None, with_router: bool = False,
        clients: Sequence[str] = (),
    ) -> None:
        """Write the graph into a run's folder, its clients carrying the run's ``confidence`` when given;
        ``with_router``: also the mean weight per client and domain of the router over ``clients`` (the
        run's; router_weights.json, .png)."""
        from pathlib import Path

        directory = Path(directory)
        with self.lock:
            graph = self.graph.with_confidence(confidence) if confidence else self.graph
            (directory / "confidence_graph.json").write_text(json.dumps(graph.to_json(), indent=1))
            graph.write_graphml(directory / "confidence_graph.graphml")
            weights = graph.client_domain_weights()
        from .graph_plot import draw

        draw(weights, directory / "confidence_graph.png")
        router = self.router_domain_weights(clients) if with_router else {}
        if router:
            (directory / "router_weights.json").write_text(json.dumps(router, indent=1, sort_keys=True))
            draw(router, directory / "router_weights.png", title="reward router", measure="mean fusion weight")
