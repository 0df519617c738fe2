"""The committed generated code matches protos/ and speaks Triton's wire format.

tritonclient ships its own generated copy of Triton's protos; it is the independent reference
here: same names, same numbers, and messages that cross between the two copies unchanged.
"""

from __future__ import annotations

import importlib.util
import pickle
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as tritonclient
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from tritonclient.grpc import _utils as triton_utils
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton

from raysight._proto import POOL
from raysight._proto.inference import grpc_service_pb2 as oip
from raysight._proto.inference import model_config_pb2 as config
from raysight._proto.raysight.v1 import image_service_pb2 as v1
from raysight.codec.oip import decode_inputs
from tests.conftest import REPO

COMMITTED = REPO / "src" / "raysight" / "_proto"


def _gen_proto() -> ModuleType:
    # scripts/ is not a package: load the script by path.
    spec = importlib.util.spec_from_file_location("gen_proto", REPO / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(root: Path) -> set[Path]:
    return {
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }


# --- drift -------------------------------------------------------------------------------


def test_committed_code_is_what_the_protos_generate(tmp_path: Path) -> None:
    fresh = tmp_path / "_proto"
    written = set(_gen_proto().generate(fresh))
    assert written == _files(COMMITTED), "generated files differ: run `make proto`"
    for rel in sorted(written):
        assert (COMMITTED / rel).read_bytes() == (fresh / rel).read_bytes(), (
            f"{rel} is out of date with protos/: run `make proto`"
        )


def test_generation_is_deterministic(tmp_path: Path) -> None:
    gen = _gen_proto()
    first, second = tmp_path / "a", tmp_path / "b"
    assert gen.generate(first) == gen.generate(second)
    for rel in _files(first):
        assert (first / rel).read_bytes() == (second / rel).read_bytes()


def test_check_mode_lists_drifted_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = _gen_proto()
    copy = tmp_path / "_proto"
    shutil.copytree(COMMITTED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert gen.main(["--check", str(copy)]) == 0

    edited = copy / "inference" / "model_config_pb2.py"
    edited.write_text(edited.read_text() + "# edited by hand\n")
    (copy / "stray_pb2.py").write_text("")
    assert gen.main(["--check", str(copy)]) == 1
    err = capsys.readouterr().err
    assert f"{edited}: differs" in err
    assert "stray_pb2.py: not generated" in err
    assert "make proto" in err


# --- descriptors -------------------------------------------------------------------------


def test_service_names_are_the_published_ones() -> None:
    service = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
    ]
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    assert stream.output_type.full_name == "inference.ModelStreamInferResponse"

    images = v1.DESCRIPTOR.services_by_name["ImageService"]
    assert images.full_name == "raysight.v1.ImageService"
    assert [m.name for m in images.methods] == ["Classify", "ClassifyStream"]
    assert images.methods_by_name["ClassifyStream"].client_streaming
    assert images.methods_by_name["ClassifyStream"].server_streaming


def test_key_field_numbers() -> None:
    def number(message: type[Message], field: str) -> int:
        return message.DESCRIPTOR.fields_by_name[field].number

    assert number(oip.ModelInferRequest, "raw_input_contents") == 7
    assert number(oip.ModelInferResponse, "raw_output_contents") == 6
    assert number(oip.ModelInferRequest.InferInputTensor, "contents") == 5
    assert number(oip.ModelStreamInferResponse, "infer_response") == 2
    assert number(config.ModelConfig, "max_batch_size") == 4
    assert number(config.ModelConfig, "backend") == 17
    dynamic = config.ModelConfig.DESCRIPTOR.fields_by_name["dynamic_batching"]
    assert dynamic.number == 11
    assert dynamic.containing_oneof is not None
    assert dynamic.containing_oneof.name == "scheduling_choice"
    assert config.DataType.Value("TYPE_FP32") == 11
    assert config.DataType.Value("TYPE_STRING") == 13
    assert [f.number for f in v1.ClassifyResponse.DESCRIPTOR.fields] == [1, 2, 3, 4, 5]


def _assert_enum_matches(ours: EnumDescriptor, theirs: EnumDescriptor) -> None:
    for value in ours.values:
        assert theirs.values_by_name[value.name].number == value.number, value.full_name


def _assert_message_matches(ours: Descriptor, theirs: Descriptor) -> None:
    # Every field we declare exists in Triton's message with the same number, type,
    # cardinality, oneof and referenced type; the fields we leave out are simply absent.
    assert ours.full_name == theirs.full_name
    for field in ours.fields:
        other = theirs.fields_by_name.get(field.name)
        assert other is not None, f"{field.full_name}: not in Triton's protos"
        assert (field.number, field.type, field.is_repeated) == (
            other.number,
            other.type,
            other.is_repeated,
        ), field.full_name
        ours_oneof = field.containing_oneof.name if field.containing_oneof else None
        their_oneof = other.containing_oneof.name if other.containing_oneof else None
        assert ours_oneof == their_oneof, field.full_name
        if field.message_type is not None:
            assert other.message_type is not None
            _assert_message_matches(field.message_type, other.message_type)
        if field.enum_type is not None:
            assert other.enum_type is not None
            assert field.enum_type.full_name == other.enum_type.full_name
            _assert_enum_matches(field.enum_type, other.enum_type)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(oip.DESCRIPTOR, triton.DESCRIPTOR), (config.DESCRIPTOR, triton_config.DESCRIPTOR)],
    ids=["grpc_service", "model_config"],
)
def test_every_element_matches_tritonclient(ours: FileDescriptor, theirs: FileDescriptor) -> None:
    for name, message in ours.message_types_by_name.items():
        _assert_message_matches(message, theirs.message_types_by_name[name])
    for name, enum in ours.enum_types_by_name.items():
        _assert_enum_matches(enum, theirs.enum_types_by_name[name])
    for name, service in ours.services_by_name.items():
        their_service = theirs.services_by_name[name]
        for method in service.methods:
            other = their_service.methods_by_name[method.name]
            assert method.input_type.full_name == other.input_type.full_name
            assert method.output_type.full_name == other.output_type.full_name
            assert method.client_streaming == other.client_streaming
            assert method.server_streaming == other.server_streaming


