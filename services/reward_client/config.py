"""Configuration of one reward client (one domain organisation).

A client holds the labelled data of its ``domains`` (answer-based evaluator)
and, with ``judge_model`` set, its own small local model that judges any
other question (model-based evaluator). In ``ground_truth_free`` mode it
judges every question with that model only and its labelled data is not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from fedgrpo.settings import ServiceSettings


class RewardClientSettings(ServiceSettings):
    """A reward client: private labelled data of some domains, served as rewards only."""

    model_config = SettingsConfigDict(
        env_prefix="FEDGRPO_REWARD_CLIENT_",
        cli_prog_name="fedgrpo reward-client",
    )

    name: str = Field(
        "reward-client", min_length=1, max_length=64, description="Name of this client in the federation."
    )
    port: int = Field(50061, ge=1, le=65535, description="TCP port to listen on.")
    domains: list[str] = Field(
        min_length=1, description="Task domains whose labelled data this client holds (see `fedgrpo tasks`)."
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
    ground_truth_free: bool = Field(
        False,
        description="Judge every question with the model-based evaluator only; the labelled data of "
        "`domains` is not used. Requires judge_model.",
    )
    judge_max_tokens: int = Field(
        24, ge=1, le=1024, description="Longest reply of the judge model to a question, in tokens."
    )
    torch_threads: int = Field(
        1, ge=0, description="torch CPU threads of the judge model (0: torch's default, every core)."
    )
    max_candidates: int = Field(256, ge=1, description="Most candidates accepted in one Score call.")
    max_candidate_chars: int = Field(16_384, ge=1, description="Longest candidate answer accepted.")
    # Faults injected on purpose, for tests and chaos runs only.
    fault: Literal["none", "nan", "out_of_range", "wrong_count", "error"] = Field(
        "none", description="Test only: answer every Score call with this fault."
    )
    fault_delay_seconds: float = Field(
        0.0, ge=0.0, description="Test only: sleep this long before answering Score."
    )

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, domains: list[str]) -> list[str]:
        from fedgrpo.tasks import DOMAINS

        unknown = [d for d in domains if d not in DOMAINS]
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; known: {sorted(DOMAINS)}")
        return domains

    @model_validator(mode="after")
    def _judge_needed(self) -> RewardClientSettings:
        if self.ground_truth_free and not self.judge_model:
            raise ValueError(
                "ground_truth_free needs a judge model: set judge_model (--judge-model / "
                "FEDGRPO_REWARD_CLIENT_JUDGE_MODEL), or drop ground_truth_free"
            )
        return self
