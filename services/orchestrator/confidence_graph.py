"""Competence-based expert selection: the confidence graph (DESIGN.md section 1).

Contract
--------
The server holds a small labelled auxiliary set, each item embedded by a frozen
encoder. Every client is *probed* on every item: it scores candidate answers of
known correctness, and the server records how well it *judged* them. For a
training question the server takes the L auxiliary items nearest to the
question's embedding (cosine similarity); a client's competence for the
question is its mean judging accuracy over those neighbours (optionally
similarity-weighted), multiplied by the client's online ``confidence``; the M
most competent live clients are the question's experts.

Rules that hold everywhere in this module:

- Unprobed is not competent: an item a client was never probed on counts as
  accuracy 0, and a live client absent from the graph has competence 0.
- Garbage from a client is never an exception: a probe with the wrong number
  of rewards, a NaN / inf, or a value outside [low, high] records accuracy 0
  for that item and ``record_probe`` returns a message describing the problem
  (the caller logs it).
- A failed probe is not incompetence: a probe whose call failed in transport
  (timeout, unreachable) is recorded ``unknown`` by ``record_unknown``, with
  the number of failed tries; unknown items are left out of competence (not
  counted 0) until a later probe judges them (``unknown_items`` lists them
  for the caller to probe again). Wrong arguments from the *server's own* code (shapes,
  unknown items, bad rates) raise ``ValueError`` / ``KeyError`` naming the
  field, the value and what was expected.
- Every ordering is deterministic: nearest items tie-break by lower index,
  experts of equal competence by exactness (answer-based judges before
  model-based ones), then by name.
- Output contains only plain Python types (``float``, ``str``, ``list``,
  ``dict``), so it can go to JSON, protobuf or GraphML as is.

The math lives in ``competence.py`` (``cosine_similarities``, ``nearest_items``,
``judging_accuracy``, ``competence``, ``select_top_m``);
``ConfidenceGraph`` holds the state: a ``networkx.Graph`` whose nodes are
``("client", name)``, ``("item", item_id)`` and optionally
``("question", question_id)``; client-item edges carry ``accuracy`` (and
``problem``: "" for a valid probe, else why it was rejected; ``unknown``:
True when the probe failed in transport, then ``tries`` counts the failed
probes and ``accuracy`` means nothing), question-item
edges carry ``similarity``. Item embeddings live in one numpy matrix on the
class, not in the graph, since the graph is exported and they are bulky.

A ``ConfidenceGraph`` is not thread-safe; the orchestrator serialises access.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from .competence import (
    competence,
    cosine_similarities,
    judging_accuracy,
    nearest_items,
    require_finite,
    require_int,
    select_top_m,
)
from .reward_router import probe_error

CLIENT = "client"
ITEM = "item"
QUESTION = "question"
JSON_FORMAT = "fedgrpo.confidence_graph"
JSON_VERSION = 1

class ConfidenceGraph:
    """Clients, auxiliary items and (optionally) routed questions, with judging accuracies.

    Node attributes: every node has ``kind`` and ``name`` (its id as a string);
    items have ``domain``; clients have ``confidence`` (default 1.0), an online
    multiplier on the client's competence, moved by a run's online update towards
    how well its training rewards agreed with the other experts'. A client whose
    rewards keep disagreeing is thus demoted on every question without
    rewriting its probed accuracies (which remain the record of the probes).
    The orchestrator keeps a run's confidence outside the graph (passed to
    ``competences``, shown by ``with_confidence``), so the probed graph is the
    same for every run.
    """

    def __init__(self, keep_questions: bool = False) -> None:
        self.keep_questions = keep_questions
        self._graph = nx.Graph()
        self._item_ids: list[str] = []
        self._item_rows: dict[str, int] = {}
        self._embeddings = np.zeros((0, 0), dtype=np.float64)

    @property
    def graph(self) -> nx.Graph:
        """The underlying graph, for inspection; mutating it bypasses every check here."""
        return self._graph

    # -- building --

    def add_items(self, item_ids: Sequence[str], domains: Sequence[str], embeddings: np.ndarray) -> None:
        """Add auxiliary items with their domains and embeddings [n, d] (d fixed by the first call)."""
        embeddings = np.asarray(embeddings, dtype=np.float64)
        if len(domains) != len(item_ids):
            raise ValueError(f"domains must have one entry per item ({len(item_ids)}), got {len(domains)}")
        if embeddings.ndim != 2 or embeddings.shape[0] != len(item_ids):
            raise ValueError(f"embeddings must be a matrix [{len(item_ids)}, d], got shape {embeddings.shape}")
        if self._item_ids and embeddings.shape[1] != self._embeddings.shape[1]:
            raise ValueError(
                f"embeddings must have d={self._embeddings.shape[1]} like the items already added, "
                f"got d={embeddings.shape[1]}"
            )
        if not np.all(np.isfinite(embeddings)):
            raise ValueError("embeddings must be finite, got NaN or inf")
        seen: set[str] = set()
        for item_id, domain in zip(item_ids, domains):
            if not isinstance(item_id, str) or not item_id:
                raise ValueError(f"item_id must be a non-empty string, got {item_id!r}")
            if not isinstance(domain, str):
                raise ValueError(f"domain of item {item_id!r} must be a string, got {domain!r}")
            if item_id in self._item_rows or item_id in seen:
                raise ValueError(f"item_id must be unique, got {item_id!r} twice")
            seen.add(item_id)
        first_row = len(self._item_ids)
        for offset, (item_id, domain) in enumerate(zip(item_ids, domains)):
            self._graph.add_node((ITEM, item_id), kind=ITEM, name=item_id, domain=domain)
            self._item_rows[item_id] = first_row + offset
            self._item_ids.append(item_id)
        self._embeddings = embeddings.copy() if first_row == 0 else np.vstack([self._embeddings, embeddings])

    def add_client(self, name: str, confidence: float = 1.0) -> None:
        """Register a client (no-op if known); it is incompetent everywhere until probed."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"client name must be a non-empty string, got {name!r}")
        if (CLIENT, name) not in self._graph:
            confidence = require_finite("confidence", confidence)
            if not 0.0 <= confidence <= 1.0:
                raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
            self._graph.add_node((CLIENT, name), kind=CLIENT, name=name, confidence=confidence)

    def record_probe(
        self,
        client: str,
        item_id: str,
        judged_rewards: Sequence[float],
        truth: Sequence[bool],
        low: float,
        high: float,
        threshold: float,
    ) -> str | None:
        """Record how ``client`` judged ``item_id``'s candidates of known correctness ``truth``.

        ``judged_rewards`` is what the client returned, one reward per
        candidate. A reward >= ``threshold`` means "judged correct". A wrong
        count, a non-number, NaN / inf or a reward outside [low, high] records
        accuracy 0 and returns a message saying what was wrong; a valid probe
        returns None. The latest probe of a (client, item) pair replaces any
        earlier one. The client is registered if new.
        """
        if item_id not in self._item_rows:
            raise KeyError(f"item_id must be an added auxiliary item, got {item_id!r}")
        low, high = require_finite("low", low), require_finite("high", high)
        threshold = require_finite("threshold", threshold)
        if low > high:
            raise ValueError(f"low must be <= high, got low={low!r}, high={high!r}")
        self.add_client(client)
        # _probe_problem checks everything judging_accuracy rejects, plus the range,
        # so that a rejection always comes with a readable reason.
        problem = _probe_problem(judged_rewards, truth, low, high)
        accuracy = None if problem else judging_accuracy(judged_rewards, truth, threshold)
        if accuracy is None:
            problem = f"client {client!r}, item {item_id!r}: {problem or 'judged_rewards are unusable'}"
            accuracy = 0.0
        if self._graph.has_edge((CLIENT, client), (ITEM, item_id)):
            self._graph.remove_edge((CLIENT, client), (ITEM, item_id))  # drops an earlier unknown's marks too
        # What the MoR router is fitted on (reward_router.py); garbage is the worst error, 1.
        error = 1.0 if problem else probe_error([float(r) for r in judged_rewards], [bool(t) for t in truth])
        attrs = {"accuracy": float(accuracy), "problem": problem or "", "error": error}
        self._graph.add_edge((CLIENT, client), (ITEM, item_id), **attrs)
        return problem

    def probe_errors(self, clients: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(item ids, their embeddings [n, d], errors [n, K]): each client's mean squared probe error per
        item (``reward_router.probe_error``; 1, the worst, for garbage or "cannot judge"), NaN where it was
        not probed or its probe failed in transport (unknown)."""
        errors = np.full((len(self._item_ids), len(clients)), np.nan)
        for k, name in enumerate(clients):
            node = (CLIENT, name)
            if node not in self._graph:
                continue
            for _, item, attrs in self._graph.edges(node, data=True):
                if item[0] == ITEM and "error" in attrs and not attrs.get("unknown"):
                    errors[self._item_rows[item[1]], k] = attrs["error"]
        return list(self._item_ids), self._embeddings.copy(), errors

    def record_unknown(self, client: str, item_id: str, why: str) -> int:
        """Record that probing ``client`` on ``item_id`` failed in transport; returns the failed tries so far.

        The item stays out of the client's competence until a probe judges it.
        A judged probe is never overwritten by a failed one (what was learnt
        stays). The client is registered if new.
        """
        if item_id not in self._item_rows:
            raise KeyError(f"item_id must be an added auxiliary item, got {item_id!r}")
        self.add_client(client)
        edge = self._graph.get_edge_data((CLIENT, client), (ITEM, item_id))
        if edge is not None and not edge.get("unknown", False):
            return 0
        tries = (edge or {}).get("tries", 0) + 1
        self._graph.add_edge(
            (CLIENT, client), (ITEM, item_id), accuracy=0.0, problem=str(why), unknown=True, tries=tries
        )
        return tries

    def unknown_items(self, client: str, max_tries: int | None = None) -> list[str]:
        """Items whose probe of ``client`` failed in transport (fewer than ``max_tries`` times when given),
        in item order."""
        node = (CLIENT, client)
        if node not in self._graph:
            return []
        failed = {
            self._graph.nodes[other]["name"]: data.get("tries", 0)
            for other, data in self._graph.adj[node].items()
            if other[0] == ITEM and data.get("unknown", False)
        }
        return [i for i in self._item_ids if i in failed and (max_tries is None or failed[i] < max_tries)]

    def remove_client(self, name: str) -> None:
        """Forget a client and its probes."""
        if (CLIENT, name) not in self._graph:
            raise KeyError(f"name must be a known client, got {name!r}; known: {self.clients()}")
        self._graph.remove_node((CLIENT, name))

    def clients(self) -> list[str]:
        """Known client names, sorted."""
        return sorted(self._names(CLIENT))

    def items(self) -> list[str]:
        """Auxiliary item ids, in the order they were added (the embedding rows)."""
        return list(self._item_ids)

    # -- querying --

    def competences(
        self,
        question_embedding: np.ndarray,
        L: int = 20,
        similarity_weighted: bool = False,
        confidence: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """Each known client's competence for a question: confidence x mean accuracy over the L nearest items.

        With ``similarity_weighted`` the mean is weighted by each neighbour's
        cosine similarity to the question, negative similarities taken as 0 (an
        item pointing away from the question says nothing about it).
        ``confidence`` (a run's own online view, client -> [0, 1]) replaces the
        graph's confidence of the clients it names, without changing the graph.
        """
        neighbours, similarities = self._neighbours(question_embedding, L)
        weights = [max(0.0, s) for s in similarities] if similarity_weighted else None
        confidence = confidence or {}
        result = {}
        for name in self.clients():
            node = (CLIENT, name)
            accuracy, unknown = self._item_accuracy(node), set(self.unknown_items(name))
            multiplier = confidence.get(name, self._graph.nodes[node]["confidence"])
            result[name] = multiplier * competence(accuracy, neighbours, weights, unknown)
        return result

    def _item_accuracy(self, client_node: tuple[str, str]) -> dict[str, float]:
        """The client's judging accuracy per judged auxiliary item id (unknown items left out)."""
        return {
            self._graph.nodes[other]["name"]: data["accuracy"]
            for other, data in self._graph.adj[client_node].items()
            if other[0] == ITEM and not data.get("unknown", False)
        }

    def route(
        self,
        question_embedding: np.ndarray,
        m: int,
        live: Collection[str],
        L: int = 20,
        similarity_weighted: bool = False,
        question_id: str | None = None,
        exactness: Mapping[str, int] | None = None,
    ) -> list[str]:
        """The question's experts: the ``m`` most competent ``live`` clients, ties to exact judges, then by name.

        ``exactness``: each client's tie-break rank (``experts.exactness``).

        With ``keep_questions`` the question becomes a node (``question_id``
        is then required) linked to its L nearest items by ``similarity``.
        """
        if self.keep_questions:
            if not isinstance(question_id, str) or not question_id:
                raise ValueError(
                    f"question_id must be a non-empty string when keep_questions=True, got {question_id!r}"
                )
            neighbours, similarities = self._neighbours(question_embedding, L)
            node = (QUESTION, question_id)
            if node in self._graph:
                self._graph.remove_node(node)  # re-routing replaces the old neighbourhood
            self._graph.add_node(node, kind=QUESTION, name=question_id)
            for item_id, similarity in zip(neighbours, similarities):
                self._graph.add_edge(node, (ITEM, item_id), similarity=similarity)
        return select_top_m(self.competences(question_embedding, L, similarity_weighted), m, live, exactness)

    def with_confidence(self, confidence: Mapping[str, float]) -> ConfidenceGraph:
        """A copy whose clients named in ``confidence`` carry those values (a run's view); self is unchanged."""
        view = ConfidenceGraph(self.keep_questions)
        view._graph = self._graph.copy()
        view._item_ids, view._item_rows = list(self._item_ids), dict(self._item_rows)
        view._embeddings = self._embeddings
        for name, value in confidence.items():
            if (CLIENT, name) in view._graph:
                view._graph.nodes[(CLIENT, name)]["confidence"] = float(value)
        return view

    def confidence(self, client: str) -> float:
        """``client``'s current online confidence multiplier."""
        node = (CLIENT, client)
        if node not in self._graph:
            raise KeyError(f"client must be a known client, got {client!r}; known: {self.clients()}")
        return self._graph.nodes[node]["confidence"]

    def client_domain_weights(self) -> dict[str, dict[str, float]]:
        """Per client, per domain: mean judging accuracy over the domain's items (unprobed count 0, unknown left out).

        Raw probe accuracies, without the online confidence: what the probes
        found, for plots and reports. Every client gets every domain.
        """
        domain_items: dict[str, list[str]] = {}
        for item_id in self._item_ids:
            domain_items.setdefault(self._graph.nodes[(ITEM, item_id)]["domain"], []).append(item_id)
        result = {}
        for name in self.clients():
            node = (CLIENT, name)
            accuracy, unknown = self._item_accuracy(node), set(self.unknown_items(name))
            result[name] = {
                domain: competence(accuracy, ids, unknown=unknown) for domain, ids in sorted(domain_items.items())
            }
        return result

    # -- export --

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable snapshot: node-link data with string node ids ("kind:name") plus the embeddings."""
        return {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "keep_questions": self.keep_questions,
            "graph": nx.node_link_data(self._string_graph(), edges="edges"),
            "items": {
                "ids": list(self._item_ids),
                "embeddings": [[float(x) for x in row] for row in self._embeddings],
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConfidenceGraph:
        """Rebuild a graph written by ``to_json``."""
        if data.get("format") != JSON_FORMAT or data.get("version") != JSON_VERSION:
            raise ValueError(
                f"data must be format {JSON_FORMAT!r} version {JSON_VERSION}, "
                f"got format {data.get('format')!r} version {data.get('version')!r}"
            )
        restored = cls(keep_questions=bool(data["keep_questions"]))
        loaded = nx.node_link_graph(data["graph"], edges="edges")
        nodes = {node: (attrs["kind"], attrs["name"]) for node, attrs in loaded.nodes(data=True)}
        domains = {name: loaded.nodes[node]["domain"] for node, (kind, name) in nodes.items() if kind == ITEM}
        item_ids = list(data["items"]["ids"])
        if set(item_ids) != set(domains):
            raise ValueError(
                f"items.ids must match the graph's item nodes, got {sorted(item_ids)} vs {sorted(domains)}"
            )
        if item_ids:
            restored.add_items(item_ids, [domains[i] for i in item_ids], np.asarray(data["items"]["embeddings"]))
        for node, (kind, name) in nodes.items():
            if kind == CLIENT:
                restored.add_client(name, float(loaded.nodes[node]["confidence"]))
            elif kind == QUESTION:
                restored._graph.add_node((QUESTION, name), kind=QUESTION, name=name)
        for u, v, attrs in loaded.edges(data=True):
            restored._graph.add_edge(nodes[u], nodes[v], **attrs)
        return restored

    def write_graphml(self, path: str | Path) -> None:
        """Write the graph (without embeddings) as GraphML, node ids "kind:name"."""
        nx.write_graphml(self._string_graph(), str(path))

    # -- internals --

    def _names(self, kind: str) -> list[str]:
        return [node[1] for node in self._graph.nodes if node[0] == kind]

    def _neighbours(self, question_embedding: np.ndarray, L: int) -> tuple[list[str], list[float]]:
        """The L nearest item ids to the question and their cosine similarities."""
        require_int("L", L, minimum=1)
        query = np.asarray(question_embedding, dtype=np.float64)
        if not self._item_ids:
            return [], []
        if query.shape != (self._embeddings.shape[1],):
            raise ValueError(f"question_embedding must have shape ({self._embeddings.shape[1]},), got {query.shape}")
        similarities = cosine_similarities(query, self._embeddings)
        rows = nearest_items(query, self._embeddings, L)
        return [self._item_ids[r] for r in rows], [float(similarities[r]) for r in rows]

    def _string_graph(self) -> nx.Graph:
        """A copy with "kind:name" string ids and only str / float / int / bool attributes (GraphML and JSON safe)."""
        out = nx.Graph()
        for (kind, name), attrs in self._graph.nodes(data=True):
            out.add_node(f"{kind}:{name}", **{key: _plain(value) for key, value in attrs.items()})
        for u, v, attrs in self._graph.edges(data=True):
            out.add_edge(f"{u[0]}:{u[1]}", f"{v[0]}:{v[1]}", **{key: _plain(value) for key, value in attrs.items()})
        return out


def _probe_problem(judged: Sequence[float], truth: Sequence[bool], low: float, high: float) -> str | None:
    """Why a client's probe rewards are unusable, or None if they are fine."""
    try:
        count = len(judged)
    except TypeError:
        return f"judged_rewards must be a sequence of {len(truth)} rewards, got {judged!r}"
    if count != len(truth):
        return f"judged_rewards must hold {len(truth)} rewards (one per candidate), got {count}"
    if count == 0:
        return "judged_rewards must hold at least one reward, got none"
    for i, reward in enumerate(judged):
        try:
            value = float(reward)
        except (TypeError, ValueError):
            return f"judged_rewards[{i}] must be a number in [{low}, {high}], got {reward!r}"
        if not math.isfinite(value) or not low <= value <= high:
            return f"judged_rewards[{i}] must be a finite number in [{low}, {high}], got {value!r}"
    return None


def _plain(value: Any) -> str | float | int | bool:
    """Convert an attribute to a type GraphML and JSON accept (numpy scalars -> Python, None/other -> str)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    return "" if value is None else str(value)
