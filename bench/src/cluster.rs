//! `--cluster`: the load spread over the nodes of a Sluice cluster (issue 15), and what it
//! costs all of them (the nodes and NATS) together.
//!
//! Subscriber k connects to node k mod N and publisher k to node (k + 1) mod N, so with two
//! or more nodes most messages cross NATS. Before publishing, [`wait_for_interest`] makes sure
//! every node's subscriptions have reached NATS (a node subscribes in NATS a moment after the
//! SUBACK), so no message is counted lost for that.

use std::net::SocketAddr;
use std::time::{Duration, Instant as StdInstant};

use anyhow::{bail, Result};
use bytes::Bytes;
use sluice_codec::{Packet, Protocol, Publish, PublishProperties, QoS, TopicName};
use tokio::time::Instant;

use crate::conn::{Conn, ConnectOpts};
use crate::load::Outcome;
use crate::procfs;

/// (subscriber nodes, publisher nodes) for `nodes`: the same list, the second rotated by one.
/// Without `--cluster`, the target alone.
pub fn spread(target: SocketAddr, nodes: &[SocketAddr]) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    if nodes.is_empty() {
        return (vec![target], vec![target]);
    }
    let mut pubs = nodes.to_vec();
    pubs.rotate_left(1);
    (nodes.to_vec(), pubs)
}

/// Waits until each node's subscriptions made so far are known to NATS: a probe client on
/// node k subscribes to a topic of its own, and a client on another node publishes to it
/// (QoS 0, every 20 ms) until the probe receives one. A node sends its NATS subscriptions in
/// order on one connection, so the probe's arriving means the earlier ones are in place.
pub async fn wait_for_interest(
    nodes: &[SocketAddr],
    protocol: Protocol,
    run: &str,
    deadline: Instant,
) -> Result<()> {
    if nodes.len() < 2 {
        return Ok(());
    }
    for (k, node) in nodes.iter().enumerate() {
        let opts = |who: &str| ConnectOpts {
            client_id: format!("sb-{run}-probe-{who}{k}"),
            clean: true,
            session_expiry: None,
            keep_alive: 60,
        };
        let topic = format!("sluice-bench/probe/{run}/{k}");
        let (mut probe, _) = Conn::connect(*node, protocol, &opts("s"), deadline).await?;
        probe.subscribe(&topic, QoS::AtMostOnce, deadline).await?;
        let other = nodes[(k + 1) % nodes.len()];
        let (mut sender, _) = Conn::connect(other, protocol, &opts("p"), deadline).await?;
        loop {
            if Instant::now() >= deadline {
                bail!("node {node}: subscriptions did not reach NATS before the run's deadline");
            }
            sender.queue(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: TopicName::try_from(topic.as_str())
                    .map_err(|e| anyhow::anyhow!("{topic}: {e}"))?,
                pkid: 0,
                payload: Bytes::from_static(b"probe"),
                properties: PublishProperties::default(),
            }))?;
            sender.flush(deadline).await?;
            let step = (Instant::now() + Duration::from_millis(20)).min(deadline);
            // No packet within the step is not an error here: publish the next probe.
            if let Ok(Packet::Publish(_)) = probe.expect(step).await {
                break;
            }
        }
        let close = Instant::now() + Duration::from_secs(5);
        let _ = probe.disconnect(close).await;
        let _ = sender.disconnect(close).await;
    }
    Ok(())
}

/// CPU time of the cluster's processes over the measured part of a run.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: Vec<Option<f64>>,
    at: StdInstant,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            start: pids
                .iter()
                .map(|p| procfs::cpu_seconds(&p.to_string()))
                .collect(),
            at: StdInstant::now(),
        }
    }

    /// Adds `cluster_cpu_pct` and `cluster_cpu_us_per_msg` (for `delivered` messages).
    pub fn finish(self, out: &mut Outcome, delivered: u64, _elapsed_s: f64) {
        if self.pids.is_empty() {
            return;
        }
        let mut used = 0.0;
        for (pid, start) in self.pids.iter().zip(&self.start) {
            match (start, procfs::cpu_seconds(&pid.to_string())) {
                (Some(a), Some(b)) => used += b - a,
                _ => out
                    .notes
                    .push(format!("process {pid}: no CPU figures (gone?)")),
            }
        }
        let secs = self.at.elapsed().as_secs_f64();
        if secs > 0.0 {
            out.set("cluster_cpu_pct", used / secs * 100.0);
        }
        if delivered > 0 {
            out.set("cluster_cpu_us_per_msg", used * 1e6 / delivered as f64);
        }
    }
}
