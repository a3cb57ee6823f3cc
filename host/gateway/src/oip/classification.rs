//! The classification extension (Triton's): an output asked for with
//! `parameters.classification = k` answers, for each row of the tensor's last dimension, the
//! `k` best classes as BYTES `"score:index:label"` (`"score:index"` where the plugin declares
//! no label), best first, ties to the lower index. The score is printed with six decimals,
//! as Triton does.

use super::{BadRequest, OutputValue, bad};
use edgeplug_kernels::{Tensor, TensorData};

pub fn top_k<'a>(
    name: &str,
    tensor: &Tensor,
    k: usize,
    labels: Option<&[String]>,
) -> Result<OutputValue<'a>, BadRequest> {
    let Some((&classes, leading)) = tensor.shape().split_last() else {
        return Err(bad(format!(
            "output {name:?} is a scalar, there are no classes to rank"
        )));
    };
    if k == 0 {
        return Err(bad("classification needs at least one class (k > 0)"));
    }
    let scores: Vec<f32> = match tensor.data() {
        TensorData::F32(v) => v.to_vec(),
        TensorData::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
        TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
    };
    let k = k.min(classes);
    let mut elements = Vec::new();
    if classes > 0 {
        for row in scores.chunks_exact(classes) {
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for &index in &order[..k] {
                let text = match labels.and_then(|l| l.get(index)) {
                    Some(label) => format!("{:.6}:{index}:{label}", row[index]),
                    None => format!("{:.6}:{index}", row[index]),
                };
                elements.push(text.into_bytes());
            }
        }
    }
    let mut shape = leading.to_vec();
    shape.push(k);
    Ok(OutputValue::Bytes {
        shape,
        elements,
        content_type: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(value: OutputValue) -> (Vec<usize>, Vec<String>) {
        match value {
            OutputValue::Bytes {
                shape, elements, ..
            } => (
                shape,
                elements
                    .into_iter()
                    .map(|e| String::from_utf8(e).unwrap())
                    .collect(),
            ),
            OutputValue::Tensor(_) => panic!("classification gives BYTES"),
        }
    }

    #[test]
    fn ranks_each_row_best_first_with_labels_where_declared() {
        let t = Tensor::from_f32(vec![2, 3], vec![0.1, 0.7, 0.2, 0.5, 0.5, 0.9]).unwrap();
        let labels = ["cat".to_string(), "dog".to_string()];
        let (shape, got) = texts(top_k("p", &t, 2, Some(&labels)).unwrap());
        assert_eq!(shape, [2, 2]);
        assert_eq!(
            got,
            [
                "0.700000:1:dog",
                "0.200000:2",
                "0.900000:2",
                // A tie goes to the lower index.
                "0.500000:0:cat"
            ]
        );
        // k beyond the class count gives every class.
        let (shape, got) = texts(top_k("p", &t, 10, None).unwrap());
        assert_eq!(shape, [2, 3]);
        assert_eq!(got[..3], ["0.700000:1", "0.200000:2", "0.100000:0"]);
        let scalar = Tensor::from_f32(vec![], vec![1.0]).unwrap();
        assert!(top_k("p", &scalar, 1, None).is_err());
        assert!(top_k("p", &t, 0, None).is_err());
    }
}
