"""Run specs: defaults and validation of what a caller asks a run to do.

``resolve_spec(msg, ...)`` turns a ``RunSpec`` message into a validated
``RunConfig`` (unset optional fields take their defaults) or raises
``SpecError`` naming the field, the value and the accepted range; the
service answers that with INVALID_ARGUMENT. ``to_message`` writes the
resolved config back, so callers see every default that was applied;
``optimizer_settings`` is what the trainer is told of it.

This is the one place the orchestrator turns the spec's enums (``LossType``,
``RewardReading``, ...) into ``RunConfig``'s readable names and back
(``fedgrpo.spec_enums``): UNSPECIFIED is a field left unset, a number the enum
lacks is a ``SpecError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedgrpo import spec_enums
from fedgrpo.advantage_bound import DEFAULT_MAX_ADVANTAGE
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import policy_trainer_pb2 as tpb

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
RewardReading = Literal["consensus", "pooled"]
ExpertSelection = Literal["confidence_graph", "domain", "random", "all"]
ZeroSignalGroups = Literal["keep", "drop"]
RewardFusion = Literal["competence", "mean", "router"]
Preset = Literal["fedgrpo", "mor"]
Algorithm = Literal["fedgrpo", "fedmoa", "fedavg_lora"]
PARAMETER_EXCHANGE = ("fedmoa", "fedavg_lora")

# What a preset sets in a spec that leaves the field unset (RunSpec.preset).
PRESETS: dict[str, dict[str, object]] = {
    "fedgrpo": {},
    # MoR (arXiv 2602.00485): every client's reward, fused by the learned router; GRPO with a KL term to
    # the frozen base (TRL's GRPO beta of 0.04).
    "mor": {"expert_selection": "all", "reward_fusion": "router", "beta": 0.04},
}


class SpecError(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"spec.{field}: {problem}")
        self.field = field


class ExchangeConfig(BaseModel):
    """How a parameter-exchange run (fedmoa, fedavg_lora) trains and combines adapters (RunSpec.exchange)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    local_steps: int = Field(2, ge=1, le=1000)
    lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = 8
    """LoRA rank (one vLLM's max_lora_rank takes)."""
    lora_alpha: float = Field(16.0, gt=0, le=4096)
    round_deadline_seconds: float = Field(600.0, gt=0, le=86_400)
    round_quorum: int | None = Field(None, ge=1, le=1024)
    """Adapters a round needs to be applied; unset: half the round's clients, rounded up."""
    round_attempts: int = Field(3, ge=1, le=100)
    accuracy_temperature: float = Field(0.1, gt=0, le=100)
    objective_weights: list[float] = Field(default_factory=lambda: [0.6, 0.2, 0.2], min_length=3, max_length=3)
    """Initial weights of correctness, format, brevity (each > 0)."""
    objective_learning_rate: float = Field(1.0, ge=0, le=1000)
    validation_questions: int = Field(16, ge=1, le=10_000)

    @model_validator(mode="after")
    def _positive_weights(self) -> ExchangeConfig:
        if any(not w > 0 for w in self.objective_weights):
            raise ValueError(f"objective_weights: each must be > 0, got {self.objective_weights}")
        return self


