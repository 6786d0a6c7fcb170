//! A JSON-RPC 2.0 peer over a frame transport: the one implementation of request ids,
//! pending answers, deadlines and frame limits, used by the kernel for each service
//! connection and by [`crate::service`] inside services.
//!
//! A transport is a stream of text frames and a sink for them. [`line_transport`] frames
//! any byte stream (a Unix socket, an in-memory pipe) as newline-delimited JSON and
//! enforces the frame limit while reading, before a frame is allocated whole.
//! [`websocket_transport`] carries one frame per WebSocket text message.
//!
//! [`spawn`] starts a reader and a writer task and returns a [`Peer`] (to send requests,
//! notifications and answers) and the stream of [`Incoming`] calls from the other side.
//! Answers to this side's requests are matched by id inside the reader; frames that are
//! not JSON-RPC are answered with an error and never end the connection.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Decoder, FramedRead, FramedWrite, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use crate::protocol::service::{
    Frame, MAX_FRAME_BYTES, RpcError, RpcId, decode_frame, encode_notification, encode_request,
    encode_response, rpc_code,
};

/// Why a transport could not deliver a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("a frame exceeded the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("a binary frame arrived; frames are UTF-8 JSON text")]
    Binary,
    #[error("{0}")]
    Io(String),
}

/// Incoming text frames.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<String, TransportError>> + Send>>;
/// Outgoing text frames.
pub type FrameSink = Pin<Box<dyn Sink<String, Error = TransportError> + Send>>;

/// Frames a byte stream as newline-delimited text, refusing frames over `max_frame`
/// bytes while reading (the codec discards the rest of such a line and goes on).
pub fn line_transport<R, W>(read: R, write: W, max_frame: usize) -> (FrameStream, FrameSink)
where
    R: AsyncRead + Send + 'static,
    W: AsyncWrite + Send + 'static,
{
    let stream = FramedRead::new(read, Lines::new(max_frame)).map(|item| match item {
        Ok(Ok(line)) => Ok(line),
        Ok(Err(too_large)) => Err(too_large),
        Err(e) => Err(TransportError::Io(e.to_string())),
    });
    let sink = SinkExt::<String>::sink_map_err(FramedWrite::new(write, LinesCodec::new()), |e| {
        TransportError::Io(e.to_string())
    });
    (Box::pin(stream), Box::pin(sink))
}

/// `LinesCodec` that reports an oversized line as an item rather than an error: a
/// framed stream ends after its decoder's first error, and an oversized frame should
/// be refused without ending the connection.
struct Lines {
    inner: LinesCodec,
    limit: usize,
}

impl Lines {
    fn new(limit: usize) -> Self {
        Self {
            inner: LinesCodec::new_with_max_length(limit),
            limit,
        }
    }
}

impl Decoder for Lines {
    type Item = Result<String, TransportError>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        match self.inner.decode(buf) {
            Ok(line) => Ok(line.map(Ok)),
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                Ok(Some(Err(TransportError::TooLarge { limit: self.limit })))
            }
            Err(LinesCodecError::Io(e)) => Err(e),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        match self.inner.decode_eof(buf) {
            Ok(line) => Ok(line.map(Ok)),
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                Ok(Some(Err(TransportError::TooLarge { limit: self.limit })))
            }
            Err(LinesCodecError::Io(e)) => Err(e),
        }
    }
}

/// Frames a tokio-tungstenite WebSocket: one frame per text message. Pings are answered
/// by the library; a binary message is reported as [`TransportError::Binary`].
pub fn websocket_transport<S>(
    socket: tokio_tungstenite::WebSocketStream<S>,
) -> (FrameStream, FrameSink)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio_tungstenite::tungstenite::Message;
    let (sink, stream) = socket.split();
    let stream = stream.filter_map(|item| async move {
        match item {
            Ok(Message::Text(text)) => Some(Ok(text.as_str().to_owned())),
            Ok(Message::Binary(_)) => Some(Err(TransportError::Binary)),
            Ok(Message::Close(_)) => None,
            Ok(_) => None,
            Err(tokio_tungstenite::tungstenite::Error::Capacity(_)) => {
                Some(Err(TransportError::TooLarge {
                    limit: MAX_FRAME_BYTES,
                }))
            }
            Err(e) => Some(Err(TransportError::Io(e.to_string()))),
        }
    });
    let sink = sink
        .sink_map_err(|e| TransportError::Io(e.to_string()))
        .with(|text: String| async move { Ok::<_, TransportError>(Message::text(text)) });
    (Box::pin(stream), Box::pin(sink))
}

