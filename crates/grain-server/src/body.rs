//! Reading a request body within its size limit and in bounded time.
//!
//! axum's `Bytes` extractor waits for the body as long as the client likes, so a client could
//! hold a connection (and a drain slot) by sending a few bytes now and then. Here the body must
//! keep arriving — no gap longer than the client timeout — and be complete by the request's
//! deadline; a declared `Content-Length` over the limit is refused before reading anything.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::errors::ApiError;

pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    idle: Duration,
    deadline: Instant,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let capacity = declared.map_or(0, |len| len as usize);
    let mut buf = Vec::with_capacity(capacity);
    let mut stream = body.into_data_stream();
    loop {
        let next = deadline.min(Instant::now() + idle);
        let chunk = match tokio::time::timeout_at(next, stream.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(e))) => return Err(ApiError::BadBody(e.to_string())),
            Ok(None) => break,
            Err(_) => return Err(ApiError::BodyTimeout),
        };
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn reads_a_body_within_the_limit() {
        let body = read_body(
            &HeaderMap::new(),
            Body::from("hello"),
            5,
            Duration::from_secs(1),
            far(),
        )
        .await
        .unwrap();
        assert_eq!(&body[..], b"hello");
    }

    #[tokio::test]
    async fn refuses_bodies_over_the_limit_declared_or_not() {
        let err = read_body(
            &HeaderMap::new(),
            Body::from("hello!"),
            5,
            Duration::from_secs(1),
            far(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ApiError::PayloadTooLarge { limit: 5 }));
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000"));
        let err = read_body(&headers, Body::empty(), 5, Duration::from_secs(1), far())
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::PayloadTooLarge { limit: 5 }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_times_out() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stalled = Body::from_stream(tokio_stream_from(rx));
        let err = read_body(
            &HeaderMap::new(),
            stalled,
            100,
            Duration::from_secs(5),
            far(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ApiError::BodyTimeout));
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
