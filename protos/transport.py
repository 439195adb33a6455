"""gRPC channel settings both sides must agree on: message-size limits and keepalive."""

from __future__ import annotations


def channel_options(max_message_mb: int) -> list[tuple[str, int]]:
    """Explicit message-size limits (never the silent 4 MB default) and matching keepalive."""
    limit = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]