/// A call from the other side.
#[derive(Debug)]
pub enum Incoming {
    /// Answer it with [`Peer::respond`].
    Request {
        id: RpcId,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("the connection is closed")]
    Closed,
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("the request is {size} bytes, over the frame limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("{0}")]
    Remote(RpcError),
}

/// Why a notification was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error("the connection is closed")]
    Closed,
    #[error("the other side reads too slowly; the notification was dropped")]
    Full,
    #[error("the notification is over the frame limit")]
    TooLarge,
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, RpcError>>>>;

struct Inner {
    out: mpsc::Sender<String>,
    pending: Pending,
    next_id: AtomicU64,
    closed: CancellationToken,
    max_frame: usize,
}

/// This side of a connection. Cheap to clone.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("closed", &self.inner.closed.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Tuning of a peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerOptions {
    /// Largest frame this side sends.
    pub max_frame: usize,
    /// Outgoing frames queued before senders wait (notifications are dropped instead).
    pub outgoing_queue: usize,
    /// Incoming calls queued before the reader waits for the consumer.
    pub incoming_queue: usize,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            max_frame: MAX_FRAME_BYTES,
            outgoing_queue: 1024,
            incoming_queue: 256,
        }
    }
}

/// Starts the reader and writer tasks of a connection.
pub fn spawn(
    stream: FrameStream,
    sink: FrameSink,
    options: PeerOptions,
) -> (Peer, mpsc::Receiver<Incoming>) {
    let (out_tx, out_rx) = mpsc::channel(options.outgoing_queue.max(1));
    let (in_tx, in_rx) = mpsc::channel(options.incoming_queue.max(1));
    let inner = Arc::new(Inner {
        out: out_tx,
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        closed: CancellationToken::new(),
        max_frame: options.max_frame,
    });
    tokio::spawn(write_loop(sink, out_rx, inner.closed.clone()));
    tokio::spawn(read_loop(stream, in_tx, inner.clone()));
    (Peer { inner }, in_rx)
}

async fn write_loop(
    mut sink: FrameSink,
    mut out: mpsc::Receiver<String>,
    closed: CancellationToken,
) {
    // The peer learns the connection is over however this loop ends.
    let _closed = closed.clone().drop_guard();
    // A sink that failed once must not be polled again: its error mapping is
    // spent and the transport is gone anyway.
    let mut broken = false;
    loop {
        let frame = tokio::select! {
            () = closed.cancelled() => break,
            frame = out.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        if sink.feed(frame).await.is_err() {
            broken = true;
            break;
        }
        // Everything already queued goes out in one flush.
        while let Ok(frame) = out.try_recv() {
            if sink.feed(frame).await.is_err() {
                broken = true;
                break;
            }
        }
        if broken || sink.flush().await.is_err() {
            broken = true;
            break;
        }
    }
    if !broken {
        // Answers queued before the close still go out.
        while let Ok(frame) = out.try_recv() {
            if sink.feed(frame).await.is_err() {
                broken = true;
                break;
            }
        }
        if !broken {
            let _ = sink.close().await;
        }
    }
}

async fn read_loop(mut stream: FrameStream, incoming: mpsc::Sender<Incoming>, inner: Arc<Inner>) {
    loop {
        let item = tokio::select! {
            () = inner.closed.cancelled() => break,
            // Nobody takes calls any more: the connection is over.
            () = incoming.closed() => break,
            item = stream.next() => item,
        };
        let text = match item {
            None => break,
            Some(Ok(text)) => text,
            Some(Err(TransportError::Io(error))) => {
                tracing::debug!(%error, "connection read failed");
                break;
            }
            Some(Err(problem)) => {
                // Oversized and binary frames are refused but do not end the
                // connection: the codec has already skipped past them.
                let error = RpcError::new(rpc_code::INVALID_REQUEST, problem.to_string());
                let _ = inner.out.try_send(encode_response(None, &Err(error)));
                continue;
            }
        };
        match decode_frame(&text) {
            Ok(Frame::Response { id, result }) => {
                let waiter = match &id {
                    RpcId::Number(n) => inner
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(n),
                    RpcId::Text(_) => None,
                };
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(result);
                    }
                    None => tracing::debug!(%id, "answer to no pending request; ignored"),
                }
            }
            Ok(Frame::Request { id, method, params }) => {
                if incoming
                    .send(Incoming::Request { id, method, params })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(Frame::Notification { method, params }) => {
                if incoming
                    .send(Incoming::Notification { method, params })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(problem) => {
                let _ = inner
                    .out
                    .try_send(encode_response(problem.id.as_ref(), &Err(problem.error)));
            }
        }
    }
    inner.closed.cancel();
    let waiters: Vec<_> = inner
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect();
    drop(waiters);
}

impl Peer {
    /// Sends a request and waits for its answer, up to `timeout` (the wait for queue
    /// space included).
    pub async fn request(
        &self,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        self.request_with(method, params, timeout).await
    }

    /// [`Peer::request`] with params of any serializable type (serialized straight into
    /// the frame).
    pub async fn request_with<P: serde::Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let inner = &self.inner;
        if inner.closed.is_cancelled() {
            return Err(CallError::Closed);
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_request(id, method, params);
        if frame.len() > inner.max_frame {
            return Err(CallError::TooLarge {
                size: frame.len(),
                limit: inner.max_frame,
            });
        }
        let (tx, rx) = oneshot::channel();
        inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        // Removes the pending entry however this call ends, including when the caller
        // drops the future (a hook deadline in the kernel does exactly that).
        let _forget = Forget { inner, id };
        let exchange = async {
            inner.out.send(frame).await.map_err(|_| CallError::Closed)?;
            match rx.await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(CallError::Remote(error)),
                Err(_) => Err(CallError::Closed),
            }
        };
        tokio::select! {
            // An answer that arrived just before the close still counts.
            biased;
            result = tokio::time::timeout(timeout, exchange) => {
                result.unwrap_or(Err(CallError::Timeout(timeout.as_millis() as u64)))
            }
            () = inner.closed.cancelled() => Err(CallError::Closed),
        }
    }

    /// Sends a notification without waiting; drops it when the outgoing queue is full.
    pub fn notify(&self, method: &str, params: &Value) -> Result<(), NotifyError> {
        self.notify_frame(encode_notification(method, params))
    }

    /// Sends an already encoded notification (see [`Peer::notify`]).
    pub fn notify_frame(&self, frame: String) -> Result<(), NotifyError> {
        if frame.len() > self.inner.max_frame {
            return Err(NotifyError::TooLarge);
        }
        self.inner.out.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NotifyError::Full,
            mpsc::error::TrySendError::Closed(_) => NotifyError::Closed,
        })
    }

    /// Answers a request of the other side. An answer over the frame limit is replaced
    /// by an error saying so.
    pub async fn respond(&self, id: RpcId, result: Result<Value, RpcError>) {
        let mut frame = encode_response(Some(&id), &result);
        if frame.len() > self.inner.max_frame {
            let error = RpcError::new(
                rpc_code::INTERNAL_ERROR,
                format!(
                    "the answer is {} bytes, over the frame limit of {}",
                    frame.len(),
                    self.inner.max_frame
                ),
            );
            frame = encode_response(Some(&id), &Err(error));
        }
        let _ = self.inner.out.send(frame).await;
    }

    /// Closes the connection: pending requests fail with [`CallError::Closed`].
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Resolves when the connection is closed, by either side.
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await;
    }
}

