//! Human-readable tensor values (nested brackets, six significant digits, truncated when long)
//! and sizes (KiB, MiB). Used by `kiln run` summaries, `kiln bench` and by `run` filetests.

use ir::{Data, Tensor};

/// A size for people: `512 bytes`, `3.4 KiB`, `136.0 MiB`, `1.25 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let digits = if v < 10.0 { 2 } else { 1 };
    format!("{v:.digits$} {}", UNITS[unit])
}

/// A float with six significant digits, in the shortest form that shows them.
pub fn float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let rounded: f64 = format!("{x:.5e}").parse().unwrap_or(x);
    let a = rounded.abs();
    if (1e-4..1e7).contains(&a) {
        format!("{rounded}")
    } else {
        format!("{rounded:e}")
    }
}

fn element(d: &Data, i: usize) -> String {
    match d {
        Data::Bool(v) => v[i].to_string(),
        d if d.dtype().is_float() => float(d.get_f64(i)),
        d => d.get_i128(i).to_string(),
    }
}

/// All elements in nested brackets (`[[1, 2], [3, 4]]`); a scalar prints bare.
pub fn values(t: &Tensor) -> String {
    fn rec(t: &Tensor, axis: usize, base: usize, out: &mut String) {
        let shape = t.shape();
        if axis == shape.len() {
            out.push_str(&element(t.data(), base));
            return;
        }
        let inner: usize = shape[axis + 1..].iter().product();
        out.push('[');
        for i in 0..shape[axis] {
            if i > 0 {
                out.push_str(", ");
            }
            rec(t, axis + 1, base + i * inner, out);
        }
        out.push(']');
    }
    let mut s = String::new();
    rec(t, 0, 0, &mut s);
    s
}

/// The first `n` elements in flat order, with an ellipsis when there are more.
pub fn head(t: &Tensor, n: usize) -> String {
    let k = t.numel().min(n);
    let items: Vec<String> = (0..k).map(|i| element(t.data(), i)).collect();
    let more = if t.numel() > n { ", ..." } else { "" };
    format!("[{}{more}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(1023), "1023 bytes");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(142_639_232), "136.0 MiB");
        assert_eq!(bytes(3 << 30), "3.00 GiB");
    }

    #[test]
    fn six_significant_digits() {
        assert_eq!(float(1.0), "1");
        assert_eq!(float(0.1f32 as f64), "0.1");
        assert_eq!(float(1.0 / 3.0), "0.333333");
        assert_eq!(float(123456789.0), "1.23457e8");
        assert_eq!(float(-2.5e-7), "-2.5e-7");
    }

    #[test]
    fn nested() {
        let t = Tensor::from_vec(vec![2, 2], vec![1i32, 2, 3, 4]).unwrap();
        assert_eq!(values(&t), "[[1, 2], [3, 4]]");
        assert_eq!(values(&Tensor::scalar(true)), "true");
        assert_eq!(head(&t, 3), "[1, 2, 3, ...]");
    }
}
