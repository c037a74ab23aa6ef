//! SIGINT/SIGTERM during a drill: remember it, let the drill stop its server and remove its
//! scratch directory, then fail with [`super::VerifyError::Interrupted`] (exit 130).
//!
//! The drill's postmaster runs in a process group of its own, so the terminal's Ctrl-C reaches
//! only pgkeep; pgkeep then stops the server itself (immediate shutdown: the scratch copy is
//! thrown away, no shutdown checkpoint is worth its time).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::watch;

pub struct Interrupt {
    flag: Arc<AtomicBool>,
    rx: watch::Receiver<bool>,
    _tx: Option<watch::Sender<bool>>,
}

impl Interrupt {
    /// Never fires (library callers, tests).
    pub fn none() -> Interrupt {
        let (tx, rx) = watch::channel(false);
        Interrupt { flag: Arc::new(AtomicBool::new(false)), rx, _tx: Some(tx) }
    }

    /// Catch SIGINT and SIGTERM from now on (for the rest of the process).
    pub fn install(rt: &Handle) -> Interrupt {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, rx) = watch::channel(false);
        let flag = Arc::new(AtomicBool::new(false));
        let _guard = rt.enter();
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            tracing::warn!("cannot install a SIGINT handler; an interrupted drill may leave its scratch directory");
            return Interrupt { flag, rx, _tx: Some(tx) };
        };
        let f = flag.clone();
        rt.spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            f.store(true, Ordering::SeqCst);
            let _ = tx.send(true);
        });
        Interrupt { flag, rx, _tx: None }
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// Resolves once a signal arrived.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}
