"""Protocol messages as the JSON Triton's HTTP API returns for them.

Triton writes a message (ModelConfig, model metadata, statistics) with protobuf's JSON
mapping under the .proto field names, every field printed even when it holds its default,
and 64-bit integers as JSON numbers where protobuf's mapping would quote them ("dims":
[1, 8, 8], not ["1", "8", "8"]); tritonclient.http and Triton's users read it so.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_WIDE = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)


def message_to_json(message: Message) -> dict[str, Any]:
    """`message` as a JSON object in Triton's form (see the module docstring)."""
    value = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _unquote(message.DESCRIPTOR, value)
    return value


def _unquote(descriptor: Descriptor, value: dict[str, Any]) -> None:
    # Turns the quoted 64-bit integers of `value` (a message of `descriptor`) back into
    # numbers, in place, down through nested messages, lists and maps.
    for field in descriptor.fields:
        if field.name not in value:
            continue
        item = value[field.name]
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            entry = message_type.fields_by_name["value"]
            value[field.name] = {key: _convert(entry, each) for key, each in item.items()}
        elif field.is_repeated:
            value[field.name] = [_convert(field, each) for each in item]
        else:
            value[field.name] = _convert(field, item)


def _convert(field: FieldDescriptor, item: Any) -> Any:
    # One value of `field`: a number for a 64-bit integer, a message converted within.
    if field.cpp_type in _WIDE:
        return int(item)
    if field.message_type is not None and isinstance(item, dict):
        _unquote(field.message_type, item)
    return item
