//! Quantized K/V formats on the host: the byte layouts the kernels decode
//! ([`DType::Q8_0`], [`DType::Q4_0`], [`DType::I8`], [`DType::E4M3`], [`DType::E5M2`]), with
//! quantizers that follow the published definitions (ggml's reference `quantize_row_q8_0`
//! and `quantize_row_q4_0`, the OCP 8-bit float formats) and the exact dequantization the
//! reference computes with.
//!
//! A row is one token of one head: `row_len` values (the head dim), which for the block
//! formats is a whole number of 32-value blocks. Rows are stored back to back, each in
//! [`DType::bytes`]`(row_len)` bytes.
//!
//! ```
//! use wgpu_attention::{DType, quant};
//! let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 8.0).collect();
//! let (bytes, scales) = quant::quantize_rows(DType::Q8_0, &x, 32, None);
//! assert_eq!(bytes.len(), 2 * 34);
//! let y = quant::dequantize_rows(DType::Q8_0, &bytes, 32, &scales);
//! assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 0.02));
//! ```

use crate::data::tensor::DType;
use half::f16;

/// The largest finite E4M3 ("FN") value.
pub const E4M3_MAX: f32 = 448.0;
/// The largest finite E5M2 value.
pub const E5M2_MAX: f32 = 57344.0;

/// The value of an OCP E4M3 ("FN") byte: bias 7, subnormals, no infinities, `S.1111.111`
/// is NaN.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 0xf) as i32;
    let m = (b & 7) as f32;
    if b & 0x7f == 0x7f {
        return f32::NAN;
    }
    let mag = if e == 0 {
        m / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m / 8.0) * 2f32.powi(e - 7)
    };
    sign * mag
}

/// The value of an OCP E5M2 byte: the top byte of an IEEE half.
pub fn e5m2_to_f32(b: u8) -> f32 {
    f16::from_bits((b as u16) << 8).to_f32()
}

