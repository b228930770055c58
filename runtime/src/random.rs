//! Deterministic pseudo-random tensors for tests, examples and `kiln run --random-inputs`.

use ir::{DType, Data, Tensor};

/// SplitMix64: tiny, fast, and the same sequence on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// A tensor with floats uniform in [-1, 1), integers in [0, 10) and random bools.
    pub fn tensor(&mut self, dtype: DType, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let data = match dtype {
            d if d.is_float() => {
                let v: Vec<f64> = (0..n).map(|_| self.range(-1.0, 1.0)).collect();
                Data::from_f64s(d, &v)
            }
            DType::Bool => Data::Bool((0..n).map(|_| self.next_u64() & 1 == 1).collect()),
            d => {
                let v: Vec<i128> = (0..n).map(|_| (self.next_u64() % 10) as i128).collect();
                Data::from_i128s(d, &v)
            }
        };
        Tensor::new(shape.to_vec(), data).expect("length matches shape")
    }

    /// Floats with the given scale, e.g. weights `N(0, 1)`-ish scaled by 1/sqrt(fan_in).
    pub fn weights(&mut self, shape: &[usize], scale: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| (self.range(-1.0, 1.0) * scale) as f32)
            .collect();
        Tensor::from_vec(shape.to_vec(), v).expect("length matches shape")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let a = Rng::new(7).tensor(DType::F32, &[100]);
        let b = Rng::new(7).tensor(DType::F32, &[100]);
        assert_eq!(a, b);
        assert!(a.to_f64_vec().iter().all(|x| (-1.0..1.0).contains(x)));
        let i = Rng::new(1).tensor(DType::U8, &[50]);
        assert!(i.to_f64_vec().iter().all(|&x| (0.0..10.0).contains(&x)));
    }
}
