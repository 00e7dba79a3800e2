"""Generated code of the KServe v2 gRPC protocol (see oip_messages.proto for the command that made it)."""
