"""The orchestrator's public API: a thin gRPC shell over the run store,
the run executor and the rollout engine.

Every request is validated first; a bad one is answered INVALID_ARGUMENT
naming the field and the accepted range, an unknown run id NOT_FOUND, and
nothing in any run's state changes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import grpc

from fedgrpo import serving
from fedgrpo.tasks import DOMAINS
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import orchestrator_pb2_grpc as pb_grpc
from fedgrpo.v1 import policy_trainer_pb2_grpc as tpb_grpc

from . import dataset_api, generate_api
from .artifacts import ArtifactServer, chunk_size
from .clients import RewardClients
from .config import OrchestratorSettings
from .datasets import DatasetLibrary, QuestionDataset
from .fedmoa.exchange import AdapterExchange
from .paging import PageError, page
from .policy_weights import StreamedWeights, shared_weights
from .questions import QuestionBank
from .rollout import EngineLimitError, make_engine
from .run_loop import Policy, RunExecutor
from .runs import RunStore
from .spec import SpecError, resolve_spec, to_message

log = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # CreateRunRequest.request_id


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    def __init__(
        self,
        settings: OrchestratorSettings,
        store: RunStore,
        executor: RunExecutor,
        clients: RewardClients,
        policy: Policy,
        served_model: str,
        library: DatasetLibrary | None = None,
    ) -> None:
        self.settings, self.store, self.executor = settings, store, executor
        self.clients, self.policy, self.served_model = clients, policy, served_model
        self.library = library if library is not None else DatasetLibrary(settings.runs_dir / "datasets")
        self.create_lock = threading.Lock()  # a run is created and queued once, even by racing retries
        self.artifacts = ArtifactServer(store, settings.max_download_bytes, settings.max_concurrent_downloads,
                                        chunk_size(settings.max_message_bytes))

    def _run(self, run_id: str, context: grpc.ServicerContext) -> pb.Run:
        if not run_id:
            serving.invalid(context, "run_id", "must not be empty")
        run = self.store.get(run_id)
        if run is None:
            serving.not_found(context, f"run_id {run_id!r}: no such run")
        return run

    def CreateRun(self, request: pb.CreateRunRequest, context: grpc.ServicerContext) -> pb.Run:
        sent = request.spec.SerializeToString(deterministic=True)
        if request.request_id:
            if not REQUEST_ID.fullmatch(request.request_id):
                serving.invalid(context, "request_id", "expected 1 to 128 characters of A-Z a-z 0-9 . _ : - "
                                "(a UUID, say), unique per run the caller means to create")
            earlier = self.store.created_by(request.request_id)
            if earlier is not None:
                run_id, spec = earlier
                if spec != sent:
                    serving.refuse(context, grpc.StatusCode.ALREADY_EXISTS,
                                   f"request_id: {request.request_id!r} already created run {run_id} from another "
                                   "spec; use a new request_id for a new run", reason="REQUEST_ID_REUSED",
                                   field="request_id")
                log.info("run %s: CreateRun retried with request_id %s", run_id, request.request_id)
                return self.store.get(run_id)
        try:
            config = resolve_spec(
                request.spec, DOMAINS.keys(), self.served_model, {v.name: v.healthy for v in self.clients.views()},
                self.settings.max_model_len, graph_available=self.executor.router is not None,
                datasets={name: d.domains for name, d in self.library.datasets.items()},
            )
        except SpecError as err:
            serving.invalid(context, f"spec.{err.field}", str(err).split(": ", 1)[1])
        usable = [c for c in self.clients.usable(config.reward_clients) if c.healthy]
        if not any(common_pb2.EVALUATOR_KIND_MODEL_BASED in c.evaluator_kinds for c in usable):
            # Without a model-based judge, a task needs a client holding its labels.
            covered = {d for c in usable for d in c.domains}
            missing = [t for t in config.tasks if t not in covered]
            if missing:
                serving.invalid(context, "spec.tasks", f"no live reward client holds the data of {missing}")
        with self.create_lock:
            run = self.store.create(to_message(config), request.request_id, sent)
            if run.run_id in self.executor.configs:
                return run  # a retry that raced the first call, which queued it
            self.executor.submit(run.run_id, config)
        log.info("run %s created: %s", run.run_id, config.model_dump_json())
        return run

    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return self._run(request.run_id, context)

    def ListRuns(self, request: pb.ListRunsRequest, context: grpc.ServicerContext) -> pb.ListRunsResponse:
        states = set(request.states)
        for i, state in enumerate(request.states):
            if state not in pb.RunState.values() or state == pb.RUN_STATE_UNSPECIFIED:
                serving.invalid(context, f"states[{i}]", f"got {state}, expected a RunState other than UNSPECIFIED")
        runs = [r for r in self.store.list() if not states or r.state in states]
        try:
            chosen, token = page(runs, lambda r: r.run_id, request.page_size, request.page_token)
        except PageError as err:
            serving.invalid(context, err.field, err.problem)
        return pb.ListRunsResponse(runs=chosen, next_page_token=token)

    def CancelRun(self, request: pb.CancelRunRequest, context: grpc.ServicerContext) -> pb.Run:
        self._run(request.run_id, context)
        return self.store.request_cancel(request.run_id)

    def WatchRun(self, request: pb.WatchRunRequest, context: grpc.ServicerContext):
        self._run(request.run_id, context)
        if request.after_step < 0:
            serving.invalid(
                context, "after_step", f"got {request.after_step}, expected 0 (from the first event) or a step"
            )
        yield from self.store.follow(request.run_id, context.is_active, request.after_step)

    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> pb.GenerateResponse:
        return generate_api.generate(request, context, self.policy, self.executor, self.store,
                                     self.settings.max_model_len)

    def ListRewardClients(
        self, request: pb.ListRewardClientsRequest, context: grpc.ServicerContext
    ) -> pb.ListRewardClientsResponse:
        try:
            chosen, token = page(list(self.clients.clients), lambda c: c.name, request.page_size, request.page_token)
        except PageError as err:
            serving.invalid(context, err.field, err.problem)
        return pb.ListRewardClientsResponse(
            next_page_token=token,
            clients=[
                pb.RewardClientInfo(
                    name=c.name, address=c.address, domains=c.domains, evaluator_kinds=c.evaluator_kinds,
                    reward_min=c.reward_min, reward_max=c.reward_max, healthy=c.healthy,
                )
                for c in chosen
            ]
        )


    def ImportDataset(self, request_iterator, context: grpc.ServicerContext) -> pb.Dataset:  # type: ignore[no-untyped-def]
        dataset = dataset_api.import_dataset(
            self.library, request_iterator, context, self.settings.max_dataset_rows,
            self.settings.max_dataset_question_chars,
        )
        log.info("dataset %s imported: %d questions over %s", dataset.name, dataset.questions,
                 ",".join(d.domain for d in dataset.domains))
        return dataset

    def ListDatasets(self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext) -> pb.ListDatasetsResponse:
        names = sorted(self.library.datasets)
        return pb.ListDatasetsResponse(datasets=[dataset_api.dataset_message(self.library, n) for n in names])

    def GetDataset(self, request: pb.GetDatasetRequest, context: grpc.ServicerContext) -> pb.Dataset:
        return dataset_api.get_dataset(self.library, request.name, context)

    def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> pb.DeleteDatasetResponse:
        reply = dataset_api.delete_dataset(self.library, self.store, request.name, context)
        log.info("dataset %s deleted", request.name)
        return reply

    def DownloadRunArtifacts(self, request: pb.DownloadRunArtifactsRequest, context: grpc.ServicerContext):
        yield from self.artifacts.download(request, context)

    def GetConfidenceGraph(
        self, request: pb.GetConfidenceGraphRequest, context: grpc.ServicerContext
    ) -> pb.ConfidenceGraphView:
        router = self.executor.router
        if router is None:
            serving.failed_precondition(
                context, "this orchestrator runs without a confidence graph (--confidence-graph)"
            )
        router.probe_new_clients()
        confidence, clients = None, ()
        if request.run_id:  # the graph as that run sees it: its own online confidence, last completed step,
            clients = tuple(self._run(request.run_id, context).spec.reward_clients)  # the router over its clients
            last = self.store.last_step(request.run_id)
            confidence = dict(last.confidence_by_client) if last else {}
        graph_json, weights = router.snapshot(confidence)
        return pb.ConfidenceGraphView(
            graph_json=graph_json,
            competences=[
                pb.DomainCompetence(client=c, domain=d, accuracy=a)
                for c, per in sorted(weights.items()) for d, a in sorted(per.items())
            ],
            router_weights=[
                pb.RouterWeight(client=c, domain=d, weight=w)
                for c, per in sorted(router.router_domain_weights(clients).items()) for d, w in sorted(per.items())
            ],
        )


def start_engine(settings: OrchestratorSettings, model_dir: Path):
    """The rollout engine, or a ConfigError (one line, naming the flag) if it cannot start."""
    from fedgrpo.settings import ConfigError

    prog = "fedgrpo orchestrator"
    try:
        return make_engine(
            settings.backend, model_dir, device=settings.device, dtype=settings.dtype,
            max_model_len=settings.max_model_len, seed=settings.seed, kv_cache_gib=settings.vllm_kv_cache_gib,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
            cpu_threads_bind=settings.vllm_cpu_threads_bind,
            tensor_parallel_size=settings.vllm_tensor_parallel_size, max_lora_rank=settings.max_lora_rank,
        )
    except EngineLimitError as err:
        raise ConfigError(f"{prog}: {err}") from None
    except Exception as err:  # vLLM reports bad settings as many exception types
        # One line: vLLM's messages span several (pydantic lists each error below a header).
        first = " ".join(str(err).split())[:400] or type(err).__name__
        flags = "--model, --dtype, --device, --max-model-len, " + (
            "--vllm-kv-cache-gib" if settings.device == "cpu" else "--vllm-gpu-memory-utilization"
        )
        raise ConfigError(
            f"{prog}: the {settings.backend} engine could not start with model {str(model_dir)!r} "
            f"({type(err).__name__}: {first}); check --backend {settings.backend} and {flags}"
        ) from None


def registered_datasets(settings: OrchestratorSettings) -> dict[str, QuestionDataset]:
    """The --dataset files, read once at start; a file that cannot be used refuses the start."""
    from fedgrpo.data.files import DataFileError
    from fedgrpo.settings import ConfigError

    from .datasets import load_dataset

    datasets = {}
    for name, path in settings.dataset.items():
        started = time.monotonic()
        try:
            dataset = load_dataset(
                name, Path(path), settings.dataset_instruction.get(name, ""), settings.dataset_system.get(name)
            )
        except DataFileError as err:
            raise ConfigError(
                f"fedgrpo orchestrator: dataset (--dataset / FEDGRPO_ORCHESTRATOR_DATASET): {name}: {err}"
            ) from None
        log.info(
            "dataset %s: %d questions over %s from %s%s (%.1fs)", name, len(dataset), ",".join(dataset.domains),
            path, f"; {dataset.repeated} repeated questions dropped" if dataset.repeated else "",
            time.monotonic() - started,
        )
        datasets[name] = dataset
    return datasets


def main(argv: list[str] | None = None) -> None:
    import threading

    from transformers import AutoTokenizer

    from fedgrpo.models import resolve_model
    from fedgrpo.security import read_tokens
    from fedgrpo.settings import ConfigError, load, setup_logging
    from fedgrpo.v1 import federation_pb2_grpc as fpb_grpc

    from .federation import FederationServicer

    settings = load(OrchestratorSettings, argv)
    setup_logging(settings.log_level, "orchestrator", settings.log_format)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    try:
        model_dir = resolve_model(settings.model, settings.cache_dir)
    except ValueError as err:
        raise ConfigError(f"fedgrpo orchestrator: model: {err}") from None
    identity = settings.identity()
    tokens = read_tokens(settings.api_tokens_file) if settings.api_tokens_file else frozenset()
    library = DatasetLibrary(settings.runs_dir / "datasets", registered_datasets(settings))
    started = time.monotonic()
    engine = start_engine(settings, model_dir)
    # From here on max_model_len is the engine's (derived from the model when not given).
    settings = settings.model_copy(update={"max_model_len": engine.max_model_len})
    log.info("%s engine up in %.1fs", engine.name, time.monotonic() - started)
    trainer = tpb_grpc.PolicyTrainerServiceStub(
        serving.channel(settings.trainer, identity, max_message_bytes=settings.max_message_bytes)
    )
    weights = shared_weights if settings.weights_transfer == "shared" else StreamedWeights(
        trainer, settings.weights_dir or settings.runs_dir / "_weights", Path(model_dir)
    )
    policy = Policy(
        engine, AutoTokenizer.from_pretrained(model_dir), Path(model_dir), threading.Lock(),
        common_pb2.PolicyVersion(version=0, weights_path=str(model_dir)), weights,
    )
    clients = RewardClients(
        settings.reward_clients, identity, heartbeat_timeout=settings.heartbeat_seconds * settings.heartbeat_misses,
        bench_seconds=settings.slow_client_bench_seconds, max_open_tasks=settings.max_open_tasks_per_client,
    )
    try:
        serving.wait_healthy(settings.trainer, settings.client_wait_seconds, identity=identity)
    except TimeoutError as err:
        log.warning("trainer %s: %s; runs wait until it answers", settings.trainer, err)
    if settings.reward_clients:
        clients.wait_for_all(settings.client_wait_seconds)
    clients.start_health_checks()
    store = RunStore(settings.runs_dir, settings.database)
    clients.known_joined(store.federation.load_clients())
    clients.on_join.append(lambda client: store.federation.save_client(client.name, clients.member_record(client)))
    router = None
    if settings.confidence_graph:
        from .auxiliary import auxiliary_items
        from .embedding import make_embedder
        from .routing import ExpertRouter

        started = time.monotonic()
        # Clients that join later may hold any domain: without dialed clients, probe on every domain.
        dialed = [c for c in clients.clients if not c.joined]
        domains = settings.auxiliary_domains or sorted({d for c in dialed for d in c.domains}) or sorted(DOMAINS)
        try:
            embedder = make_embedder(settings.embedding, model_dir, settings.device, settings.dtype)
        except ValueError as err:
            raise ConfigError(f"fedgrpo orchestrator: embedding: {err}") from None
        if settings.auxiliary is not None:
            from fedgrpo.data.files import DataFileError

            from .auxiliary import auxiliary_items_from_file

            try:
                items = auxiliary_items_from_file(settings.auxiliary, settings.auxiliary_size)
            except DataFileError as err:
                raise ConfigError(
                    f"fedgrpo orchestrator: auxiliary (--auxiliary / FEDGRPO_ORCHESTRATOR_AUXILIARY): {err}"
                ) from None
            domains = sorted({i.domain for i in items})
        else:
            items = auxiliary_items(domains, settings.auxiliary_size, settings.bank_seed, settings.bank_size)
        router = ExpertRouter(
            clients, embedder, items, settings.neighbours, settings.probe_timeout_seconds, store,
            reprobe_seconds=settings.reprobe_seconds,
        )
        router.probe_new_clients()
        clients.on_join.append(lambda _client: router.probe_new_clients())
        log.info("confidence graph: %d auxiliary items over %s%s, built in %.1fs", len(items), ",".join(domains),
                 f" from {settings.auxiliary}" if settings.auxiliary else "", time.monotonic() - started)
    exchange = AdapterExchange()  # parameter-exchange runs meet their clients here (fedmoa, fedavg_lora)
    executor = RunExecutor(
        store, clients, policy, trainer,
        QuestionBank(
            settings.bank_seed, settings.bank_size, frozenset(router.graph.items()) if router else frozenset(),
            library.datasets,
        ),
        router, trainer_retry_seconds=settings.trainer_retry_seconds, client_wait_seconds=settings.client_wait_seconds,
        exchange=exchange,
    )
    servicer = OrchestratorServicer(settings, store, executor, clients, policy, settings.model, library)
    endpoints = [
        serving.Endpoint(
            [(pb_grpc.add_OrchestratorServiceServicer_to_server, servicer, "fedgrpo.v1.OrchestratorService")],
            settings.port, client_auth=False, tokens=tokens,
        )
    ]
    if settings.federation_port:
        federation = FederationServicer(
            clients, settings.heartbeat_seconds, settings.reward_client_identities, settings.plaintext,
            join_rate_limit=settings.join_rate_limit, exchange=exchange,
        )
        endpoints.append(
            serving.Endpoint(
                [(fpb_grpc.add_FederationServiceServicer_to_server, federation, "fedgrpo.v1.FederationService")],
                settings.federation_port, allowed_peers=settings.reward_client_identities,
                allowed_roles=["reward_client"],
                port_field="federation_port",
            )
        )
    executor.resume_interrupted()

    def stop() -> None:
        executor.stop()
        clients.close()
        engine.close()

    serving.serve(settings, endpoints, on_stop=stop, max_workers=32)
