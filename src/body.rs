//! Body types that flow through the proxy, and the streaming bodies media needs: an upload
//! wrapped in Cloud's multipart framing, and a download relayed (gzip-decoded if need be) to the
//! client. Both stream: no body is ever collected whole.

use std::future::Future;
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzDecoder;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Every body the proxy sends, to clients or upstream.
pub type ProxyBody = UnsyncBoxBody<Bytes, io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Why a client's upload stopped before it was complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadFailure {
    /// More bytes than the media type allows (known only while streaming chunked bodies).
    TooLarge { limit: u64 },
    /// The client's body ended or broke before its declared `Content-Length`.
    Incomplete,
    /// A chunked body that ended without a byte: On-Premise refused empty media.
    Empty,
}

/// Shared between the streaming body and the handler: the body records why it failed, the
/// handler reads it after the upstream exchange ends, so a cut-off upload is never a success.
#[derive(Debug, Clone, Default)]
pub struct UploadOutcome(Arc<Mutex<Option<UploadFailure>>>);

impl UploadOutcome {
    pub fn failure(&self) -> Option<UploadFailure> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn fail(&self, failure: UploadFailure) -> io::Error {
        let message = format!("{failure:?}");
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(failure);
        io::Error::other(message)
    }
}

/// When bytes last moved in a media transfer, so a transfer that stalls in either direction can
/// be ended long before its overall deadline.
#[derive(Clone, Debug)]
pub struct Activity {
    since: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            since: Instant::now(),
            last_ms: Arc::default(),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// `head`, then the client's bytes (counted against `limit`), then `tail`.
pub struct MultipartUpload {
    head: Option<Bytes>,
    file: Incoming,
    tail: Option<Bytes>,
    received: u64,
    limit: u64,
    declared: Option<u64>,
    outcome: UploadOutcome,
    activity: Activity,
}

impl MultipartUpload {
    pub fn new(
        head: Bytes,
        file: Incoming,
        tail: Bytes,
        limit: u64,
        declared: Option<u64>,
        outcome: UploadOutcome,
        activity: Activity,
    ) -> Self {
        MultipartUpload {
            head: Some(head),
            file,
            tail: Some(tail),
            received: 0,
            limit,
            declared,
            outcome,
            activity,
        }
    }
}

impl Body for MultipartUpload {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if this.tail.is_none() {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.file).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers from the client have no place inside a multipart part.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.received += data.len() as u64;
                    this.activity.touch();
                    if this.received > this.limit {
                        let failure = UploadFailure::TooLarge { limit: this.limit };
                        return Poll::Ready(Some(Err(this.outcome.fail(failure))));
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(_))) => {
                    return Poll::Ready(Some(Err(this.outcome.fail(UploadFailure::Incomplete))));
                }
                Poll::Ready(None) => {
                    if this.declared.is_some_and(|d| d != this.received) {
                        return Poll::Ready(Some(Err(this
                            .outcome
                            .fail(UploadFailure::Incomplete))));
                    }
                    if this.received == 0 {
                        return Poll::Ready(Some(Err(this.outcome.fail(UploadFailure::Empty))));
                    }
                    let tail = this.tail.take().unwrap_or_default();
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.tail.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // With an exact hint hyper sends Content-Length instead of chunked encoding.
        match (&self.head, self.declared, &self.tail) {
            (Some(head), Some(declared), Some(tail)) => {
                SizeHint::with_exact(head.len() as u64 + declared + tail.len() as u64)
            }
            _ => SizeHint::default(),
        }
    }
}

/// Media bytes on their way from upstream to the client: decoded when gzip-encoded, checked
/// against the length promised to the client, and cut off at the transfer deadline. Any failure
/// is an error, so hyper aborts the response rather than end it as if it were complete.
pub struct MediaDownload {
    upstream: Incoming,
    gzip: Option<GzDecoder<Vec<u8>>>,
    promised: Option<u64>,
    sent: u64,
    deadline: Pin<Box<Sleep>>,
    /// How long upstream may leave us waiting for the next bytes.
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    /// Whether the last poll left us waiting on upstream (the idle timer runs only then: a
    /// slow client that does not ask for more is not an idle upstream).
    waiting: bool,
    done: bool,
}

impl MediaDownload {
    pub fn new(
        upstream: Incoming,
        gzip: bool,
        promised: Option<u64>,
        deadline: Instant,
        idle: Duration,
    ) -> Self {
        MediaDownload {
            upstream,
            gzip: gzip.then(|| GzDecoder::new(Vec::new())),
            promised,
            sent: 0,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            done: false,
        }
    }

    fn emit(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.sent += data.len() as u64;
        if self.promised.is_some_and(|p| self.sent > p) {
            return self.fail("upstream sent more bytes than its declared length");
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn fail(&mut self, why: &str) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.done = true;
        Poll::Ready(Some(Err(io::Error::other(why.to_owned()))))
    }
}

impl Body for MediaDownload {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return this.fail("media transfer deadline passed");
        }
        if !this.waiting {
            let next = Instant::now() + this.idle;
            this.idle_timer.as_mut().reset(next);
        }
        loop {
            this.waiting = false;
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Pending => {
                    this.waiting = true;
                    if this.idle_timer.as_mut().poll(cx).is_ready() {
                        return this.fail("upstream sent nothing within the media idle timeout");
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(_))) => {
                    return this.fail("upstream broke off the media transfer")
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let Some(decoder) = this.gzip.as_mut() else {
                        return this.emit(data);
                    };
                    if decoder.write_all(&data).is_err() {
                        return this.fail("upstream sent corrupt gzip data");
                    }
                    let decoded = std::mem::take(decoder.get_mut());
                    if decoded.is_empty() {
                        continue;
                    }
                    return this.emit(Bytes::from(decoded));
                }
                Poll::Ready(None) => {
                    let mut rest = Vec::new();
                    if let Some(decoder) = this.gzip.take() {
                        match decoder.finish() {
                            Ok(tail) => rest = tail,
                            Err(_) => return this.fail("upstream sent truncated gzip data"),
                        }
                    }
                    if !rest.is_empty() {
                        return this.emit(Bytes::from(rest));
                    }
                    if this.promised.is_some_and(|p| this.sent != p) {
                        return this.fail("upstream ended the media before its declared length");
                    }
                    this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.promised {
            Some(p) => SizeHint::with_exact(p.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}
