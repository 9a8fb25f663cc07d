//! The packed form of a record's samples in the `samples` table: `(series_id, value)` pairs as
//! 16-byte little-endian pairs sorted by id, one row per record.
//!
//! Must never change the byte layout: every stored row is in it.

use super::StoreError;

/// Packs a record's samples as sorted `(series_id i64 LE, value f64 LE)` pairs. A series twice
/// in one record keeps its last value.
pub(super) fn pack_points(mut points: Vec<(i64, f64)>) -> Vec<u8> {
    points.sort_by_key(|(id, _)| *id);
    points.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            earlier.1 = later.1;
        }
        same
    });
    let mut out = Vec::with_capacity(points.len() * 16);
    for (id, value) in points {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// The value of `series_id` in a packed row, if the record had it.
pub(super) fn find_point(packed: &[u8], series_id: i64) -> Result<Option<f64>, StoreError> {
    if !packed.len().is_multiple_of(16) {
        return Err(StoreError::Corrupt(format!(
            "a packed sample row is {} bytes, not a multiple of 16",
            packed.len()
        )));
    }
    let pair = |i: usize| {
        let at = i * 16;
        let id = i64::from_le_bytes(packed[at..at + 8].try_into().expect("8 bytes"));
        let value = f64::from_le_bytes(packed[at + 8..at + 16].try_into().expect("8 bytes"));
        (id, value)
    };
    let (mut low, mut high) = (0, packed.len() / 16);
    while low < high {
        let mid = (low + high) / 2;
        let (id, value) = pair(mid);
        match id.cmp(&series_id) {
            std::cmp::Ordering::Equal => return Ok(Some(value)),
            std::cmp::Ordering::Less => low = mid + 1,
            std::cmp::Ordering::Greater => high = mid,
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_points_find_every_series_and_no_other() {
        let packed = pack_points(vec![(9, 0.5), (2, 1.5), (5, -3.0), (2, 2.5)]);
        assert_eq!(packed.len(), 3 * 16);
        assert_eq!(find_point(&packed, 2).unwrap(), Some(2.5));
        assert_eq!(find_point(&packed, 5).unwrap(), Some(-3.0));
        assert_eq!(find_point(&packed, 9).unwrap(), Some(0.5));
        assert_eq!(find_point(&packed, 3).unwrap(), None);
        assert_eq!(find_point(&[], 3).unwrap(), None);
        assert!(find_point(&[0u8; 5], 3).is_err());
    }
}
