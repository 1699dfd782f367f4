"""Configuration of one reward client (one domain organisation).

A client holds private labelled data (answer-based evaluator): a file of its
own (``labels``: questions and answers, compared by its ``checker``) and/or
the built-in bank of its ``domains``; and, with ``judge_model`` set, its own
small local model that judges any other question (model-based evaluator).
``evaluator_order`` says which it asks first. A client may hold no domain at all
(a Dirichlet split of domains over clients leaves some empty-handed): it then
judges with its model only, so it needs ``judge_model``. In
``ground_truth_free`` mode it judges every question with its models only
(``reward_model``, ``judge_model``) and its labelled data is not used.

``domains`` is a comma-separated list on the command line and in the
environment (``--domains add1,sub1``, ``FEDGRPO_REWARD_CLIENT_DOMAINS=add1,sub1``;
a JSON list works too); an empty value (``--domains ""``) means no domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from fedgrpo.settings import CommaList, ServiceSettings

EVALUATORS = ("labels", "reward_model", "judge")


class RewardClientSettings(ServiceSettings):
    """A reward client: private labelled data of some domains, served as rewards only."""

    certificate_role: ClassVar[str | None] = "reward_client"

    model_config = SettingsConfigDict(
        env_prefix="FEDGRPO_REWARD_CLIENT_",
        cli_prog_name="fedgrpo reward-client",
    )

    name: str = Field(
        "reward-client", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Name of this client in the federation; with TLS, its certificate's common name.",
    )
    port: int = Field(
        50061, ge=1, le=65535,
        description="TCP port of this client's own Score/Describe/health service (a joined client needs no "
        "inbound connection: keep host 127.0.0.1 for local health checks).",
    )
    orchestrator: str = Field(
        "",
        description="host:port of the orchestrator's federation port: join it (outbound connections only), "
        "send heartbeats and answer the scoring tasks it sends; empty: wait to be dialed at host:port.",
    )
    join_workers: int = Field(4, ge=1, le=64, description="Scoring tasks of a joined client answered at once.")
    domains: CommaList = Field(
        [],
        description="Task domains whose labelled data this client holds, comma-separated (see `fedgrpo tasks`); "
        "empty: none, the client judges with its judge_model only.",
    )
    labels: Path | None = Field(
        None,
        description="This organisation's private labelled data: a JSON Lines, CSV or Parquet file or a folder "
        "saved by Hugging Face `datasets`, one row per question with its answer (columns question_column, "
        "answer_column, optional domain_column and metadata). A server question is matched by normalised text; "
        "the labels never leave the client. Empty: none.",
    )
    question_column: str = Field(
        "question", min_length=1, description="Column of `labels` holding the question ('prompt' also works)."
    )
    answer_column: str = Field("answer", min_length=1, description="Column of `labels` holding the answer.")
    domain_column: str = Field("domain", min_length=1, description="Column of `labels` naming the domain, if any.")
    checker: str = Field(
        "exact",
        description="How a candidate is compared with a label of `labels`: exact, numeric, choice, regex, math "
        "(math-verify), reasoning-gym (built-in domains), or your own function as module:function or the name of "
        "an entry point of group fedgrpo.checkers (see fedgrpo/data/checkers.py for the signature).",
    )
    checker_tolerance: float = Field(
        1e-6, ge=0.0, description="The numeric checker's tolerance, relative to max(1, |label|)."
    )
    reward_model: str = Field(
        "",
        description="The organisation's own reward model: a Hugging Face sequence-classification folder (1 logit, "
        "or 2 labels) that scores any (question, candidate) pair in [0, 1]; tiny-reward-model builds a random "
        "one for tests in cache_dir. Empty: none.",
    )
    evaluator_order: CommaList = Field(
        default_factory=lambda: ["labels", "reward_model", "judge"],
        description="Which evaluators a question goes to first, comma-separated: labels (the labelled data of "
        "`labels` and `domains`), reward_model, judge (judge_model). The first that can judge the question "
        "scores it; which one did never leaves the client.",
    )
    bank_seed: int = Field(
        0, description="Seed of the federation's question bank; must match the orchestrator's."
    )
    bank_size: int = Field(
        1000, ge=1, le=100_000, description="Questions per domain in the bank; must match the orchestrator's."
    )
    judge_model: str = Field(
        "",
        description="The client's own small local model, which judges questions it holds no labels for "
        "(model-based evaluator): smollm2-135m-instruct, tiny-policy, tiny-llama or a Hugging Face folder; "
        "empty: no model-based evaluator.",
    )
    cache_dir: Path = Field(Path(".cache/models"), description="Where prepared judge models are cached.")
    judge_cache: Path | None = Field(
        None,
        description="SQLite file where the judge model's own answers are shared by clients running the same "
        "judge on one machine (a simulation speed-up); answers are keyed by judge model, max tokens and "
        "question and are exactly what the client would compute; empty: no sharing.",
    )
    ground_truth_free: bool = Field(
        False,
        description="Judge every question with the model-based evaluators only (reward_model, judge_model); "
        "the labelled data is not used. Requires one of them.",
    )
    local_training: bool = Field(
        False,
        description="Take the training rounds of parameter-exchange runs (fedmoa, fedavg_lora): train a LoRA "
        "adapter on the global one with GRPO on this client's own labelled questions, scored by its own "
        "evaluators, and send the adapter back. Needs local_policy and labelled questions (labels or domains); "
        "the client joins with --orchestrator.",
    )
    local_policy: str = Field(
        "",
        description="With local_training: the base policy this client trains on, the model the orchestrator "
        "serves: smollm2-135m-instruct, tiny-policy or a Hugging Face folder.",
    )
    local_state_dir: Path = Field(
        Path(".cache/local-training"), description="With local_training: where the local trainer keeps its files."
    )
    local_device: str = Field("cpu", description="With local_training: torch device of the local policy (cpu, cuda).")
    local_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="With local_training: compute dtype (bfloat16 on a GPU; float32 on a CPU)."
    )
    local_seed: int = Field(
        0, ge=0, description="With local_training: seeds this client's question order and sampling (its own)."
    )
    max_adapter_bytes: int = Field(
        1 << 30, ge=1024, description="With local_training: largest global adapter accepted from the orchestrator."
    )
    local_objectives: list[str] = Field(
        default_factory=list,
        description="With local_training: objectives this client adds to the round's (correctness, format, "
        "brevity): reward_model (its own reward model's score; needs reward_model) or a function of yours, "
        "module:function or an entry point of group fedgrpo.objectives, called as function(question, reply) -> "
        "a score in [0, 1]. Its weight adapts with the others; the metrics name it by the function's name.",
    )
    local_objective_weight: float = Field(
        0.1, gt=0, lt=1,
        description="With local_training: initial weight of each added objective (the round's objectives share "
        "the rest in their proportions).",
    )
    judge_max_tokens: int = Field(
        24, ge=1, le=1024, description="Longest reply of the judge model to a question, in tokens."
    )
    torch_threads: int = Field(
        1, ge=0, description="torch CPU threads of the judge model (0: torch's default, every core)."
    )
    orchestrator_identities: CommaList = Field(
        default_factory=lambda: ["orchestrator"],
        description="With TLS: the identities (certificate common names) that may call Score and Describe, "
        "comma-separated; any other is PERMISSION_DENIED, since scores reveal this client's labels (candidates "
        "0..255 of a known question read its answer). Default: the orchestrator's name as `make certs` issues "
        "it. Empty: any identity the federation CA signed (not advised). Health checks stay open.",
    )
    # Score's fields are bounded so that no caller makes the judge model read unbounded text.
    max_candidates: int = Field(256, ge=1, description="Most candidates accepted in one Score call.")
    max_candidate_chars: int = Field(16_384, ge=1, description="Longest candidate answer accepted, in characters.")
    max_question_chars: int = Field(
        8_192, ge=1, description="Longest question accepted in a Score call, in characters."
    )
    max_domain_chars: int = Field(64, ge=1, description="Longest domain name accepted in a Score call.")
    max_id_chars: int = Field(
        256, ge=1, description="Longest question_id and run_id accepted in a Score call."
    )
    # Faults injected on purpose, for tests and chaos runs only.
    fault: Literal[
        "none", "nan", "out_of_range", "wrong_count", "error", "poison", "probe_pattern", "huge_range"
    ] = Field(
        "none", description="Test only: answer every Score call with this fault. poison inverts every reward "
        "(low + high - r); probe_pattern is a cheater with no data: it never consults its evaluators, answers "
        "high, low, low, high to what looks like the orchestrator's old fixed probe (run_id 'probe', or the "
        "candidates [A, 'The answer is W.', W, 'The answer is A.']) and random rewards to anything else; "
        "huge_range declares the reward range [0, 3.4e38] and answers every reward inverted and scaled up to it.",
    )
    fault_after_calls: int = Field(
        0, ge=0, description="Test only: answer the first N Score calls without the fault (a client that behaves "
        "while it is first probed, then does not).",
    )
    fault_delay_seconds: float = Field(
        0.0, ge=0.0, description="Test only: sleep this long before answering Score."
    )

    def dialed_addresses(self) -> list[tuple[str, str]]:
        return [("orchestrator", self.orchestrator)] if self.orchestrator else []

    @field_validator("judge_cache", mode="before")
    @classmethod
    def _no_cache_when_empty(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, domains: list[str]) -> list[str]:
        from fedgrpo.tasks import known_domains

        return known_domains(domains)

    @field_validator("labels", mode="before")
    @classmethod
    def _no_labels_when_empty(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("evaluator_order")
    @classmethod
    def _known_evaluators(cls, order: list[str]) -> list[str]:
        unknown = [name for name in order if name not in EVALUATORS]
        if unknown or len(set(order)) != len(order) or not order:
            raise ValueError(
                f"{order}: expected each of {', '.join(EVALUATORS)} at most once, in the order to ask them"
            )
        return order

    @model_validator(mode="after")
    def _judge_needed(self) -> RewardClientSettings:
        if not self.domains and self.labels is None and not self.judge_model and not self.reward_model:
            raise ValueError(
                "a client with no labelled data can only judge with its own model: set labels (--labels FILE / "
                "FEDGRPO_REWARD_CLIENT_LABELS), domains (--domains add1,sub1 / FEDGRPO_REWARD_CLIENT_DOMAINS), "
                "reward_model (--reward-model DIR) or judge_model (--judge-model / FEDGRPO_REWARD_CLIENT_JUDGE_MODEL)"
            )
        if self.local_training and not self.local_policy:
            raise ValueError(
                "local_training needs the base policy to train on: set local_policy (--local-policy NAME or "
                "FOLDER / FEDGRPO_REWARD_CLIENT_LOCAL_POLICY), the model the orchestrator serves"
            )
        if self.local_training and not self.orchestrator:
            raise ValueError(
                "local_training takes rounds from the orchestrator's federation port: set orchestrator "
                "(--orchestrator HOST:PORT / FEDGRPO_REWARD_CLIENT_ORCHESTRATOR)"
            )
        if self.local_objectives and not self.local_training:
            raise ValueError(
                "local_objectives are objectives of local training: set local_training (--local-training) or "
                "leave local_objectives (--local-objectives) empty"
            )
        if len(self.local_objectives) * self.local_objective_weight >= 1:
            raise ValueError(
                f"local_objective_weight: {len(self.local_objectives)} added objectives x "
                f"{self.local_objective_weight} leave nothing for the round's: lower it (--local-objective-weight)"
            )
        if self.reward_model and "reward_model" not in self.evaluator_order:
            raise ValueError(
                "reward_model is set but evaluator_order leaves it out: add reward_model to evaluator_order "
                "(--evaluator-order labels,reward_model,judge / FEDGRPO_REWARD_CLIENT_EVALUATOR_ORDER)"
            )
        if (self.domains or self.labels is not None) and not self.ground_truth_free and (
            "labels" not in self.evaluator_order
        ):
            raise ValueError(
                "labelled data is set but evaluator_order leaves out labels: add labels to evaluator_order "
                "(--evaluator-order labels,reward_model,judge / FEDGRPO_REWARD_CLIENT_EVALUATOR_ORDER), "
                "or drop the data"
            )
        if self.judge_model and "judge" not in self.evaluator_order:
            raise ValueError(
                "judge_model is set but evaluator_order leaves out judge: add judge to evaluator_order "
                "(--evaluator-order labels,reward_model,judge / FEDGRPO_REWARD_CLIENT_EVALUATOR_ORDER), "
                "or drop judge_model"
            )
        if self.ground_truth_free and not self.judge_model and not self.reward_model:
            raise ValueError(
                "ground_truth_free needs a model to judge with: set reward_model (--reward-model DIR / "
                "FEDGRPO_REWARD_CLIENT_REWARD_MODEL) or judge_model (--judge-model / "
                "FEDGRPO_REWARD_CLIENT_JUDGE_MODEL), or drop ground_truth_free"
            )
        return self
