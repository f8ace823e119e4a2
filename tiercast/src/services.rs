//! The long-running parts of a node as services (pingora's `Service` with a watch channel):
//! each is started with the shutdown signal of its stage, and [`Services::stop`] stops the
//! stages in order on Ctrl-C or SIGTERM:
//!
//! 1. [`Stage::Ingest`]: publishers are let go, so their sessions end (last segments,
//!    `stream.ended`, recordings closed).
//! 2. [`Stage::Archive`]: the archiver makes the recordings of what just ended, then stops
//!    (bounded: what it has not finished is archived at the next start).
//! 3. [`Stage::Serve`]: what serves and tells others (HTTP, cluster heartbeats) goes last.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// When a service stops, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Ingest,
    Archive,
    Serve,
}

const STAGES: [Stage; 3] = [Stage::Ingest, Stage::Archive, Stage::Serve];

impl Stage {
    /// How long the stage's services may take to stop.
    fn bound(self) -> Duration {
        match self {
            Stage::Archive => Duration::from_secs(60),
            Stage::Ingest | Stage::Serve => Duration::from_secs(15),
        }
    }
}

struct Running {
    stage: Stage,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

/// The services a node runs, by stage.
pub struct Services {
    stages: Vec<Running>,
}

impl Default for Services {
    fn default() -> Services {
        Services::new()
    }
}

impl Services {
    pub fn new() -> Services {
        Services {
            stages: STAGES
                .iter()
                .map(|&stage| Running {
                    stage,
                    stop: watch::channel(false).0,
                    tasks: Vec::new(),
                })
                .collect(),
        }
    }

    fn running(&mut self, stage: Stage) -> &mut Running {
        self.stages
            .iter_mut()
            .find(|r| r.stage == stage)
            .expect("every stage is set up in new()")
    }

    /// The signal the services of `stage` stop on.
    pub fn signal(&mut self, stage: Stage) -> watch::Receiver<bool> {
        self.running(stage).stop.subscribe()
    }

    /// Starts `service` (made with [`Services::signal`] of the same stage).
    pub fn spawn(
        &mut self,
        stage: Stage,
        name: &'static str,
        service: impl Future<Output = ()> + Send + 'static,
    ) {
        let task = tokio::spawn(service);
        self.running(stage).tasks.push((name, task));
    }

    /// Every service's name, in the order they stop.
    pub fn names(&self) -> Vec<&'static str> {
        self.stages
            .iter()
            .flat_map(|r| r.tasks.iter().map(|(name, _)| *name))
            .collect()
    }

    /// Stops the stages in order, each within its bound.
    pub async fn stop(self) {
        for running in self.stages {
            let _ = running.stop.send(true);
            let bound = running.stage.bound();
            for (name, task) in running.tasks {
                match tokio::time::timeout(bound, task).await {
                    Ok(Ok(())) => info!(service = name, "stopped"),
                    Ok(Err(e)) => warn!(service = name, "ended badly: {e}"),
                    Err(_) => warn!(service = name, "still busy after {bound:?}; left behind"),
                }
            }
        }
    }
}
