//! The scalar maths of the fused kernels, written branch-free and `inline(always)` so that it
//! vectorises inside their `WithSimd` loops: the normal CDF and density (GELU), erfc, `exp`
//! and Estrin's polynomial scheme. `tests` bound each against libm in f64.

/// Φ(x), the standard normal CDF: erfc(-x/√2)/2.
#[inline(always)]
pub(super) fn normal_cdf(x: f32) -> f32 {
    0.5 * erfc(-x * std::f32::consts::FRAC_1_SQRT_2)
}

/// φ(x), the standard normal density.
#[inline(always)]
pub(super) fn normal_pdf(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    INV_SQRT_2PI * exp(-0.5 * x * x)
}

/// erfc by the Chebyshev fit of Numerical Recipes (2nd ed., section 6.2, `erfcc`): fractional
/// error below 1.2e-7 for every x. Branch-free so it vectorises; `mul_add` is one FMA
/// instruction in the AVX2 and AVX-512 builds (only an x86 CPU without FMA would fall back to
/// a slower software fma).
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, digit for digit
fn erfc(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    // Highest power first, for Horner's rule.
    const C: [f32; 10] = [
        0.170_872_77,
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ];
    let r = t * exp(estrin(&C, t) - z * z);
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The polynomial Σ c[i] tⁿ⁻¹⁻ⁱ (coefficients highest power first) by Estrin's scheme:
/// neighbouring coefficients paired through t, the pairs through t², then t⁴ and so on. That is
/// a chain of about log₂ n dependent multiply-adds where Horner's rule has n, and GELU's `erfc`
/// (n = 10) is bound by that chain's latency: GELU on 4M values took 7.2-8.0 ms against
/// 8.1-10.0 ms with Horner's rule (one thread, AVX2; the values differ by at most 1.2e-7).
/// `exp`'s 6 terms gain nothing measurable (it is bound by memory there) and stay with Horner.
#[inline(always)]
fn estrin<const N: usize>(c: &[f32; N], t: f32) -> f32 {
    // Lowest power first; each round halves the terms (the constant bounds unroll fully).
    let mut terms = [0.0f32; N];
    for (i, term) in terms.iter_mut().enumerate() {
        *term = c[N - 1 - i];
    }
    let (mut len, mut power) = (N, t);
    while len > 1 {
        let half = len.div_ceil(2);
        for i in 0..half {
            terms[i] = if 2 * i + 1 < len { terms[2 * i + 1].mul_add(power, terms[2 * i]) } else { terms[2 * i] };
        }
        len = half;
        power *= power;
    }
    terms[0]
}

/// e^x for f32 (Cephes `expf`: x = k ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial,
/// 2^k through the exponent bits). Inputs are clamped to the normal range (underflow gives
/// about 1e-38, not 0). Branch-free so it vectorises.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, digit for digit
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so k * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    // k as an integer, from the low bits of `shifted` (a float-to-int cast would not vectorise).
    let k_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - k * LN2_HI - k * LN2_LO;
    const C: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];
    let p = C.iter().fold(0.0f32, |p, &c| p.mul_add(r, c));
    let er = (p * r).mul_add(r, r) + 1.0;
    let scale = f32::from_bits(((k_int + 127) as u32) << 23);
    er * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Φ in f64 (libm's erfc), the reference for the bounds below.
    fn normal_cdf_f64(x: f64) -> f64 {
        0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
    }

    /// Estrin's scheme gives Horner's polynomial: for every length up to 12 (odd and even),
    /// on arguments in and out of [0, 1].
    #[test]
    fn estrin_equals_horner() {
        fn check<const N: usize>() {
            let c: [f32; N] = std::array::from_fn(|i| ((i * 37) % 11) as f32 * 0.25 - 1.2);
            for t in [-1.5f32, -0.3, 0.0, 0.4, 0.77, 1.0, 2.5] {
                let horner = c.iter().fold(0.0f64, |p, &c| p * t as f64 + c as f64);
                let got = estrin(&c, t) as f64;
                assert!(
                    (got - horner).abs() <= 1e-5 * horner.abs().max(1.0),
                    "n = {N}, t = {t}: {got} against {horner}"
                );
            }
        }
        check::<1>();
        check::<2>();
        check::<3>();
        check::<5>();
        check::<6>();
        check::<9>();
        check::<10>();
        check::<12>();
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "exp: worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) < 1e-37 && exp(-200.0) >= 0.0);
    }

    /// Φ and GELU against f64: absolutely within about one f32 ulp of 1 everywhere (measured
    /// 1.2e-7), relatively within 2e-6 wherever Φ > 1e-3 (measured 1.0e-6, where e^(-x²/2)'s
    /// argument rounds in f32; burn's `1 + erf` form errs by up to 6e-5 there and rounds Φ to 0
    /// below x = -5.5).
    #[test]
    fn normal_cdf_and_gelu_match_f64_within_f32_precision() {
        let (mut abs_cdf, mut rel_cdf, mut abs_gelu, mut abs_grad) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let mut x = -12.0f32;
        while x < 12.0 {
            let xd = x as f64;
            let cdf = normal_cdf_f64(xd);
            let got = normal_cdf(x) as f64;
            abs_cdf = abs_cdf.max((got - cdf).abs());
            if cdf > 1e-3 {
                rel_cdf = rel_cdf.max((got - cdf).abs() / cdf);
            }
            let gelu = xd * cdf;
            abs_gelu = abs_gelu.max(((x * normal_cdf(x)) as f64 - gelu).abs() / xd.abs().max(1.0));
            let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let grad = (normal_cdf(x) + x * normal_pdf(x)) as f64;
            abs_grad = abs_grad.max((grad - (cdf + xd * pdf)).abs());
            x += 0.00731;
        }
        assert!(abs_cdf < 2.5e-7, "Φ: worst absolute error {abs_cdf:e}");
        assert!(rel_cdf < 2e-6, "Φ: worst relative error where Φ > 1e-3: {rel_cdf:e}");
        assert!(abs_gelu < 2.5e-7, "GELU: worst error {abs_gelu:e} (relative to max(|x|, 1))");
        assert!(abs_grad < 5e-7, "GELU': worst absolute error {abs_grad:e}");
    }
}
