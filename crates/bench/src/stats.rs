//! Order statistics over small samples.

/// Sorted copy; NaNs are dropped.
pub fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// Median (mean of the two middle values for an even count).
pub fn median(xs: &[f64]) -> Option<f64> {
    let v = sorted(xs);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Distribution-free 95% confidence interval of the median: the order statistics
/// x(k) and x(n+1-k) with the largest k such that P(Binomial(n, 1/2) < k) <= 2.5%.
/// `None` below 6 samples (too few for any such k).
pub fn median_ci95(xs: &[f64]) -> Option<(f64, f64)> {
    let v = sorted(xs);
    let n = v.len();
    // cdf[j] = P(B <= j) for B ~ Binomial(n, 1/2), via log-space terms.
    let mut k = 0usize;
    let mut cdf = 0.0f64;
    let mut log_c = 0.0f64; // ln C(n, j)
    for j in 0..n {
        if j > 0 {
            log_c += ((n - j + 1) as f64).ln() - (j as f64).ln();
        }
        cdf += (log_c - n as f64 * std::f64::consts::LN_2).exp();
        // P(B < j+1) = cdf: k = j+1 is allowed while that is <= 2.5%.
        if cdf <= 0.025 {
            k = j + 1;
        } else {
            break;
        }
    }
    if k == 0 {
        return None;
    }
    Some((v[k - 1], v[n - k]))
}

/// Nearest-rank percentile: the smallest sample with at least `p`% of the samples at or
/// below it. p99 of 200 samples is the 198th smallest.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    let v = sorted(xs);
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

pub fn min(xs: &[f64]) -> Option<f64> {
    sorted(xs).first().copied()
}

pub fn max(xs: &[f64]) -> Option<f64> {
    sorted(xs).last().copied()
}

pub fn mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        None
    } else {
        Some(xs.iter().sum::<f64>() / xs.len() as f64)
    }
}

/// Coefficient of variation (sample standard deviation / mean).
pub fn cv(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs)?;
    let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64;
    Some(var.sqrt() / m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn percentile_nearest_rank() {
        let xs: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&xs, 99.0), Some(198.0));
        assert_eq!(percentile(&xs, 50.0), Some(100.0));
        assert_eq!(percentile(&xs, 100.0), Some(200.0));
        assert_eq!(percentile(&[5.0], 99.0), Some(5.0));
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
    }

    #[test]
    fn median_ci() {
        assert_eq!(median_ci95(&[1.0, 2.0, 3.0, 4.0, 5.0]), None);
        // n = 6: P(B <= 0) = 1/64 <= 2.5%, so k = 1: the extremes.
        assert_eq!(median_ci95(&[6.0, 1.0, 2.0, 3.0, 4.0, 5.0]), Some((1.0, 6.0)));
        // n = 20: the classic table gives k = 6 (x(6), x(15)).
        let xs: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(median_ci95(&xs), Some((6.0, 15.0)));
        // n = 100: k = 40 (x(40), x(61)).
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(median_ci95(&xs), Some((40.0, 61.0)));
    }

    #[test]
    fn spread() {
        assert_eq!(min(&[2.0, 1.0]), Some(1.0));
        assert_eq!(max(&[2.0, 1.0]), Some(2.0));
        assert!(cv(&[1.0, 1.0, 1.0]).unwrap().abs() < 1e-12);
        assert!(cv(&[1.0]).is_none());
    }
}