class RunConfig(BaseModel):
    """A run's validated settings (see RunSpec in protos/fedgrpo/v1/orchestrator.proto)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = ""
    dataset: str = ""
    """A question dataset registered with the orchestrator; empty: the built-in domains' bank."""
    tasks: list[str] = Field(default_factory=list)
    """Domains to train on: built-in ones, or the dataset's (all of them when empty)."""
    questions_per_step: int = Field(4, ge=1, le=1024)
    candidates_per_question: int = Field(8, ge=2, le=256)
    experts_per_question: int = Field(2, ge=1, le=64)
    steps: int = Field(20, ge=1, le=1_000_000)
    learning_rate: float = Field(1e-5, gt=0, le=1)
    loss_type: LossType = "bnpo"
    beta: float = Field(0.0, ge=0, le=100)
    epsilon_low: float = Field(0.2, ge=0, lt=1)
    epsilon_high: float = Field(0.3, ge=0, le=10)
    temperature: float = Field(1.0, gt=0, le=5)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(48, ge=1, le=32_768)
    updates_per_batch: int = Field(2, ge=1, le=64)
    seed: int = Field(0, ge=0, le=2**62)
    reward_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    scale_rewards: bool | None = None
    """Divide advantages by the group's std; unset: true, except dr_grpo (Liu et al.) and the pooled
    reading (FedGRPO's released code centres the pooled block without scaling). See ``scale``."""
    max_grad_norm: float = Field(1.0, ge=0, le=1e6)
    reward_reading: RewardReading = "consensus"
    expert_selection: ExpertSelection | None = None  # confidence_graph when the graph is on, else domain
    reward_clients: list[str] = Field(default_factory=list)
    confidence_update_rate: float = Field(0.2, ge=0, le=1)
    """With the confidence graph and the consensus reading: after each step every expert's confidence
    moves this fraction of the way towards its leave-one-out agreement (``online_confidence.py``);
    0 turns it off."""
    expert_quorum: int = Field(1, ge=1, le=64)
    zero_signal_groups: ZeroSignalGroups = "keep"
    """Groups whose valid advantages are all 0 (every candidate scored the same). ``keep`` (TRL's
    GRPOTrainer): they stay in the batch with advantage 0, so the loss normaliser does not move with
    their share and, with beta > 0, their KL term still counts. ``drop`` (DAPO's dynamic sampling):
    they are left out of the batch. Counted in ``zero_advantage_groups`` either way."""
    max_advantage: float = Field(DEFAULT_MAX_ADVANTAGE, gt=0, le=1e6)
    """Largest |advantage| sent to the trainer; larger ones are clamped and counted in
    ``advantages_clamped`` (``fedgrpo.advantage_bound``)."""
    reward_fusion: RewardFusion = "competence"
    """How a candidate's expert rewards become one (consensus reading): by competence (the graph's
    weights; equal when not graph-routed), ``mean``, or ``router`` (MoR, ``reward_router.py``)."""
    preset: Preset = "fedgrpo"
    """Defaults for the fields a spec leaves unset (``PRESETS``); fields it sets win."""
    max_async_level: int = Field(1, ge=0, le=4)
    """Steps the rollouts may run ahead of training: the rollouts of step n+1 are generated and scored
    while step n trains, from a policy at most this many versions behind the one trained on them (the
    trainer's ratio uses the sampler's log-probabilities). 0: synchronous (``run_loop``)."""

    algorithm: Algorithm = "fedgrpo"
    """fedgrpo (server GRPO on rewards), or a parameter-exchange algorithm: fedmoa, fedavg_lora."""
    exchange: ExchangeConfig = Field(default_factory=ExchangeConfig)

    @property
    def exchanges_parameters(self) -> bool:
        return self.algorithm in PARAMETER_EXCHANGE

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, values: object) -> object:
        if isinstance(values, dict) and values.get("preset") in PRESETS:
            return {**PRESETS[values["preset"]], **values}
        return values

    @property
    def samples_per_question(self) -> int:
        """pooled gives each expert its own block of G candidates."""
        pooled = self.reward_reading == "pooled"
        return self.candidates_per_question * (self.experts_per_question if pooled else 1)

    @property
    def scale(self) -> bool:
        """Whether advantages are divided by the std: ``scale_rewards`` when set; otherwise not for
        dr_grpo (Liu et al.) nor for the pooled reading (FedGRPO's released code), else yes."""
        if self.scale_rewards is not None:
            return self.scale_rewards
        return self.loss_type != "dr_grpo" and self.reward_reading != "pooled"


def _set_fields(msg: pb.RunSpec) -> dict:
    values: dict = {
        "model": msg.model, "dataset": msg.dataset, "tasks": list(msg.tasks), "reward_clients": list(msg.reward_clients)
    }
    for f in pb.RunSpec.DESCRIPTOR.fields:
        if f.enum_type is not None:
            try:
                name = spec_enums.readable(f.enum_type, getattr(msg, f.name), f.name)
            except spec_enums.UnknownChoice as err:
                raise SpecError(err.field, err.problem) from None
            if name is not None:
                values[f.name] = name
        elif f.message_type is not None and f.name == "exchange":
            values["exchange"] = _exchange_fields(msg.exchange)
        elif f.has_presence and f.name not in values and msg.HasField(f.name):
            values[f.name] = getattr(msg, f.name)
    return values


def _exchange_fields(msg: pb.ParameterExchange) -> dict:
    values: dict = {f.name: getattr(msg, f.name) for f in msg.DESCRIPTOR.fields if f.has_presence and
                    msg.HasField(f.name)}
    if msg.objective_weights:
        values["objective_weights"] = list(msg.objective_weights)
    return values


