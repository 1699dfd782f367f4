"""`fedgrpo experiment`: FedGRPO against its baselines on one heterogeneous federation.

One federation serves every method, so all see the same questions, seeds and
step budget: K reward clients get domains by a Dirichlet(alpha) split (each
an answer-based expert on its domains, a model-based judge elsewhere), K more
run the same split ground-truth-free (model-based only), and one ``central``
client holds every domain's labels (centralised GRPO: the server-side upper
bound). Each run names the clients it may use (``RunSpec.reward_clients``).
Every client sits behind a byte-counting relay, so traffic is counted on the
wire. Methods:

    zero_shot      the base policy, no training (greedy: one evaluation)
    fedgrpo        confidence-graph selection of M experts, consensus reading
    random         M experts drawn at random (FedGRPO's released code)
    all            every client, rewards averaged, no selection
    centralised    the ground truth of every domain (the upper bound)
    gt_free        FedGRPO with model-based judging only (paper Table 2)
    mor            MoR: every federated client, rewards fused by the router fitted on
                   the probes, GRPO with a KL term to the frozen base (preset mor)
    fedmoa         FedMOA: the same organisations (one ``local-k`` per labelled client,
                   the same labels) train LoRA locally with GRPO on their own questions
                   and objectives (weights adapted by hypergradient); the server combines
                   the adapters by task coverage x validation accuracy
    fedavg_lora    the parameter-exchange baseline: the same local training, fixed
                   objective weights, FedAvg of the adapters (FedPETuning)

The parameter-exchange arms get the same budget of rollouts (policy samples) as
the server-side ones: ``steps x questions_per_step x G`` per run, spent as
rounds of ``local_steps`` local steps on every local client
(``exchange_rounds``). Their clients join the orchestrator's federation port
through a byte-counting relay each, so their adapters are counted on the wire
like the rewards of the others.

A client's model-based judge (``--client-judge``) is by default its own
reward model, built first from its own labels (``experiment_reward_models``:
the `fedgrpo reward-model` commands an organisation runs), so the judges
differ by client; a client holding no labels judges with the judge model
answering the question itself, as every client did before.

Every party reads its own files, written first by ``experiment_files`` (what
`fedgrpo datasets make` writes): the orchestrator its questions (no answers)
and auxiliary set, each client its labels (checked by the ``reasoning-gym``
checker), the evaluator its held-out questions; nothing shares a generator
at run time. Each training method runs once per seed; after each run the
policy is evaluated greedily on the same held-out questions, none of which
is in the training pool or the auxiliary set, and each question's
correctness is recorded so methods are compared paired (``paired``).
``experiment_report`` turns the records into report.md, report.json and
plots.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Literal

from google.protobuf import json_format
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console

from fedgrpo import spec_enums
from fedgrpo.client import Client
from fedgrpo.data.checkers import load_checker
from fedgrpo.progress import follow_run
from fedgrpo.tasks import INSTRUCTION, PromptFormat, question_id
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc

from .evaluate import Accuracy, labelled_accuracy
from .experiment_files import ExperimentFiles, make_experiment_files
from .experiment_report import MethodRun, write_report
from .experiment_reward_models import ClientRewardModel, RewardModelOptions, build_reward_models
from .launcher import Federation
from .split import dirichlet_split
from .wire import ByteCountingRelay

log = logging.getLogger(__name__)

Method = Literal["zero_shot", "fedgrpo", "random", "all", "centralised", "gt_free", "mor", "fedmoa", "fedavg_lora"]
METHODS: tuple[str, ...] = ("zero_shot", "fedgrpo", "random", "all", "centralised", "gt_free", "mor", "fedmoa",
                            "fedavg_lora")
EXCHANGE_METHODS = ("fedmoa", "fedavg_lora")

# --scale presets; an option given explicitly always wins over its preset. Domains have question
# spaces far larger than the bank (1000 per domain) plus the held-out set, so held-out questions
# can be new ones (add1/sub1/mul1/leg_counting have ~110-121 texts: the bank holds them all).
# SmolLM2-135M zero-shot greedy accuracy, 100 held-out questions each (measured here):
# add2 0.07, chain3 0.07, letter_counting 0.61, sub2 0.02, leg_counting2 0.01.
# default: 12 steps and 3 domains x 100 questions; measured alone on 2 CPU cores (commit d3c451a): reward
# models 7.1 min, start and probes 3.7 min, each run 2.1-3.2 min with its evaluation: 58.7 min for all 7 methods.
SCALES: dict[str, dict] = {
    "default": dict(clients=5, steps=12, eval_questions=100, domains=["add2", "chain3", "letter_counting"]),
    "large": dict(clients=10, steps=40, eval_questions=200,
                  domains=["add2", "sub2", "chain3", "letter_counting", "leg_counting2"]),
}


class ExperimentSettings(BaseSettings):
    """The experiment; defaults (``--scale default``, every method, 3 seeds) take ~59 minutes on a 2-core CPU."""

    model_config = SettingsConfigDict(
        env_prefix="FEDGRPO_EXPERIMENT_", cli_prog_name="fedgrpo experiment", cli_kebab_case=True,
        cli_implicit_flags=True, extra="forbid",
    )

    scale: Literal["default", "large"] = Field(
        "default", description="Preset of clients, steps, eval questions and domains: default (~59 min on "
        "2 CPU cores) or large (10 clients, 5 domains, 40 steps: hours on a CPU, minutes on a GPU).",
    )
    methods: list[Method] = Field(list(METHODS), description="Methods to run (JSON list or comma-separated).")
    model: str = Field(
        "smollm2-135m-instruct", description="Policy: smollm2-135m-instruct, tiny-policy or a HF folder."
    )
    judge_model: str = Field(
        "smollm2-135m-instruct", description="Each client's own small model: it samples the candidates of the "
        "client's preference rows, and judges by answering itself where a client has no reward model.",
    )
    client_judge: Literal["reward_model", "judge_model"] = Field(
        "reward_model", description="How a client judges questions it holds no label for: reward_model (MoR: its "
        "own reward model, built first from its own labels; a client without labels falls back to judge_model) "
        "or judge_model (the judge model answers the question; every client the same model).",
    )
    reward_model_base: str = Field("minilm", description="Backbone of the clients' reward models.")
    reward_model_questions: int = Field(
        100, ge=1, description="Labelled questions per client whose sampled candidates become its preference rows."
    )
    reward_model_samples: int = Field(4, ge=2, description="Candidates sampled per such question.")
    domains: list[str] = Field(default_factory=list, description="Task domains (default: the scale's).")
    clients: int = Field(5, ge=2, le=20, description="K: reward clients sharing the domains (default: the scale's).")
    alpha: float = Field(0.1, gt=0, description="Dirichlet concentration of the domain split (paper: 0.1).")
    split_seed: int = Field(0, description="Seed of the Dirichlet split (the federation is the same for every seed).")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Training seeds: question order and sampling.")
    steps: int = Field(12, ge=1, description="Training steps per run (default: the scale's).")
    questions_per_step: int = Field(
        2, ge=1, description="Questions per step (2: twice the updates of `fedgrpo run`'s 4 for the same compute)."
    )
    candidates_per_question: int = Field(8, ge=2, description="G: candidates per question.")
    experts_per_question: int = Field(2, ge=1, description="M: expert clients per question.")
    reward_reading: Literal["consensus", "pooled"] = Field("consensus", description="How expert rewards combine.")
    confidence_update_rate: float = Field(0.0, ge=0, le=1, description="Online confidence update (0: off).")
    embedding: Literal["policy", "minilm"] = Field("policy", description="phi of the confidence graph.")
    learning_rate: float = Field(2e-5, gt=0, description="AdamW learning rate.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field("bnpo", description="Loss aggregation.")
    max_async_level: int = Field(
        0, ge=0, le=4, description="Steps rollouts may run ahead of training (the run spec's; 1 on a GPU host "
        "where engine and trainer have devices of their own). 0: on a 2-core CPU overlapping made a step 1.4x "
        "slower.")
    max_tokens: int = Field(32, ge=1, description="Longest completion, in tokens.")
    local_steps: int = Field(1, ge=1, description="fedmoa, fedavg_lora: local GRPO steps per round per client.")
    lora_rank: Literal[1, 8, 16, 32, 64] = Field(
        8, description="fedmoa, fedavg_lora: rank of the LoRA adapters exchanged.")
    lora_learning_rate: float = Field(
        2e-4, gt=0, description="fedmoa, fedavg_lora: AdamW learning rate of the clients' LoRA training (LoRA "
        "takes a higher rate than full fine-tuning's learning_rate).",
    )
    judge_max_tokens: int = Field(
        32, ge=1, description="Longest reply of a client's judge model (cut shorter, its last number is often a "
        "step of its working, which candidates cut at the same place then match).",
    )
    eval_questions: int = Field(
        100, ge=1, description="Held-out questions per domain (default: the scale's), none of them in the "
        "training pool or the auxiliary set; a domain whose question space cannot supply them is refused.",
    )
    backend: Literal["vllm", "transformers"] = Field("vllm", description="Rollout engine.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Device of engine and trainer.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype (bfloat16 on a GPU)."
    )
    out_dir: Path = Field(Path("runs/experiments"), description="Where <experiment id>/report.md and the rest go.")
    report_to: Literal["none", "tensorboard"] = Field(
        "none", description="Also write each run's step metrics as TensorBoard events, one TensorBoard run per "
        "method and seed (<experiment>/tensorboard/<method>-s<seed>): `tensorboard --logdir <experiment>/tensorboard` "
        "shows the methods' curves side by side.")
    resume: Path | None = Field(
        None, description="An earlier experiment's folder: runs recorded in its records.jsonl are kept, the rest "
        "are run (same settings), and the report covers all.",
    )
    keep_models: bool = Field(
        False, description="Keep each run's exported policy (~0.5 GB for SmolLM2); by default only figures are kept.",
    )
    cache_dir: Path = Field(Path(".cache/models"), description="Prepared base models.")
    start_timeout: float = Field(600.0, gt=0, description="Seconds each service may take to become healthy.")
    log_level: str = Field("INFO", description="Logging level of the services.")

    @model_validator(mode="after")
    def _apply_scale(self) -> ExperimentSettings:
        from fedgrpo.tasks import known_domains

        for name, value in SCALES[self.scale].items():
            if name not in self.model_fields_set or (name == "domains" and not self.domains):
                object.__setattr__(self, name, value)
        try:
            known_domains(self.domains)
        except ValueError as err:
            raise ValueError(f"domains: {err}") from None
        if self.experts_per_question > self.clients:
            raise ValueError(f"experts_per_question {self.experts_per_question} > clients {self.clients}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: a seed is listed twice: {self.seeds}")
        return self


def rollouts_per_question(spec: pb.RunSpec) -> int:
    """Candidates the policy samples per training question: G (consensus), M x G (pooled: a block per expert)."""
    pooled = spec.reward_reading == pb.REWARD_READING_POOLED and spec.expert_selection != pb.EXPERT_SELECTION_ALL
    return spec.candidates_per_question * (spec.experts_per_question if pooled else 1)


def rollouts_per_run(spec: pb.RunSpec) -> int:
    """Policy samples a run trains on: its budget (server steps, or rounds x local clients x local steps)."""
    per_step = spec.questions_per_step * rollouts_per_question(spec)
    if spec.algorithm in (pb.ALGORITHM_FEDMOA, pb.ALGORITHM_FEDAVG_LORA):
        return spec.steps * len(spec.reward_clients) * spec.exchange.local_steps * per_step
    return spec.steps * per_step


DATASET = "experiment"  # the orchestrator's name for the experiment's questions file
AUXILIARY_SIZE = 100  # auxiliary items over all domains (rounded up to a multiple of the domain count)


def held_out_digest(files: ExperimentFiles) -> str:
    """Names the held-out questions (ids in order): runs are compared only on the same ones."""
    ids = (question_id(r.domain or "", r.question) for r in files.evaluation)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def exchange_rounds(s: ExperimentSettings, local_clients: int) -> int:
    """Rounds giving a parameter-exchange run the rollouts of ``steps`` server-side steps (at least one)."""
    return max(1, round(s.steps / (local_clients * s.local_steps)))


def method_spec(s: ExperimentSettings, method: str, seed: int, names: dict[str, list[str]]) -> pb.RunSpec:
    """The run spec of one training method: the same budget for all, different experts."""
    if method in EXCHANGE_METHODS:
        return spec_enums.spec_message(dict(
            dataset=DATASET, tasks=s.domains, steps=exchange_rounds(s, len(names["local"])),
            questions_per_step=s.questions_per_step, candidates_per_question=s.candidates_per_question,
            learning_rate=s.lora_learning_rate, loss_type=s.loss_type, max_tokens=s.max_tokens, temperature=1.0,
            seed=seed, reward_clients=names["local"], algorithm=method,
            exchange=dict(local_steps=s.local_steps, lora_rank=s.lora_rank, lora_alpha=2.0 * s.lora_rank,
                          round_deadline_seconds=3600.0, round_quorum=len(names["local"])),
        ))
    selection, clients, m = {
        "fedgrpo": ("confidence_graph", names["federated"], s.experts_per_question),
        "random": ("random", names["federated"], s.experts_per_question),
        "all": ("all", names["federated"], s.experts_per_question),
        "centralised": ("all", names["central"], 1),
        "gt_free": ("confidence_graph", names["gt_free"], s.experts_per_question),
        "mor": ("all", names["federated"], s.experts_per_question),  # the preset fuses them with the router
    }[method]
    return spec_enums.spec_message(dict(
        dataset=DATASET, tasks=s.domains, steps=s.steps, questions_per_step=s.questions_per_step,
        candidates_per_question=s.candidates_per_question, experts_per_question=m,
        learning_rate=s.learning_rate, loss_type=s.loss_type, max_tokens=s.max_tokens, updates_per_batch=1,
        temperature=1.0, seed=seed, expert_selection=selection, reward_clients=clients,
        reward_reading=s.reward_reading if selection != "all" else "consensus",
        confidence_update_rate=s.confidence_update_rate if selection == "confidence_graph" else 0.0,
        reward_timeout_seconds=120.0, preset="mor" if method == "mor" else "fedgrpo",
        max_async_level=s.max_async_level,
    ))


class _Experiment:
    def __init__(self, s: ExperimentSettings, out: Path, console: Console) -> None:
        self.s, self.out, self.console = s, out, console
        self.relays: dict[str, ByteCountingRelay] = {}
        # Relays a client dials (in front of the orchestrator's federation port): their directions are swapped.
        self.inbound: set[str] = set()
        self.names: dict[str, list[str]] = {"federated": [], "gt_free": [], "central": [], "local": []}
        self.split = dirichlet_split(s.domains, s.clients, s.alpha, s.split_seed)
        self.files = make_experiment_files(s.domains, self.split.holdings, out / "data", s.eval_questions,
                                           AUXILIARY_SIZE)
        self.digest = held_out_digest(self.files)
        self.checker = load_checker("reasoning-gym")
        self.reward_models: dict[str, ClientRewardModel] = {}

    def build_reward_models(self) -> None:
        """Each labelled client's own reward model, when clients judge with one (``--client-judge``)."""
        s = self.s
        if s.client_judge != "reward_model" or not set(s.methods) & {"fedgrpo", "random", "all", "gt_free", "mor"}:
            return
        options = RewardModelOptions(
            model=s.judge_model, base=s.reward_model_base, questions=s.reward_model_questions,
            samples=s.reward_model_samples, max_tokens=s.max_tokens, instruction=INSTRUCTION, backend=s.backend,
            device=s.device, dtype=s.dtype, cache_dir=s.cache_dir,
        )
        labels = {f"client-{k}": file for k, file in enumerate(self.files.labels)}
        self.reward_models = build_reward_models(labels, self.out / "clients", options, self.console)

    def evaluate(self, stub) -> Accuracy:  # type: ignore[no-untyped-def]
        accuracy, cannot_judge = labelled_accuracy(
            stub, self.files.evaluation, self.checker, PromptFormat(INSTRUCTION), self.s.max_tokens)
        if cannot_judge:
            raise RuntimeError(f"held-out evaluation: {cannot_judge} answers the reasoning-gym checker could not judge")
        return accuracy

    # ---- the federation ------------------------------------------------------
    def start(self, fed: Federation) -> pb_grpc.OrchestratorServiceStub:
        s = self.s
        common = ["--log-level", s.log_level]
        trainer = fed.start("trainer", "trainer", [*common, "--model", s.model, "--cache-dir", str(s.cache_dir),
                                                    "--state-dir", str(self.out / "trainer"), "--device", s.device,
                                                    "--dtype", s.dtype])
        judge_model = ["--judge-model", s.judge_model, "--judge-max-tokens", str(s.judge_max_tokens),
                       "--judge-cache", str(self.out / "judge_answers.sqlite"), "--cache-dir", str(s.cache_dir)]

        def judge(k: int) -> list[str]:  # its own reward model if it built one, else the judge model
            model = self.reward_models.get(f"client-{k}")
            return ["--reward-model", model.folder] if model else judge_model

        wanted = set(s.methods)
        clients = []
        checked = ["--checker", "reasoning-gym"]
        labels = [[*checked, "--labels", str(file)] if file else [] for file in self.files.labels]
        if wanted & {"fedgrpo", "random", "all", "mor"}:
            for k in range(len(self.split.holdings)):
                clients.append((f"client-{k}", [*judge(k), *labels[k]], "federated"))
        if "gt_free" in wanted:  # its labels only declare its domains: it judges with its model alone
            for k in range(len(self.split.holdings)):
                clients.append((f"gtfree-{k}", [*judge(k), *labels[k], "--ground-truth-free"], "gt_free"))
        if "centralised" in wanted:
            clients.append(("central", [*checked, "--labels", str(self.files.central)], "central"))
        started = [fed.start(name, "reward-client", [*common, "--name", name, *args]) for name, args, _ in clients]
        for (name, _, group), service in zip(clients, started):
            self.names[group].append(name)
        for service in [trainer, *started]:
            fed.wait_healthy(service, s.start_timeout)
        for (name, _, _), service in zip(clients, started):
            self.relays[name] = ByteCountingRelay(service.address)
            self.relays[name].start()
        self.console.log(f"trainer and {len(started)} reward clients up; building the confidence graph ...")
        exchange = wanted & set(EXCHANGE_METHODS)
        lora = ["--max-lora-rank", str(s.lora_rank)] if exchange and s.backend == "vllm" else []
        orchestrator = fed.start(
            "orchestrator", "orchestrator",
            [*common, "--model", s.model, "--cache-dir", str(s.cache_dir), "--runs-dir", str(self.out / "runs"),
             "--trainer", trainer.address, "--backend", s.backend, "--device", s.device, "--dtype", s.dtype,
             "--reward-clients", ",".join(r.address for r in self.relays.values()),
             "--dataset", f"{DATASET}={self.files.questions}", "--dataset-instruction", f"{DATASET}={INSTRUCTION}",
             "--auxiliary", str(self.files.auxiliary), "--auxiliary-size", str(self.files.auxiliary_size),
             "--embedding", s.embedding, *lora],
        )
        fed.wait_healthy(orchestrator, s.start_timeout)
        self.console.log(f"orchestrator up at {orchestrator.address}")
        self.client = Client(orchestrator.address)
        if wanted & set(EXCHANGE_METHODS):
            self._start_local_clients(fed, orchestrator.federation_address, labels)
        return self.client.stub

    def _start_local_clients(self, fed: Federation, federation_address: str, labels: list[list[str]]) -> None:
        """One ``local-k`` per labelled client, training locally, joined through a relay of its own."""
        s = self.s
        local = []
        for k, args in enumerate(labels):
            if not args:
                continue  # a client holding no domain has no questions to train on
            name = f"local-{k}"
            relay = ByteCountingRelay(federation_address)
            relay.start()
            self.relays[name] = relay
            self.inbound.add(name)
            local.append(fed.start(name, "reward-client", [
                "--log-level", s.log_level, "--name", name, *args, "--orchestrator", relay.address,
                "--local-training", "--local-policy", s.model, "--cache-dir", str(s.cache_dir),
                "--local-state-dir", str(self.out / "local"), "--local-device", s.device, "--local-dtype", s.dtype,
                "--torch-threads", "1",
            ]))
            self.names["local"].append(name)
        for service in local:
            fed.wait_healthy(service, s.start_timeout)
        deadline = time.monotonic() + s.start_timeout
        while True:
            live = {c.name for c in self.client.stub.ListRewardClients(pb.ListRewardClientsRequest()).clients
                    if c.healthy}
            if set(self.names["local"]) <= live:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"local clients {sorted(set(self.names['local']) - live)} did not join in "
                                 f"{s.start_timeout:.0f}s")
            time.sleep(0.5)
        self.console.log(f"{len(local)} local-training clients joined: {', '.join(self.names['local'])}")

    def wire(self) -> dict[str, tuple[int, int]]:
        """client -> (bytes to it, bytes from it) so far, on the wire."""
        snapshots = {name: relay.snapshot() for name, relay in self.relays.items()}
        return {name: (b, a) if name in self.inbound else (a, b) for name, (a, b) in snapshots.items()}

    # ---- the methods -----------------------------------------------------------
    def run_method(self, stub, method: str, seed: int) -> MethodRun:
        s = self.s
        spec = method_spec(s, method, seed, self.names)
        before, started = self.wire(), time.monotonic()
        run = self.client.create_run(spec)
        self.console.log(f"{method} seed {seed}: run {run.run_id}")
        events = self.out / "tensorboard" / f"{method}-s{seed}" if s.report_to == "tensorboard" else None
        run, steps = follow_run(self.client, run, self.console, label=f"{method} s{seed}", logdir=events)
        if run.state != pb.RUN_STATE_SUCCEEDED:
            raise SystemExit(f"{method} seed {seed}: run {run.run_id} ended {pb.RunState.Name(run.state)}: {run.error}")
        train_seconds = time.monotonic() - started
        after = self.wire()
        accuracy = self.evaluate(stub)
        router = {}
        if spec.preset == pb.PRESET_MOR:  # the router over the run's clients, as it fused them
            view = stub.GetConfidenceGraph(pb.GetConfidenceGraphRequest(run_id=run.run_id))
            for w in view.router_weights:
                router.setdefault(w.client, {})[w.domain] = w.weight
        self._free_disk(run)
        used = list(spec.reward_clients)
        wire = {n: (after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in used}
        self.console.log(
            f"{method} seed {seed}: held-out accuracy {accuracy.overall:.3f} "
            f"({', '.join(f'{d} {a:.2f}' for d, a in accuracy.per_domain.items())}), {train_seconds:.0f}s"
        )
        return MethodRun(method, seed, run.run_id, accuracy.per_domain, accuracy.overall, steps,
                         wire, len(steps), train_seconds, accuracy.correct, self.digest, rollouts_per_question(spec),
                         router, rollouts_per_run(spec))

    def _free_disk(self, run: pb.Run) -> None:
        """A run's trainer state (snapshots, optimizer checkpoint: ~2.6 GB for SmolLM2) is not needed once it
        is evaluated; 15 runs of it filled a 60 GB disk. The exported policy goes too unless --keep-models."""
        shutil.rmtree(self.out / "trainer" / "runs" / run.run_id, ignore_errors=True)
        if not self.s.keep_models:
            shutil.rmtree(Path(run.artifacts_path) / "model", ignore_errors=True)

    def zero_shot(self, stub) -> MethodRun:
        started = time.monotonic()
        accuracy = self.evaluate(stub)
        self.console.log(f"zero-shot held-out accuracy {accuracy.overall:.3f}")
        return MethodRun("zero_shot", -1, "", accuracy.per_domain, accuracy.overall, [], {}, 0,
                         time.monotonic() - started, accuracy.correct, self.digest, 0)


def run_experiment(s: ExperimentSettings) -> Path:
    console = Console()
    started = time.monotonic()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from fedgrpo.models import resolve_model

    out = s.resume or s.out_dir / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    try:
        exp = _Experiment(s, out, console)
    except ValueError as err:
        raise SystemExit(f"fedgrpo experiment: {err}") from None
    held_out = exp.files.held_out
    records, earlier_seconds = _recorded(out, exp.digest) if s.resume else ([], 0.0)
    done = {(r.method, r.seed) for r in records}
    if s.resume:
        console.log(f"resuming {out}: {len(records)} runs recorded ({earlier_seconds / 60:.1f} min)")
    console.log(f"experiment in {out}: methods {', '.join(s.methods)}; seeds {s.seeds}; {s.steps} steps; "
                f"{s.clients} clients over {', '.join(s.domains)} (alpha {s.alpha}); {held_out['questions']} held-out "
                f"questions, overlaps {held_out['overlaps']}; data files in {out / 'data'}")
    for model in {s.model, s.judge_model}:
        console.log(f"preparing model {model} ...")
        resolve_model(model, s.cache_dir)
    for k, held in enumerate(exp.split.holdings):
        console.log(f"client-{k} holds {', '.join(held) or 'no domain (judges with its model only)'}")
    exp.build_reward_models()
    with Federation(out / "logs" / time.strftime("%H%M%S")) as fed:
        stub = exp.start(fed)
        probe_wire = exp.wire()
        graph = stub.GetConfidenceGraph(pb.GetConfidenceGraphRequest())
        if "zero_shot" in s.methods and ("zero_shot", -1) not in done:
            _record(out, records, exp.zero_shot(stub), started, earlier_seconds)
        for seed in s.seeds:
            for method in [m for m in METHODS if m in s.methods and m != "zero_shot"]:
                if (method, seed) not in done:
                    _record(out, records, exp.run_method(stub, method, seed), started, earlier_seconds)
        graph = stub.GetConfidenceGraph(pb.GetConfidenceGraphRequest())
    graph_dict = json_format.MessageToDict(graph, preserving_proto_field_name=True)
    path = write_report(
        out, s.model_dump(mode="json"), exp.split, exp.names, records, graph_dict, probe_wire,
        wall_seconds=earlier_seconds + time.monotonic() - started, resumed=bool(s.resume),
        held_out=held_out, reward_models={n: m.to_json() for n, m in exp.reward_models.items()},
    )
    console.print(path.read_text())
    console.print(f"report: {path} (report.json and plots beside it); total {time.monotonic() - started:.0f}s")
    return path


def _record(out: Path, records: list[MethodRun], record: MethodRun, started: float, earlier: float) -> None:
    """Append a finished run to records.jsonl, with the experiment's elapsed time so far (for --resume)."""
    records.append(record)
    line = {**record.to_json(), "elapsed_seconds": earlier + time.monotonic() - started}
    with (out / "records.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


def _recorded(out: Path, digest: str) -> tuple[list[MethodRun], float]:
    """The runs of an earlier session. Runs recorded without per-question results (before paired claims)
    or on other held-out questions cannot be paired with new ones: they are refused, not re-run
    silently (their policies are deleted once evaluated, so they cannot be re-evaluated)."""
    path = out / "records.jsonl"
    if not path.exists():
        raise SystemExit(f"fedgrpo experiment: resume: {path} does not exist")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        run = f"{r.get('method')} seed {r.get('seed')}"
        if not r.get("correct"):
            raise SystemExit(
                f"fedgrpo experiment: resume: {path}: run {run} has no per-question results ('correct'), "
                "recorded by an older version; paired claims need them. Start a new experiment (without --resume)."
            )
        if r.get("held_out_digest") != digest:
            raise SystemExit(
                f"fedgrpo experiment: resume: {path}: run {run} was evaluated on other held-out questions "
                f"(digest {r.get('held_out_digest')!r}, expected {digest!r}: domains or --eval-questions "
                "differ); resume with the same settings or start a new experiment."
            )
    elapsed = max((r.pop("elapsed_seconds", 0.0) for r in rows), default=0.0)
    return [MethodRun(**r) for r in rows], elapsed


def main(argv: list[str] | None = None) -> None:
    from fedgrpo.settings import load, setup_logging

    settings = load(ExperimentSettings, argv)
    setup_logging("WARNING")
    run_experiment(settings)
