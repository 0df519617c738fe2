"""Generated code: made by scripts/gen_proto.py (make proto); do not edit."""
