//! Validated input vectors: a dense row-major `n × dim` f32 matrix.

use crate::error::{Error, Result};

/// `n` finite vectors of one dimension, stored row-major.
///
/// Construction checks the input once (empty, ragged, non-finite) so every algorithm can rely
/// on it. Negative zeros are stored as `+0.0`, so equal vectors have equal bits.
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    data: Vec<f32>,
    n_rows: usize,
    dim: usize,
}

impl Points {
    /// Builds from one slice per vector; all must share row 0's length.
    pub fn from_rows<R: AsRef<[f32]>>(rows: &[R]) -> Result<Self> {
        let first = rows.first().ok_or(Error::EmptyInput)?;
        let dim = first.as_ref().len();
        if dim == 0 {
            return Err(Error::ZeroDimension);
        }
        let mut data = Vec::with_capacity(rows.len() * dim);
        for (row_index, row) in rows.iter().enumerate() {
            let row = row.as_ref();
            if row.len() != dim {
                return Err(Error::DimensionMismatch {
                    row: row_index,
                    expected: dim,
                    actual: row.len(),
                });
            }
            data.extend_from_slice(row);
        }
        Self::from_flat(data, dim)
    }

    /// Builds from a flat row-major buffer of `n × dim` values.
    pub fn from_flat(mut data: Vec<f32>, dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(Error::ZeroDimension);
        }
        if data.is_empty() {
            return Err(Error::EmptyInput);
        }
        if !data.len().is_multiple_of(dim) {
            return Err(Error::RaggedBuffer {
                len: data.len(),
                dim,
            });
        }
        if let Some(position) = data.iter().position(|value| !value.is_finite()) {
            return Err(Error::NonFinite {
                row: position / dim,
                column: position % dim,
                value: data[position],
            });
        }
        for value in &mut data {
            // -0.0 + 0.0 == +0.0: one bit pattern per number keeps content hashing exact.
            *value += 0.0;
        }
        let n_rows = data.len() / dim;
        Ok(Self { data, n_rows, dim })
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn row(&self, index: usize) -> &[f32] {
        &self.data[index * self.dim..(index + 1) * self.dim]
    }

    pub fn as_flat(&self) -> &[f32] {
        &self.data
    }

    /// The rows at `indices`, in that order (indices may repeat).
    pub fn select(&self, indices: &[usize]) -> Self {
        let mut data = Vec::with_capacity(indices.len() * self.dim);
        for &index in indices {
            data.extend_from_slice(self.row(index));
        }
        Self {
            data,
            n_rows: indices.len(),
            dim: self.dim,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_is_rejected() {
        let rows: Vec<Vec<f32>> = Vec::new();
        assert!(matches!(Points::from_rows(&rows), Err(Error::EmptyInput)));
        assert!(matches!(
            Points::from_flat(Vec::new(), 3),
            Err(Error::EmptyInput)
        ));
        assert!(matches!(
            Points::from_rows(&[Vec::<f32>::new()]),
            Err(Error::ZeroDimension)
        ));
    }

    #[test]
    fn mismatched_dimensions_name_row_and_sizes() {
        let rows = vec![vec![1.0, 2.0, 3.0], vec![1.0, 2.0, 3.0], vec![1.0, 2.0]];
        let error = Points::from_rows(&rows).unwrap_err();
        assert!(matches!(
            error,
            Error::DimensionMismatch {
                row: 2,
                expected: 3,
                actual: 2
            }
        ));
        assert_eq!(
            error.to_string(),
            "row 2: expected 3 dimensions (as row 0), got 2"
        );
        assert!(matches!(
            Points::from_flat(vec![0.0; 7], 3),
            Err(Error::RaggedBuffer { len: 7, dim: 3 })
        ));
    }

    #[test]
    fn nan_and_infinity_name_row_and_column() {
        let rows = vec![vec![1.0, 2.0], vec![0.5, f32::NAN]];
        let error = Points::from_rows(&rows).unwrap_err();
        assert!(matches!(error, Error::NonFinite { row: 1, column: 1, value } if value.is_nan()));
        assert!(error.to_string().starts_with("row 1, column 1: non-finite"));
        let error = Points::from_flat(vec![0.0, 0.0, f32::INFINITY, 1.0], 2).unwrap_err();
        assert!(matches!(
            error,
            Error::NonFinite {
                row: 1,
                column: 0,
                ..
            }
        ));
    }

    #[test]
    fn negative_zero_is_normalised_and_rows_round_trip() {
        let points = Points::from_rows(&[[-0.0f32, 1.0], [2.0, 3.0]]).unwrap();
        assert_eq!(points.row(0)[0].to_bits(), 0.0f32.to_bits());
        assert_eq!(points.row(1), &[2.0, 3.0]);
        assert_eq!((points.n_rows(), points.dim()), (2, 2));
        assert_eq!(points.select(&[1, 1]).as_flat(), &[2.0, 3.0, 2.0, 3.0]);
    }
}
