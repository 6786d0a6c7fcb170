//! HTTP client for the kernel's public API: `POST /aoscp`, `GET /events`, `GET /health`.

use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::protocol::{Envelope, ErrorBody, Event, Health};

/// Where the kernel listens when nothing else says so.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8420";

/// Everything that can go wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the AOS kernel at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the AOS kernel at {url} answered HTTP {status} without an AOS envelope: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the reply from {url} could not be decoded: {message}")]
    Decode { url: String, message: String },
    #[error("params for `{op}` must serialize to a JSON object, got {got}")]
    ParamsNotObject { op: String, got: String },
    #[error("{0}")]
    Syscall(ErrorBody),
}

impl ClientError {
    /// The syscall error, when the kernel answered with one.
    pub fn syscall(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Syscall(body) => Some(body),
            _ => None,
        }
    }
}

/// Filters for [`Client::events`].
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    /// Name patterns: exact names, or prefixes ending in `*` (`session.*`).
    pub names: Vec<String>,
    /// Resume after this event id.
    pub last_event_id: Option<u64>,
}

/// A client for one kernel, with one bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl Client {
    /// A client for `base_url` (e.g. `http://127.0.0.1:8420`) using `token`.
    pub fn new(base_url: impl Into<String>, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self::with_http(http, base_url, token)
    }

    /// A client sharing an existing `reqwest::Client` (and its connection pool).
    pub fn with_http(
        http: reqwest::Client,
        base_url: impl Into<String>,
        token: Option<String>,
    ) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self {
            http,
            base_url,
            token,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Calls `op` with `params` (a JSON object) and returns the envelope as sent by the
    /// kernel, whether `ok` or not. Only transport failures are errors.
    pub async fn call(&self, op: &str, params: Value) -> Result<Envelope, ClientError> {
        let mut body = match params {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                return Err(ClientError::ParamsNotObject {
                    op: op.to_owned(),
                    got: json_kind(&other).to_owned(),
                });
            }
        };
        body.insert("op".to_owned(), Value::String(op.to_owned()));
        let url = format!("{}/aoscp", self.base_url);
        let response = self
            .authorized(self.http.post(&url))
            .json(&body)
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.clone(),
                source,
            })?;
        serde_json::from_slice::<Envelope>(&bytes).map_err(|_| ClientError::Http {
            url,
            status,
            body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
        })
    }

    /// Calls `op` and decodes its data as `R`; a failed envelope becomes
    /// [`ClientError::Syscall`].
    pub async fn call_ok<R: DeserializeOwned>(
        &self,
        op: &str,
        params: impl Serialize,
    ) -> Result<R, ClientError> {
        let params = serde_json::to_value(params).map_err(|e| ClientError::Decode {
            url: self.base_url.clone(),
            message: e.to_string(),
        })?;
        let envelope = self.call(op, params).await?;
        let data = envelope.into_result().map_err(ClientError::Syscall)?;
        serde_json::from_value(data).map_err(|e| ClientError::Decode {
            url: self.base_url.clone(),
            message: format!("data of `{op}`: {e}"),
        })
    }

    /// `GET /aoscp`: every operation the kernel routes, its own and those services
    /// registered.
    pub async fn operations(&self) -> Result<Vec<crate::protocol::OpDescription>, ClientError> {
        self.get_json("/aoscp", true).await
    }

    /// `GET /health` (needs no token).
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get_json("/health", false).await
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        with_token: bool,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let request = self.http.get(&url);
        let request = if with_token {
            self.authorized(request)
        } else {
            request
        };
        let connect = |source| ClientError::Connect {
            url: url.clone(),
            source,
        };
        let response = request.send().await.map_err(connect)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(connect)?;
        serde_json::from_slice(&bytes).map_err(|_| ClientError::Http {
            url: url.clone(),
            status,
            body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
        })
    }

    /// Subscribes to `GET /events`. The stream ends when the kernel closes it.
    pub async fn events(
        &self,
        filter: &EventFilter,
    ) -> Result<impl Stream<Item = Result<Event, ClientError>> + use<>, ClientError> {
        let url = format!("{}/events", self.base_url);
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(agent) = &filter.agent_id {
            query.push(("agentId", agent.clone()));
        }
        if let Some(session) = &filter.session_id {
            query.push(("sessionId", session.clone()));
        }
        if !filter.names.is_empty() {
            query.push(("names", filter.names.join(",")));
        }
        let mut request = self.authorized(self.http.get(&url)).query(&query);
        if let Some(last) = filter.last_event_id {
            request = request.header("Last-Event-ID", last.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        if status != 200 {
            let bytes = response.bytes().await.unwrap_or_default();
            if let Ok(envelope) = serde_json::from_slice::<Envelope>(&bytes)
                && let Some(error) = envelope.error
            {
                return Err(ClientError::Syscall(error));
            }
            return Err(ClientError::Http {
                url,
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            });
        }
        let decode_url = url.clone();
        let stream =
            eventsource_stream::EventStream::new(response.bytes_stream()).filter_map(move |item| {
                let url = decode_url.clone();
                async move {
                    match item {
                        Ok(sse) if sse.data.is_empty() => None,
                        Ok(sse) => Some(serde_json::from_str::<Event>(&sse.data).map_err(|e| {
                            ClientError::Decode {
                                url,
                                message: format!("event `{}`: {e}", sse.event),
                            }
                        })),
                        Err(e) => Some(Err(ClientError::Decode {
                            url,
                            message: e.to_string(),
                        })),
                    }
                }
            });
        Ok(stream)
    }

    /// Starts a dispatch: `session.dispatch` with a user message. `queue` waits behind a
    /// running dispatch instead of failing with `session.busy`.
    pub async fn dispatch(
        &self,
        session_id: &str,
        content: &str,
        queue: bool,
    ) -> Result<crate::protocol::DispatchStarted, ClientError> {
        let mut params = serde_json::json!({
            "sessionId": session_id,
            "message": {"role": "user", "content": content},
        });
        if queue {
            params["ifBusy"] = Value::String("queue".into());
        }
        self.call_ok("session.dispatch", params).await
    }

    /// `GET /dispatches/{id}/stream`: the dispatch's events from its start, ending after
    /// `done`.
    pub async fn dispatch_events(
        &self,
        dispatch_id: &str,
    ) -> Result<impl Stream<Item = Result<crate::protocol::StreamEvent, ClientError>>, ClientError>
    {
        let url = format!("{}/dispatches/{dispatch_id}/stream", self.base_url);
        let response = self
            .authorized(self.http.get(&url))
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        if status != 200 {
            let bytes = response.bytes().await.unwrap_or_default();
            if let Ok(envelope) = serde_json::from_slice::<Envelope>(&bytes)
                && let Some(error) = envelope.error
            {
                return Err(ClientError::Syscall(error));
            }
            return Err(ClientError::Http {
                url,
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            });
        }
        let decode_url = url.clone();
        Ok(
            eventsource_stream::EventStream::new(response.bytes_stream()).filter_map(move |item| {
                let url = decode_url.clone();
                async move {
                    match item {
                        Ok(sse) if sse.data.is_empty() => None,
                        Ok(sse) => Some(
                            crate::protocol::StreamEvent::from_sse(&sse.event, &sse.data).map_err(
                                |e| ClientError::Decode {
                                    url,
                                    message: format!("event `{}`: {e}", sse.event),
                                },
                            ),
                        ),
                        Err(e) => Some(Err(ClientError::Decode {
                            url,
                            message: e.to_string(),
                        })),
                    }
                }
            }),
        )
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
