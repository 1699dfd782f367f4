"""Draw the confidence graph as a PNG: clients, domains, judging accuracy.

Clients sit on the left, the auxiliary set's domains on the right; an edge's
width and colour show the client's mean judging accuracy on that domain
(edges below 0.05 are left out). ``draw(weights, path)`` takes the
``client_domain_weights()`` of a ``ConfidenceGraph`` (or, with ``measure``,
another client x domain table in [0, 1]: the MoR router's mean weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def draw(
    weights: Mapping[str, Mapping[str, float]], path: Path, title: str = "confidence graph",
    measure: str = "judging accuracy",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    clients = sorted(weights)
    domains = sorted({d for per in weights.values() for d in per})
    graph = nx.Graph()
    graph.add_nodes_from(clients, side=0)
    graph.add_nodes_from((f"domain {d}" for d in domains), side=1)
    for c in clients:
        for d, accuracy in weights[c].items():
            if accuracy >= 0.05:
                graph.add_edge(c, f"domain {d}", accuracy=accuracy)
    positions = {c: (0.0, -i) for i, c in enumerate(clients)}
    positions.update({f"domain {d}": (1.0, -i * max(1, len(clients) - 1) / max(1, len(domains) - 1))
                      for i, d in enumerate(domains)})
    fig, ax = plt.subplots(figsize=(7, max(3, 0.6 * max(len(clients), len(domains)) + 1)))
    edges = list(graph.edges(data="accuracy"))
    nx.draw_networkx_nodes(graph, positions, nodelist=clients, node_color="#4c72b0", node_size=900, ax=ax)
    nx.draw_networkx_nodes(graph, positions, nodelist=[f"domain {d}" for d in domains], node_color="#dd8452",
                           node_shape="s", node_size=900, ax=ax)
    if edges:
        nx.draw_networkx_edges(
            graph, positions, edgelist=[(u, v) for u, v, _ in edges], width=[1 + 5 * a for _, _, a in edges],
            edge_color=[a for _, _, a in edges], edge_cmap=plt.cm.viridis, edge_vmin=0, edge_vmax=1, ax=ax,
        )
        nx.draw_networkx_edge_labels(graph, positions, edge_labels={(u, v): f"{a:.2f}" for u, v, a in edges},
                                     font_size=7, label_pos=0.7, ax=ax)
    labels = {n: n.removeprefix("domain ") for n in graph.nodes}
    nx.draw_networkx_labels(graph, positions, labels=labels, font_size=8, font_color="white", ax=ax)
    ax.margins(x=0.12, y=0.12)
    ax.set_title(f"{title}: {measure} of each client per domain")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
