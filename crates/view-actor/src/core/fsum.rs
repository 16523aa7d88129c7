//! An exact sum of doubles, so that `sum` and `avg` over floats stay exact when values are
//! retracted: adding 1e17 and 1.0, then retracting 1e17, leaves exactly 1.0.
//!
//! Every finite double is an integer multiple of 2^-1074 below 2^1024, so a two's complement
//! fixed-point integer of [`LIMBS`] 64-bit limbs holds the sum of up to 2^100 of them exactly.
//! The value is that integer rounded once, to nearest even. Infinities and NaNs are counted
//! apart, so that retracting one leaves the finite sum as it was.

use serde::{Deserialize, Serialize};

const LIMBS: usize = 35;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Repr", into = "Repr")]
pub struct ExactSum {
    limbs: [u64; LIMBS],
    pos_inf: i64,
    neg_inf: i64,
    nan: i64,
}

/// The stored form: the magnitude's non-zero limbs and a sign, so that a typical sum takes a
/// few numbers rather than 35.
#[derive(Serialize, Deserialize)]
struct Repr {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    neg: bool,
    limbs: Vec<(u8, u64)>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pos_inf: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    neg_inf: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    nan: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl Default for ExactSum {
    fn default() -> Self {
        ExactSum {
            limbs: [0; LIMBS],
            pos_inf: 0,
            neg_inf: 0,
            nan: 0,
        }
    }
}

fn negate(limbs: &mut [u64; LIMBS]) {
    let mut carry = true;
    for l in limbs.iter_mut() {
        let (v, c) = (!*l).overflowing_add(u64::from(carry));
        *l = v;
        carry = c;
    }
}

fn is_negative(limbs: &[u64; LIMBS]) -> bool {
    limbs[LIMBS - 1] >> 63 == 1
}

impl From<Repr> for ExactSum {
    fn from(r: Repr) -> ExactSum {
        let mut limbs = [0u64; LIMBS];
        for (i, l) in r.limbs {
            if let Some(slot) = limbs.get_mut(usize::from(i)) {
                *slot = l;
            }
        }
        if r.neg {
            negate(&mut limbs);
        }
        ExactSum {
            limbs,
            pos_inf: r.pos_inf,
            neg_inf: r.neg_inf,
            nan: r.nan,
        }
    }
}

impl From<ExactSum> for Repr {
    fn from(s: ExactSum) -> Repr {
        let mut mag = s.limbs;
        let neg = is_negative(&mag);
        if neg {
            negate(&mut mag);
        }
        Repr {
            neg,
            limbs: mag
                .iter()
                .enumerate()
                .filter(|(_, l)| **l != 0)
                .map(|(i, l)| (i as u8, *l))
                .collect(),
            pos_inf: s.pos_inf,
            neg_inf: s.neg_inf,
            nan: s.nan,
        }
    }
}

/// 2^e for e in the normal range.
fn pow2(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

impl ExactSum {
    /// Adds (`sign` 1) or retracts (`sign` -1) `x`.
    pub fn add(&mut self, x: f64, sign: i64) {
        if x.is_nan() {
            self.nan += sign;
            return;
        }
        if x.is_infinite() {
            if x > 0.0 {
                self.pos_inf += sign;
            } else {
                self.neg_inf += sign;
            }
            return;
        }
        let bits = x.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as usize;
        let frac = bits & ((1u64 << 52) - 1);
        let (m, shift) = if exp == 0 {
            (frac, 0)
        } else {
            (frac | (1u64 << 52), exp - 1)
        };
        if m == 0 {
            return;
        }
        // m * 2^shift in units of 2^-1074, as a multi-limb number.
        let mut addend = [0u64; LIMBS];
        let (limb, bit) = (shift / 64, shift % 64);
        let wide = u128::from(m) << bit;
        addend[limb] = wide as u64;
        if limb + 1 < LIMBS {
            addend[limb + 1] = (wide >> 64) as u64;
        }
        if (x < 0.0) != (sign < 0) {
            negate(&mut addend);
        }
        let mut carry = false;
        for (l, a) in self.limbs.iter_mut().zip(addend) {
            let (v, c1) = l.overflowing_add(a);
            let (v, c2) = v.overflowing_add(u64::from(carry));
            *l = v;
            carry = c1 || c2;
        }
    }

    /// The sum, rounded once to the nearest double (ties to even).
    pub fn value(&self) -> f64 {
        if self.nan > 0 || (self.pos_inf > 0 && self.neg_inf > 0) {
            return f64::NAN;
        }
        if self.pos_inf > 0 {
            return f64::INFINITY;
        }
        if self.neg_inf > 0 {
            return f64::NEG_INFINITY;
        }
        let mut mag = self.limbs;
        let neg = is_negative(&mag);
        if neg {
            negate(&mut mag);
        }
        let Some(top) = (0..LIMBS).rev().find(|&i| mag[i] != 0) else {
            return 0.0;
        };
        let h = top * 64 + 63 - mag[top].leading_zeros() as usize;
        let bit = |i: usize| (mag[i / 64] >> (i % 64)) & 1 == 1;
        let v = if h < 53 {
            // Exactly representable: at most 53 significant bits.
            (mag[0] as f64) * pow2(-1022) * pow2(-52)
        } else {
            let mut q: u64 = 0;
            for i in (h - 52..=h).rev() {
                q = (q << 1) | u64::from(bit(i));
            }
            let round = bit(h - 53);
            let sticky = (0..h - 53).any(bit);
            let mut e = h as i32 - 52 - 1074;
            if round && (sticky || q & 1 == 1) {
                q += 1;
                if q == 1u64 << 53 {
                    q >>= 1;
                    e += 1;
                }
            }
            let q = q as f64;
            if e > 1023 {
                q * pow2(1023) * pow2((e - 1023).min(1023))
            } else if e < -1022 {
                q * pow2(-1022) * pow2(e + 1022)
            } else {
                q * pow2(e)
            }
        };
        if neg {
            -v
        } else {
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(xs: &[(f64, i64)]) -> f64 {
        let mut s = ExactSum::default();
        for &(x, sign) in xs {
            s.add(x, sign);
        }
        // Through the stored form, as the store keeps it.
        let json = serde_json::to_string(&s).expect("json");
        let back: ExactSum = serde_json::from_str(&json).expect("back");
        assert_eq!(back, s, "{json}");
        s.value()
    }

    #[test]
    fn retracting_a_large_value_leaves_the_small_one_exactly() {
        assert_eq!(sum(&[(1e17, 1), (1.0, 1), (1e17, -1)]), 1.0);
        assert_eq!(
            sum(&[(0.1, 1), (0.2, 1)]),
            0.30000000000000004,
            "the correctly rounded sum"
        );
        assert_eq!(sum(&[(0.1, 1), (0.2, 1), (0.1, -1)]), 0.2);
        assert_eq!(sum(&[(-2.5, 1), (1.25, 1)]), -1.25);
        assert_eq!(
            sum(&[(f64::MIN_POSITIVE / 4.0, 1), (f64::MIN_POSITIVE / 4.0, 1)]),
            f64::MIN_POSITIVE / 2.0
        );
        assert_eq!(sum(&[(f64::MAX, 1), (f64::MAX, 1)]), f64::INFINITY);
        assert_eq!(
            sum(&[(f64::MAX, 1), (f64::MAX, 1), (f64::MAX, -1)]),
            f64::MAX
        );
        assert!(sum(&[(f64::INFINITY, 1), (f64::NEG_INFINITY, 1)]).is_nan());
        assert_eq!(
            sum(&[(f64::INFINITY, 1), (3.0, 1), (f64::INFINITY, -1)]),
            3.0
        );
        assert_eq!(sum(&[(f64::NAN, 1), (3.0, 1), (f64::NAN, -1)]), 3.0);
        assert_eq!(sum(&[]), 0.0);
    }

    #[test]
    fn matches_a_correctly_rounded_sum_of_many_values() {
        // Integers times a power of two sum exactly in f64 as long as they fit: a reference.
        let mut s = ExactSum::default();
        let mut reference = 0.0f64;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = ((x % 2_000_001) as f64 - 1_000_000.0) * 0.125;
            s.add(v, 1);
            reference += v;
        }
        assert_eq!(s.value(), reference);
    }
}
