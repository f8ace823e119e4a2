//! Secrets (stream keys, tokens) compared in constant time: how long a comparison takes says
//! nothing of how much of a guess was right.

/// Whether `given` is `expected`, in time that depends only on their lengths.
pub fn same(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut differ = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        differ |= x ^ y;
    }
    std::hint::black_box(differ) == 0
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn only_the_same_secret_is_the_same() {
        assert!(same("0123456789abcdef", "0123456789abcdef"));
        assert!(!same("0123456789abcdeX", "0123456789abcdef"));
        assert!(!same("0123456789abcde", "0123456789abcdef"));
        assert!(!same("0123456789abcdef0", "0123456789abcdef"));
        assert!(!same("", "k"));
        assert!(same("", ""));
    }
}
