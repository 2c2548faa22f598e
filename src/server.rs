//! The accept loop and the serving threads (one single-threaded runtime per core): HTTP/1.1
//! connections with an armed header-read timeout, and graceful shutdown (stop accepting, drain
//! in-flight requests on every thread, bounded by the grace period).

use crate::upstream::{Lane, UpstreamCall};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::app::AppState;
use crate::handlers::handle;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// A refused client that does not read its 503 is not waited for longer than this.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves until `shutdown` resolves, then drains. The listener and the shutdown future are
/// arguments so tests can bind port 0 and stop the server when they like.
///
/// This thread accepts and serves, and `serving_threads - 1` more serve, each on its own
/// single-threaded runtime: a request is read, translated, sent upstream and answered on one
/// thread, without waking another (measured with bench/run on 2 cores: about 40 % more
/// requests per second than one shared multi-threaded runtime). Each new connection goes to
/// the thread with the fewest open ones, so a few long keep-alive clients spread evenly.
pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let hangups = reload_key_map_on_sighup(state.clone());
    // Undelivered webhooks from before a crash start going out at once.
    let delivery = tokio::spawn(crate::relay::deliver_forever(crate::relay::Delivery {
        relay: state.relay.clone(),
        upstream: state.upstream.clone(),
        delivery_seconds: state.metrics.delivery_seconds.clone(),
        settings: crate::relay::DeliverySettings::from_config(&state.config),
        clock: state.relay.clock().clone(),
    }));
    // The console's "recent" columns need counter snapshots also while nobody looks.
    let console = state.config.admin_token.is_some().then(|| {
        let state = state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                every.tick().await;
                crate::handlers::snapshot_console(&state);
            }
        })
    });
    let upkeep = tokio::spawn(crate::relay::maintain_forever(
        state.relay.clone(),
        crate::relay::Retention::from_config(&state.config),
    ));
    let (release, released) = watch::channel(false);
    let mut threads = vec![ServingThread::here()];
    let mut helpers = Vec::new();
    for index in 1..state.config.serving_threads {
        match spawn_serving_thread(index, &state, &released) {
            Ok((thread, helper)) => {
                threads.push(thread);
                helpers.push(helper);
            }
            Err(error) => warn!(%error, index, "serving thread not started; serving on fewer"),
        }
    }

    let graceful = accept_until(listener, &state, &threads, shutdown).await;
    // Closes the hand-over channels: each serving thread serves what is queued, then drains.
    drop(threads);
    state.shutting_down.store(true, Ordering::SeqCst);
    // Deliveries in flight are simply retried after the restart (at least once); on a shared
    // database their claims go back at once instead of when the lease ends.
    delivery.abort();
    upkeep.abort();
    if let Some(console) = console {
        console.abort();
    }
    // Stopped before its claims go back: no post of ours may still be on its way then.
    let _ = delivery.await;
    let _ = upkeep.await;
    hangups.abort();
    let _ = hangups.await;
    if let Err(error) = state.relay.db.release_claims(&state.relay.replica).await {
        warn!(%error, "claims not released; other replicas take them when the lease ends");
    }
    info!("shutting down: draining in-flight requests");
    let grace = state.config.shutdown_grace;
    tokio::select! {
        () = graceful.shutdown() => info!("all connections drained"),
        () = tokio::time::sleep(grace) => warn!(?grace, "grace period over, closing remaining connections"),
    }
    // They drain under the same grace period, started when this thread stopped accepting.
    for helper in &mut helpers {
        let _ = tokio::time::timeout(grace + HELPER_MARGIN, &mut helper.drained).await;
    }
    // Only now may their runtimes end: database connections they opened are driven there, and
    // this thread and the others used them until here.
    let _ = release.send(true);
    for helper in helpers {
        let _ = tokio::time::timeout(2 * HELPER_MARGIN, helper.finished).await;
    }
}

/// How much longer than the grace period a serving thread is waited for.
const HELPER_MARGIN: Duration = Duration::from_secs(2);

/// Counts a connection as open on its serving thread until dropped, however it ends.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn count(open: &Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An accepted connection on its way to the thread that will serve it. The permit counts it
/// against `--max-connections` until it closes.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    open: OpenConnection,
}

/// Where connections can be served, and how many each has open.
struct ServingThread {
    /// None: the accepting thread itself.
    handover: Option<mpsc::UnboundedSender<Accepted>>,
    open: Arc<AtomicUsize>,
}

impl ServingThread {
    fn here() -> ServingThread {
        ServingThread {
            handover: None,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// What the accepting thread keeps of a serving thread: one signal once it has drained, one
/// once it has dropped everything it held (the state among it).
struct Helper {
    drained: oneshot::Receiver<()>,
    finished: oneshot::Receiver<()>,
}

/// Serves HTTP/1.1 on `stream` in a task of the current runtime.
fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    open: OpenConnection,
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
    lane: Lane,
) {
    let mut builder = http1::Builder::new();
    // header_read_timeout does nothing without a timer.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        // Room for four times the header cap, so heads past it (a 64 KiB header, say) reach the
        // handler and get an On-Premise-shaped 431; only far larger ones get hyper's own bare
        // 431. Never more than 256 KiB, so hostile heads cannot grow a connection's buffer
        // without end whatever the cap is set to.
        .max_buf_size(
            state
                .config
                .max_header_bytes
                .saturating_mul(4)
                .clamp(8192, 256 * 1024),
        )
        // A client that sends its request and then shuts down its writing side still wants
        // its answer (RFC 9112, 9.6): without this, hyper took the half-close for a hang-up.
        .half_close(true)
        .keep_alive(true);
    let state = state.clone();
    // This connection's own upstream connection, kept between its requests.
    let affinity = Arc::new(state.upstream.affinity(lane));
    let service = service_fn(move |request| {
        handle(
            state.clone(),
            request,
            UpstreamCall::affine(lane, affinity.clone()),
        )
    });
    let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%peer, %error, "connection ended with an error");
        }
        drop((open, permit));
    });
}

