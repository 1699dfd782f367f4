"""`fedgrpo bench`: figures, not assertions.

1. One training step, split into generate, score, train and weight sync: a
   short real run of the whole federation (services as processes), read back
   from its metrics, once synchronous (``max_async_level`` 0) and once with
   the next rollouts made while a step trains (1), and their ratio.
2. The trainer's step time in float32 and in bfloat16 (float32 master
   weights, bf16 autocast compute; see services/policy_trainer/precision.py)
   on the same batch, in process, and their ratio.
3. One policy version streamed over gRPC (``--weights-transfer grpc``: no
   storage shared by trainer and orchestrator), in seconds and MB/s: the
   whole model, then a LoRA adapter of rank 16 (``--lora-rank``).
4. The scoring phase with 1, 8 and 32 reward clients (``bench_fanout``).
5. Generation throughput for the same model and prompts with the vLLM engine
   and with the transformers engine, and their ratio:
   ``generation speedup vllm/transformers: <ratio>``.
6. The same workload as 1 through TRL's ``GRPOTrainer`` (``bench_trl``), for
   as many steps from the base policy, in completions per second. The last
   line reads ``step throughput fedgrpo/trl: <ratio>`` (TRL's seconds per
   step over fedgrpo's faster asynchrony level), with a 95% bootstrap
   interval over the two sides' steps.
"""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BenchSettings(BaseSettings):
    """Benchmark settings."""

    model_config = SettingsConfigDict(
        env_prefix="FEDGRPO_BENCH_", cli_prog_name="fedgrpo bench", cli_kebab_case=True,
        cli_implicit_flags=True, extra="forbid",
    )

    model: str = Field("smollm2-135m-instruct", description="Model to measure.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Device.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    prompts: int = Field(16, ge=1, description="Distinct prompts per generation call.")
    n: int = Field(8, ge=1, description="Completions per prompt.")
    max_tokens: int = Field(48, ge=1, description="Tokens per completion.")
    repeats: int = Field(2, ge=1, description="Timed generation calls per engine (after one warm-up).")
    step_runs: int = Field(6, ge=0, description="Training steps of each federation run (0 skips them).")
    async_levels: list[int] = Field(
        [0, 1], description="The run spec's max_async_level of each federation run: 0 generates, scores and "
        "trains in turn; 1 generates step n+1 while step n trains.")
    train_steps: int = Field(
        1, ge=0,
        description="Timed trainer steps per dtype, float32 then bfloat16, after a 2-sequence warm-up (0 skips).",
    )
    train_sequences: int = Field(
        8, ge=1,
        description="Sequences per timed trainer step (make run trains 32; bf16 on a CPU without bf16 "
        "instructions is ~15x slower, hence the small default).",
    )
    trl: bool = Field(True, description="Run the main job's workload through TRL's GRPOTrainer too (as many "
                      "steps as step_runs) and print `step throughput fedgrpo/trl: <ratio>` last.")
    fan_out: list[int] = Field(
        [1, 8, 32], description="Reward-client counts whose scoring phase is timed (real processes, built-in "
        "checker); empty skips it.")
    cache_dir: Path = Field(Path(".cache/models"), description="Prepared base models.")
    runs_dir: Path = Field(Path("runs/bench"), description="Where the benchmark's run is written.")


def _prompts(settings: BenchSettings, tokenizer) -> list[list[int]]:
    from fedgrpo.models import chat_prompt_ids
    from fedgrpo.tasks import build_questions, user_message

    return [chat_prompt_ids(tokenizer, user_message(q.text)) for q in build_questions("add1", 7, settings.prompts)]


def _throughput(engine, prompts: list[list[int]], settings: BenchSettings) -> tuple[float, float]:
    from fedgrpo.services.orchestrator.rollout import SamplingSettings

    sampling = SamplingSettings(n=settings.n, temperature=1.0, top_p=0.95, max_tokens=settings.max_tokens)
    engine.generate(prompts, sampling)  # warm-up
    rates, seconds = [], []
    for _ in range(settings.repeats):
        started = time.perf_counter()
        groups = engine.generate(prompts, sampling)
        elapsed = time.perf_counter() - started
        tokens = sum(len(s.token_ids) for g in groups for s in g)
        rates.append(tokens / elapsed)
        seconds.append(elapsed)
    return statistics.fmean(rates), statistics.fmean(seconds)


def _step_times(settings: BenchSettings) -> dict[int, list[float]]:
    """The main job's federation for ``step_runs`` steps at each asynchrony level: prints the mean phase times
    of each; returns each level's step seconds."""
    import json
    import time

    from fedgrpo.job.federation_file import DEFAULT_FEDERATION, load_federation
    from fedgrpo.job.federation_run import run_federation
    from fedgrpo.job.main_job import JobSettings

    step_seconds: dict[int, list[float]] = {}
    for k in settings.async_levels:
        job = JobSettings(
            model=settings.model, device=settings.device, dtype=settings.dtype,
            spec={"steps": str(settings.step_runs), "max_async_level": str(k)}, eval_questions=4,
        )
        federation = job.apply(load_federation(DEFAULT_FEDERATION))
        work = settings.runs_dir / "_federations" / time.strftime("%Y%m%d-%H%M%S")
        summary = run_federation(federation, settings.runs_dir, work, settings.cache_dir)
        run_dir = settings.runs_dir / summary["run_id"]
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        spec = summary["spec"]
        # A step's seconds run from the previous step's record to its own, so their mean over every step is
        # the run's wall time per step, whatever overlapped (the first step has nothing to overlap with, and
        # with overlap the last trains alone).
        print(f"\n== one training step, max_async_level {k}: {settings.model}, {spec['questions_per_step']} "
              f"questions x {spec['candidates_per_question']} candidates, mean of {len(steps)} steps ==")
        step_seconds[k] = [s["step_seconds"] for s in steps]
        total = statistics.fmean(step_seconds[k])
        for phase in ("generate", "score", "train", "sync", "step"):
            values = [s[f"{phase}_seconds"] for s in steps]
            mean = statistics.fmean(values)
            print(f"{phase + ' seconds':18s} {mean:8.2f}  {100 * mean / total:5.1f}% of a step  "
                  f"(per step: {', '.join(f'{v:.2f}' for v in values)})")
        print(f"policy lag         {max(int(s.get('policy_lag', 0)) for s in steps):8d}  (most, over the run)")
        # How close a step comes to the longer of generation and training (1.0: they overlap perfectly).
        longest = max(statistics.fmean(s["generate_seconds"] for s in steps),
                      statistics.fmean(s["train_seconds"] for s in steps))
        print(f"step / max(generate, train): {total / longest:.2f}")
    if 0 in step_seconds:
        for k in (k for k in step_seconds if k):
            print(f"step speedup max_async_level {k}/0: "
                  f"{statistics.fmean(step_seconds[0]) / statistics.fmean(step_seconds[k]):.2f}")
    return step_seconds


def _train_step_seconds(settings: BenchSettings, model_dir: Path, prompts: list[list[int]], dtype: str) -> float:
    """Mean seconds of one trainer update (forward, backward, AdamW; no snapshot) in ``dtype``."""
    import tempfile

    import torch

    from fedgrpo.services.policy_trainer.batching import Sample
    from fedgrpo.services.policy_trainer.loss import LossSettings
    from fedgrpo.services.policy_trainer.trainer import OptimizerConfig, PolicyTrainer

    with tempfile.TemporaryDirectory(prefix="fedgrpo-bench-") as state:
        trainer = PolicyTrainer(model_dir, Path(state), settings.device, dtype, checkpoint_every=10**9)
        trainer.start("bench", OptimizerConfig(learning_rate=1e-6, loss=LossSettings("bnpo"), updates_per_batch=1))
        generator = torch.Generator().manual_seed(0)
        vocab = trainer.model.config.vocab_size
        batch = []
        for i in range(settings.train_sequences):
            completion = torch.randint(vocab // 10, vocab, (settings.max_tokens,), generator=generator).tolist()
            batch.append(Sample(prompts[i % len(prompts)], completion, None, 1.0 if i % 2 else -1.0))
        trainer.train(1, 0, batch[:2], settings.max_tokens)  # warm-up (allocations, kernel selection)
        seconds = [
            trainer.train(step, step - 1, batch, settings.max_tokens).train_seconds
            for step in range(2, settings.train_steps + 2)
        ]
        del trainer
        gc.collect()
    return statistics.fmean(seconds)


def _train_dtypes(settings: BenchSettings, model_dir: Path, prompts: list[list[int]]) -> None:
    print(f"\n== trainer step: {settings.model} on {settings.device}, {settings.train_sequences} sequences x "
          f"{settings.max_tokens} completion tokens, 1 AdamW update, mean of {settings.train_steps} steps ==")
    seconds = {}
    for dtype in ("float32", "bfloat16"):
        seconds[dtype] = _train_step_seconds(settings, model_dir, prompts, dtype)
        print(f"train step seconds {dtype:9s} {seconds[dtype]:8.2f}")
    print(f"train step speedup bfloat16/float32: {seconds['float32'] / seconds['bfloat16']:.2f}")


def _weights_stream(settings: BenchSettings, model_dir: Path, what: str = "one version's folder") -> None:
    """A policy version over gRPC (DownloadPolicyWeights, ``--weights-transfer grpc``): the model's folder
    streamed by the trainer's WeightsServer to the orchestrator's StreamedWeights through a real gRPC server
    on loopback (plaintext: TLS adds its own cost), checked and written; the median of three."""
    import shutil
    import tempfile
    from concurrent import futures
    from types import SimpleNamespace

    import grpc

    from fedgrpo import serving
    from fedgrpo.services.orchestrator.policy_weights import StreamedWeights
    from fedgrpo.services.policy_trainer.weights_download import WeightsServer
    from fedgrpo.v1 import common_pb2
    from fedgrpo.v1 import policy_trainer_pb2_grpc as tpb_grpc

    # The trainer's side of the call needs its run, version and snapshot folder: here, the base model's.
    trainer = SimpleNamespace(run_id="bench", version=1, keep_snapshots=1, snapshot_path=lambda run, v: model_dir)
    weights = WeightsServer(trainer)  # type: ignore[arg-type]

    class Trainer(tpb_grpc.PolicyTrainerServiceServicer):
        def DownloadPolicyWeights(self, request, context):  # noqa: ANN001, N802
            yield from weights.download(request, context)

    server = grpc.server(futures.ThreadPoolExecutor(2), options=serving.message_options())
    tpb_grpc.add_PolicyTrainerServiceServicer_to_server(Trainer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    seconds, size = [], 0
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=serving.message_options()) as channel:
            stub = tpb_grpc.PolicyTrainerServiceStub(channel)
            for _ in range(3):
                folder = Path(tempfile.mkdtemp(prefix="fedgrpo-bench-weights-"))
                try:
                    fetch = StreamedWeights(stub, folder, model_dir)
                    started = time.monotonic()
                    fetch(common_pb2.PolicyVersion(run_id="bench", version=1))
                    seconds.append(time.monotonic() - started)
                    size = fetch.bytes_received
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
    finally:
        server.stop(None)
    median = statistics.median(seconds)
    print(f"\n== weights over gRPC: {settings.model}, {what} ==")
    print(f"weights download seconds {median:8.2f}  ({size / 1e6:.0f} MB, {size / 1e6 / median:.0f} MB/s; "
          f"runs: {', '.join(f'{s:.2f}' for s in seconds)}); the engine's reload is the sync line above")


def _lora_stream(settings: BenchSettings, model_dir: Path, rank: int = 16) -> None:
    """The same, for a version that is a LoRA adapter (``--lora-rank``) of the model, on every linear layer."""
    import tempfile

    from transformers import AutoModelForCausalLM

    from fedgrpo.models.adapters import LoraSettings, lora_model, save_adapter

    with tempfile.TemporaryDirectory(prefix="fedgrpo-bench-lora-") as scratch:
        model = lora_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraSettings(rank, 2.0 * rank))
        adapter = save_adapter(model, Path(scratch) / "v1")
        del model
        _weights_stream(settings, adapter, f"one version as a LoRA adapter (--lora-rank {rank}, every linear layer)")


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer

    from fedgrpo.models import resolve_model
    from fedgrpo.services.orchestrator.rollout import make_engine
    from fedgrpo.settings import load, setup_logging

    settings = load(BenchSettings, argv)
    setup_logging("WARNING")
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # figures, not engine chatter
    model_dir = resolve_model(settings.model, settings.cache_dir)
    step_seconds = _step_times(settings) if settings.step_runs else {}

    prompts = _prompts(settings, AutoTokenizer.from_pretrained(model_dir))
    if settings.train_steps:
        _train_dtypes(settings, model_dir, prompts)
    _weights_stream(settings, model_dir)
    _lora_stream(settings, model_dir)
    if settings.fan_out:
        from fedgrpo.bench_fanout import fan_out

        fan_out(settings.fan_out, settings.runs_dir / "fan-out" / time.strftime("%Y%m%d-%H%M%S"), settings.cache_dir)
    print(f"\n== generation: {settings.model}, {len(prompts)} prompts x {settings.n} completions, "
          f"up to {settings.max_tokens} tokens, temperature 1.0 ==")
    engine = make_engine("transformers", model_dir, device=settings.device, dtype=settings.dtype)
    hf_rate, hf_s = _throughput(engine, prompts, settings)
    print(f"transformers tokens/s {hf_rate:8.1f}  ({hf_s:.2f}s per call)")
    del engine
    gc.collect()
    engine = make_engine("vllm", model_dir, device=settings.device, dtype=settings.dtype)
    vllm_rate, vllm_s = _throughput(engine, prompts, settings)
    print(f"vllm tokens/s         {vllm_rate:8.1f}  ({vllm_s:.2f}s per call; "
          f"CPU threads bound to {os.environ.get('VLLM_CPU_OMP_THREADS_BIND', '-')})")
    engine.close()
    print(f"generation speedup vllm/transformers: {vllm_rate / hf_rate:.2f}")
    if settings.trl and step_seconds:
        _side_by_side(settings, model_dir, step_seconds)


def ratio_interval(slow: list[float], fast: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of mean(slow) / mean(fast), the two sides' steps resampled independently."""
    import random

    rng = random.Random(seed)
    ratios = sorted(statistics.fmean(rng.choices(slow, k=len(slow))) / statistics.fmean(rng.choices(fast, k=len(fast)))
                    for _ in range(draws))
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def _side_by_side(settings: BenchSettings, model_dir: Path, step_seconds: dict[int, list[float]]) -> None:
    """TRL's GRPOTrainer on the main job's workload for as many steps as fedgrpo's runs (``bench_trl``)."""
    from fedgrpo.bench_trl import GENERATIONS, QUESTIONS_PER_STEP, trl_step_seconds
    from fedgrpo.job.federation_file import DEFAULT_FEDERATION, load_federation

    run = load_federation(DEFAULT_FEDERATION).run
    completions = QUESTIONS_PER_STEP * GENERATIONS
    print(f"\n== side by side with TRL's GRPOTrainer: {settings.model}, {QUESTIONS_PER_STEP} questions x "
          f"{GENERATIONS} completions of up to {run['max_tokens']} tokens, lr {run['learning_rate']}, "
          f"{settings.step_runs} steps each from the base policy ==")
    trl = trl_step_seconds(model_dir, settings.step_runs, int(run["max_tokens"]), float(run["learning_rate"]))
    trl_mean = statistics.fmean(trl)
    print(f"trl step seconds      {trl_mean:8.2f}  (per step: {', '.join(f'{s:.2f}' for s in trl)}; "
          f"transformers generation, float32, one process)")
    print(f"trl completions/s     {completions / trl_mean:8.2f}")
    k = min(step_seconds, key=lambda level: statistics.fmean(step_seconds[level]))
    fedgrpo_mean = statistics.fmean(step_seconds[k])
    print(f"fedgrpo completions/s {completions / fedgrpo_mean:8.2f}  (max_async_level {k}, the faster here; "
          f"{fedgrpo_mean:.2f} s per step)")
    low, high = ratio_interval(trl, step_seconds[k])
    print(f"step throughput fedgrpo/trl: {trl_mean / fedgrpo_mean:.2f} (95% bootstrap interval over the steps "
          f"[{low:.2f}, {high:.2f}])")


if __name__ == "__main__":
    main()
