//! Frames out of an MJPEG-over-HTTP stream (`multipart/x-mixed-replace`), what most IP
//! cameras serve: parts separated by `--BOUNDARY` lines, each with its own headers and, usually,
//! a `Content-Length`.

/// An incremental parser: feed it the body as it arrives, take whole frames out.
#[derive(Debug)]
pub struct MjpegParser {
    boundary: Vec<u8>,
    buffer: Vec<u8>,
    max_frame: usize,
}

/// Why a stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MjpegError {
    /// A part larger than the limit.
    FrameTooLarge(usize),
    /// Headers that are not text or a bad `Content-Length`.
    Malformed(String),
}

impl std::fmt::Display for MjpegError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MjpegError::FrameTooLarge(limit) => write!(f, "a frame is over {limit} bytes"),
            MjpegError::Malformed(what) => write!(f, "malformed MJPEG stream: {what}"),
        }
    }
}

/// The boundary of a `multipart/x-mixed-replace; boundary=...` content type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    let (essence, params) = content_type.split_once(';')?;
    if !essence
        .trim()
        .eq_ignore_ascii_case("multipart/x-mixed-replace")
    {
        return None;
    }
    params.split(';').find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| {
                value
                    .trim()
                    .trim_matches('"')
                    .trim_start_matches("--")
                    .to_string()
            })
            .filter(|b| !b.is_empty())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl MjpegParser {
    pub fn new(boundary: &str, max_frame: usize) -> MjpegParser {
        MjpegParser {
            boundary: format!("--{boundary}").into_bytes(),
            buffer: Vec::new(),
            max_frame,
        }
    }

    /// Adds bytes of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, MjpegError> {
        let Some(start) = find(&self.buffer, &self.boundary) else {
            // Keep only what could be the start of a boundary.
            let keep = self.boundary.len().min(self.buffer.len());
            self.buffer.drain(..self.buffer.len() - keep);
            return Ok(None);
        };
        let after_boundary = start + self.boundary.len();
        let Some(headers_end) = find(&self.buffer[after_boundary..], b"\r\n\r\n") else {
            if self.buffer.len() - after_boundary > 8192 {
                return Err(MjpegError::Malformed("part headers over 8 KiB".into()));
            }
            return Ok(None);
        };
        let headers =
            std::str::from_utf8(&self.buffer[after_boundary..after_boundary + headers_end])
                .map_err(|_| MjpegError::Malformed("part headers are not text".into()))?;
        let body_start = after_boundary + headers_end + 4;
        let length = headers
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .map(|(_, value)| {
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| MjpegError::Malformed(format!("Content-Length {value:?}")))
            })
            .transpose()?;
        let body_end = match length {
            Some(length) => {
                if length > self.max_frame {
                    return Err(MjpegError::FrameTooLarge(self.max_frame));
                }
                if self.buffer.len() < body_start + length {
                    return Ok(None);
                }
                body_start + length
            }
            // No length: the part ends where the next boundary begins (less its CRLF).
            None => match find(&self.buffer[body_start..], &self.boundary) {
                Some(next) => {
                    let mut end = body_start + next;
                    if self.buffer[..end].ends_with(b"\r\n") {
                        end -= 2;
                    }
                    end
                }
                None => {
                    if self.buffer.len() - body_start > self.max_frame {
                        return Err(MjpegError::FrameTooLarge(self.max_frame));
                    }
                    return Ok(None);
                }
            },
        };
        let frame = self.buffer[body_start..body_end].to_vec();
        self.buffer.drain(..body_end);
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(frames: &[&[u8]], with_length: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames {
            out.extend_from_slice(b"--frame\r\nContent-Type: image/jpeg\r\n");
            if with_length {
                out.extend_from_slice(format!("Content-Length: {}\r\n", frame.len()).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(frame);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--frame\r\n");
        out
    }

    #[test]
    fn frames_come_out_whole_however_the_bytes_arrive() {
        // With lengths a frame may hold anything, even the boundary's text; without, it may
        // not (that is what a multipart boundary means).
        let with_lengths: [&[u8]; 3] = [
            b"\xff\xd8one\xff\xd9",
            b"\xff\xd8two--frame?\xff\xd9",
            b"\xff\xd8\xff\xd9",
        ];
        let without: [&[u8]; 3] = [
            b"\xff\xd8one\xff\xd9",
            b"\xff\xd8two\r\n\xff\xd9",
            b"\xff\xd8\xff\xd9",
        ];
        for (frames, with_length) in [(with_lengths, true), (without, false)] {
            let bytes = stream(&frames, with_length);
            for chunk in [1, 7, bytes.len()] {
                let mut parser = MjpegParser::new("frame", 1 << 20);
                let mut got = Vec::new();
                for piece in bytes.chunks(chunk) {
                    parser.push(piece);
                    while let Some(frame) = parser.next_frame().unwrap() {
                        got.push(frame);
                    }
                }
                assert_eq!(got, frames, "chunks of {chunk}, lengths: {with_length}");
            }
        }
    }

    #[test]
    fn limits_and_content_types() {
        let mut parser = MjpegParser::new("frame", 4);
        parser.push(b"--frame\r\nContent-Length: 5\r\n\r\n12345");
        assert_eq!(parser.next_frame(), Err(MjpegError::FrameTooLarge(4)));
        let mut parser = MjpegParser::new("frame", 4);
        parser.push(b"--frame\r\nContent-Length: x\r\n\r\n");
        assert!(matches!(parser.next_frame(), Err(MjpegError::Malformed(_))));
        assert_eq!(
            boundary_of("multipart/x-mixed-replace; boundary=--myboundary").as_deref(),
            Some("myboundary")
        );
        assert_eq!(
            boundary_of("multipart/x-mixed-replace;boundary=\"b\"").as_deref(),
            Some("b")
        );
        assert_eq!(boundary_of("image/jpeg"), None);
    }
}