/// The 8-bit float nearest `x` (ties to the even code), saturating at the format's largest
/// finite value; NaN stays NaN.
fn to_fp8(x: f32, max_code: u8, nan: u8, decode: fn(u8) -> f32) -> u8 {
    if x.is_nan() {
        return nan;
    }
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    // Positive codes 0..=max_code increase with their value: the largest at or below a.
    let (mut lo, mut hi) = (0u8, max_code);
    if a >= decode(max_code) {
        return sign | max_code;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if decode(mid) <= a {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (dl, dh) = (a - decode(lo), decode(hi) - a);
    let code = if dl < dh || (dl == dh && lo & 1 == 0) {
        lo
    } else {
        hi
    };
    sign | code
}

/// `x` as the nearest E4M3 byte (ties to even, saturating at ±448).
pub fn f32_to_e4m3(x: f32) -> u8 {
    to_fp8(x, 0x7e, 0x7f, e4m3_to_f32)
}

/// `x` as the nearest E5M2 byte (ties to even, saturating at ±57344).
pub fn f32_to_e5m2(x: f32) -> u8 {
    to_fp8(x, 0x7b, 0x7f, e5m2_to_f32)
}

/// Quantizes rows of `row_len` values into `dtype`'s bytes; returns the bytes and the rows'
/// scales as [`dequantize_rows`] takes them.
///
/// - [`DType::Q8_0`], [`DType::Q4_0`]: ggml's reference quantizers, block by block (no
///   scales returned: the blocks hold them).
/// - [`DType::I8`]: a scale per row, `max |x| / 127`, and `q = round(x / scale)`.
/// - [`DType::E4M3`], [`DType::E5M2`]: `x / scale` to the nearest 8-bit float (ties to even,
///   saturating), with one scale per row from `scales` (1 where `None`).
///
/// # Panics
/// If `dtype` is not a quantized format, `row_len` is 0, not a multiple of the format's
/// block or does not divide `data.len()`, or `scales` does not have one entry per row.
pub fn quantize_rows(
    dtype: DType,
    data: &[f32],
    row_len: usize,
    scales: Option<&[f32]>,
) -> (Vec<u8>, Vec<f32>) {
    assert!(
        dtype.is_quantized(),
        "{dtype} is not a quantized K/V format"
    );
    assert!(
        row_len > 0 && row_len.is_multiple_of(dtype.block_len() as usize),
        "row length {row_len} for {dtype}"
    );
    assert!(data.len().is_multiple_of(row_len), "rows of {row_len}");
    let rows = data.len() / row_len;
    let mut bytes = Vec::with_capacity(rows * dtype.bytes(row_len as u64) as usize);
    let mut out_scales = Vec::new();
    match dtype {
        DType::Q8_0 => data.chunks(32).for_each(|x| q8_0_block(x, &mut bytes)),
        DType::Q4_0 => data.chunks(32).for_each(|x| q4_0_block(x, &mut bytes)),
        DType::I8 => {
            for row in data.chunks(row_len) {
                let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                bytes.extend(row.iter().map(|x| (x * id).round() as i8 as u8));
                out_scales.push(d);
            }
        }
        _ => {
            if let Some(s) = scales {
                assert_eq!(s.len(), rows, "one scale per row");
            }
            let enc = if dtype == DType::E4M3 {
                f32_to_e4m3
            } else {
                f32_to_e5m2
            };
            for (r, row) in data.chunks(row_len).enumerate() {
                let s = scales.map_or(1.0, |s| s[r]);
                bytes.extend(row.iter().map(|&x| enc(x / s)));
                out_scales.push(s);
            }
        }
    }
    (bytes, out_scales)
}

/// ggml's `quantize_row_q8_0_ref` for one block: `d = max|x| / 127`, `q = round(x / d)`.
fn q8_0_block(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

/// ggml's `quantize_row_q4_0_ref` for one block: `d = max / -8` for the value of largest
/// magnitude, nibbles `min(15, trunc(x / d + 8.5))`, value `i` in byte `i`'s low nibble and
/// value `i + 16` in its high one.
fn q4_0_block(x: &[f32], out: &mut Vec<u8>) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16::from_f32(d).to_le_bytes());
    let nib = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    out.extend((0..16).map(|j| nib(x[j]) | (nib(x[j + 16]) << 4)));
}

/// The values of rows of `row_len` quantized values (as the kernels decode them): `scales`
/// has one entry per row for [`DType::I8`] and the 8-bit floats, and is ignored by the block
/// formats.
///
/// # Panics
/// As [`quantize_rows`], or if `bytes` is not a whole number of rows.
pub fn dequantize_rows(dtype: DType, bytes: &[u8], row_len: usize, scales: &[f32]) -> Vec<f32> {
    assert!(
        dtype.is_quantized(),
        "{dtype} is not a quantized K/V format"
    );
    let row_bytes = dtype.bytes(row_len as u64) as usize;
    assert!(row_bytes > 0 && bytes.len().is_multiple_of(row_bytes));
    let mut out = Vec::with_capacity(bytes.len() / row_bytes * row_len);
    for (r, row) in bytes.chunks(row_bytes).enumerate() {
        match dtype {
            DType::Q8_0 | DType::Q4_0 => {
                for blk in row.chunks(dtype.size() as usize) {
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let qs = &blk[2..];
                    if dtype == DType::Q8_0 {
                        out.extend(qs.iter().map(|&q| d * q as i8 as f32));
                    } else {
                        out.extend(qs.iter().map(|&q| d * ((q & 15) as f32 - 8.0)));
                        out.extend(qs.iter().map(|&q| d * ((q >> 4) as f32 - 8.0)));
                    }
                }
            }
            DType::I8 => out.extend(row.iter().map(|&q| scales[r] * q as i8 as f32)),
            DType::E4M3 => out.extend(row.iter().map(|&q| scales[r] * e4m3_to_f32(q))),
            _ => out.extend(row.iter().map(|&q| scales[r] * e5m2_to_f32(q))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_decoding_follows_the_ocp_tables() {
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0xb8), -1.0);
        assert!(e4m3_to_f32(0xff).is_nan());
        assert_eq!(e5m2_to_f32(0x7b), 57344.0);
        assert_eq!(e5m2_to_f32(0x3c), 1.0);
        assert_eq!(e5m2_to_f32(0x01), 2f32.powi(-16));
        assert!(e5m2_to_f32(0x7c).is_infinite());
    }

    #[test]
    fn fp8_encoding_rounds_to_nearest_even_and_saturates() {
        for b in 0..=255u8 {
            let x = e4m3_to_f32(b);
            if !x.is_nan() && b != 0x80 {
                assert_eq!(f32_to_e4m3(x), b, "{b:#x}");
            }
            let y = e5m2_to_f32(b);
            if y.is_finite() && b != 0x80 {
                assert_eq!(f32_to_e5m2(y), b, "{b:#x}");
            }
        }
        // 1.0625 is halfway between 1 (0x38, even) and 1.125 (0x39).
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.1875), 0x3a);
        assert_eq!(f32_to_e4m3(1e6), 0x7e);
        assert_eq!(f32_to_e5m2(-1e9), 0xfb);
    }

    #[test]
    fn gguf_blocks_have_their_published_layout() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let (b, _) = quantize_rows(DType::Q8_0, &x, 32, None);
        assert_eq!(b.len(), 34);
        assert_eq!(
            f16::from_le_bytes([b[0], b[1]]).to_f32(),
            f16::from_f32(16.0 / 127.0).to_f32()
        );
        assert_eq!(b[2] as i8, -127);
        let (b, _) = quantize_rows(DType::Q4_0, &x, 32, None);
        assert_eq!(b.len(), 18);
        // The largest magnitude is -16: d = 2, and -16 is nibble 0 (value 0, low nibble).
        assert_eq!(f16::from_le_bytes([b[0], b[1]]).to_f32(), 2.0);
        assert_eq!(b[2] & 15, 0);
        // Value 16 (x = 0) is byte 0's high nibble: 0 / 2 + 8.5 truncates to 8.
        assert_eq!(b[2] >> 4, 8);
        let y = dequantize_rows(DType::Q4_0, &b, 32, &[]);
        assert_eq!(y[0], -16.0);
        assert_eq!(y[16], 0.0);
    }
}
