"""Objectives a test organisation adds to its local training (``--local-objectives tests.client_objectives:NAME``).

Importable by the reward-client processes the tests start (they run from the repository root)."""


def one_line(question: str, reply: str) -> float:
    """1 for a reply on one line, else 0: what an organisation whose readers want short answers might add."""
    return float(len(reply.strip().splitlines()) <= 1)


def echoes(question: str, reply: str) -> bool:
    return reply.strip() in question


def out_of_range(question: str, reply: str) -> float:
    return 7.0


def not_a_number(question: str, reply: str) -> str:
    return "high"


def broken(question: str, reply: str) -> float:
    raise RuntimeError("the partner's code has a bug")


NOT_A_FUNCTION = 3
