//! What the HTTP layer needs to know, already validated by the binary's config loader.

use std::time::Duration;

use grain_protocol::RequestLimits;

/// Settings of the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Names accepted in a request's `model` besides the model card's id (e.g. a short alias).
    pub model_aliases: Vec<String>,
    /// Accepted bearer tokens; empty disables authentication. Secrets: never log them.
    pub api_keys: Vec<String>,
    /// Bounds on `n`, `stop`, `top_logprobs` and images per request.
    pub limits: RequestLimits,
    /// Largest request body. Images travel base64-encoded in the body, so this is generous.
    pub max_body_bytes: usize,
    /// Longest a completion may take, streaming or not; then 504 (or an SSE error event).
    pub request_timeout: Duration,
    /// On shutdown, how long in-flight requests get to finish.
    pub drain_timeout: Duration,
    /// Longest a client may keep the server waiting: to send its request headers (idle keep-alive
    /// connections close after it too), between two pieces of its request body, or without
    /// reading a response the server is trying to send. Bounds what slow clients can hold.
    pub client_timeout: Duration,
    /// Origins allowed by CORS; empty disables CORS, `["*"]` allows any origin.
    pub cors_allowed_origins: Vec<String>,
    pub images: ImageConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model_aliases: Vec::new(),
            api_keys: Vec::new(),
            limits: RequestLimits::default(),
            max_body_bytes: 32 * 1024 * 1024,
            request_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(30),
            client_timeout: Duration::from_secs(30),
            cors_allowed_origins: Vec::new(),
            images: ImageConfig::default(),
        }
    }
}

/// How image URLs are turned into bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// Largest encoded image (after base64 decoding, or as downloaded).
    pub max_image_bytes: usize,
    /// `http(s)://` image URLs; `None` refuses them (only `data:` URLs are accepted).
    pub http: Option<HttpFetchConfig>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            max_image_bytes: 20 * 1024 * 1024,
            http: None,
        }
    }
}

/// Remote image fetching. Off by default: fetching URLs chosen by clients from inside a cluster is
/// a server-side request forgery risk, hence the address guard and the allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFetchConfig {
    /// Whole-download time limit (connect + headers + body).
    pub timeout: Duration,
    pub max_redirects: usize,
    /// Allow loopback, private, link-local and other non-public targets (tests, trusted networks).
    pub allow_private: bool,
    /// Hosts that may be fetched: exact names, or `.example.com` for the domain and its
    /// subdomains. Empty allows every public host.
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpFetchConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_redirects: 3,
            allow_private: false,
            allowed_hosts: Vec::new(),
        }
    }
}
