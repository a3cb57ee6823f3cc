//! The raw tensor layout shared by the REST binary tensor data extension and gRPC's
//! `raw_input_contents` / `raw_output_contents`: elements little-endian in row-major order;
//! a BYTES tensor is each element as a 4-byte little-endian length and its bytes.

use super::{BadRequest, DATATYPES, InputValue, OutputValue, bad, element_type};
use edgeplug_kernels::Tensor;

/// Decodes one input's raw bytes.
pub fn decode(
    name: &str,
    datatype: &str,
    shape: Vec<usize>,
    raw: &[u8],
) -> Result<InputValue, BadRequest> {
    let count = element_count(name, &shape)?;
    if datatype == "BYTES" {
        let elements = split_bytes(raw)
            .map_err(|e| bad(format!("input {name:?}: BYTES data is malformed: {e}")))?;
        if elements.len() != count {
            return Err(bad(format!(
                "input {name:?}: shape {shape:?} needs {count} BYTES elements, the data has {}",
                elements.len()
            )));
        }
        return Ok(InputValue::Bytes(elements));
    }
    let ty = element_type(datatype).ok_or_else(|| {
        bad(format!(
            "input {name:?}: datatype {datatype:?} is not supported ({DATATYPES})"
        ))
    })?;
    let tensor =
        Tensor::from_le_bytes(shape, ty, raw).map_err(|e| bad(format!("input {name:?}: {e}")))?;
    check_finite(name, &tensor)?;
    Ok(InputValue::Tensor(tensor))
}

/// A plugin is never handed a NaN or infinity the client sent by mistake: the JSON form
/// cannot carry one, and the binary forms refuse it too.
pub fn check_finite(name: &str, tensor: &Tensor) -> Result<(), BadRequest> {
    if let Ok(values) = tensor.as_f32()
        && let Some(i) = values.iter().position(|v| !v.is_finite())
    {
        return Err(bad(format!(
            "input {name:?}: element {i} is {}, FP32 inputs must be finite",
            values[i]
        )));
    }
    Ok(())
}

/// The element count of `shape`, refusing one that overflows.
pub fn element_count(name: &str, shape: &[usize]) -> Result<usize, BadRequest> {
    shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| bad(format!("input {name:?}: shape {shape:?} overflows")))
}

/// Splits length-prefixed BYTES elements.
pub fn split_bytes(mut raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut elements = Vec::new();
    while !raw.is_empty() {
        let Some((len, rest)) = raw.split_first_chunk::<4>() else {
            return Err(format!(
                "{} bytes left where a 4-byte length was expected",
                raw.len()
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(format!(
                "an element of {len} bytes is cut off after {} bytes",
                rest.len()
            ));
        }
        elements.push(rest[..len].to_vec());
        raw = &rest[len..];
    }
    Ok(elements)
}

/// Joins BYTES elements length-prefixed.
pub fn join_bytes(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(elements.iter().map(|e| e.len() + 4).sum());
    for element in elements {
        out.extend_from_slice(&(element.len() as u32).to_le_bytes());
        out.extend_from_slice(element);
    }
    out
}

/// One output's raw bytes.
pub fn encode(value: &OutputValue) -> Vec<u8> {
    match value {
        OutputValue::Tensor(t) => t.to_le_bytes(),
        OutputValue::Bytes { elements, .. } => join_bytes(elements),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_elements_round_trip_and_truncation_is_refused() {
        let elements = vec![b"abc".to_vec(), Vec::new(), vec![0, 255]];
        let joined = join_bytes(&elements);
        assert_eq!(joined.len(), 3 * 4 + 5);
        assert_eq!(split_bytes(&joined).unwrap(), elements);
        assert!(split_bytes(&joined[..joined.len() - 1]).is_err());
        assert!(split_bytes(&[1, 0]).unwrap_err().contains("4-byte length"));
        assert!(
            split_bytes(&[9, 0, 0, 0, 1])
                .unwrap_err()
                .contains("cut off")
        );
    }

    #[test]
    fn decodes_typed_raw_data_and_refuses_wrong_sizes_and_non_finite_values() {
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let InputValue::Tensor(t) = decode("x", "FP32", vec![1, 2], &raw).unwrap() else {
            panic!("a tensor expected");
        };
        assert_eq!(t.as_f32().unwrap(), &[1.5, -2.0]);
        assert!(decode("x", "FP32", vec![1, 3], &raw).is_err());
        let nan: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let error = decode("x", "FP32", vec![2], &nan).err().unwrap().0;
        assert!(error.contains("element 1 is NaN"), "{error}");
        let error = decode("x", "FP16", vec![1], &[0, 0]).err().unwrap().0;
        assert!(error.contains("not supported"), "{error}");
        let InputValue::Bytes(b) =
            decode("b", "BYTES", vec![1], &join_bytes(&[b"png".to_vec()])).unwrap()
        else {
            panic!("bytes expected");
        };
        assert_eq!(b, [b"png".to_vec()]);
        let error = decode("b", "BYTES", vec![2], &join_bytes(&[b"png".to_vec()]))
            .err()
            .unwrap()
            .0;
        assert!(error.contains("needs 2 BYTES elements"), "{error}");
    }
}
