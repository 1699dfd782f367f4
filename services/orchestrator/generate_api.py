"""The Generate RPC of the public API: completions of a chosen policy.

``generate(request, context, policy, executor, store, max_model_len)``
validates the request (each field named in INVALID_ARGUMENT), brings the
engine to the policy the request names and answers with the version that
did. ``wanted_policy`` reads the choice: neither ``run_id`` nor
``policy_version``: whatever the engine serves now; ``policy_version`` 0: the
base model; ``run_id``: that run's latest policy, from the trainer's snapshot
or, once that is gone, the run's exported ``model/`` folder
(FAILED_PRECONDITION when neither is kept, or for another version). While a
run trains, the engine is that run's: a request for another policy is
FAILED_PRECONDITION, never answered by the wrong weights.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import grpc

from fedgrpo import serving
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as pb

from .rollout import SamplingSettings
from .run_loop import Policy, RunExecutor
from .runs import RunStore

log = logging.getLogger(__name__)

MAX_GENERATE_PROMPTS = 256
MAX_PROMPT_CHARS = 16_384


def same_policy(a: common_pb2.PolicyVersion, b: common_pb2.PolicyVersion) -> bool:
    """The same weights: the same run's same version, or the base model (version 0 of any run)."""
    return (a.version == 0 and b.version == 0) or (a.run_id, a.version) == (b.run_id, b.version)



def generate(
    request: pb.GenerateRequest, context: grpc.ServicerContext, policy: Policy, executor: RunExecutor,
    store: RunStore, max_model_len: int,
) -> pb.GenerateResponse:
    """One Generate call (see the module docstring)."""
    n = request.n if request.HasField("n") else 1
    temperature = request.temperature if request.HasField("temperature") else 0.0
    top_p = request.top_p if request.HasField("top_p") else 1.0
    max_tokens = request.max_tokens if request.HasField("max_tokens") else 48
    if not 1 <= len(request.prompts) <= MAX_GENERATE_PROMPTS:
        serving.invalid(context, "prompts", f"got {len(request.prompts)}, expected 1 to {MAX_GENERATE_PROMPTS}")
    for i, p in enumerate(request.prompts):
        if not p or len(p) > MAX_PROMPT_CHARS:
            serving.invalid(context, f"prompts[{i}]", f"expected 1 to {MAX_PROMPT_CHARS} characters")
    if not 1 <= n <= 64:
        serving.invalid(context, "n", f"got {n}, expected 1 to 64")
    if not (math.isfinite(temperature) and 0 <= temperature <= 5):
        serving.invalid(context, "temperature", f"got {temperature}, expected 0 (greedy) to 5")
    if not 0 < top_p <= 1:
        serving.invalid(context, "top_p", f"got {top_p}, expected in (0, 1]")
    if not 1 <= max_tokens < max_model_len:
        serving.invalid(context, "max_tokens", f"got {max_tokens}, expected 1 to {max_model_len - 1}")
    if len(request.system) > MAX_PROMPT_CHARS:
        serving.invalid(context, "system", f"expected at most {MAX_PROMPT_CHARS} characters")
    if request.system and request.raw_prompts:
        serving.invalid(context, "system", "not used with raw_prompts: put it in the raw prompt text")
    ids = [policy.prompt_ids(p, request.system or None, raw=request.raw_prompts) for p in request.prompts]
    for i, p in enumerate(ids):
        if len(p) + max_tokens > max_model_len:
            serving.invalid(
                context, f"prompts[{i}]", f"{len(p)} tokens + max_tokens exceed max_model_len {max_model_len}"
            )
    wanted = wanted_policy(request, context, policy, executor, store)
    with policy.lock:
        if wanted is not None and not same_policy(wanted, policy.loaded):
            if executor.active is not None:
                serving.failed_precondition(
                    context, f"run {executor.active} is training: the engine serves its policy until it "
                    "ends; ask without run_id and policy_version, or once it has ended")
            seconds = policy.load(wanted)
            log.info("Generate: engine loaded %s version %d (%.1fs)", wanted.run_id or "the base model",
                     wanted.version, seconds)
        groups = policy.engine.generate(ids, SamplingSettings(n, temperature, top_p, max_tokens))
        version = common_pb2.PolicyVersion()
        version.CopyFrom(policy.loaded)
    return pb.GenerateResponse(
        results=[
            pb.GeneratedCompletions(
                completions=[pb.Completion(text=c.text, num_tokens=len(c.token_ids)) for c in g]
            )
            for g in groups
        ],
        policy=version,
    )

def wanted_policy(
    request: pb.GenerateRequest, context: grpc.ServicerContext, policy: Policy, executor: RunExecutor, store: RunStore,
) -> common_pb2.PolicyVersion | None:
    """The policy a Generate names (run_id, policy_version), with the folder to load it from; None: any."""
    if not request.run_id and not request.HasField("policy_version"):
        return None
    base = common_pb2.PolicyVersion(version=0, weights_path=str(policy.base_dir))
    if request.HasField("policy_version") and request.policy_version < 0:
        serving.invalid(context, "policy_version", f"got {request.policy_version}, expected 0 or more")
    if not request.run_id:
        if request.policy_version != 0:
            serving.invalid(context, "policy_version", f"got {request.policy_version} without run_id: only 0 (the "
                            "base model); give run_id for a run's policy")
        return base
    run = store.get(request.run_id)
    if run is None:
        serving.not_found(context, f"run_id {request.run_id!r}: no such run")
    latest = run.policy
    if request.HasField("policy_version") and request.policy_version == 0:
        return base
    if request.HasField("policy_version") and request.policy_version != latest.version:
        serving.failed_precondition(
            context, f"policy_version: run {run.run_id} keeps only its latest policy for serving, version "
            f"{latest.version}; ask for that, or 0 (the base model)")
    if run.run_id == executor.active or latest.version == 0:
        return None if run.run_id == executor.active else base
    folder = Path(latest.weights_path)
    if not (folder / "config.json").is_file():
        exported = Path(run.artifacts_path) / "model"
        if not (exported / "config.json").is_file():
            serving.failed_precondition(
                context, f"run_id: the weights of run {run.run_id} version {latest.version} are no longer kept "
                f"(neither {latest.weights_path} nor {exported} holds them)")
        folder = exported
    wanted = common_pb2.PolicyVersion()
    wanted.CopyFrom(latest)
    wanted.weights_path = str(folder)
    return wanted

