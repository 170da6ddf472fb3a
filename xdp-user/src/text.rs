//! Free text from outside (comments, detectors' attack types): the one place
//! that bounds it. A bound is in bytes (what the store and the state file
//! hold), and text is cut on a character boundary, never inside one.

/// Longest comment a policy or allowlist entry holds, in bytes.
pub const MAX_COMMENT_BYTES: usize = 256;

/// The longest prefix of `s` of at most `max_bytes` bytes that ends on a
/// character boundary.
pub(crate) fn fit(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary() {
        assert_eq!(fit("abc", 3), "abc");
        assert_eq!(fit("abc", 2), "ab");
        // 200 "é" are 400 bytes: 128 of them fit in 256.
        let e = "é".repeat(200);
        assert_eq!(fit(&e, MAX_COMMENT_BYTES), "é".repeat(128));
        // A 4-byte emoji is never split: 257 bytes of room hold 64 of them.
        let emoji = "😀".repeat(100);
        assert_eq!(fit(&emoji, 257), "😀".repeat(64));
        assert_eq!(fit(&emoji, 3), "");
        assert_eq!(fit("", 0), "");
    }
}
