//! Sliding-window geometry shared by convolution and pooling.
//!
//! Kernels precompute, per axis, which output positions a tap reaches inside
//! the input (and which taps of a window do), so their inner loops run over
//! in-bounds ranges only and never test for padding element by element.

use std::ops::Range;

use super::TensorError;

/// Zero padding around the two spatial axes; asymmetric so that
/// TensorFlow's "SAME" (extra row at the bottom/right) is expressible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Padding {
    /// Rows added above.
    pub top: usize,
    /// Columns added on the left.
    pub left: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added on the right.
    pub right: usize,
}

impl Padding {
    /// The same padding on all four sides.
    pub fn uniform(p: usize) -> Padding {
        Padding {
            top: p,
            left: p,
            bottom: p,
            right: p,
        }
    }

    /// TensorFlow "SAME" / ONNX `SAME_UPPER`: the output has
    /// `ceil(input / stride)` positions and any odd padding goes to the end.
    pub fn same_upper(
        input: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<Padding, TensorError> {
        let mut pads = [(0, 0); 2];
        for (i, pad) in pads.iter_mut().enumerate() {
            if stride[i] == 0 || dilation[i] == 0 || kernel[i] == 0 {
                return Err(TensorError::InvalidArgument(format!(
                    "same_upper: kernel {kernel:?}, stride {stride:?} and dilation {dilation:?} must all be >= 1"
                )));
            }
            let too_large = || {
                TensorError::TooLarge(format!(
                    "same_upper: padding for input {input:?}, kernel {kernel:?}, stride {stride:?}, dilation {dilation:?} overflows"
                ))
            };
            let out = input[i].div_ceil(stride[i]);
            let needed = (kernel[i] - 1)
                .checked_mul(dilation[i])
                .and_then(|e| {
                    out.saturating_sub(1)
                        .checked_mul(stride[i])?
                        .checked_add(e + 1)
                })
                .ok_or_else(too_large)?;
            let total = needed.saturating_sub(input[i]);
            *pad = (total / 2, total - total / 2);
        }
        Ok(Padding {
            top: pads[0].0,
            bottom: pads[0].1,
            left: pads[1].0,
            right: pads[1].1,
        })
    }
}

/// Geometry of a window sliding along one axis.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WindowAxis {
    pub input: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_begin: usize,
    pub pad_end: usize,
    pub output: usize,
}

/// Per-axis arguments of [`WindowAxis::new`].
pub(crate) struct AxisSpec {
    /// "height" or "width", for messages.
    pub name: &'static str,
    pub input: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_begin: usize,
    pub pad_end: usize,
    pub ceil_mode: bool,
}

impl WindowAxis {
    /// Validates one axis and computes its output length, which must be >= 1.
    ///
    /// In ceil mode a last window that would start inside the end padding is
    /// dropped (PyTorch's rule), so every window starts inside the input or
    /// the begin padding.
    pub fn new(op: &str, s: AxisSpec) -> Result<WindowAxis, TensorError> {
        let name = s.name;
        for (what, v) in [
            ("input", s.input),
            ("kernel", s.kernel),
            ("stride", s.stride),
            ("dilation", s.dilation),
        ] {
            if v == 0 {
                return Err(TensorError::InvalidArgument(format!(
                    "{op}: {what} {name} must be >= 1, got 0"
                )));
            }
        }
        let too_large = |what: &str| {
            TensorError::TooLarge(format!(
                "{op}: {what} along {name} overflows (input {}, pads {}+{}, kernel {}, dilation {})",
                s.input, s.pad_begin, s.pad_end, s.kernel, s.dilation
            ))
        };
        let span = (s.kernel - 1)
            .checked_mul(s.dilation)
            .and_then(|v| v.checked_add(1))
            .ok_or_else(|| too_large("dilated kernel"))?;
        let padded = s
            .input
            .checked_add(s.pad_begin)
            .and_then(|v| v.checked_add(s.pad_end))
            .ok_or_else(|| too_large("padded input"))?;
        if padded < span {
            return Err(TensorError::InvalidArgument(format!(
                "{op}: output {name} would be < 1: input {name} {} + padding {}+{} = {padded} is smaller than the dilated kernel {span} (kernel {}, dilation {})",
                s.input, s.pad_begin, s.pad_end, s.kernel, s.dilation
            )));
        }
        let room = padded - span;
        let mut output = if s.ceil_mode {
            room.div_ceil(s.stride) + 1
        } else {
            room / s.stride + 1
        };
        if s.ceil_mode
            && output > 1
            && (output - 1)
                .checked_mul(s.stride)
                .is_none_or(|start| start >= s.input + s.pad_begin)
        {
            output -= 1;
        }
        Ok(WindowAxis {
            input: s.input,
            kernel: s.kernel,
            stride: s.stride,
            dilation: s.dilation,
            pad_begin: s.pad_begin,
            pad_end: s.pad_end,
            output,
        })
    }

    /// Output positions whose tap `k` reads inside the input; for those,
    /// the input coordinate is `o * stride + k * dilation - pad_begin`.
    pub fn outputs_hitting(&self, k: usize) -> Range<usize> {
        let off = k * self.dilation;
        let lo = if off >= self.pad_begin {
            0
        } else {
            (self.pad_begin - off).div_ceil(self.stride)
        };
        let end = self.input + self.pad_begin;
        let hi = if end <= off {
            0
        } else {
            self.output.min((end - off).div_ceil(self.stride))
        };
        lo.min(hi)..hi
    }