/// Serves a connection that crossed threads as a plain socket.
fn serve_handed(
    accepted: Accepted,
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
    lane: Lane,
) {
    let Accepted {
        stream,
        peer,
        permit,
        open,
    } = accepted;
    match TcpStream::from_std(stream) {
        Ok(stream) => serve_connection(stream, peer, permit, open, state, graceful, lane),
        Err(error) => warn!(%peer, %error, "connection dropped: socket unusable"),
    }
}

/// Accepts until `shutdown` resolves, handing each connection to the serving thread with the
/// fewest open (`threads[0]`, this one, on a tie). Its own connections are then still open,
/// to be drained.
async fn accept_until(
    listener: TcpListener,
    state: &Arc<AppState>,
    threads: &[ServingThread],
    shutdown: impl Future<Output = ()>,
) -> GracefulShutdown {
    let connections = Arc::new(Semaphore::new(state.config.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    // Over the cap: a short On-Premise-shaped 503 instead of queueing or crashing.
                    tokio::spawn(refuse_connection(stream, state.config.meta.clone()));
                    continue;
                };
                let Some(thread) = threads.iter().min_by_key(|t| t.open.load(Ordering::Relaxed)) else {
                    continue;
                };
                let open = OpenConnection::count(&thread.open);
                let Some(handover) = &thread.handover else {
                    // The accepting thread serves with lane 0.
                    serve_connection(stream, peer, permit, open, state, &graceful, Lane(0));
                    continue;
                };
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(error) => {
                        warn!(%peer, %error, "connection dropped: socket unusable");
                        continue;
                    }
                };
                if let Err(mpsc::error::SendError(back)) = handover.send(Accepted { stream, peer, permit, open }) {
                    // That thread has ended (it never does on purpose): never chosen again,
                    // and this connection is served here.
                    warn!("a serving thread has ended; serving on the others");
                    thread.open.store(usize::MAX / 2, Ordering::Relaxed);
                    let open = OpenConnection::count(&threads[0].open);
                    serve_handed(Accepted { open, ..back }, state, &graceful, Lane(0));
                }
            }
            () = &mut shutdown => break,
        }
    }
    graceful
}

/// Starts serving thread `index`: it serves the connections handed to it until the channel
/// closes, drains them, and keeps its runtime until `released` turns true (or its sender is
/// dropped without that: the server's own future was dropped, and it stops at once).
fn spawn_serving_thread(
    index: usize,
    state: &Arc<AppState>,
    released: &watch::Receiver<bool>,
) -> std::io::Result<(ServingThread, Helper)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (handover, mut handed) = mpsc::unbounded_channel::<Accepted>();
    let thread = ServingThread {
        handover: Some(handover),
        open: Arc::new(AtomicUsize::new(0)),
    };
    let state = state.clone();
    let (mut release, mut gone) = (released.clone(), released.clone());
    let (drained, drained_signal) = oneshot::channel();
    let (finished, finished_signal) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("serving-{index}"))
        .spawn(move || {
            runtime.block_on(async move {
                let graceful = GracefulShutdown::new();
                let work = async {
                    while let Some(accepted) = handed.recv().await {
                        serve_handed(accepted, &state, &graceful, Lane(index));
                    }
                    let grace = state.config.shutdown_grace;
                    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
                    let _ = drained.send(());
                    let _ = release.wait_for(|released| *released).await;
                };
                let abandoned = async { while gone.changed().await.is_ok() {} };
                tokio::select! {
                    biased;
                    () = abandoned => {},
                    () = work => {},
                }
            });
            // Connections still open end here, and with them their hold on the state. Blocking
            // tasks (a database call, a DNS lookup) are not waited for past this.
            runtime.shutdown_timeout(HELPER_MARGIN);
            let _ = finished.send(());
        })?;
    let helper = Helper {
        drained: drained_signal,
        finished: finished_signal,
    };
    Ok((thread, helper))
}

/// Answers 503 with `Retry-After` on a connection over the cap, then closes it.
async fn refuse_connection(mut stream: tokio::net::TcpStream, meta: crate::translate::Meta) {
    use tokio::io::AsyncWriteExt;
    let body = crate::translate::errors::OnPremError::new(
        503,
        1011,
        "too many connections; retry shortly",
    )
    .to_body(&meta)
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ =
        tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// SIGHUP re-reads the key map; connections and sessions are untouched. The task is stopped
/// at shutdown, so nothing keeps the state (and the database) open after the server ends.
fn reload_key_map_on_sighup(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                warn!("cannot listen for SIGHUP: the key map will not be reloaded");
                return;
            };
            while hangups.recv().await.is_some() {
                match state.auth.reload() {
                    Ok(()) => info!("key map reloaded"),
                    Err(error) => {
                        warn!(%error, "key map not reloaded; the previous one stays in force")
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = state;
    })
}