def test_loads_next_to_tritonclient() -> None:
    # tritonclient owns "inference.*" in protobuf's default pool; ours live in POOL, so both
    # copies load in one process.
    default = descriptor_pool.Default()
    assert default.FindMessageTypeByName("inference.ModelInferRequest").file.name == (
        "grpc_service.proto"
    )
    assert oip.ModelInferRequest.DESCRIPTOR.file.pool is POOL
    assert POOL.FindMessageTypeByName("raysight.v1.ClassifyRequest") is (
        v1.ClassifyRequest.DESCRIPTOR
    )


def test_messages_pickle() -> None:
    # Ray moves requests between processes with pickle, which finds classes by module name.
    request = oip.ModelInferRequest(model_name="digits", raw_input_contents=[b"\x01\x02"])
    assert pickle.loads(pickle.dumps(request)) == request
    classify = v1.ClassifyRequest(image=b"png", top_k=3, request_id="r1")
    assert pickle.loads(pickle.dumps(classify)) == classify


# --- the wire ----------------------------------------------------------------------------


def _dict(message: Message) -> dict[str, object]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _across(theirs: Message, ours_type: type[Message]) -> Message:
    """Parse Triton's message with our class and back; both ways lose nothing."""
    ours = ours_type.FromString(theirs.SerializeToString())
    # MessageToDict skips unknown fields, so equal dicts mean ours understood every field.
    assert _dict(ours) == _dict(theirs)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )
    assert type(theirs).FromString(ours.SerializeToString()) == theirs
    return ours