    /// Taps of output `o`'s window that read inside the input.
    pub fn taps_inside(&self, o: usize) -> Range<usize> {
        let pos = o * self.stride;
        let (lo, hi) = if pos >= self.pad_begin {
            let base = pos - self.pad_begin;
            if base >= self.input {
                (0, 0)
            } else {
                (0, (self.input - base).div_ceil(self.dilation))
            }
        } else {
            let neg = self.pad_begin - pos;
            (
                neg.div_ceil(self.dilation),
                (self.input + neg).div_ceil(self.dilation),
            )
        };
        let hi = hi.min(self.kernel);
        lo.min(hi)..hi
    }

    /// Number of taps of output `o`'s window inside input plus padding
    /// (a ceil-mode window may hang over the end padding).
    pub fn taps_in_padded(&self, o: usize) -> usize {
        let padded = self.input + self.pad_begin + self.pad_end;
        let pos = o * self.stride;
        self.kernel
            .min(padded.saturating_sub(pos).div_ceil(self.dilation))
    }

    /// Input coordinate of tap `k` of output `o`; `None` inside the padding.
    pub fn coord(&self, o: usize, k: usize) -> Option<usize> {
        (o * self.stride + k * self.dilation)
            .checked_sub(self.pad_begin)
            .filter(|&c| c < self.input)
    }

    /// Fails if some window reads only padding (possible with large pads or
    /// dilation); pooling has no meaningful value there.
    pub fn check_windows_nonempty(&self, op: &str, name: &str) -> Result<(), TensorError> {
        match (0..self.output).find(|&o| self.taps_inside(o).is_empty()) {
            None => Ok(()),
            Some(o) => Err(TensorError::InvalidArgument(format!(
                "{op}: pooling window at output {name} {o} covers only padding (input {}, kernel {}, stride {}, dilation {}, pads {}+{})",
                self.input, self.kernel, self.stride, self.dilation, self.pad_begin, self.pad_end
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(
        input: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
        pads: (usize, usize),
        ceil_mode: bool,
    ) -> Result<WindowAxis, TensorError> {
        WindowAxis::new(
            "test",
            AxisSpec {
                name: "height",
                input,
                kernel,
                stride,
                dilation,
                pad_begin: pads.0,
                pad_end: pads.1,
                ceil_mode,
            },
        )
    }

    #[test]
    fn output_lengths() {
        assert_eq!(axis(5, 3, 1, 1, (0, 0), false).unwrap().output, 3);
        assert_eq!(axis(5, 3, 1, 1, (1, 1), false).unwrap().output, 5);
        assert_eq!(axis(5, 3, 2, 1, (0, 0), false).unwrap().output, 2);
        assert_eq!(axis(7, 3, 1, 2, (0, 0), false).unwrap().output, 3);
        assert_eq!(axis(6, 3, 2, 1, (0, 0), false).unwrap().output, 2);
        assert_eq!(axis(6, 3, 2, 1, (0, 0), true).unwrap().output, 3);
        // Ceil mode would start the last window in the end padding: dropped.
        assert_eq!(axis(5, 2, 2, 1, (0, 1), true).unwrap().output, 3);
        assert_eq!(axis(4, 2, 2, 1, (0, 1), true).unwrap().output, 2);
    }

    #[test]
    fn output_errors() {
        assert!(
            matches!(axis(2, 3, 1, 1, (0, 0), false), Err(TensorError::InvalidArgument(m)) if m.contains("< 1"))
        );
        assert!(axis(3, 2, 1, 3, (0, 0), false).is_err());
        assert!(axis(3, 2, 0, 1, (0, 0), false).is_err());
        assert!(axis(3, 2, 1, 0, (0, 0), false).is_err());
        assert!(axis(3, 0, 1, 1, (0, 0), false).is_err());
        assert!(axis(0, 1, 1, 1, (0, 0), false).is_err());
        assert!(matches!(
            axis(3, 2, 1, 1, (usize::MAX, 0), false),
            Err(TensorError::TooLarge(_))
        ));
        assert!(matches!(
            axis(3, usize::MAX, 1, 2, (0, 0), false),
            Err(TensorError::TooLarge(_))
        ));
    }

    #[test]
    fn ranges_match_coordinates() {
        for input in 1..7 {
            for kernel in 1..4 {
                for stride in 1..4 {
                    for dilation in 1..3 {
                        for pb in 0..4 {
                            for pe in 0..4 {
                                for ceil in [false, true] {
                                    let Ok(a) =
                                        axis(input, kernel, stride, dilation, (pb, pe), ceil)
                                    else {
                                        continue;
                                    };
                                    for k in 0..kernel {
                                        let r = a.outputs_hitting(k);
                                        for o in 0..a.output {
                                            assert_eq!(r.contains(&o), a.coord(o, k).is_some());
                                        }
                                    }
                                    for o in 0..a.output {
                                        let r = a.taps_inside(o);
                                        for k in 0..kernel {
                                            assert_eq!(r.contains(&k), a.coord(o, k).is_some());
                                        }
                                        let padded = (0..kernel)
                                            .filter(|&k| {
                                                o * stride + k * dilation < input + pb + pe
                                            })
                                            .count();
                                        assert_eq!(a.taps_in_padded(o), padded);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn same_upper_padding() {
        let p = Padding::same_upper([5, 6], [3, 3], [2, 2], [1, 1]).unwrap();
        // Heights: out 3 needs 2*2+3 = 7 rows: 1 above, 1 below.
        // Widths: out 3 needs 7 of 6 columns: the odd one goes right.
        assert_eq!(
            p,
            Padding {
                top: 1,
                bottom: 1,
                left: 0,
                right: 1
            }
        );
        assert!(Padding::same_upper([5, 6], [3, 3], [0, 2], [1, 1]).is_err());
    }
}
