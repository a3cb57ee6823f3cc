//! What a WASI command plugin wrote on stdout, as an answer. A command may start its output
//! with CGI headers, as WAGI (Spin's and Wasmtime's CGI convention) has commands do:
//! `Content-Type: ...` and `Status: 400 ...` lines, then an empty line, then the body. Without
//! them the whole output is the body, and its type is guessed: JSON if it parses, text if it
//! is UTF-8, else bytes. A `Status` of 400 or more makes the answer an error whose message is
//! the body: 415 `unsupported`, 404 `not-found`, any other 4xx `invalid-argument`, 5xx
//! `internal`. (`wasi:cli/exit` of WASI 0.2 carries only success or failure, so an exit status
//! cannot say which.)

use crate::{InferResponse, InvokeError, PluginErrorCode};

/// The answer a command's output gives.
pub fn parse(output: Vec<u8>) -> Result<InferResponse, InvokeError> {
    let (headers, body) = split_headers(&output);
    let mut content_type = None;
    let mut status = 200u16;
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|code| code.parse().ok())
                .filter(|code| (100..600).contains(code))
                .ok_or_else(|| {
                    InvokeError::BrokenContract(format!(
                        "the command's Status header {value:?} is not an HTTP status"
                    ))
                })?;
        }
    }
    let body = body.to_vec();
    if status >= 400 {
        let code = match status {
            415 => PluginErrorCode::Unsupported,
            404 => PluginErrorCode::NotFound,
            400..=499 => PluginErrorCode::InvalidArgument,
            _ => PluginErrorCode::Internal,
        };
        let message = String::from_utf8_lossy(&body).trim().to_string();
        return Err(InvokeError::Plugin { code, message });
    }
    Ok(InferResponse {
        content_type: content_type.unwrap_or_else(|| guess(&body).to_string()),
        body,
        tensors: Vec::new(),
        degraded: false,
    })
}

/// The CGI header lines at the start of `output` and the rest. Output starts with headers
/// only when its first line is a `Content-Type` or `Status` header and an empty line ends them.
fn split_headers(output: &[u8]) -> (Vec<(&str, &str)>, &[u8]) {
    let none = (Vec::new(), output);
    let Some(end) = output
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2))
        .or_else(|| {
            output
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| (i, i + 4))
        })
    else {
        return none;
    };
    let Ok(block) = std::str::from_utf8(&output[..end.0]) else {
        return none;
    };
    let mut headers = Vec::new();
    for line in block.lines() {
        let Some((name, value)) = line.split_once(':') else {
            return none;
        };
        headers.push((name.trim(), value.trim()));
    }
    let first_is_ours = headers.first().is_some_and(|(name, _)| {
        name.eq_ignore_ascii_case("content-type") || name.eq_ignore_ascii_case("status")
    });
    if first_is_ours {
        (headers, &output[end.1..])
    } else {
        none
    }
}

fn guess(body: &[u8]) -> &'static str {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        "application/json"
    } else if std::str::from_utf8(body).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_output_is_the_body_with_a_guessed_type() {
        let ok = parse(b"{\"label\": 7}\n".to_vec()).unwrap();
        assert_eq!(ok.content_type, "application/json");
        assert_eq!(
            parse(b"seven\n".to_vec()).unwrap().content_type,
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            parse(vec![0xff, 0]).unwrap().content_type,
            "application/octet-stream"
        );
        // A colon in the first line of a plain answer is not a header.
        let text = parse(b"label: 7\n\nmore".to_vec()).unwrap();
        assert_eq!(text.body, b"label: 7\n\nmore");
    }

    #[test]
    fn cgi_headers_set_the_type_and_the_status() {
        let png = parse(b"Content-Type: image/png\r\n\r\n\x89PNG".to_vec()).unwrap();
        assert_eq!(png.content_type, "image/png");
        assert_eq!(png.body, b"\x89PNG");
        let refused = parse(b"Status: 400 Bad Request\n\nnot a photo\n".to_vec()).unwrap_err();
        assert!(matches!(
            &refused,
            InvokeError::Plugin { code: PluginErrorCode::InvalidArgument, message } if message == "not a photo"
        ));
        assert_eq!(refused.http_status(), 400);
        let unsupported =
            parse(b"Status: 415\nContent-Type: text/plain\n\nno".to_vec()).unwrap_err();
        assert_eq!(unsupported.http_status(), 415);
        assert_eq!(
            parse(b"Status: 503\n\nbusy".to_vec())
                .unwrap_err()
                .http_status(),
            500
        );
        assert!(matches!(
            parse(b"Status: teapot\n\n".to_vec()),
            Err(InvokeError::BrokenContract(_))
        ));
    }
}