def resolve_spec(
    msg: pb.RunSpec,
    known_tasks: Collection[str],
    served_model: str,
    client_count: int | Mapping[str, bool],
    max_model_len: int,
    graph_available: bool = False,
    datasets: Mapping[str, Collection[str]] | None = None,
) -> RunConfig:
    """``client_count``: how many reward clients are live, or each client's name -> live;
    ``datasets``: each registered dataset's domains."""
    try:
        config = RunConfig.model_validate(_set_fields(msg))
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(p) for p in e["loc"])
        raise SpecError(field, f"{e['msg']} (got {e.get('input')!r})") from None
    if config.exchanges_parameters:
        client_count = _exchange_clients(config, client_count)
    datasets = datasets or {}
    if config.dataset:
        if config.dataset not in datasets:
            raise SpecError(
                "dataset", f"no dataset {config.dataset!r} is registered; registered: {sorted(datasets) or 'none'}"
            )
        known_tasks = datasets[config.dataset]
        if not config.tasks:
            config = config.model_copy(update={"tasks": sorted(known_tasks)})
    elif not config.tasks:
        raise SpecError("tasks", "name at least one task (`fedgrpo tasks` lists them), or a dataset")
    unknown = [t for t in config.tasks if t not in known_tasks]
    if unknown:
        where = f" of dataset {config.dataset!r}" if config.dataset else ""
        raise SpecError("tasks", f"unknown task(s) {unknown}{where}; known: {', '.join(sorted(known_tasks))}")
    if len(set(config.tasks)) != len(config.tasks):
        raise SpecError("tasks", "a task is listed twice")
    if config.model and config.model != served_model:
        raise SpecError("model", f"this orchestrator serves {served_model!r}; got {config.model!r}")
    if isinstance(client_count, Mapping):
        unknown = [n for n in config.reward_clients if n not in client_count]
        if unknown:
            raise SpecError(
                "reward_clients", f"no reward client named {unknown}; known: {', '.join(sorted(client_count))}"
            )
        if len(set(config.reward_clients)) != len(config.reward_clients):
            raise SpecError("reward_clients", "a client is listed twice")
        usable = config.reward_clients or list(client_count)
        client_count = sum(bool(client_count[n]) for n in usable)
    elif config.reward_clients:
        raise SpecError("reward_clients", "client names cannot be checked here")
    if config.experts_per_question > client_count and config.expert_selection != "all" and (
        not config.exchanges_parameters
    ):
        raise SpecError(
            "experts_per_question",
            f"{config.experts_per_question} experts asked for but {client_count} reward client(s) are live"
            + (" among reward_clients" if config.reward_clients else ""),
        )
    if client_count == 0:
        among = " among those named" if config.reward_clients else ""
        raise SpecError("reward_clients", f"no live reward client{among}")
    if config.expert_selection is None:
        config = config.model_copy(update={"expert_selection": "confidence_graph" if graph_available else "domain"})
    if config.expert_selection == "confidence_graph" and not graph_available:
        raise SpecError("expert_selection", "this orchestrator runs without a confidence graph (--confidence-graph)")
    if config.expert_quorum > config.experts_per_question and config.expert_selection != "all":
        raise SpecError(
            "expert_quorum", f"got {config.expert_quorum}, at most experts_per_question ({config.experts_per_question})"
        )
    if config.reward_fusion == "router" and not graph_available:
        raise SpecError("reward_fusion", "router needs the confidence graph's probes: start the orchestrator with "
                        "--confidence-graph and an auxiliary set")
    if config.reward_fusion != "competence" and config.reward_reading != "consensus":
        raise SpecError("reward_fusion", f"{config.reward_fusion!r} fuses the consensus reading's rewards; "
                        f"reward_reading is {config.reward_reading!r}")
    if config.max_tokens >= max_model_len:
        raise SpecError("max_tokens", f"got {config.max_tokens}, must be below max_model_len {max_model_len}")
    return config.model_copy(update={"model": served_model})


def _exchange_clients(config: RunConfig, client_count: int | Mapping[str, bool]) -> int | Mapping[str, bool]:
    """A parameter-exchange run asks no experts: only its round quorum must be reachable by its clients."""
    if config.expert_selection is not None or config.reward_reading != "consensus":
        raise SpecError("algorithm", f"{config.algorithm} trains on the clients: expert_selection and "
                        "reward_reading belong to fedgrpo")
    named = len(config.reward_clients) if config.reward_clients else None
    quorum = config.exchange.round_quorum
    if quorum is not None and named is not None and quorum > named:
        raise SpecError("exchange.round_quorum", f"got {quorum}, more than the {named} reward_clients named")
    return client_count


def stored_config(msg: pb.RunSpec) -> RunConfig:
    """The config of a run accepted earlier (its spec carries every default): for resuming it."""
    return RunConfig.model_validate(_set_fields(msg))


def to_message(config: RunConfig) -> pb.RunSpec:
    values = config.model_dump()
    values["scale_rewards"] = config.scale
    if not config.exchanges_parameters:
        values.pop("exchange")  # a fedgrpo run's spec carries no exchange settings
    for f in pb.RunSpec.DESCRIPTOR.fields:
        if f.enum_type is not None and values.get(f.name) is not None:
            values[f.name] = spec_enums.number(f.enum_type, values[f.name], f.name)
    return pb.RunSpec(**values)


def optimizer_settings(config: RunConfig) -> tpb.OptimizerSettings:
    """The run's loss and optimiser settings as the trainer takes them (StartPolicy)."""
    return tpb.OptimizerSettings(
        learning_rate=config.learning_rate,
        loss_type=spec_enums.number(tpb.OptimizerSettings.DESCRIPTOR.fields_by_name["loss_type"].enum_type,
                                    config.loss_type, "loss_type"),
        beta=config.beta, epsilon_low=config.epsilon_low, epsilon_high=config.epsilon_high,
        updates_per_batch=config.updates_per_batch, max_grad_norm=config.max_grad_norm,
        temperature=config.temperature, max_policy_lag=config.max_async_level,
    )
