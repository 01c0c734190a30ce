"""Per-node Prometheus metrics.

Each node owns its own `CollectorRegistry` rather than the process-wide default one, because tests and
the simulator run several nodes in one process and their counters must not mix. Label values are drawn
from small fixed vocabularies (message kinds, reject reasons), never from peer-controlled strings, so a
hostile peer cannot blow up the number of time series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Commit latency spans sub-second loopback rounds to multi-minute rounds across regions.
COMMIT_LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LABEL_CHARS_MAX = 40


def safe_label(value: str) -> str:
    """Clamp a label value so a bad caller cannot create unbounded series names."""
    cleaned = "".join(c if c.isalnum() or c in "_-." else "_" for c in value[:LABEL_CHARS_MAX])
    return cleaned or "unknown"


class NodeMetrics:
    """Every metric one node exports; the daemon, transport and admin server update these fields."""

    def __init__(self, node: str = "", region: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Info("moeswarm_node", "Identity of this node", registry=r)
        self.info.info({"node": node, "region": region})
        # round protocol and consensus
        self.rounds_committed = Counter("moeswarm_rounds_committed", "Rounds committed by this node", registry=r)
        self.round = Gauge("moeswarm_round", "Last committed round", registry=r)
        self.view = Gauge("moeswarm_view", "Current PBFT view", registry=r)
        self.epoch = Gauge("moeswarm_epoch", "Current membership epoch", registry=r)
        self.members = Gauge("moeswarm_members", "Replicas in the current membership", registry=r)
        self.commit_latency = Histogram(
            "moeswarm_commit_latency_seconds", "From round start to its commit on this node",
            buckets=COMMIT_LATENCY_BUCKETS_S, registry=r,
        )
        self.view_changes = Counter("moeswarm_view_changes", "View changes seen", registry=r)
        self.deltas_rejected = Counter(
            "moeswarm_deltas_rejected", "Peer deltas refused by validation", ["reason"], registry=r
        )
        # training
        self.training_tokens = Counter("moeswarm_training_tokens", "Tokens trained on by this node", registry=r)
        self.train_loss = Gauge("moeswarm_train_loss", "Last inner-step training loss (nats/token)", registry=r)
        self.heldout_bpb = Gauge("moeswarm_heldout_bpb", "Held-out bits per byte of the committed model", registry=r)
        self.training_paused = Gauge("moeswarm_training_paused", "1 while training is paused", registry=r)
        self.experts_owned = Gauge("moeswarm_experts_owned", "Experts this node trains", registry=r)
        # transport
        self.peers_connected = Gauge("moeswarm_peers_connected", "Admitted peers with an open connection", registry=r)
        self.bytes_sent = Counter("moeswarm_bytes_sent", "Bytes sent to peers", ["kind"], registry=r)
        self.bytes_received = Counter("moeswarm_bytes_received", "Bytes received from peers", ["kind"], registry=r)
        self.messages_sent = Counter("moeswarm_messages_sent", "Messages sent to peers", ["kind"], registry=r)
        self.messages_received = Counter(
            "moeswarm_messages_received", "Messages accepted from peers", ["kind"], registry=r
        )
        self.messages_rejected = Counter(
            "moeswarm_messages_rejected", "Peer messages dropped before delivery", ["reason"], registry=r
        )
        self.messages_dropped = Counter(
            "moeswarm_messages_dropped", "Outgoing messages dropped (queue full, peer absent)", ["reason"], registry=r
        )
        self.admissions = Counter("moeswarm_admissions", "Peers admitted by the cluster-key handshake", registry=r)
        self.admissions_refused = Counter(
            "moeswarm_admissions_refused", "Handshakes refused", ["reason"], registry=r
        )
        self.reconnects = Counter("moeswarm_reconnects", "Redials of an address after a failure or a lost link", registry=r)
        self.blobs_served = Counter("moeswarm_blobs_served", "Blobs served over HTTP", registry=r)
        self.blob_fetch_failures = Counter(
            "moeswarm_blob_fetch_failures", "Blob fetches that failed", ["reason"], registry=r
        )
        # data volume
        self.store_bytes = Gauge(
            "moeswarm_store_bytes", "Bytes on disk in the chunk store (checkpoints, delta blobs), after the last collection",
            registry=r,
        )
        self.store_chunks = Gauge("moeswarm_store_chunks", "Chunks in the chunk store after the last collection",
                                  registry=r)
        self.store_bytes_collected = Counter(
            "moeswarm_store_bytes_collected", "Bytes freed by chunk-store collection", registry=r
        )
        # admin
        self.admin_requests = Counter(
            "moeswarm_admin_requests", "Admin HTTP requests", ["route", "status"], registry=r
        )

    def count_sent(self, kind: str, nbytes: int) -> None:
        self.messages_sent.labels(kind=safe_label(kind)).inc()
        self.bytes_sent.labels(kind=safe_label(kind)).inc(nbytes)

    def count_received(self, kind: str, nbytes: int) -> None:
        self.messages_received.labels(kind=safe_label(kind)).inc()
        self.bytes_received.labels(kind=safe_label(kind)).inc(nbytes)

    def count_rejected(self, reason: str) -> None:
        self.messages_rejected.labels(reason=safe_label(reason)).inc()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value (0 when never set); for status pages and tests."""
        sample = self.registry.get_sample_value(name, labels or {})
        return 0.0 if sample is None else sample

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
