//! A small, strict reader for NumPy `.npy` files (format versions 1.0, 2.0 and 3.0).
//!
//! Only what plugins need: little-endian `float32` (`<f4`), `uint8` (`|u1`) and `int64` (`<i8`)
//! arrays in C (row-major) order. Anything else (Fortran order, big-endian, other dtypes, object
//! arrays, structured dtypes) is refused with an [`NpyError`] that says what was found.
//!
//! Parsing is bounded: the element count is the product of the shape computed with
//! `checked_mul`, and the data section must be exactly `count * itemsize` bytes, so a hostile
//! header can neither overflow nor make the reader allocate more than the input's own size.

use std::fmt;

/// A parsed `.npy` array: its shape (C order) and its elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Npy {
    /// Dimensions, outermost first. An empty shape is a 0-d array holding one element.
    pub shape: Vec<usize>,
    /// The elements in C (row-major) order; `data.len() == shape.iter().product()`.
    pub data: NpyData,
}

/// The elements of an [`Npy`] array, by dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `<f4`: little-endian IEEE-754 single precision.
    F32(Vec<f32>),
    /// `|u1`: unsigned bytes.
    U8(Vec<u8>),
    /// `<i8`: little-endian signed 64-bit integers.
    I64(Vec<i64>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::I64(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The NumPy dtype string of this data (`"<f4"`, `"|u1"` or `"<i8"`).
    pub fn dtype(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "<f4",
            NpyData::U8(_) => "|u1",
            NpyData::I64(_) => "<i8",
        }
    }
}

/// Why a `.npy` buffer could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NpyError {
    /// The buffer does not start with the `\x93NUMPY` magic string.
    NotNpy,
    /// A format version other than 1.0, 2.0 or 3.0.
    UnsupportedVersion(u8, u8),
    /// The buffer ends before the header or the data does.
    Truncated(String),
    /// The header dictionary is not what NumPy writes.
    BadHeader(String),
    /// A dtype other than `<f4`, `|u1` or `<i8`.
    UnsupportedDtype(String),
    /// `fortran_order` is `True`.
    FortranOrder,
    /// The shape's element count overflows, or the data length does not match it.
    SizeMismatch(String),
}

impl fmt::Display for NpyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NpyError::NotNpy => write!(f, "not a .npy file (missing \\x93NUMPY magic)"),
            NpyError::UnsupportedVersion(a, b) => {
                write!(
                    f,
                    "unsupported .npy format version {a}.{b} (supported: 1.0, 2.0, 3.0)"
                )
            }
            NpyError::Truncated(m) => write!(f, "truncated .npy file: {m}"),
            NpyError::BadHeader(m) => write!(f, "malformed .npy header: {m}"),
            NpyError::UnsupportedDtype(d) => write!(
                f,
                "unsupported .npy dtype {d:?} (supported: '<f4' float32, '|u1' uint8, '<i8' int64)"
            ),
            NpyError::FortranOrder => {
                write!(
                    f,
                    "Fortran-order .npy arrays are not supported (C order only)"
                )
            }
            NpyError::SizeMismatch(m) => write!(f, ".npy size mismatch: {m}"),
        }
    }
}

impl std::error::Error for NpyError {}

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Parses a whole `.npy` file held in memory.
///
/// The data section must hold exactly the number of bytes the header's shape and dtype imply
/// (shorter is [`NpyError::Truncated`], longer is [`NpyError::SizeMismatch`]).
pub fn parse(bytes: &[u8]) -> Result<Npy, NpyError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(NpyError::NotNpy);
    }
    if bytes.len() < 8 {
        return Err(NpyError::Truncated(
            "file ends inside the version bytes".into(),
        ));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, header_start) = match (major, minor) {
        (1, 0) => {
            let b = bytes
                .get(8..10)
                .ok_or_else(|| NpyError::Truncated("file ends inside the header length".into()))?;
            (u16::from_le_bytes([b[0], b[1]]) as usize, 10usize)
        }
        (2, 0) | (3, 0) => {
            let b = bytes
                .get(8..12)
                .ok_or_else(|| NpyError::Truncated("file ends inside the header length".into()))?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        _ => return Err(NpyError::UnsupportedVersion(major, minor)),
    };
    let header_end = header_start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            NpyError::Truncated(format!(
                "header claims {header_len} bytes but only {} follow",
                bytes.len() - header_start
            ))
        })?;
    let header = std::str::from_utf8(&bytes[header_start..header_end])
        .map_err(|_| NpyError::BadHeader("header is not valid UTF-8/ASCII".into()))?;
    let (descr, fortran, shape) = parse_header(header)?;
    if fortran {
        return Err(NpyError::FortranOrder);
    }
    let itemsize = match descr.as_str() {
        "<f4" => 4,
        "|u1" | "<u1" | "u1" => 1,
        "<i8" => 8,
        _ => return Err(NpyError::UnsupportedDtype(descr)),
    };
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            NpyError::SizeMismatch(format!(
                "shape {shape:?} has more elements than fit in usize"
            ))
        })?;
    let nbytes = count.checked_mul(itemsize).ok_or_else(|| {
        NpyError::SizeMismatch(format!(
            "shape {shape:?} needs more bytes than fit in usize"
        ))
    })?;
    let data = &bytes[header_end..];
    if data.len() < nbytes {
        return Err(NpyError::Truncated(format!(
            "shape {shape:?} of {descr} needs {nbytes} data bytes, found {}",
            data.len()
        )));
    }
    if data.len() > nbytes {
        return Err(NpyError::SizeMismatch(format!(
            "shape {shape:?} of {descr} needs {nbytes} data bytes, found {} (trailing bytes)",
            data.len()
        )));
    }
    let data = match itemsize {
        4 => NpyData::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        1 => NpyData::U8(data.to_vec()),
        _ => NpyData::I64(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("chunk of 8")))
                .collect(),
        ),
    };
    Ok(Npy { shape, data })
}

