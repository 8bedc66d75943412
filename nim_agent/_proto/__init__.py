"""Generated protobuf modules (from proto/, by `make proto`). Do not edit."""
