"""fedgrpo: federated group-relative policy optimisation as gRPC microservices.

Shared code lives here (the generated API in ``fedgrpo.v1``, task domains,
model preparation, gRPC helpers); each service lives in ``services/<name>/``.
"""

__version__ = "0.1.0"