struct Forget<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    fn pair() -> (
        (Peer, mpsc::Receiver<Incoming>),
        (Peer, mpsc::Receiver<Incoming>),
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let (s1, k1) = line_transport(ar, aw, 1024);
        let (s2, k2) = line_transport(br, bw, 1024);
        (
            spawn(s1, k1, PeerOptions::default()),
            spawn(s2, k2, PeerOptions::default()),
        )
    }

    #[tokio::test]
    async fn requests_are_answered_by_id_in_any_order() {
        let ((a, _a_in), (b, mut b_in)) = pair();
        let answerer = tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..2 {
                let Some(Incoming::Request { id, params, .. }) = b_in.recv().await else {
                    panic!("expected a request");
                };
                held.push((id, params));
            }
            // Answer in reverse order.
            for (id, params) in held.into_iter().rev() {
                b.respond(id, Ok(json!({"echo": params["n"]}))).await;
            }
        });
        let (one, two) = (json!({"n": 1}), json!({"n": 2}));
        let first = a.request("m", &one, Duration::from_secs(5));
        let second = a.request("m", &two, Duration::from_secs(5));
        let (first, second) = tokio::join!(first, second);
        assert_eq!(first.unwrap(), json!({"echo": 1}));
        assert_eq!(second.unwrap(), json!({"echo": 2}));
        answerer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_request_times_out_and_a_closed_peer_fails_fast() {
        let ((a, _a_in), (b, _b_in)) = pair();
        let err = a
            .request("m", &json!({}), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err, CallError::Timeout(50));
        b.close();
        a.closed().await;
        let err = a
            .request("m", &json!({}), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err, CallError::Closed);
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_get_errors_and_the_connection_lives_on() {
        let (raw, other) = tokio::io::duplex(1 << 16);
        let (pr, pw) = tokio::io::split(other);
        let (stream, sink) = line_transport(pr, pw, 64);
        let (_peer, mut incoming) = spawn(stream, sink, PeerOptions::default());
        let (rr, mut rw) = tokio::io::split(raw);
        let mut lines = BufReader::new(rr).lines();
        rw.write_all(b"hello there\n").await.unwrap();
        let reply: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(reply["error"]["code"], rpc_code::PARSE_ERROR);
        rw.write_all(format!("{}\n", "x".repeat(500)).as_bytes())
            .await
            .unwrap();
        let reply: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(reply["error"]["code"], rpc_code::INVALID_REQUEST);
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("64 bytes")
        );
        rw.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"ping\"}\n")
            .await
            .unwrap();
        let Some(Incoming::Request { id, method, .. }) = incoming.recv().await else {
            panic!("expected the request after the garbage");
        };
        assert_eq!((id, method.as_str()), (RpcId::Number(9), "ping"));
    }
}
