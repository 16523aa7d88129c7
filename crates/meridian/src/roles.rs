//! The long-running roles, each usable on its own (a process per role) or together (`dev`).

use std::net::SocketAddr;

use anyhow::Context;
use coordinator::store::CatalogStore;
use coordinator::CoordinatorService;
use meridian_proto::v1 as pb;
use tokio::sync::watch;
use tonic::transport::Server;
use tracing::info;

use crate::cli::{parse_peers, CentralArgs, CoordinatorArgs, RegionArgs};

/// A shutdown signal that flips on Ctrl-C or SIGTERM.
pub fn ctrl_c() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        tx.send_replace(true);
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        info!("shutting down");
        tx.send_replace(true);
    });
    rx
}

pub async fn coordinator(
    args: CoordinatorArgs,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let store =
        CatalogStore::open(&args.data_dir.join("catalog")).context("opening the catalog")?;
    let service = CoordinatorService::open_with_lease(
        store,
        None,
        std::time::Duration::from_millis(args.lease_ms.max(500)),
    )?;
    serve_coordinator(service, args.listen, shutdown).await
}

pub async fn serve_coordinator(
    service: CoordinatorService,
    listen: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the coordinator on {listen}"))?;
    info!(listen = %listen, "coordinator listening");
    // The standard gRPC health service: serving while the process is.
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", "meridian.v1.Coordinator"] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    Server::builder()
        .add_service(health_service)
        .add_service(pb::coordinator_server::CoordinatorServer::new(service))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = shutdown.changed().await;
            },
        )
        .await?;
    Ok(())
}

pub async fn central(args: CentralArgs, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let cfg = view_actor::worker::CentralConfig {
        coordinator: args.coordinator,
        data_dir: args.data_dir,
        name: args.name,
        log_retain: args.change_log_retain,
        metrics_listen: args.metrics_listen,
    };
    view_actor::worker::run(cfg, shutdown).await?;
    Ok(())
}

pub async fn region(args: RegionArgs, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let peers = parse_peers(&args.peers)?;
    let node_id = match args.node_id {
        Some(id) => id,
        None => {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .unwrap_or_default();
            crate::cli::node_id_from_hostname(&host).with_context(|| {
                format!(
                    "no --node-id, and the host name '{}' does not end in -N",
                    host.trim()
                )
            })?
        }
    };
    let own = peers
        .get(&node_id)
        .with_context(|| format!("--peers has no entry for node id {node_id}"))?
        .clone();
    let grpc_listen = match args.listen {
        Some(l) => l,
        None => {
            let port = own
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
                .with_context(|| format!("no port in '{own}'"))?;
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    regional_node::failpoints_from_env()?;
    let cfg = regional_node::RegionConfig {
        region: args.region,
        node_id,
        grpc_advertise: own,
        http_advertise: args
            .http_advertise
            .unwrap_or_else(|| format!("http://{}", args.http_listen)),
        peers,
        grpc_listen,
        http_listen: args.http_listen,
        data_dir: args.data_dir,
        coordinator: Some(args.coordinator),
        log_retain: args.raft_log_retain,
        query_limits: regional_node::query::QueryLimits {
            timeout: std::time::Duration::from_millis(args.query_timeout_ms),
            rows_max: args.query_rows_max,
            bytes_max: args.query_bytes_max,
        },
        replica_memory_max: Some(args.replica_memory_max),
    };
    regional_node::run(cfg, shutdown).await
}
