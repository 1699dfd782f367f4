"""`fedgrpo bench`'s fan-out figures: the scoring phase with 1, 8 and 32 reward clients.

For each count N a federation of real processes on loopback (plaintext): a
trainer and an orchestrator with the tiny policy (transformers engine: the
rollouts are not what is measured), and N reward clients with the built-in
checkers (cheap evaluators), dialed by the orchestrator. One run routes every
question to all N clients (``expert_selection: all``, M = N), so each step
sends every candidate to every client and waits for all of them; the figure
is the median ``score_seconds`` of the steps after the first (one step's
stray pause on 2 shared cores should not move it). The last line
reads ``scoring fan-out <largest>/1: <ratio>`` (goal: 32 clients cost at most
1.2x one).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

START_SECONDS = 900.0  # N processes importing torch on a few cores


def scoring_seconds(clients: int, out: Path, cache_dir: Path, steps: int) -> list[float]:
    """Each step's scoring seconds of one run routed to all ``clients`` reward clients."""
    from fedgrpo.client import Client
    from fedgrpo.job.launcher import Federation
    from fedgrpo.models import resolve_model
    from fedgrpo.v1 import orchestrator_pb2 as pb

    resolve_model("tiny-policy", cache_dir)
    common = ["--model", "tiny-policy", "--cache-dir", str(cache_dir)]
    with Federation(out / f"clients-{clients}" / "logs") as fed:
        trainer = fed.start("trainer", "trainer", [*common, "--state-dir", str(out / f"clients-{clients}" / "trainer"),
                                                   "--torch-threads", "1"])
        started = [fed.start(f"client-{i}", "reward-client", ["--name", f"client-{i}", "--domains", "add1"])
                   for i in range(clients)]
        for service in [trainer, *started]:
            fed.wait_healthy(service, START_SECONDS)
        orchestrator = fed.start("orchestrator", "orchestrator", [
            *common, "--runs-dir", str(out / f"clients-{clients}" / "runs"), "--trainer", trainer.address,
            "--backend", "transformers", "--max-model-len", "256", "--no-confidence-graph",
            "--reward-clients", ",".join(s.address for s in started), "--client-wait-seconds", str(START_SECONDS),
        ])
        fed.wait_healthy(orchestrator, START_SECONDS)
        with Client(orchestrator.address, timeout=60) as client:
            run = client.create_run(pb.RunSpec(
                tasks=["add1"], steps=steps, questions_per_step=4, candidates_per_question=8,
                experts_per_question=clients, expert_selection=pb.EXPERT_SELECTION_ALL, max_tokens=8,
                max_async_level=0,
            ))
            final, metrics = client.wait(run.run_id)
        if final.state != pb.RUN_STATE_SUCCEEDED:
            raise SystemExit(f"fan-out bench with {clients} clients: run ended {pb.RunState.Name(final.state)}: "
                             f"{final.error} (logs in {out / f'clients-{clients}' / 'logs'})")
        return [m.score_seconds for m in metrics]


def fan_out(counts: list[int], out: Path, cache_dir: Path, steps: int = 4) -> None:
    print(f"\n== scoring fan-out: one run's candidates scored by every one of N reward clients (4 questions x 8 "
          f"candidates, built-in checker, dialed on loopback), median of steps 2-{steps} ==")
    means: dict[int, float] = {}
    for n in counts:
        started = time.monotonic()
        seconds = scoring_seconds(n, out, cache_dir, steps)
        timed = seconds[1:] or seconds
        means[n] = statistics.median(timed)
        print(f"scoring seconds, {n:3d} clients {means[n]:8.3f}  (per step: {', '.join(f'{s:.3f}' for s in seconds)}; "
              f"federation up and run in {time.monotonic() - started:.0f}s)", flush=True)
    if 1 in means and len(means) > 1:
        largest = max(means)
        print(f"scoring fan-out {largest}/1: {means[largest] / means[1]:.2f}")
