"""Generated protobuf and gRPC code: made by scripts/gen_proto.py (make proto).

Do not edit: change protos/ and regenerate. Every message here lives in `POOL`, not in
protobuf's default descriptor pool, so these modules load next to other copies of the
`inference` protos (tritonclient, kserve). Pass `POOL` to anything that finds messages by
name, such as gRPC server reflection.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
