"""Configuration of one reward client (one domain organisation)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
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