/// Parses NumPy's header dict, e.g. `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_header(h: &str) -> Result<(String, bool, Vec<usize>), NpyError> {
    let bad = |m: &str| NpyError::BadHeader(format!("{m} in {:?}", h.trim_end()));
    let mut p = Lexer {
        s: h.as_bytes(),
        i: 0,
    };
    p.skip_ws();
    if !p.eat(b'{') {
        return Err(bad("expected '{'"));
    }
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string().ok_or_else(|| bad("expected a quoted key"))?;
        p.skip_ws();
        if !p.eat(b':') {
            return Err(bad("expected ':'"));
        }
        p.skip_ws();
        match key.as_str() {
            "descr" => descr = Some(p.string().ok_or_else(|| bad("descr is not a string"))?),
            "fortran_order" => {
                fortran = Some(if p.word("True") {
                    true
                } else if p.word("False") {
                    false
                } else {
                    return Err(bad("fortran_order is not True/False"));
                })
            }
            "shape" => {
                shape = Some(
                    p.tuple()
                        .ok_or_else(|| bad("shape is not a tuple of ints"))?,
                )
            }
            other => return Err(bad(&format!("unexpected key {other:?}"))),
        }
        p.skip_ws();
        if p.eat(b',') {
            continue;
        }
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        return Err(bad("expected ',' or '}'"));
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(bad("unexpected text after the dict"));
    }
    Ok((
        descr.ok_or_else(|| bad("missing 'descr'"))?,
        fortran.ok_or_else(|| bad("missing 'fortran_order'"))?,
        shape.ok_or_else(|| bad("missing 'shape'"))?,
    ))
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn word(&mut self, w: &str) -> bool {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            true
        } else {
            false
        }
    }
    fn string(&mut self) -> Option<String> {
        let q = *self.s.get(self.i)?;
        if q != b'\'' && q != b'"' {
            return None;
        }
        let start = self.i + 1;
        let len = self.s[start..].iter().position(|&c| c == q)?;
        self.i = start + len + 1;
        String::from_utf8(self.s[start..start + len].to_vec()).ok()
    }
    fn tuple(&mut self) -> Option<Vec<usize>> {
        if !self.eat(b'(') {
            return None;
        }
        let mut dims = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b')') {
                return Some(dims);
            }
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            if start == self.i {
                return None;
            }
            dims.push(
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()?
                    .parse()
                    .ok()?,
            );
            // NumPy may write `5L` on Python 2.
            self.eat(b'L');
            self.skip_ws();
            if !self.eat(b',') {
                self.skip_ws();
                return self.eat(b')').then_some(dims);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.as_bytes().to_vec();
        // Pad like NumPy: total header length a multiple of 64, ending with '\n'.
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&[1, 0]);
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(&h);
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn reads_the_three_dtypes() {
        let f: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let a = parse(&npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            &f,
        ))
        .unwrap();
        assert_eq!(
            a,
            Npy {
                shape: vec![2],
                data: NpyData::F32(vec![1.5, -2.0])
            }
        );
        let a = parse(&npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }",
            &[1, 2, 3, 4, 5, 6],
        ))
        .unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, NpyData::U8(vec![1, 2, 3, 4, 5, 6]));
        let i: Vec<u8> = [-7i64, 9].iter().flat_map(|x| x.to_le_bytes()).collect();
        let a = parse(&npy(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 2), }",
            &i,
        ))
        .unwrap();
        assert_eq!(a.data, NpyData::I64(vec![-7, 9]));
        // 0-d array: one element.
        let a = parse(&npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (), }",
            &[42],
        ))
        .unwrap();
        assert_eq!((a.shape.len(), a.data), (0, NpyData::U8(vec![42])));
    }

    #[test]
    fn reads_version_2() {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&[2, 0]);
        let h = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1,)}\n";
        v.extend_from_slice(&(h.len() as u32).to_le_bytes());
        v.extend_from_slice(h);
        v.push(7);
        assert_eq!(parse(&v).unwrap().data, NpyData::U8(vec![7]));
    }

    #[test]
    fn refuses_malformed_input() {
        let hdr = |s: &str| npy(s, &[0; 4]);
        assert_eq!(parse(b""), Err(NpyError::NotNpy));
        assert_eq!(parse(b"PK\x03\x04 a zip"), Err(NpyError::NotNpy));
        assert!(matches!(
            parse(b"\x93NUMPY\x01"),
            Err(NpyError::Truncated(_))
        ));
        assert!(matches!(
            parse(b"\x93NUMPY\x01\x00\x10"),
            Err(NpyError::Truncated(_))
        ));
        assert_eq!(
            parse(b"\x93NUMPY\x04\x00\x00\x00"),
            Err(NpyError::UnsupportedVersion(4, 0))
        );
        // Header length beyond the end of the buffer.
        assert!(matches!(
            parse(b"\x93NUMPY\x01\x00\xff\xff{}"),
            Err(NpyError::Truncated(_))
        ));
        let cases = [
            "",
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'shape': (1,)}",
            "{'descr': <f4, 'fortran_order': False, 'shape': (1,)}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,) 'x'}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} trailing",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,2,,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
        ];
        for c in cases {
            assert!(
                matches!(parse(&hdr(c)), Err(NpyError::BadHeader(_))),
                "{c:?}: {:?}",
                parse(&hdr(c))
            );
        }
        for d in ["<f8", ">f4", "<u2", "|b1", "O", "<U4"] {
            let h = format!("{{'descr': '{d}', 'fortran_order': False, 'shape': (1,)}}");
            assert_eq!(parse(&hdr(&h)), Err(NpyError::UnsupportedDtype(d.into())));
        }
        let h = "{'descr': '<f4', 'fortran_order': True, 'shape': (1,)}";
        assert_eq!(parse(&hdr(h)), Err(NpyError::FortranOrder));
    }

    #[test]
    fn checks_sizes() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}";
        assert!(matches!(
            parse(&npy(h, &[0; 7])),
            Err(NpyError::Truncated(_))
        ));
        assert!(matches!(
            parse(&npy(h, &[0; 9])),
            Err(NpyError::SizeMismatch(_))
        ));
        // Overflowing shapes are refused before anything is allocated.
        let h = "{'descr': '<i8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296)}";
        assert!(matches!(
            parse(&npy(h, &[])),
            Err(NpyError::SizeMismatch(_))
        ));
        let h = format!(
            "{{'descr': '<i8', 'fortran_order': False, 'shape': ({},)}}",
            usize::MAX / 4
        );
        assert!(matches!(
            parse(&npy(&h, &[])),
            Err(NpyError::SizeMismatch(_))
        ));
        // A huge but representable claim is just truncated (no allocation of the claimed size).
        let h = "{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000,)}";
        assert!(matches!(
            parse(&npy(h, &[1, 2])),
            Err(NpyError::Truncated(_))
        ));
        // Empty arrays are fine.
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 5)}";
        assert_eq!(parse(&npy(h, &[])).unwrap().data, NpyData::F32(vec![]));
    }

    #[test]
    fn question_mark_turns_an_npy_error_into_invalid_argument() {
        fn infer_like(bytes: &[u8]) -> Result<Npy, crate::Error> {
            Ok(parse(bytes)?)
        }
        let e = infer_like(b"PK\x03\x04 a zip").unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::InvalidArgument);
        assert_eq!(e.message, NpyError::NotNpy.to_string());
    }

    #[test]
    fn error_messages_are_specific() {
        let h = "{'descr': '>f4', 'fortran_order': False, 'shape': (1,)}";
        let e = parse(&npy(h, &[0; 4])).unwrap_err().to_string();
        assert!(e.contains(">f4") && e.contains("<f4"), "{e}");
        assert!(NpyError::FortranOrder.to_string().contains("C order"));
    }
}
