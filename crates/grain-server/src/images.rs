//! Image URL → encoded image bytes: `data:` URLs always, `http(s)://` only when configured.
//!
//! Only the container format is checked here (by magic bytes, so a broken upload fails fast with
//! a 400 before it queues); decoding, the pixel limit and resizing happen in the engine's
//! preprocessor, off the async runtime.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::config::ImageConfig;
use crate::fetch::HttpFetcher;

/// Base64 payloads larger than this are decoded on the blocking pool (decoding runs at about
/// 1 GB/s, so smaller ones cost less than a thread hop).
const INLINE_DECODE_LIMIT: usize = 1 << 20;

/// Why an image URL could not be turned into image bytes. All are client errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("invalid data URL: {0}")]
    InvalidDataUrl(&'static str),
    #[error("the data URL is not valid base64")]
    InvalidBase64,
    #[error("the image is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("unsupported image format{0}: expected PNG, JPEG, WebP or GIF")]
    UnsupportedFormat(String),
    #[error("http(s) image URLs are disabled on this server; send the image as a base64 data URL")]
    RemoteDisabled,
    #[error("unsupported URL scheme '{0}': use a data: URL{1}")]
    UnsupportedScheme(String, &'static str),
    #[error("invalid image URL: {0}")]
    InvalidUrl(String),
    #[error("host '{0}' is not in this server's allow-list for image URLs")]
    HostNotAllowed(String),
    #[error("image URL host '{0}' resolves to a non-public address, which this server refuses")]
    ForbiddenAddress(String),
    #[error("fetching the image failed: {0}")]
    Fetch(String),
    #[error("fetching the image failed: the server answered HTTP {0}")]
    FetchStatus(u16),
    #[error("fetching the image timed out")]
    Timeout,
    #[error("fetching the image failed: more than {0} redirects")]
    TooManyRedirects(usize),
}

/// Turns image URLs into bytes.
#[derive(Debug, Clone)]
pub struct ImageLoader {
    max_bytes: usize,
    http: Option<HttpFetcher>,
}

impl ImageLoader {
    /// Builds the loader, including the HTTP client when fetching is enabled.
    pub fn new(config: &ImageConfig) -> Result<Self, crate::ServerError> {
        let http = match &config.http {
            Some(http) => Some(HttpFetcher::new(http, config.max_image_bytes)?),
            None => None,
        };
        Ok(Self {
            max_bytes: config.max_image_bytes,
            http,
        })
    }

    /// The encoded image bytes behind `url`.
    pub async fn load(&self, url: &str) -> Result<Vec<u8>, ImageError> {
        let url = url.trim();
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        let bytes = match scheme.as_deref() {
            Some("data") => {
                let payload = url.get(5..).unwrap_or_default();
                let max = self.max_bytes;
                if payload.len() > INLINE_DECODE_LIMIT {
                    let payload = payload.to_owned();
                    tokio::task::spawn_blocking(move || decode_data_url(&payload, max))
                        .await
                        .map_err(|_| ImageError::Fetch("decoding task failed".into()))??
                } else {
                    decode_data_url(payload, max)?
                }
            }
            Some("http" | "https") => match &self.http {
                Some(fetcher) => fetcher.fetch(url).await?,
                None => return Err(ImageError::RemoteDisabled),
            },
            Some(other) if !other.is_empty() && other.len() < 16 => {
                let hint = if self.http.is_some() {
                    " or an http(s) URL"
                } else {
                    ""
                };
                return Err(ImageError::UnsupportedScheme(other.to_owned(), hint));
            }
            _ => return Err(ImageError::InvalidUrl("expected a data: URL".into())),
        };
        sniff_format(&bytes)?;
        Ok(bytes)
    }
}

/// Decodes the part of a data URL after `data:`: `[<mediatype>][;params];base64,<data>`.
pub fn decode_data_url(after_scheme: &str, max_bytes: usize) -> Result<Vec<u8>, ImageError> {
    let (meta, data) = after_scheme
        .split_once(',')
        .ok_or(ImageError::InvalidDataUrl("missing ',' before the data"))?;
    let mut params = meta.split(';');
    let media_type = params
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(ImageError::InvalidDataUrl(
            "the data must be base64 (';base64,')",
        ));
    }
    if !(media_type.is_empty()
        || media_type.starts_with("image/")
        || media_type == "application/octet-stream")
    {
        return Err(ImageError::InvalidDataUrl("the media type must be image/*"));
    }
    // Refuse before allocating: base64 encodes 3 bytes in 4 characters. Line breaks of wrapped
    // base64 carry no data, so they do not count (found by tests/fuzz_data_url.rs).
    let significant = data.bytes().filter(|b| !b.is_ascii_whitespace()).count();
    let estimated = significant / 4 * 3;
    if estimated > max_bytes.saturating_add(3) {
        return Err(ImageError::TooLarge {
            size: estimated,
            limit: max_bytes,
        });
    }
    let bytes = match STANDARD.decode(data) {
        Ok(bytes) => bytes,
        // Some clients wrap base64 at 76 columns (MIME style) or percent-escape nothing else.
        Err(_) => {
            let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            STANDARD
                .decode(compact)
                .map_err(|_| ImageError::InvalidBase64)?
        }
    };
    if bytes.len() > max_bytes {
        return Err(ImageError::TooLarge {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    Ok(bytes)
}

/// The container formats the preprocessor decodes, recognised by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Gif,
    WebP,
}

/// Identifies the format from the first bytes (PNG, JPEG, GIF87a/89a, RIFF-WEBP).
pub fn sniff_format(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.starts_with(PNG) {
        Ok(ImageFormat::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Ok(ImageFormat::Gif)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Ok(ImageFormat::WebP)
    } else if bytes.is_empty() {
        Err(ImageError::UnsupportedFormat(
            " (the image is empty)".into(),
        ))
    } else {
        Err(ImageError::UnsupportedFormat(String::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A 1×1 red RGBA PNG (70 bytes), written with Python's zlib and struct.
    const PNG_1X1: &str =
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==";

    #[test]
    fn decodes_a_png_data_url() {
        let bytes = decode_data_url(&format!("image/png;base64,{PNG_1X1}"), 1 << 20).unwrap();
        assert_eq!(bytes.len(), 70);
        assert_eq!(sniff_format(&bytes), Ok(ImageFormat::Png));
    }

    #[test]
    fn accepts_wrapped_base64_and_missing_media_type() {
        let wrapped = format!("{}\n{}", &PNG_1X1[..40], &PNG_1X1[40..]);
        assert_eq!(
            decode_data_url(&format!(";base64,{wrapped}"), 1 << 20)
                .unwrap()
                .len(),
            70
        );
    }

    #[test]
    fn refuses_bad_data_urls() {
        assert_eq!(
            decode_data_url("image/png;base64", 100),
            Err(ImageError::InvalidDataUrl("missing ',' before the data"))
        );
        assert!(matches!(
            decode_data_url("image/png,rawdata", 100),
            Err(ImageError::InvalidDataUrl(_))
        ));
        assert!(matches!(
            decode_data_url("text/plain;base64,aGk=", 100),
            Err(ImageError::InvalidDataUrl(_))
        ));
        assert_eq!(
            decode_data_url("image/png;base64,@@@@", 100),
            Err(ImageError::InvalidBase64)
        );
    }

    #[test]
    fn refuses_oversized_payloads_before_decoding() {
        let data = "A".repeat(4000); // 3000 bytes once decoded
        assert_eq!(
            decode_data_url(&format!("image/png;base64,{data}"), 1000),
            Err(ImageError::TooLarge {
                size: 3000,
                limit: 1000
            })
        );
        // Exactly at the limit is fine.
        assert_eq!(
            decode_data_url(&format!("image/png;base64,{data}"), 3000)
                .unwrap()
                .len(),
            3000
        );
    }

    #[test]
    fn sniffs_each_supported_format() {
        assert_eq!(sniff_format(b"\xFF\xD8\xFF\xE0rest"), Ok(ImageFormat::Jpeg));
        assert_eq!(sniff_format(b"GIF89a...."), Ok(ImageFormat::Gif));
        assert_eq!(
            sniff_format(b"RIFF\x10\0\0\0WEBPVP8 "),
            Ok(ImageFormat::WebP)
        );
        assert!(sniff_format(b"RIFF\x10\0\0\0WAVEfmt ").is_err());
        assert!(sniff_format(b"not an image").is_err());
        assert!(sniff_format(b"").is_err());
    }

    #[tokio::test]
    async fn loader_refuses_remote_urls_when_disabled() {
        let loader = ImageLoader::new(&ImageConfig::default()).unwrap();
        assert_eq!(
            loader.load("https://example.com/cat.png").await,
            Err(ImageError::RemoteDisabled)
        );
        assert!(matches!(
            loader.load("ftp://example.com/cat.png").await,
            Err(ImageError::UnsupportedScheme(s, "")) if s == "ftp"
        ));
        assert!(matches!(
            loader.load("data:image/png;base64,bm90IGFuIGltYWdl").await,
            Err(ImageError::UnsupportedFormat(_))
        ));
        let ok = loader
            .load(&format!("data:image/png;base64,{PNG_1X1}"))
            .await
            .unwrap();
        assert_eq!(ok.len(), 70);
    }
}