def test_raw_infer_request_from_tritonclient() -> None:
    images = np.arange(2 * 1 * 8 * 8, dtype=np.uint8).reshape(2, 1, 8, 8)
    scale = np.array([[0.5], [2.0]], dtype=np.float32)
    inputs = [
        tritonclient.InferInput("images", list(images.shape), "UINT8"),
        tritonclient.InferInput("scale", list(scale.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(images)
    inputs[1].set_data_from_numpy(scale)
    # What InferenceServerClient.infer sends.
    request = triton_utils._get_inference_request(
        model_name="digits",
        inputs=inputs,
        model_version="1",
        request_id="req-7",
        outputs=[tritonclient.InferRequestedOutput("logits")],
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=3,
        timeout=1000,
        parameters={"note": "x", "flag": True, "count": 2, "ratio": 0.25},
    )
    ours = _across(request, oip.ModelInferRequest)
    assert len(ours.raw_input_contents) == 2
    assert ours.parameters["priority"].uint64_param == 3
    assert ours.parameters["ratio"].double_param == 0.25
    assert [o.name for o in ours.outputs] == ["logits"]
    arrays = decode_inputs(ours, max_batch_size=8)
    np.testing.assert_array_equal(arrays["images"], images)
    np.testing.assert_array_equal(arrays["scale"], scale)


def test_typed_infer_request_both_ways() -> None:
    tensor = triton.ModelInferRequest.InferInputTensor(
        name="x",
        datatype="FP32",
        shape=[1, 3],
        contents=triton.InferTensorContents(fp32_contents=[1.0, 2.5, -3.0]),
    )
    contents = triton.InferTensorContents(
        bool_contents=[True],
        int_contents=[-1],
        int64_contents=[-(2**40)],
        uint_contents=[7],
        uint64_contents=[2**63],
        fp64_contents=[1e300],
        bytes_contents=[b"a", b""],
    )
    request = triton.ModelInferRequest(
        model_name="m",
        inputs=[tensor, triton.ModelInferRequest.InferInputTensor(name="all", contents=contents)],
    )
    ours = _across(request, oip.ModelInferRequest)
    assert list(ours.inputs[0].contents.fp32_contents) == [1.0, 2.5, -3.0]
    assert list(ours.inputs[1].contents.uint64_contents) == [2**63]
    back = _across(ours, triton.ModelInferRequest)  # and from ours to Triton's
    assert back.inputs[1].contents.bytes_contents == [b"a", b""]


def test_infer_and_stream_responses() -> None:
    response = oip.ModelInferResponse(
        model_name="digits",
        model_version="1",
        id="req-7",
        outputs=[oip.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=[1])],
        raw_output_contents=[np.float32(0.5).tobytes()],
    )
    response.parameters["batch"].int64_param = 1
    _across(response, triton.ModelInferResponse)
    stream = oip.ModelStreamInferResponse(error_message="bad", infer_response=response)
    _across(stream, triton.ModelStreamInferResponse)


def test_model_config_response() -> None:
    model = triton_config.ModelConfig(
        name="digits",
        platform="pytorch_libtorch",
        backend="python",
        max_batch_size=64,
        version_policy=triton_config.ModelVersionPolicy(
            latest=triton_config.ModelVersionPolicy.Latest(num_versions=1)
        ),
        input=[
            triton_config.ModelInput(
                name="images",
                data_type=triton_config.TYPE_UINT8,
                format=triton_config.ModelInput.FORMAT_NCHW,
                dims=[1, 8, 8],
                reshape=triton_config.ModelTensorReshape(shape=[64]),
                optional=True,
                allow_ragged_batch=True,
            )
        ],
        output=[
            triton_config.ModelOutput(
                name="logits",
                data_type=triton_config.TYPE_FP32,
                dims=[10],
                label_filename="labels.txt",
                is_shape_tensor=False,
            )
        ],
        instance_group=[
            triton_config.ModelInstanceGroup(
                name="gpu", kind=triton_config.ModelInstanceGroup.KIND_GPU, count=2, gpus=[0, 1]
            )
        ],
        default_model_filename="model.safetensors",
        dynamic_batching=triton_config.ModelDynamicBatching(
            preferred_batch_size=[16, 32],
            max_queue_delay_microseconds=2000,
            preserve_ordering=True,
            default_queue_policy=triton_config.ModelQueuePolicy(
                timeout_action=triton_config.ModelQueuePolicy.DELAY, max_queue_size=128
            ),
            priority_queue_policy={1: triton_config.ModelQueuePolicy(max_queue_size=8)},
        ),
        parameters={"classes": triton_config.ModelParameter(string_value="10")},
        model_transaction_policy=triton_config.ModelTransactionPolicy(decoupled=False),
    )
    ours = _across(triton.ModelConfigResponse(config=model), oip.ModelConfigResponse)
    assert ours.config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert ours.config.input[0].data_type == config.TYPE_UINT8


def test_repository_index_response() -> None:
    index = triton.RepositoryIndexResponse(
        models=[
            triton.RepositoryIndexResponse.ModelIndex(name="digits", version="1", state="READY"),
            triton.RepositoryIndexResponse.ModelIndex(
                name="cats", version="2", state="UNAVAILABLE", reason="loading"
            ),
        ]
    )
    ours = _across(index, oip.RepositoryIndexResponse)
    assert [m.state for m in ours.models] == ["READY", "UNAVAILABLE"]


def test_model_statistics_response() -> None:
    def duration(count: int) -> triton.StatisticDuration:
        return triton.StatisticDuration(count=count, ns=count * 1000)

    stats = triton.ModelStatistics(
        name="digits",
        version="1",
        last_inference=1_700_000_000_000,
        inference_count=40,
        execution_count=5,
        inference_stats=triton.InferStatistics(
            success=duration(5),
            fail=duration(1),
            queue=duration(5),
            compute_input=duration(5),
            compute_infer=duration(5),
            compute_output=duration(5),
            cache_hit=duration(0),
            cache_miss=duration(2),
        ),
        batch_stats=[
            triton.InferBatchStatistics(
                batch_size=8,
                compute_input=duration(5),
                compute_infer=duration(5),
                compute_output=duration(5),
            )
        ],
        memory_usage=[triton.MemoryUsage(type="GPU", id=0, byte_size=1 << 20)],
        response_stats={"0": triton.InferResponseStatistics(success=duration(5))},
    )
    response = triton.ModelStatisticsResponse(model_stats=[stats])
    ours = _across(response, oip.ModelStatisticsResponse)
    assert ours.model_stats[0].inference_stats.cache_miss.ns == 2000
    assert ours.model_stats[0].batch_stats[0].batch_size == 8


def test_metadata_responses() -> None:
    tensor = triton.ModelMetadataResponse.TensorMetadata
    metadata = triton.ModelMetadataResponse(
        name="digits",
        versions=["1"],
        platform="raysight",
        inputs=[tensor(name="images", datatype="UINT8", shape=[-1, 1, 8, 8])],
        outputs=[tensor(name="logits", datatype="FP32", shape=[-1, 10])],
    )
    _across(metadata, oip.ModelMetadataResponse)
    server = triton.ServerMetadataResponse(name="raysight", version="0.1.0", extensions=["a"])
    _across(server, oip.ServerMetadataResponse)
    _across(triton.ModelReadyRequest(name="digits", version="1"), oip.ModelReadyRequest)
