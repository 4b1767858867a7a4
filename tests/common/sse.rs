//! A client of `GET /v1/subscribe`: reads the Server-Sent Events stream message by message.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::Server;

/// One SSE message: its event name, id and data.
#[derive(Debug, Clone)]
pub struct Message {
    pub event: String,
    pub id: Option<u64>,
    pub data: Value,
}

/// A client reading an SSE stream.
pub struct Subscriber {
    response: reqwest::Response,
    buffer: String,
}

impl Subscriber {
    /// Subscribes with `s`'s own client.
    pub async fn open(s: &Server, query: &str, last_event_id: Option<u64>) -> Subscriber {
        Subscriber::open_with(s, &s.client, query, last_event_id).await
    }

    /// Subscribes with `client` (another token's, say).
    pub async fn open_with(
        s: &Server,
        client: &reqwest::Client,
        query: &str,
        last_event_id: Option<u64>,
    ) -> Subscriber {
        let mut request = client.get(s.url(&format!("/v1/subscribe{query}")));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Subscriber {
            response,
            buffer: String::new(),
        }
    }

    /// Reads a response to a subscription made otherwise.
    pub fn from_response(response: reqwest::Response) -> Subscriber {
        Subscriber {
            response,
            buffer: String::new(),
        }
    }

    /// The next message (keep-alive comments skipped), `None` at the end of the stream; fails
    /// if none comes within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Message> {
        self.try_next(within)
            .await
            .unwrap_or_else(|()| panic!("no message within {within:?}"))
    }

    /// As [`Subscriber::next`], but `Err(())` if nothing came within `within`.
    pub async fn try_next(&mut self, within: Duration) -> Result<Option<Message>, ()> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut m = Message {
                    event: "message".to_owned(),
                    id: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        v.trim().clone_into(&mut m.event);
                    } else if let Some(v) = line.strip_prefix("id:") {
                        m.id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                m.data = serde_json::from_str(&data).unwrap();
                return Ok(Some(m));
            }
            let chunk = tokio::time::timeout(within, self.response.chunk())
                .await
                .map_err(|_| ())?;
            match chunk {
                Ok(Some(bytes)) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                Ok(None) | Err(_) => return Ok(None),
            }
        }
    }

    /// The next `n` messages.
    pub async fn take(&mut self, n: usize) -> Vec<Message> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(
                self.next(Duration::from_secs(20))
                    .await
                    .expect("stream ended"),
            );
        }
        out
    }
}
