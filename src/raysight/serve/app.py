"""The ingress deployment: OIP over gRPC and REST (serve/rest.py), the image API, health.

One deployment is the whole application, so every service routes without the `application`
metadata header in both Serve ingress modes. This class holds the replica's state (the
served model and settings, metrics, statistics), swaps checkpoints, and is the error
boundary; each RPC method is decode -> call -> encode over oip_service, images and health.
The batcher (serve/batching.py) is the only place inputs meet the model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight.allocator import retain_freed_memory
from raysight.logs import setup_logging
from raysight.serve import health, images, oip_service, rest
from raysight.serve.affinity import ReplicaAffinity, node_share
from raysight.serve.batch_policy import BatchLimits
from raysight.serve.batching import Batcher, PassReport, shorten_switch_interval
from raysight.serve.boundary import Boundary, set_status
from raysight.serve.errors import ModelNotFoundError, NotReadyError, Status
from raysight.serve.metrics import ServingMetrics
from raysight.serve.model import ServedModel, load_served_model, resolve_device
from raysight.serve.offload import Offloader
from raysight.serve.quality import top1_quality
from raysight.serve.settings import ServeSettings
from raysight.serve.statistics import Statistics

logger = logging.getLogger(__name__)


@serve.deployment(
    max_ongoing_requests=64,  # Serve's default of 5 would cap every batch at 5 requests
    ray_actor_options={"num_cpus": 1},
    health_check_period_s=5,
)
class InferenceServer:
    """Serves one checkpoint; `reconfigure` swaps it while requests keep flowing."""

    def __init__(self) -> None:
        setup_logging()
        shorten_switch_interval()  # the forward passes run in a thread beside the loop
        retain_freed_memory()  # each pass's activations reuse memory, not fresh pages
        self._model: ServedModel | None = None
        self._settings: ServeSettings | None = None
        self._metrics = ServingMetrics()
        self._stats = Statistics()
        self.boundary = Boundary(self._metrics, self._stats, lambda: self._model)
        # Keyed by the model each item was checked against: items queued across a swap
        # never share a pass with the other model's.
        self._batcher: Batcher[ServedModel] = Batcher(
            ServedModel.run,
            BatchLimits(),
            on_pass=self._record_pass,
            on_drop=lambda model: self._metrics.dropped.inc(tags=_tags(model)),
        )
        self._offload = Offloader()
        self._affinity = ReplicaAffinity()  # the cores this process may use, before pinning

    # ---- lifecycle ------------------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new settings; load a new checkpoint beside the old one, then switch.

        A checkpoint that fails to load or verify is refused, with the rest of that update:
        the previous model and settings stay, and the failure is logged and counted. On the
        first load there is nothing to keep, so the error propagates and Serve reports the
        replica unhealthy.
        """
        settings = ServeSettings.from_dict(user_config)
        old = self._model
        if (
            old is None
            or self._settings is None
            or _model_key(settings) != _model_key(self._settings)
        ):
            try:
                device = resolve_device(settings.device)
                new = await asyncio.to_thread(
                    load_served_model,
                    settings.checkpoint,
                    settings.model_name,
                    device,
                    settings.trust,
                )
            except Exception:
                self._metrics.checkpoint_failures.inc(tags={"model": old.name if old else ""})
                if old is None:
                    raise
                logger.exception(
                    "refused checkpoint %s; still serving %s version %s",
                    settings.checkpoint,
                    old.name,
                    old.version,
                )
                return
            self._model = new
            health.mark_ready(True)
            if old is not None and old.version != new.version:
                self._metrics.set_replaced(self._info_tags(old), _tags(old), old.engine.class_names)
            self._metrics.set_serving(self._info_tags(new))
            self._export_class_prior(new)
        self._settings = settings
        self._batcher.configure(settings.batch_limits)
        self._affinity.apply(settings.pin_cpus, *node_share())

    @staticmethod
    def _info_tags(model: ServedModel) -> dict[str, str]:
        return {
            "model": model.name,
            "version": model.version,
            "checkpoint_sha256": model.engine.manifest.weights_sha256,
        }

    def _export_class_prior(self, model: ServedModel) -> None:
        """Export the training class frequencies, the baseline a drift alert compares the
        predicted classes with; a checkpoint that does not record them exports none."""
        frequencies = model.engine.manifest.class_frequencies
        if frequencies is None:
            logger.info(
                "%s version %s records no class frequencies: no class prior exported",
                model.name,
                model.version,
            )
            return
        self._metrics.set_class_prior(_tags(model), model.engine.class_names, frequencies)

    def check_health(self) -> None:
        """Serve's replica health check: a replica without a model is unhealthy.

        Run every `health_check_period_s`, it also sets the model gauges again, which Ray
        would otherwise drop ~25 s after a load.
        """
        if self._model is None:
            raise RuntimeError("no model loaded")
        self._metrics.refresh()

    # ---- the batch --------------------------------------------------------------------------

    def _record_pass(self, report: PassReport[ServedModel]) -> None:
        model = report.key
        tags = _tags(model)
        for wait in report.queue_waits:
            self._metrics.queue_wait.observe(wait, tags=tags)
        self._metrics.compute.observe(report.compute_s, tags=tags)
        self._metrics.batch_size.observe(report.rows, tags=tags)
        # Every row, whatever outputs its request asked for: logits (N, K) -> top-1.
        quality = top1_quality(report.outputs["logits"], model.engine.class_names)
        self._metrics.record_predictions(tags, quality)
        self._stats.record_batch(report.rows, report.compute_s)

    # ---- Open Inference Protocol ------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=self._model is not None)

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, grpc_context: Any = None
    ) -> pb.ModelReadyResponse:
        with self.boundary.unary("ModelReady", grpc_context):
            self._resolve(request.name, request.version)
            return pb.ModelReadyResponse(ready=True)
        return pb.ModelReadyResponse()

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest
    ) -> pb.ServerMetadataResponse:
        return oip_service.server_metadata()

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, grpc_context: Any = None
    ) -> pb.ModelMetadataResponse:
        with self.boundary.unary("ModelMetadata", grpc_context):
            model = self._resolve(request.name, request.version)
            return oip_service.model_metadata(model, self._current_settings())
        return pb.ModelMetadataResponse()

    async def ModelConfig(  # noqa: N802
        self, request: pb.ModelConfigRequest, grpc_context: Any = None
    ) -> pb.ModelConfigResponse:
        with self.boundary.unary("ModelConfig", grpc_context):
            model = self._resolve(request.name, request.version)
            return oip_service.model_config(model, self._current_settings())
        return pb.ModelConfigResponse()

    async def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, grpc_context: Any = None
    ) -> pb.ModelStatisticsResponse:
        with self.boundary.unary("ModelStatistics", grpc_context):
            model = self._resolve(request.name, request.version)
            return pb.ModelStatisticsResponse(model_stats=[self._stats.to_proto(model)])
        return pb.ModelStatisticsResponse()

    async def RepositoryIndex(  # noqa: N802
        self, request: pb.RepositoryIndexRequest
    ) -> pb.RepositoryIndexResponse:
        return oip_service.repository_index(self._model)

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, grpc_context: Any = None
    ) -> pb.ModelInferResponse:
        with self.boundary.unary("ModelInfer", grpc_context):
            return await self._infer(request)
        return pb.ModelInferResponse()

    async def ModelStreamInfer(  # noqa: N802
        self, requests: AsyncIterator[pb.ModelInferRequest]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, in completion order, carrying the request's id; a
        failing request answers with its error message and the stream goes on (Triton's
        ModelStreamInferResponse)."""

        async def answer(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request))

        failed = oip_service.stream_failure
        async for response in self.boundary.stream("ModelStreamInfer", requests, answer, failed):
            yield response

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        model = self._resolve(request.model_name, request.model_version)
        settings = self._current_settings()
        wanted = oip_service.requested_outputs(request, model, settings)  # before the pass
        heavy = oip_service.is_heavy(request)
        inputs = await self._offload.run(heavy, oip_service.model_inputs, request, model, settings)
        outputs = await self._batcher.submit(model, inputs)
        response = oip_service.infer_response(request, model, wanted, outputs)
        self._metrics.images.inc(len(inputs), tags={**_tags(model), "method": "ModelInfer"})
        return response

    async def __call__(self, request: Request) -> Response:
        """KServe V2 REST on Serve's HTTP port (serve/rest.py), if the `rest` setting is on."""
        return await rest.handle(request, self, self._settings)

    # ---- image API ------------------------------------------------------------------------

    async def Classify(  # noqa: N802
        self, request: image_pb.ClassifyRequest, grpc_context: Any = None
    ) -> image_pb.ClassifyResponse:
        with self.boundary.unary("Classify", grpc_context):
            return await self._classify(request)
        return image_pb.ClassifyResponse(request_id=request.request_id)

    async def ClassifyStream(  # noqa: N802
        self, requests: AsyncIterator[image_pb.ClassifyRequest]
    ) -> AsyncIterator[image_pb.ClassifyResponse]:
        """One response per image, in completion order, carrying its request_id; a bad image
        gets `error` and the stream goes on."""
        failed = images.stream_failure
        answers = self.boundary.stream("ClassifyStream", requests, self._classify, failed)
        async for response in answers:
            yield response

    async def _classify(self, request: image_pb.ClassifyRequest) -> image_pb.ClassifyResponse:
        model = self._resolve(request.model_name, "")
        settings = self._current_settings()
        heavy = images.is_heavy(request)
        inputs = await self._offload.run(heavy, images.model_inputs, request, model, settings)
        probabilities = (await self._batcher.submit(model, inputs))["probabilities"][0]  # (K,)
        self._metrics.images.inc(1, tags={**_tags(model), "method": "Classify"})
        return images.classify_response(request, model, settings, probabilities)

    # ---- health -----------------------------------------------------------------------------

    async def Check(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, grpc_context: Any = None
    ) -> health_pb2.HealthCheckResponse:
        status = health.status(request.service, self._model is not None)
        if status is None:
            set_status(
                grpc_context,
                Status(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}"),
            )
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """Send the status now and again whenever it changes, until the client hangs up."""
        async for response in health.watch(request.service, lambda: self._model is not None):
            yield response

    # ---- helpers ----------------------------------------------------------------------------

    def _resolve(self, name: str, version: str) -> ServedModel:
        model = self._model
        if model is None:
            raise NotReadyError("model is loading; retry shortly")
        if name and name != model.name:
            raise ModelNotFoundError(f"unknown model {name!r}; this server serves {model.name!r}")
        if version and version != model.version:
            raise ModelNotFoundError(
                f"unknown version {version!r} of {model.name!r}; serving {model.version!r}"
            )
        return model

    def _current_settings(self) -> ServeSettings:
        if self._settings is None:
            raise NotReadyError("model is loading; retry shortly")
        return self._settings


def _model_key(settings: ServeSettings) -> tuple[object, ...]:
    """The settings that need the model reloaded when they change: a new pin or signer
    reloads the same path, so a checkpoint rewritten in place is picked up when the pin
    says so, and one served before a signature was required is checked again."""
    return settings.checkpoint, settings.trust, settings.model_name, settings.device


def _tags(model: ServedModel) -> dict[str, str]:
    return {"model": model.name, "version": model.version}


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry for `serve run` / `serve deploy` / RayService (import_path
    raysight.serve.app:app_builder).

    The settings belong in the deployment's `user_config` (see services/serve.yaml), which a
    config update changes in place. `args`, if given, are ServeSettings fields used as the
    user_config when the config file sets none (handy for `serve run ... checkpoint=DIR`).
    """
    if not args:
        return InferenceServer.bind()  # type: ignore[attr-defined]
    settings = ServeSettings.from_dict(dict(args))
    return InferenceServer.options(user_config=settings.to_dict()).bind()  # type: ignore[attr-defined]
